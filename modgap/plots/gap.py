"""The gap against alignment metrics: one point per checkpoint with fits (P1 Figs. 5, 7), per-item distributions, and
P1's decomposition of each checkpoint's accuracies into text loss and modality gap."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from modgap.checkpoints import ALL

from .accuracy import ACCURACY_SERIES
from .layers import METRIC_LABELS, item_means
from .style import (DOUBLE_COLUMN, OKABE_ITO, bar_width, category_axis, figure_legend, new_figure, order_models,
                    step_shades, strategy_colors, strategy_markers, styled)

GAP_METRICS = ("cos", "l2", "aps_cos", "aps_l2")


def fit_label(group: str, fit: pd.Series) -> str:
    """Legend text of one fit: group, R² and its interval, flagged "item noise only" when the interval is not a
    bootstrap over checkpoints (too few of them: it is the item bootstrap's)."""
    flag = "" if fit["r2_ci_source"] == "checkpoints" else " item noise only"
    return f"{group}: R²={fit['r2']:.2f} [{fit['r2_ci_lo']:.2f}, {fit['r2_ci_hi']:.2f}]{flag}"


def gap_scatter(points: pd.DataFrame, fits: pd.DataFrame, metrics: Sequence[str] = GAP_METRICS,
                style: Mapping | None = None) -> Figure:
    """GAP (points) vs each layer-averaged metric, one panel per metric and one point per checkpoint (colour and
    marker per strategy, lighter for earlier steps), with each fitted line over its group's range and R² [CI] in the
    panel's legend (the pooled "all" fit in black, dashed).

    points: columns model, strategy, step, gap and `metrics` (one row per checkpoint; a missing strategy is the
    model's name). fits: columns strategy, x (metric name), slope, intercept, r2, r2_ci_lo, r2_ci_hi, r2_ci_source.
    """
    points = points.assign(strategy=points["strategy"].fillna(points["model"]))
    points = points.set_index("model").loc[order_models(points["model"])].reset_index()
    colors, markers = strategy_colors(points["strategy"]), strategy_markers(points["strategy"])
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN if ncols > 1 else DOUBLE_COLUMN / 2, 0.5 + 2.9 * nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes[len(metrics):]:
            ax.remove()
        for ax, metric in zip(axes, metrics):
            handles = []
            for strategy, group in points.groupby("strategy", sort=False):
                kw = {"color": colors[strategy], "marker": markers[strategy]}
                ax.scatter(group[metric], group["gap"], s=28, edgecolor="black", linewidth=0.4, zorder=3,
                           color=step_shades(kw["color"], len(group)), marker=kw["marker"], gid="checkpoint")
                handles.append(Line2D([], [], linestyle="none", label=strategy, **kw))
            for _, fit in fits[fits["x"] == metric].iterrows():
                group = points if fit["strategy"] == ALL else points[points["strategy"] == fit["strategy"]]
                if group.empty:
                    continue
                pooled = fit["strategy"] == ALL
                color = OKABE_ITO["black"] if pooled else colors[fit["strategy"]]
                x = np.linspace(group[metric].min(), group[metric].max(), 2)
                (line,) = ax.plot(x, fit["slope"] * x + fit["intercept"], color=color, gid="fit",
                                  linestyle="--" if pooled else "-", linewidth=1.2,
                                  marker=None if pooled else markers[fit["strategy"]], markevery=[],
                                  label=fit_label(fit["strategy"], fit))
                handles = [h for h in handles if h.get_label() != fit["strategy"]] + [line]
            ax.set_xlabel(METRIC_LABELS.get(metric, metric))
            ax.set_ylabel("GAP (points)")
            ax.margins(0.08)
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=1)
    return fig


def item_distributions(items: pd.DataFrame, metric: str = "cos", first_layer: int = 1, seed: int = 0,
                       style: Mapping | None = None) -> Figure:
    """Per checkpoint, the distribution of a layer-averaged per-item metric for items speech got wrong vs right:
    box plots (whiskers 1.5 IQR, gid "wrong"/"correct") over jittered item points.

    items: the concatenated metrics items tables, columns model, id, layer, correct_S and `metric`.
    """
    means = item_means(items, [metric], first_layer)
    models = order_models(means["model"])
    groups = [(0, "wrong", OKABE_ITO["orange"], "//"), (1, "correct", OKABE_ITO["blue"], "")]
    rng = np.random.default_rng(seed)
    with styled(style):
        fig = new_figure(bar_width(len(models), 2), 3.0)
        ax = fig.subplots()
        for k, (correct, gid, color, hatch) in enumerate(groups):
            x = np.arange(len(models)) + (k - 0.5) * 0.38
            data = [means.loc[(means["model"] == m) & (means["correct_S"] == correct), metric].dropna().to_numpy()
                    for m in models]
            keep = [i for i, d in enumerate(data) if len(d)]
            boxes = ax.boxplot([data[i] for i in keep], positions=x[keep], widths=0.32, patch_artist=True,
                               showfliers=False, medianprops={"color": "black"}, manage_ticks=False)
            for box in boxes["boxes"]:
                box.set(facecolor=to_rgba(color, 0.35), hatch=hatch, edgecolor=color, gid=gid)
            for i in keep:
                ax.scatter(x[i] + rng.uniform(-0.1, 0.1, len(data[i])), data[i], s=4, color=color, alpha=0.5,
                           linewidth=0, rasterized=True, zorder=3)
        category_axis(ax, models)
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)}, layers ≥ {first_layer}")
        figure_legend(fig, [Patch(facecolor=to_rgba(color, 0.35), edgecolor=color, hatch=hatch, label=f"Speech {gid}")
                            for _, gid, color, hatch in groups], where="top")
    return fig


def decomposition_lines(decomposition: pd.DataFrame, style: Mapping | None = None) -> Figure:
    """P1's decomposition over training, one panel per strategy: accuracy (%) at each checkpoint step of the base LM
    on text (when known), and of the speech LM on text and on speech (the series of `accuracy_bars`; line gids
    base_text_acc, text_acc, speech_acc). The drop from base to text is the text loss of alignment training; the
    band from text down to speech (gid "gap") is the modality gap.

    decomposition: the stats stage's decomposition table, columns strategy, step, base_text_acc, text_acc,
    speech_acc (points; a model without a step is one point).
    """
    panels = list(decomposition.groupby("strategy", sort=False))
    series = [s for s in ACCURACY_SERIES if decomposition[s[0]].notna().any()]
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN if len(panels) > 1 else DOUBLE_COLUMN / 2, 2.8)
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, (strategy, table) in zip(axes, panels):
            table = table.sort_values("step")
            x = np.arange(len(table))
            ax.fill_between(x, table["speech_acc"], table["text_acc"], color=OKABE_ITO["black"], alpha=0.1,
                            linewidth=0, gid="gap", label="Modality gap")
            for column, label, kw in series:
                ax.plot(x, table[column], color=kw["color"], marker="o", gid=column, label=label,
                        linestyle="--" if column == "base_text_acc" else "-")
            category_axis(ax, ["—" if pd.isna(step) else f"{step:g}" for step in table["step"]])
            ax.set_title(str(strategy), loc="left")
            ax.set_xlabel("Step")
        axes[0].set_ylabel("Accuracy (%)")
        axes[0].set_ylim(0, 103)
        figure_legend(fig, where="top")
    return fig
