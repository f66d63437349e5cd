"""Token-similarity matrices of a few chosen items and layers, with their paths and true word spans, for plotting.

Reads the stores only (no forward pass), so choosing other items or layers never touches a model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from modgap.store import StoreReader

from .dtw import dtw_path
from .item import dtw_score
from .geometry import token_similarity
from .paths import alignment_path
from .stage import TRUTH_COLUMNS


def chosen_ids(corpus: pd.DataFrame, items: int | list[str]) -> list[str]:
    """The first `items` usable item ids of the corpus table, or the listed ids (each must be usable)."""
    usable = corpus.loc[corpus["status"] == "ok", "id"].tolist()
    if isinstance(items, int):
        return usable[:items]
    if missing := [i for i in items if i not in usable]:
        raise ValueError(f"config key plots.heatmap.items: {missing} not among the usable test items")
    return list(items)


def item_heatmaps(reader: StoreReader, index: int, layers: list[int], band: int | None) -> dict[str, np.ndarray]:
    """For item `index` of a store and each layer: `sim` `[Ts, Tt]` cosine, `argmax_path` `[Tt]`, `dtw_path`
    `[K, 2]` (cosine objective, `band`), keyed `L{layer}/...`; plus `speech_ms` `[Ts, 2]` and `text_words` `[Tt]`."""
    hs, ht = reader.hidden("S", index, layers), reader.hidden("T", index, layers)
    sims = token_similarity(hs, ht, "cos")
    out = {f"L{layer}/sim": sims[k].numpy() for k, layer in enumerate(layers)}
    for k, (layer, path) in enumerate(zip(layers, alignment_path(sims, "cos"))):
        out[f"L{layer}/argmax_path"] = path.numpy()
        out[f"L{layer}/dtw_path"] = dtw_path(dtw_score({"cos": sims}, "cos")[k], band).numpy()
    s, t = reader.positions("S", index), reader.positions("T", index)
    return out | {"speech_ms": s[["start_ms", "end_ms"]].to_numpy(np.float32), "text_words": t["word"].to_numpy()}


def heatmap_data(stores: list[str], corpus_table: str | Path, items: int | list[str], layers: list[int],
                 truth: str, band: int | None, out: str | Path) -> list[str]:
    """Write one `.npz` with every chosen item's heatmaps, keyed `{id}/...`, plus `{id}/words` and
    `{id}/word_spans_ms` `[W, 2]` (the `truth` timings), `ids` and `layers` (the model layers drawn, in the order of
    `layers`; negative ones count from the last stored layer)."""
    corpus = pd.read_parquet(corpus_table).set_index("id", drop=False)
    wanted = chosen_ids(corpus, items)
    arrays: dict[str, np.ndarray] = {}
    chosen: list[int] = []
    for store in stores:
        reader = StoreReader(store)
        chosen = [reader.layers[x] if x < 0 else x for x in layers]
        for index, item_id in enumerate(reader.items):
            if item_id not in wanted:
                continue
            row = corpus.loc[item_id]
            start, end = TRUTH_COLUMNS[truth]
            arrays |= {f"{item_id}/{k}": v for k, v in item_heatmaps(reader, index, chosen, band).items()}
            arrays[f"{item_id}/words"] = np.asarray(row["words"], dtype=str)
            arrays[f"{item_id}/word_spans_ms"] = np.stack([np.asarray(row[start], float), np.asarray(row[end], float)], 1)
    found = sorted({k.split("/")[0] for k in arrays})
    if missing := sorted(set(wanted) - set(found)):
        raise ValueError(f"items {missing} are in no store of {stores}")
    tmp = Path(out).with_name(f".{Path(out).name}.partial.npz")
    np.savez_compressed(tmp, ids=np.asarray(wanted, dtype=str), layers=np.asarray(chosen), **arrays)
    tmp.replace(out)
    return wanted
