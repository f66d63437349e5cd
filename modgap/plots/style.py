"""Shared look of every modgap figure: palette, checkpoint identity and styling, legends, grouped bars, saving.

Colours are Okabe-Ito (colour-blind safe); every series also differs by marker, linestyle or hatch so that figures
read in greyscale print. Sizes are in inches at the saved size; fonts are relative to `font.size` (10 pt, the
smallest relative size "small" is 8.3 pt), so one `font.size` in the config style rescales a whole figure.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import numpy as np
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from modgap.atomic import atomic
from modgap.checkpoints import parse_model

OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7"}
# Series colours on white, in order of use; black is kept for pooled fits, yellow is too light for lines.
SERIES_COLORS = [OKABE_ITO[c] for c in ("blue", "vermillion", "green", "purple", "orange", "sky")]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<"]
LINESTYLES = ["-", "--", "-.", ":"]
HATCHES = ["", "//", "..", "xx", "\\\\", "oo"]
SEQUENTIAL_CMAP = "viridis"  # perceptually uniform, colour-blind safe
SINGLE_COLUMN, DOUBLE_COLUMN = 3.5, 7.2  # figure widths in inches

BASE_STYLE: dict = {
    "font.size": 10, "axes.titlesize": "medium", "axes.labelsize": "medium", "xtick.labelsize": "small",
    "ytick.labelsize": "small", "legend.fontsize": "small", "legend.title_fontsize": "small",
    "axes.prop_cycle": cycler(color=SERIES_COLORS),
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False, "lines.linewidth": 1.5,
    "lines.markersize": 5, "hatch.linewidth": 0.6, "image.cmap": SEQUENTIAL_CMAP, "savefig.dpi": 300,
    "pdf.fonttype": 42, "ps.fonttype": 42,
}


@contextmanager
def styled(style: Mapping | None = None) -> Iterator[None]:
    """rcParams context: `BASE_STYLE` updated with `style` (e.g. the config's plot style)."""
    with mpl.rc_context({**BASE_STYLE, **(style or {})}):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure (no global state, nothing to close) of `width` x `height` inches."""
    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, paths: Iterable[str | Path]) -> None:
    """Write `fig` to each path (format from the suffix: .png, .pdf) through a temporary sibling, then rename."""
    for path in map(Path, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), bbox_inches="tight", pad_inches=0.03)


# ---------------------------------------------------------------- checkpoints

def order_models(models: Iterable[str]) -> list[str]:
    """Distinct models: other models first in their given order, then lab checkpoints by strategy (in order of first
    appearance) and step."""
    parsed = [parse_model(m) for m in dict.fromkeys(models)]
    strategies = list(dict.fromkeys(c.strategy for c in parsed if c.step is not None))
    lab = sorted((c for c in parsed if c.step is not None), key=lambda c: (strategies.index(c.strategy), c.step))
    return [c.model for c in parsed if c.step is None] + [c.model for c in lab]


def step_shades(color: str, n: int) -> list[tuple[float, float, float]]:
    """`n` shades of `color` for the steps of one strategy, earliest lightest (up to 55% white), last unchanged."""
    light = np.linspace(0.55, 0, n) if n > 1 else [0.0]
    return [tuple(c + (1 - c) * a for c in to_rgb(color)) for a in light]


def strategy_colors(strategies: Iterable[str]) -> dict[str, str]:
    """One series colour per distinct strategy (or model), in order."""
    return {s: SERIES_COLORS[k % len(SERIES_COLORS)] for k, s in enumerate(dict.fromkeys(strategies))}


def strategy_markers(strategies: Iterable[str]) -> dict[str, str]:
    """One marker per distinct strategy (or model), in order."""
    return {s: MARKERS[k % len(MARKERS)] for k, s in enumerate(dict.fromkeys(strategies))}


def model_styles(models: Iterable[str]) -> dict[str, dict]:
    """Line kwargs per model, in `order_models` order: colour and marker per strategy; within a strategy later steps
    are darker and each step rank has its own linestyle."""
    ordered = [parse_model(m) for m in order_models(models)]
    colors = strategy_colors(c.strategy for c in ordered)
    markers = strategy_markers(c.strategy for c in ordered)
    styles = {}
    for strategy in colors:
        group = [c for c in ordered if c.strategy == strategy]
        for rank, (c, shade) in enumerate(zip(group, step_shades(colors[strategy], len(group)))):
            styles[c.model] = {"color": shade, "marker": markers[strategy],
                               "linestyle": LINESTYLES[rank % len(LINESTYLES)], "label": c.model}
    return styles


# ---------------------------------------------------------------- shared pieces


def stars(p: float) -> str:
    """McNemar significance stars: * p<0.05, ** p<0.01, *** p<0.001; empty otherwise (or NaN)."""
    return next((s for cut, s in ((0.001, "***"), (0.01, "**"), (0.05, "*")) if p < cut), "")


def figure_legend(fig: Figure, handles: Sequence | None = None, where: str = "auto") -> None:
    """A legend outside the axes of `handles` (labelled artists; default: those of the first axes that has any).

    where: "right" (one column), "top" or "bottom" (as many columns as fit the figure's width, at most four on top;
    the figure grows by the legend's height) or "auto" (right up to 12 entries, else bottom)."""
    if handles is None:
        handles = next(h for h in (ax.get_legend_handles_labels()[0] for ax in fig.axes) if h)
    labels = [h.get_label() for h in handles]
    if where == "auto":
        where = "right" if len(handles) <= 12 else "bottom"
    if where == "right":
        fig.legend(handles, labels, loc="outside right upper")
        return
    column_in = 0.6 + 0.06 * max(map(len, labels)) * mpl.rcParams["font.size"] / 10  # handle + text, inches
    ncols = max(1, min(len(handles), 4 if where == "top" else len(handles), int(fig.get_figwidth() / column_in)))
    fig.set_figheight(fig.get_figheight() + 0.2 * math.ceil(len(handles) / ncols))
    fig.legend(handles, labels, loc=f"outside {'upper' if where == 'top' else 'lower'} center", ncols=ncols)


def category_axis(ax: Axes, labels: Sequence[str]) -> None:
    """Categories (models) at x = 0, 1, ...: tick labels slanted when level ones would not fit the figure's width."""
    ax.set_xticks(np.arange(len(labels)), labels)
    char_in = 0.06 * mpl.rcParams["font.size"] / 10
    if len(labels) * (0.15 + char_in * max(map(len, labels))) > 0.8 * ax.figure.get_figwidth():
        ax.tick_params(axis="x", labelrotation=35)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
            t.set_rotation_mode("anchor")
    ax.set_xlim(-0.6, len(labels) - 0.4)


def series_style(k: int) -> dict:
    """Bar colour and hatch of the k-th series."""
    return {"color": SERIES_COLORS[k % len(SERIES_COLORS)], "hatch": HATCHES[k % len(HATCHES)]}


def grouped_bars(ax: Axes, groups: Sequence[str], series: Sequence[tuple[str, np.ndarray, dict]],
                 yerr: Sequence[np.ndarray | None] | None = None) -> list[BarContainer]:
    """Bars for `series` (label, one value per group, bar kwargs such as `series_style(k)`) side by side within each
    group; NaN values get no bar. `yerr`: per series None or a `[2, n_groups]` array of lower and upper error
    lengths. Returns one container per series (its bars in group order, NaN groups skipped)."""
    width = 0.8 / len(series)
    containers = []
    for k, (label, values, kwargs) in enumerate(series):
        present = ~np.isnan(values)
        x = np.arange(len(groups))[present] + (k - (len(series) - 1) / 2) * width
        err = None if yerr is None or yerr[k] is None else yerr[k][:, present]
        containers.append(ax.bar(
            x, values[present], width, yerr=err, label=label, edgecolor="white", linewidth=0.4,
            error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "black"}, **kwargs))
    category_axis(ax, groups)
    return containers


def bar_width(n_groups: int, per_group: int) -> float:
    """Figure width that gives each bar about 0.12 in, between one and two columns."""
    return float(np.clip(1.4 + 0.12 * n_groups * (per_group + 0.5), SINGLE_COLUMN, DOUBLE_COLUMN))
