"""Per-layer curves with bootstrap bands over items (P1 Fig. 4), and the helpers other figures share with them."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .style import DOUBLE_COLUMN, figure_legend, model_styles, new_figure, styled

METRIC_LABELS = {"cos": "Cosine (pooled spans)", "l2": "L2 distance (pooled spans)", "aps_cos": "APS (cosine)",
                 "aps_l2": "APS (L2)", "mono_cos": "Monotonicity (cos)", "mono_l2": "Monotonicity (L2)",
                 "consistency": "Consistency", "gt_hit_argmax": "True-word hit rate (argmax)",
                 "gt_hit_dtw": "True-word hit rate (DTW)", "std_l2": "Standardized L2"}


def bootstrap_band(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over items and its percentile bootstrap interval, per column.

    values: `[n_items, n_cols]` (NaN = missing, ignored). Items are resampled with replacement `n_boot` times as
    multinomial counts, so all resamples are one `[n_boot, n_items] @ [n_items, n_cols]` product. The same seed and
    item count give the same resamples (a paired bootstrap across models that share item order).
    Returns `(mean, lo, hi)`, each `[n_cols]`.
    """
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
    present = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (counts @ np.where(present, values, 0)) / (counts @ present)
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(boot, [alpha, 1 - alpha], axis=0)
    return np.nanmean(values, axis=0), lo, hi


def layer_matrix(items: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """One model's `column` as `[n_items, n_layers]` (items sorted by id) and its layers.

    items: columns id, layer, `column`."""
    table = items.pivot(index="id", columns="layer", values=column).sort_index()
    return table.columns.to_numpy(), table.to_numpy(float)


def item_means(items: pd.DataFrame, columns: Sequence[str], first_layer: int = 1) -> pd.DataFrame:
    """Layer-averaged `columns` per (model, id) over layers >= `first_layer` (P1 excludes layer 0 by default),
    with correct_S and correct_T kept.

    items: columns model, id, layer, correct_S, correct_T and `columns`."""
    kept = items[items["layer"] >= first_layer]
    return kept.groupby(["model", "id"], sort=False)[[*columns, "correct_S", "correct_T"]].mean().reset_index()


def draw_layer_curves(ax: Axes, items: pd.DataFrame, column: str, styles: Mapping[str, dict], n_boot: int,
                      seed: int) -> None:
    """Mean of `column` per layer, one line per model in `styles` with its bootstrap 95% band.

    items: columns model, id, layer, `column`."""
    by_model = dict(tuple(items.groupby("model", sort=False)))
    for model, kwargs in styles.items():
        layers, values = layer_matrix(by_model[model], column)
        mean, lo, hi = bootstrap_band(values, n_boot, seed)
        ax.fill_between(layers, lo, hi, color=kwargs["color"], alpha=0.15, linewidth=0, gid="band")
        ax.plot(layers, mean, markersize=3.5, **kwargs)
    ax.set_xticks(layers)
    ax.set_xlabel("Layer (0 = embeddings)")
    ax.set_ylabel(METRIC_LABELS.get(column, column))


def layer_curves(items: pd.DataFrame, columns: Sequence[str] = ("cos", "l2"), n_boot: int = 1000, seed: int = 0,
                 style: Mapping | None = None) -> Figure:
    """One panel per metric (default cosine and L2 of the pooled spans) vs layer, one line per checkpoint (colour per
    strategy, lightness and linestyle per step) with bootstrap 95% bands over items.

    items: the concatenated metrics items tables, columns model, id, layer and `columns`."""
    styles = model_styles(items["model"])
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN, 2.8)
        axes = fig.subplots(1, len(columns), squeeze=False)[0]
        for ax, column in zip(axes, columns):
            draw_layer_curves(ax, items, column, styles, n_boot, seed)
        figure_legend(fig)
    return fig
