"""Attention dispersion of the decision position per layer, speech vs text, beside the uniform baseline (P2 Fig. 4).

Reads the metrics items tables' readout columns (`attn_*_{S,T}`, `modgap.states.readouts.attention`)."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure

from modgap.states.readouts.attention import uniform_dispersion

from .layers import bootstrap_band, layer_matrix
from .style import DOUBLE_COLUMN, OKABE_ITO, figure_legend, new_figure, order_models, styled

SUMMARIES = {"cov90": ("cov", "Cov$_{0.90}$ (positions)"), "cov90_frac": ("cov_frac", "Cov$_{0.90}$ / span length"),
             "max": ("max", "Max weight"), "entropy": ("entropy", "Normalised entropy")}
CONDITIONS = {"S": ("Speech", OKABE_ITO["blue"], "-", "o"), "T": ("Text", OKABE_ITO["vermillion"], "--", "s")}


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
