"""The decision position's attention rows over the span of the few heatmap items (the attention readout's ragged
field `attn_rows`), gathered from the stores for the attention heatmap figure. Reads the stores only (no forward
pass)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from modgap.atomic import write_npz
from modgap.states.store import StoreReader

FIELD = "attn_rows"


def attention_rows(stores: list[str], corpus_table: str | Path, out: str | Path) -> list[str]:
    """Write one `.npz` holding, per item with rows in every condition (in store order), `{id}/{cond}` [L+1, heads,
    n] span-renormalised weights (block 0 NaN), `{id}/{cond}_words` [n] the word index of each span position (-1:
    none) and `{id}/words` [W] the corpus words, plus `ids`; returns the ids. ValueError naming a store without the
    field (the attention readout was off)."""
    words = pd.read_parquet(corpus_table, columns=["id", "words"]).set_index("id")["words"]
    arrays: dict[str, np.ndarray] = {}
    ids: list[str] = []
    for reader in map(StoreReader, stores):
        if FIELD not in reader.ragged_fields:
            raise ValueError(f"store {reader.path}: no {FIELD!r} rows; the figure needs states.readouts to list "
                             "attention")
        kept = np.logical_and.reduce([reader.ragged_items(c, FIELD) > 0 for c in reader.conds])
        for i in np.flatnonzero(kept):
            item_id = reader.items[i]
            ids.append(item_id)
            for c in reader.conds:
                arrays[f"{item_id}/{c}"] = reader.ragged(c, FIELD, i).transpose(1, 2, 0)
                arrays[f"{item_id}/{c}_words"] = reader.positions(c, i)["word"].to_numpy()
            arrays[f"{item_id}/words"] = np.asarray(words[item_id], dtype=str)
    write_npz(out, ids=np.asarray(ids, dtype=str), **arrays)
    return ids
