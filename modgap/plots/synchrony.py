"""Layer-update synchrony (P2 Fig. 5) vs layer, with its shuffled-pair control."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure

from .layers import bootstrap_band, draw_layer_curves, layer_matrix
from .style import DOUBLE_COLUMN, figure_legend, model_styles, new_figure, styled

PAIRINGS = {"sync_dtw": "DTW pairs", "sync_truth": "True-word pairs"}


def synchrony_curves(items: pd.DataFrame, n_boot: int = 1000, seed: int = 0, style: Mapping | None = None) -> Figure:
    """One panel per pairing (DTW, true word): mean cos(speech update, text update) per layer, one line per model
    with its bootstrap 95% band over items; dashed, the shuffled-pair control (DTW pairs, text rows deranged).

    items: the concatenated metrics items tables, columns model, id, layer, sync_dtw, sync_truth, sync_shuffled."""
    styles = model_styles(items["model"])
    items = items[items["layer"] > items.groupby("model")["layer"].transform("min")]  # the first layer has no update
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN, 2.8)
        axes = fig.subplots(1, len(PAIRINGS), squeeze=False, sharey=True)[0]
        for ax, (column, title) in zip(axes, PAIRINGS.items()):
            draw_layer_curves(ax, items, column, styles, n_boot, seed)
            for model, kwargs in styles.items():
                layers, values = layer_matrix(items[items["model"] == model], "sync_shuffled")
                ax.plot(layers, bootstrap_band(values, n_boot, seed)[0], color=kwargs["color"], linestyle="--",
                        linewidth=1)
            ax.axhline(0, color="0.6", linewidth=0.5)
            ax.set_title(title)
            ax.set_ylabel("Update synchrony (cos)")
        figure_legend(fig)
    return fig
