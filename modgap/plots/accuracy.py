"""Accuracy per model and condition, with the gap (P1 Fig. 2, P2 Fig. 1)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .style import OKABE_ITO, bar_width, figure_legend, grouped_bars, new_figure, order_models, styled

# (column, legend label, bar style): fixed per condition, so a figure without the base LM keeps the colours.
ACCURACY_SERIES = [
    ("base_text_acc", "Base LM, text", {"color": "#999999", "hatch": "xx"}),
    ("text_acc", "Text input", {"color": OKABE_ITO["blue"], "hatch": ""}),
    ("speech_acc", "Speech input", {"color": OKABE_ITO["vermillion"], "hatch": "//"}),
]


def accuracy_bars(accuracy: pd.DataFrame, style: Mapping | None = None) -> Figure:
    """Grouped bars per model: base LM text (when the optional `base_text_acc` column has values), text and speech
    accuracy in %, and the gap in points written above each text/speech pair (text gid "gap"). One panel per
    (dataset, voice); lab checkpoints ordered by strategy then step.

    accuracy: columns model, dataset, voice, text_acc, speech_acc (fractions), gap (points), n_items; optional
    base_text_acc (fraction, NaN where unknown).
    """
    models = order_models(accuracy["model"])
    series = [s for s in ACCURACY_SERIES if s[0] in accuracy and accuracy[s[0]].notna().any()]
    panels = list(accuracy.groupby(["dataset", "voice"], sort=False))
    with styled(style):
        fig = new_figure(bar_width(len(models), len(series)), 0.4 + 2.6 * len(panels))
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, ((dataset, voice), table) in zip(axes, panels):
            table = table.set_index("model").reindex(models)
            grouped_bars(ax, models, [(label, 100 * table[col].to_numpy(float), kw) for col, label, kw in series])
            top = 100 * table[["text_acc", "speech_acc"]].max(axis=1).to_numpy()
            pair_x = np.arange(len(models)) + 0.4 * (len(series) - 2) / len(series)  # centre of text and speech
            for x, y, gap in zip(pair_x, top, table["gap"].to_numpy(float)):
                if not np.isnan(gap):
                    ax.text(x, y + 1.5, f"{gap:.1f}", ha="center", va="bottom", fontsize="small", gid="gap",
                            rotation=90 if len(models) > 10 else 0)
            ax.set_ylim(0, 125 if len(models) > 10 else 112)
            ax.set_yticks(range(0, 101, 20))
            ax.set_ylabel("Accuracy (%)")
            ax.set_title(f"{dataset} · {voice}   (numbers: gap, points)", loc="left")
        figure_legend(fig, where="top")
    return fig
