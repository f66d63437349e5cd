"""Logit-lens margin and entropy per layer by outcome stratum (P2 Figs. 6 and 8), from the item-metrics table.

An item's stratum is its pair of outcomes: both right, text only (right in T, wrong in S: P2's only_t2t), speech only,
neither; "all" pools every multiple-choice item. Items whose scores are not 0/1 (open tasks, unscored) have no stratum
(and no lens margin). The control assigns the same strata at random: one seeded permutation of the item labels, so
every stratum keeps its size, and a stratum difference that survives it is not a size effect.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

STRATA = {(1.0, 1.0): "both", (0.0, 1.0): "text_only", (1.0, 0.0): "speech_only", (0.0, 0.0): "neither"}
VALUES = ("lens_margin_S", "lens_margin_T", "lens_entropy_S", "lens_entropy_T")
MARGIN_SCORES = {"letter": "option letters", "cloze": "first token of each option's continuation"}


def item_strata(items: pd.DataFrame) -> pd.Series:
    """id -> stratum name from columns correct_S, correct_T (one row per item and layer); items outside 0/1 left
    out."""
    outcomes = items.groupby("id", sort=True)[["correct_S", "correct_T"]].first()
    named = [STRATA.get((s, t)) for s, t in outcomes.itertuples(index=False)]
    return pd.Series(named, index=outcomes.index, dtype=object).dropna()


def strata_means(items: pd.DataFrame, strata: pd.Series) -> pd.DataFrame:
    """Mean of each lens column and item count per (layer, stratum), plus stratum "all" over `strata`'s items."""
    rows = items[items["id"].isin(strata.index)].assign(stratum=lambda f: f["id"].map(strata))
    pooled = pd.concat([rows, rows.assign(stratum="all")], ignore_index=True)
    return (pooled.groupby(["layer", "stratum"], sort=True)
            .agg(n=("id", "nunique"), **{c: (c, "mean") for c in VALUES}).reset_index())


def lens_strata(items: pd.DataFrame, style: str, seed: int) -> pd.DataFrame:
    """Per (layer, stratum): n and mean lens margin and entropy in S and T, with `labels` "outcome" (the items' own
    strata) or "shuffled" (the control), and `margin_scores` saying which tokens the margin compares.

    items: one model's item metrics, columns id, layer, correct_S, correct_T and the four `VALUES`."""
    if missing := [c for c in VALUES if c not in items.columns]:
        raise ValueError(f"item metrics: no columns {missing} (enable the lens readout: states.readouts)")
    strata = item_strata(items)
    shuffled = pd.Series(np.random.default_rng(seed).permutation(strata.to_numpy()), index=strata.index)
    return pd.concat([strata_means(items, strata).assign(labels="outcome"),
                      strata_means(items, shuffled).assign(labels="shuffled")],
                     ignore_index=True).assign(margin_scores=MARGIN_SCORES[style])
