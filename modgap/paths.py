"""Where each stage writes, as format templates: one definition for the rules and the library."""
CORPUS_TABLE = "results/corpus/{dataset}/{split}/{voice}/items.parquet"
LAB = "results/lab"  # trained or imported lab checkpoints: {LAB}/{strategy}/step{N}
SHIPPED = "lab/checkpoints"  # the checkpoints shipped in the repository, same layout
NATIVE_VOICE = "native"  # the voice folder of a dataset's own recordings


def heatmap_stems(n_items: int, layers: list[int]) -> list[str]:
    """File stems of one model's heatmap figures, by item position and configured layer (`item1_layer-1`)."""
    return [f"item{n}_layer{layer}" for n in range(n_items) for layer in layers]
