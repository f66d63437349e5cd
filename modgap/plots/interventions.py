"""Interventions: accuracy changes from edits (P1) and their controls across layers, statistical calibration (P2) and
text redundancy (P2)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from .style import (DOUBLE_COLUMN, LINESTYLES, MARKERS, OKABE_ITO, SERIES_COLORS, SINGLE_COLUMN, bar_width,
                    figure_legend, grouped_bars, model_styles, new_figure, order_models, series_style, stars, styled)

# Conditions drawn by their own figure (baselines, calibration, redundancy): left out of `intervention_bars`, which
# draws the edit conditions themselves (control "path"; the controls are in `edit_layer_curves`).
OWN_FIGURE = ("speech", "text", "calib", "redundancy")
# The edit and its controls (`control` column of the conditions table), as drawn by `edit_layer_curves`.
SITE_SERIES = [("path", "Path positions"), ("random", "Random positions"), ("even", "Even positions"),
               ("other_item", "Other item's text")]
CALIBRATION_SERIES = [
    ("speech", "Speech", {"color": OKABE_ITO["vermillion"], "hatch": "//"}),
    ("calib-input", "Input calibration", {"color": OKABE_ITO["orange"], "hatch": ".."}),
    ("calib-output", "Output calibration", {"color": OKABE_ITO["purple"], "hatch": "xx"}),
    ("text", "Text", {"color": OKABE_ITO["blue"], "hatch": ""}),
]
STAR_NOTE = "McNemar: * p<0.05, ** p<0.01, *** p<0.001"


def condition_table(conditions: pd.DataFrame, column: str, names: Sequence[str], models: Sequence[str]
                    ) -> pd.DataFrame:
    """`column` as a `[model, condition]` table in the given orders (NaN where absent)."""
    return conditions.pivot_table(index="model", columns="condition", values=column, aggfunc="first",
                                  dropna=False).reindex(index=models, columns=list(names))


def draw_stars(ax: Axes, bars: BarContainer, p: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> None:
    """McNemar stars (text gid "stars") above `top` for bars pointing up, below `bottom` for bars pointing down.
    p, top, bottom: one value per bar of `bars`."""
    pad = 0.02 * np.diff(ax.get_ylim())[0]
    for patch, pv, hi, lo in zip(bars.patches, p, top, bottom):
        label = stars(pv)
        if label:
            up = patch.get_height() >= 0
            ax.text(patch.get_x() + patch.get_width() / 2, hi + pad if up else lo - pad, label, ha="center",
                    va="bottom" if up else "top", fontsize="small", gid="stars")


def intervention_bars(conditions: pd.DataFrame, names: Sequence[str] | None = None,
                      style: Mapping | None = None) -> Figure:
    """Accuracy change (points) per edit condition, one group of bars per model, with the delta's CI as error bars
    and McNemar stars.

    conditions: columns model, condition, delta, ci_lo, ci_hi (points), mcnemar_p. names: the conditions to draw,
    in order; default every path condition (column control) not starting with one of `OWN_FIGURE`, in order of
    appearance.
    """
    if names is None:
        path = conditions.loc[conditions["control"] == "path", "condition"]
        names = [c for c in dict.fromkeys(path) if not c.startswith(OWN_FIGURE)]
    models = order_models(conditions["model"])
    delta, lo, hi, p = (condition_table(conditions, c, names, models).to_numpy(float)
                        for c in ("delta", "ci_lo", "ci_hi", "mcnemar_p"))
    with styled(style):
        fig = new_figure(bar_width(len(models), len(names)), 3.0)
        ax = fig.subplots()
        containers = grouped_bars(ax, models, [(n, delta[:, k], series_style(k)) for k, n in enumerate(names)],
                                  yerr=[np.stack([delta[:, k] - lo[:, k], hi[:, k] - delta[:, k]])
                                        for k in range(len(names))])
        ax.axhline(0, color="black", linewidth=0.8)
        ax.margins(y=0.15)
        for k, bars in enumerate(containers):
            present = ~np.isnan(delta[:, k])
            draw_stars(ax, bars, p[present, k], hi[present, k], lo[present, k])
        ax.set_ylabel("Δ accuracy vs speech (points)")
        ax.set_title(STAR_NOTE, loc="left", fontsize="small")
        figure_legend(fig, where="top")
    return fig


def calibration_bars(conditions: pd.DataFrame, style: Mapping | None = None) -> Figure:
    """Accuracy (%) per model for the speech baseline, input and output calibration, and text, with McNemar stars on
    the calibrated conditions (vs speech). Conditions absent from the table are left out.

    conditions: columns model, condition (speech, calib-input, calib-output, text), accuracy (fraction), mcnemar_p.
    """
    series = [s for s in CALIBRATION_SERIES if s[0] in set(conditions["condition"])]
    names = [name for name, _, _ in series]
    models = order_models(conditions["model"])
    accuracy = 100 * condition_table(conditions, "accuracy", names, models).to_numpy(float)
    p = condition_table(conditions, "mcnemar_p", names, models).to_numpy(float)
    with styled(style):
        fig = new_figure(bar_width(len(models), len(series)), 3.0)
        ax = fig.subplots()
        containers = grouped_bars(ax, models, [(label, accuracy[:, k], kw) for k, (_, label, kw) in
                                               enumerate(series)])
        ax.set_ylim(0, 110)
        ax.set_yticks(range(0, 101, 20))
        for k, (name, bars) in enumerate(zip(names, containers)):
            if name.startswith("calib"):
                present = ~np.isnan(accuracy[:, k])
                draw_stars(ax, bars, p[present, k], accuracy[present, k], accuracy[present, k])
        ax.set_ylabel("Accuracy (%)")
        ax.set_title(STAR_NOTE + " vs speech", loc="left", fontsize="small")
        figure_legend(fig, where="top")
    return fig


def redundancy_curve(redundancy: pd.DataFrame, style: Mapping | None = None) -> Figure:
    """Text accuracy (%) vs the word repetition factor r (log2 axis), one line per model.

    redundancy: columns model, r, accuracy (fraction), n_items."""
    styles = model_styles(redundancy["model"])
    by_model = dict(tuple(redundancy.groupby("model", sort=False)))
    r_values = np.sort(redundancy["r"].unique())
    with styled(style):
        fig = new_figure(SINGLE_COLUMN + (1.6 if len(styles) > 1 else 0), 2.6)
        ax = fig.subplots()
        for model, kwargs in styles.items():
            table = by_model[model].sort_values("r")
            ax.plot(table["r"], 100 * table["accuracy"], **kwargs)
        ax.set_xscale("log", base=2)
        ax.set_xticks(r_values, [f"{r:g}" for r in r_values])
        ax.minorticks_off()
        ax.set_xlabel("Word repetitions r (text)")
        ax.set_ylabel("Text accuracy (%)")
        if len(styles) > 1:
            figure_legend(fig)
        else:
            ax.set_title(next(iter(styles)), loc="left")
    return fig


def edit_layer_curves(conditions: pd.DataFrame, style: Mapping | None = None) -> Figure:
    """Layer sweep of the edits: accuracy change vs the unedited speech run (points) against the edited layer, one
    panel per (selection, op), one line per site (the path and each control, `SITE_SERIES`): the mean over models,
    with the range over models shaded when there are several.

    conditions: the conditions table; its rows of kind "edit" with columns model, control, op, select, layer, delta.
    """
    edits = conditions[conditions["kind"] == "edit"].astype({"layer": int})
    if edits.empty:
        raise ValueError("edit_layer_curves: the conditions table has no edit rows")
    selects, ops = list(dict.fromkeys(edits["select"])), list(dict.fromkeys(edits["op"]))
    stats = edits.groupby(["select", "op", "control", "layer"])["delta"].agg(["mean", "min", "max"])
    layers = np.sort(edits["layer"].unique())
    several = edits["model"].nunique() > 1
    with styled(style):
        fig = new_figure(min(DOUBLE_COLUMN, 1.0 + 2.2 * len(ops)), 0.6 + 2.0 * len(selects))
        axes = fig.subplots(len(selects), len(ops), sharex=True, sharey=True, squeeze=False)
        for (r, select), (c, op) in ((rs, co) for rs in enumerate(selects) for co in enumerate(ops)):
            ax = axes[r, c]
            for k, (site, label) in enumerate(SITE_SERIES):
                if (select, op, site) not in stats.index.droplevel("layer"):
                    continue
                line = stats.loc[(select, op, site)]
                ax.plot(line.index, line["mean"], color=SERIES_COLORS[k], marker=MARKERS[k],
                        linestyle=LINESTYLES[k % len(LINESTYLES)], label=label)
                if several:
                    ax.fill_between(line.index, line["min"], line["max"], color=SERIES_COLORS[k], alpha=0.15,
                                    linewidth=0)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_title(f"{op} {select}", loc="left")
            ax.set_xticks(layers)
        for ax in axes[-1]:
            ax.set_xlabel("Edited layer")
        for ax in axes[:, 0]:
            ax.set_ylabel("Δ accuracy vs speech\n(points)")
        figure_legend(fig, where="top")
    return fig
