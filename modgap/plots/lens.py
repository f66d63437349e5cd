"""Logit-lens decision dynamics (P2 Figs. 6 and 8): margin and entropy at the decision position vs layer, by outcome
stratum (S and T side by side, the shuffled-strata control dotted) and under text redundancy (one line per r)."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure

from .style import (DOUBLE_COLUMN, OKABE_ITO, SERIES_COLORS, figure_legend, new_figure, order_models, step_shades,
                    styled)

STRATUM_LABELS = {"both": "Both right", "text_only": "Text only", "speech_only": "Speech only", "neither": "Neither",
                  "all": "All"}
PANELS = [("lens_margin_S", "Margin, speech"), ("lens_margin_T", "Margin, text"),
          ("lens_entropy_S", "Norm. entropy, speech"), ("lens_entropy_T", "Norm. entropy, text")]


def lens_strata_curves(tables: Mapping[str, pd.DataFrame], style: Mapping | None = None) -> Figure:
    """One row per model, one panel per `PANELS` column vs layer; solid lines: outcome strata, dotted: the same
    strata shuffled (the control). tables: model -> `modgap.metrics.lens_strata.lens_strata` table."""
    models = order_models(tables)
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN, 2.2 * len(models))
        axes = fig.subplots(len(models), len(PANELS), squeeze=False, sharex=True)
        for row, model in zip(axes, models):
            table = tables[model]
            for ax, (column, title) in zip(row, PANELS):
                for k, (stratum, label) in enumerate(STRATUM_LABELS.items()):
                    for labels, line in (("outcome", "-"), ("shuffled", ":")):
                        g = table[(table["stratum"] == stratum) & (table["labels"] == labels)].sort_values("layer")
                        ax.plot(g["layer"], g[column], line, color=SERIES_COLORS[k], linewidth=1.2,
                                label=label if labels == "outcome" else None, gid=f"{stratum}-{labels}")
                ax.set_ylabel(title)
                ax.set_xlabel("Layer")
            row[0].set_title(model, loc="left")
        figure_legend(fig)
    return fig


def redundancy_entropy_curves(lens: pd.DataFrame, style: Mapping | None = None) -> Figure:
    """Mean normalised entropy at the decision position vs layer under text redundancy, one panel per model, one line
    per repetition factor r (darker: larger r). lens: the interventions' redundancy_lens table (model, r, layer,
    lens_entropy)."""
    models = order_models(lens["model"].unique())
    r_values = sorted(lens["r"].unique())
    shades = dict(zip(r_values, step_shades(OKABE_ITO["blue"], len(r_values))))
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN, 2.6)
        axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
        for ax, model in zip(axes, models):
            for r in r_values:
                g = lens[(lens["model"] == model) & (lens["r"] == r)].sort_values("layer")
                ax.plot(g["layer"], g["lens_entropy"], color=shades[r], label=f"r = {r}", gid=f"r{r}")
            ax.set_title(model, loc="left")
            ax.set_xlabel("Layer (0 = embeddings)")
        axes[0].set_ylabel("Norm. entropy (text)")
        figure_legend(fig)
    return fig


def transcript_curves(tables: Mapping[str, pd.DataFrame], style: Mapping | None = None) -> Figure:
    """Implicit transcription per layer: the fraction of spoken words whose first token is in the logit lens's top 1,
    5 and 10 somewhere in the word's speech span (solid), and the same for a wrong word at those positions (dotted,
    the control). One panel per model. tables: model -> the metrics stage's transcript table (layer,
    transcript_top{k}_S, transcript_wrong_top{k}_S)."""
    models = order_models(tables)
    with styled(style):
        ncols = min(4, len(models))
        nrows = -(-len(models) // ncols)
        fig = new_figure(DOUBLE_COLUMN, 2.2 * nrows + 0.4)
        grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        for ax in grid.flat[len(models):]:
            ax.remove()
        axes = list(grid.flat[: len(models)])
        for ax, model in zip(axes, models):
            table = tables[model].sort_values("layer")
            for j, k in enumerate((1, 5, 10)):
                ax.plot(table["layer"], table[f"transcript_top{k}_S"], "-", color=SERIES_COLORS[j],
                        label=f"top {k}", gid=f"top{k}")
                ax.plot(table["layer"], table[f"transcript_wrong_top{k}_S"], ":", color=SERIES_COLORS[j],
                        gid=f"wrong-top{k}")
            ax.set_title(model, loc="left", fontsize="small")
            ax.set_xlabel("Layer")
        for row in grid:
            row[0].set_ylabel("Words found (speech)")
        figure_legend(fig)
    return fig
