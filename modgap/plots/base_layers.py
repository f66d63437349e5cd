"""DTW base-layer sensitivity (P2 Fig. 9): agreement with the default base layer vs the base layer."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure

from .style import DOUBLE_COLUMN, figure_legend, model_styles, new_figure, styled

PANELS = {"path_agreement": "Path agreement\n(tokens on the same speech positions)",
          "best_match_agreement": "Best-match agreement\n(speech layers, CKA)"}


def base_layer_agreement(tables: Mapping[str, pd.DataFrame], style: Mapping | None = None) -> Figure:
    """Two panels, path and best-match agreement vs base layer, one line per model (the path agreement with a band
    of +- one sd over items); a dotted line at each model's default base layer (agreement 1 by definition).

    tables: model -> its base_layers.csv (columns base_layer, default, path_agreement, path_agreement_sd,
    best_match_agreement)."""
    styles = model_styles(tables)
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN, 2.8)
        axes = fig.subplots(1, len(PANELS), squeeze=False, sharey=True)[0]
        for ax, (column, label) in zip(axes, PANELS.items()):
            for model, kwargs in styles.items():
                t = tables[model]
                if column == "path_agreement":
                    sd = t["path_agreement_sd"]
                    ax.fill_between(t["base_layer"], t[column] - sd, t[column] + sd, color=kwargs["color"],
                                    alpha=0.15, linewidth=0)
                ax.plot(t["base_layer"], t[column], markersize=3.5, **kwargs)
                ax.axvline(t.loc[t["default"], "base_layer"].iloc[0], color=kwargs["color"], linestyle=":",
                           linewidth=1, gid="default")
            ax.set_xlabel("DTW base layer")
            ax.set_ylabel(label)
            ax.set_ylim(-0.03, 1.03)
        figure_legend(fig)
    return fig
