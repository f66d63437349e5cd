"""Where each stage writes, as format templates: one definition for the rules and the library."""
CORPUS_TABLE = "results/corpus/{dataset}/{split}/{voice}/items.parquet"
LAB = "results/lab"  # trained or imported lab checkpoints: {LAB}/{strategy}/step{N}
SHIPPED = "lab/checkpoints"  # the checkpoints shipped in the repository, same layout
