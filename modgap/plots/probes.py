"""Probe accuracy per layer on the decision-position states (P2 Fig. 7), from `modgap.metrics.probes` tables."""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .style import DOUBLE_COLUMN, OKABE_ITO, figure_legend, new_figure, order_models, styled

CONDITION_COLORS = {"S": OKABE_ITO["vermillion"], "T": OKABE_ITO["blue"], "T->S": OKABE_ITO["purple"]}
PROBE_LABELS = {"linear": "Linear probe", "mlp": "MLP probe"}


def probe_curves(table: pd.DataFrame, subset: str = "all", style: dict | None = None) -> Figure:
    """One row of panels per model, one column per probe: accuracy vs layer per condition (solid) and its
    shuffled-label control (dashed, same colour).

    table: concatenated probes tables, columns model, layer, condition, probe, subset, accuracy, control_accuracy."""
    rows = table[table["subset"] == subset]
    models = order_models(rows["model"].unique())
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN, 0.4 + 2.2 * max(1, len(models)))
        if not models:
            fig.text(0.5, 0.5, "no multiple-choice items to probe", ha="center", va="center")
            return fig
        axes = fig.subplots(len(models), 2, sharex=True, sharey=True, squeeze=False)
        for (model, probe), ax in zip([(m, p) for m in models for p in PROBE_LABELS], axes.flat):
            for cond, color in CONDITION_COLORS.items():
                curve = rows[(rows["model"] == model) & (rows["probe"] == probe) & (rows["condition"] == cond)]
                curve = curve.sort_values("layer")
                ax.plot(curve["layer"], curve["accuracy"], color=color, marker="o", markersize=2.5)
                ax.plot(curve["layer"], curve["control_accuracy"], color=color, linestyle="--", linewidth=1)
            ax.set_title(f"{model} · {PROBE_LABELS[probe]}")
            ax.set_ylim(0, 1.02)
        for ax in axes[-1]:
            ax.set_xlabel("Layer (0 = embeddings)")
        for ax in axes[:, 0]:
            ax.set_ylabel("Held-out accuracy")
        handles = [Line2D([], [], color=c, label={"T->S": "T → S (fitted on T)"}.get(k, k))
                   for k, c in CONDITION_COLORS.items()]
        handles.append(Line2D([], [], color="grey", linestyle="--", label="shuffled-label control"))
        figure_legend(fig, handles, where="bottom")
    return fig
