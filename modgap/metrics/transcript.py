"""Implicit transcription per layer (readout `transcript`), from the item-metrics table: the mean fraction of an
item's words whose first token is in the logit-lens top k somewhere in its speech span, its wrong-word control, and
the transcript-emergence layer."""
from __future__ import annotations

import numpy as np
import pandas as pd

FRACTIONS = tuple(f"transcript_{kind}top{k}_S" for kind in ("", "wrong_") for k in (1, 5, 10))


def emergence_layer(top10: np.ndarray, layers: np.ndarray, level: float) -> np.ndarray:
    """[..., len(layers)] top-10 fractions -> [...] the first of `layers` where the fraction reaches `level` (NaN if
    never)."""
    reached = np.asarray(top10) >= level
    return np.where(reached.any(-1), np.asarray(layers)[reached.argmax(-1)], np.nan)


def transcript_table(items: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per analysed layer: the mean of each `FRACTIONS` column over items with words, n_items, `emerged` (the
    fraction of those items whose own emergence layer is at most this layer), and constant columns level,
    emergence_layer and emergence_layer_wrong (of the mean top-10 curve and of its wrong-word control).

    items: one model's item metrics, columns id, layer and `FRACTIONS`."""
    if missing := [c for c in FRACTIONS if c not in items.columns]:
        raise ValueError(f"item metrics: no columns {missing} (enable the transcript readout: states.readouts)")
    top10 = items.pivot(index="id", columns="layer", values="transcript_top10_S").dropna(how="all")
    layers = top10.columns.to_numpy()
    per_item = emergence_layer(top10.to_numpy(), layers, level)
    table = (items[items["id"].isin(top10.index)].groupby("layer", sort=True)[list(FRACTIONS)].mean()
             .reset_index().assign(n_items=len(top10)))
    return table.assign(
        emerged=[float(np.mean(per_item <= l)) for l in table["layer"]], level=level,
        emergence_layer=emergence_layer(table["transcript_top10_S"].to_numpy(), layers, level),
        emergence_layer_wrong=emergence_layer(table["transcript_wrong_top10_S"].to_numpy(), layers, level))
