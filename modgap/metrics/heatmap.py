"""Token-similarity matrices of a few chosen items and layers, with their paths and true word spans, for plotting.

Reads the stores only (no forward pass), so choosing other items or layers never touches a model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from modgap.atomic import write_npz
from modgap.corpus.table import Row, read_rows
from modgap.states.store import StoreReader

from .item import batched_dtw
from .geometry import token_similarity
from .alignment import alignment_path


def chosen_rows(rows: list[Row], items: int | list[str]) -> list[Row]:
    """The first `items` usable corpus rows, or the listed ids (each must be usable)."""
    if isinstance(items, int):
        return rows[:items]
    by_id = {r.id: r for r in rows}
    if missing := [i for i in items if i not in by_id]:
        raise ValueError(f"config key plots.heatmap.items: {missing} not among the usable test items")
    return [by_id[i] for i in items]


def item_heatmaps(reader: StoreReader, index: int, layers: list[int], band: int | None) -> dict[str, np.ndarray]:
    """For item `index` of a store and each layer: `sim` `[Ts, Tt]` cosine, `argmax_path` `[Tt]`, `dtw_path`
    `[K, 2]` (cosine objective, `band`), keyed `L{layer}/...`; plus `speech_ms` `[Ts, 2]` and `text_words` `[Tt]`."""
    hs, ht = reader.hidden("S", index, layers), reader.hidden("T", index, layers)
    sims = token_similarity(hs, ht, "cos")
    out = {}
    for layer, sim, path, dtw in zip(layers, sims, alignment_path(sims, "cos"), batched_dtw(list(sims), band)):
        out |= {f"L{layer}/sim": sim.numpy(), f"L{layer}/argmax_path": path.numpy(), f"L{layer}/dtw_path": dtw.numpy()}
    s, t = reader.positions("S", index), reader.positions("T", index)
    return out | {"speech_ms": s[["start_ms", "end_ms"]].to_numpy(np.float32), "text_words": t["word"].to_numpy()}


def heatmap_data(stores: list[str], corpus_table: str | Path, items: int | list[str], layers: list[int],
                 truth: str, band: int | None, out: str | Path) -> list[str]:
    """Write one `.npz` with every chosen item's heatmaps, keyed `{id}/...`, plus `{id}/words` and
    `{id}/word_spans_ms` `[W, 2]` (the `truth` timings), `ids` and `layers` (the model layers drawn, in the order of
    `layers`; negative ones count from the last stored layer). Items the states stage skipped are not usable."""
    corpus = pd.read_parquet(corpus_table).set_index("id", drop=False)
    readers = [StoreReader(s) for s in stores]
    skipped = {i for r in readers for i in r.skipped()["id"]}
    picked = {r.id: r for r in chosen_rows([r for r in read_rows(corpus, truth) if r.id not in skipped], items)}
    wanted = list(picked)
    arrays: dict[str, np.ndarray] = {}
    chosen: list[int] = []
    for reader in readers:
        chosen = [reader.layers[x] if x < 0 else x for x in layers]
        for index, item_id in enumerate(reader.items):
            if item_id not in wanted:
                continue
            arrays |= {f"{item_id}/{k}": v for k, v in item_heatmaps(reader, index, chosen, band).items()}
            arrays[f"{item_id}/words"] = np.asarray(corpus.at[item_id, "words"], dtype=str)
            arrays[f"{item_id}/word_spans_ms"] = picked[item_id].spans
    found = sorted({k.split("/")[0] for k in arrays})
    if missing := sorted(set(wanted) - set(found)):
        raise ValueError(f"items {missing} are in no store of {stores}")
    write_npz(out, ids=np.asarray(wanted, dtype=str), layers=np.asarray(chosen), **arrays)
    return wanted
