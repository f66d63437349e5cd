"""The decision position's attention over the question span, speech vs text (P2 Fig. 4): its dispersion per layer
beside the uniform baseline, and the rows themselves of a few items as heatmaps.

Reads the metrics items tables' readout columns (`attn_*_{S,T}`, `modgap.states.readouts.attention`) and the
heatmap items' rows (`modgap.metrics.attention_rows`)."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from modgap.states.readouts.attention import uniform_dispersion

from .alignment import token_labels
from .layers import bootstrap_band, layer_matrix
from .style import DOUBLE_COLUMN, OKABE_ITO, SEQUENTIAL_CMAP, figure_legend, new_figure, order_models, styled

SUMMARIES = {"cov90": ("cov", "Cov$_{0.90}$ (positions)"), "cov90_frac": ("cov_frac", "Cov$_{0.90}$ / span length"),
             "max": ("max", "Max weight"), "entropy": ("entropy", "Normalised entropy")}
CONDITIONS = {"S": ("Speech", OKABE_ITO["blue"], "-", "o"), "T": ("Text", OKABE_ITO["vermillion"], "--", "s")}
WORD_TICKS = 10  # word labels at most per heatmap panel (about 1.5 in wide)
ROW_PANELS = [("S", False), ("T", False), ("S", True), ("T", True)]  # (condition, per head in the last block)


def attention_dispersion(items: pd.DataFrame, n_boot: int = 1000, seed: int = 0, style: Mapping | None = None
                         ) -> Figure:
    """One row per model, one panel per summary (head means) vs decoder block (1..L): speech and text means over
    items with bootstrap 95% bands, and each condition's uniform-attention baseline over its items' spans (dotted).

    items: the concatenated metrics items tables, columns model, id, layer, attn_{summary}_{S,T} and
    attn_span_len_{S,T}."""
    models = order_models(items["model"])
    items = items[items["layer"] >= 1]  # block l's attention; layer 0 (the embeddings) has none
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN, 1.9 * len(models) + 0.4)
        axes = fig.subplots(len(models), len(SUMMARIES), squeeze=False)
        for row, model in zip(axes, models):
            mine = items[items["model"] == model]
            for ax, (summary, (key, label)) in zip(row, SUMMARIES.items()):
                for cond, (name, color, linestyle, marker) in CONDITIONS.items():
                    layers, values = layer_matrix(mine, f"attn_{summary}_{cond}")
                    mean, lo, hi = bootstrap_band(values, n_boot, seed)
                    ax.fill_between(layers, lo, hi, color=color, alpha=0.15, linewidth=0, gid="band")
                    ax.plot(layers, mean, color=color, linestyle=linestyle, marker=marker, markersize=3,
                            label=name)
                    spans = mine.drop_duplicates("id")[f"attn_span_len_{cond}"].to_numpy()
                    ax.axhline(float(uniform_dispersion(spans)[key].mean()), color=color, linestyle=":",
                               linewidth=1, label=f"{name}, uniform", gid="baseline")
                ax.set_ylabel(label)
                ax.set_xlabel("Decoder block")
            row[0].set_title(model, loc="left")
        figure_legend(fig, axes[0, 0].get_legend_handles_labels()[0], where="bottom")
    return fig


def word_ticks(ax: Axes, position_words: np.ndarray, words: np.ndarray) -> None:
    """Label the span axis with each word at its first position, every k-th word when there are more than
    `WORD_TICKS` (plain position numbers when no position has a word)."""
    labels = token_labels(position_words, [str(w) for w in words])
    at = [j for j, label in enumerate(labels) if label not in ("", "·")]
    at = at[:: math.ceil(len(at) / WORD_TICKS)] if at else at
    if at:
        ax.set_xticks(at, [labels[j] for j in at], rotation=90)
        ax.set_xlabel("Span position (word)")
    else:
        ax.set_xlabel("Span position")


def attention_rows_figure(data: Mapping[str, np.ndarray], title: str = "", style: Mapping | None = None) -> Figure:
    """One row per heatmap item: the decision position's span-renormalised attention, blocks 1..L x span positions
    averaged over heads, speech then text, and heads x span positions in the last block, speech then text; each
    panel on its own colour scale.

    data: as `modgap.metrics.attention_rows` writes it: `ids`, and per id `{id}/{S,T}` [L+1, heads, n] (block 0
    NaN), `{id}/{S,T}_words` [n] and `{id}/words` [W]."""
    ids = [str(i) for i in data["ids"]]
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN, 2.6 * max(1, len(ids)) + 0.3)
        if title:
            fig.suptitle(title, x=0.0, ha="left")
        if not ids:
            fig.text(0.5, 0.5, "No heatmap item kept attention rows", ha="center")
            return fig
        for row, item in zip(fig.subplots(len(ids), len(ROW_PANELS), squeeze=False), ids):
            for k, (ax, (cond, per_head)) in enumerate(zip(row, ROW_PANELS)):
                rows = data[f"{item}/{cond}"]  # [L+1, heads, n]
                image, first = (rows[-1], 0) if per_head else (rows[1:].mean(1), 1)  # [heads | L, n]
                shown = ax.imshow(image, origin="lower", aspect="auto", cmap=SEQUENTIAL_CMAP, interpolation="nearest",
                                  extent=(-0.5, image.shape[1] - 0.5, first - 0.5, first + image.shape[0] - 0.5))
                fig.colorbar(shown, ax=ax, shrink=0.9)
                word_ticks(ax, data[f"{item}/{cond}_words"], data[f"{item}/words"])
                ax.set_ylabel(("Head" if per_head else "Decoder block") if k else f"{item}\nDecoder block")
                ax.set_title(f"{CONDITIONS[cond][0]}: " + (f"heads, block {len(rows) - 1}" if per_head else "head mean"),
                             loc="left")
    return fig
