"""Cross-layer CKA between aligned speech and text tokens, with the best-match layer and the band (P2 Figs. 2, 3)."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from .style import DOUBLE_COLUMN, SEQUENTIAL_CMAP, SINGLE_COLUMN, figure_legend, new_figure, styled



def legend_handles() -> list:
    """Legend entries for the best-match star and the band outline."""
    return [Line2D([], [], linestyle="none", marker="*", markersize=8, markerfacecolor="white",
                   markeredgecolor="black", label="Best-match text layer"),
            Patch(facecolor="none", edgecolor="black", label="Band: CKA ≥ τ · row max")]


def cka_matrix(cka: pd.DataFrame, config: str, estimator: str, value: str = "cka") -> pd.DataFrame:
    """The `[speech_layer, text_layer]` matrix of `value` ("cka", or "cka_excess": CKA minus its permutation
    null's mean) of one config and estimator.

    cka: columns config, estimator, speech_layer, text_layer and `value`."""
    rows = cka[(cka["config"] == config) & (cka["estimator"] == estimator)]
    if rows.empty:
        raise KeyError(f"no CKA rows for config {config!r}, estimator {estimator!r}")
    return rows.pivot(index="speech_layer", columns="text_layer", values=value).sort_index().sort_index(axis=1)


def band_runs(matrix: np.ndarray, tau: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of band cells (`cka >= tau * row max`, per row's tau) as `(row, first column, last column)`."""
    band = matrix >= tau[:, None] * np.nanmax(matrix, axis=1, keepdims=True)
    edges = np.diff(np.pad(band.astype(int), ((0, 0), (1, 1))), axis=1)
    return [(r, s, e - 1) for r in range(len(band))
            for s, e in zip(np.flatnonzero(edges[r] == 1), np.flatnonzero(edges[r] == -1))]


def draw_cka(ax: Axes, cka: pd.DataFrame, readouts: pd.DataFrame, config: str, estimator: str,
             value: str = "cka") -> AxesImage:
    """One CKA matrix on `ax` (fixed 0-1 scale), the best-match text layer per speech layer as a star (gid "best")
    and each row's band outlined in black (gid "band", one box per run of band cells); with `value` "cka_excess"
    the null-corrected matrix and its own best matches.

    cka: as `cka_matrix`; readouts: columns config, estimator, speech_layer, best_text_layer(_excess), tau."""
    table = cka_matrix(cka, config, estimator, value)
    speech, text = table.index.to_numpy(), table.columns.to_numpy()
    image = ax.imshow(table.to_numpy(), origin="lower", vmin=0, vmax=1, cmap=SEQUENTIAL_CMAP,
                      interpolation="nearest", extent=(text[0] - 0.5, text[-1] + 0.5, speech[0] - 0.5,
                                                       speech[-1] + 0.5))
    rows = readouts[(readouts["config"] == config) & (readouts["estimator"] == estimator)]
    rows = rows.set_index("speech_layer").reindex(speech)
    small = len(speech) > 12  # thinner marks on small cells
    for r, first, last in band_runs(table.to_numpy(), rows["tau"].to_numpy(float)):
        ax.add_patch(Rectangle((text[first] - 0.5, speech[r] - 0.5), last - first + 1, 1, facecolor="none",
                               edgecolor="black", linewidth=0.6 if small else 1.0, clip_on=False, gid="band"))
    best = rows["best_text_layer_excess" if value == "cka_excess" else "best_text_layer"].dropna()
    ax.plot(best.to_numpy(), best.index.to_numpy(), linestyle="none", marker="*", markersize=5 if small else 8,
            markerfacecolor="white", markeredgecolor="black", markeredgewidth=0.5, clip_on=False, gid="best")
    ticks = max(1, math.ceil(len(text) / 9))
    ax.set_xticks(text[::ticks])
    ax.set_yticks(speech[::ticks])
    ax.set_xlabel("Text layer")
    ax.set_ylabel("Speech layer")
    return image


def cka_heatmap(cka: pd.DataFrame, readouts: pd.DataFrame, config: str, estimator: str = "biased",
                style: Mapping | None = None) -> Figure:
    """(a) Speech layer x text layer linear CKA of one config and estimator (viridis, fixed 0-1), with the best-match
    text layer per speech layer and the band (entries >= tau x row max) outlined; (b) the same minus its null.

    cka: columns config, base_layer, metric, band, estimator, speech_layer, text_layer, cka.
    readouts: columns config, estimator, speech_layer, best_text_layer, best_text_layer_excess, band_width, tau,
    and the bootstrap's best_agreement where it ran. Panel b shows CKA minus the mean of the permutation null
    (speech items paired with other items' text), on the same scale.
    """
    rows = readouts[(readouts["config"] == config) & (readouts["estimator"] == estimator)]
    tau = f" (τ = {rows['tau'].iloc[0]:g})" if len(rows) else ""
    agreement = rows["best_agreement"].dropna() if "best_agreement" in rows else pd.Series(dtype=float)
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN, SINGLE_COLUMN + 0.5)
        axes = fig.subplots(1, 2)
        image = draw_cka(axes[0], cka, readouts, config, estimator)
        axes[0].set_title(f"a  {config}, {estimator}{tau}", loc="left")
        draw_cka(axes[1], cka, readouts, config, estimator, "cka_excess")
        boot = f"; best match kept in {agreement.min():.0%}–{agreement.max():.0%}" if len(agreement) else ""
        axes[1].set_title(f"b  minus null mean{boot}", loc="left", fontsize="small")
        fig.colorbar(image, ax=axes.tolist(), label="Linear CKA", shrink=0.85, pad=0.08)
        figure_legend(fig, legend_handles(), where="top")
    return fig


def cka_small_multiples(cka: pd.DataFrame, readouts: pd.DataFrame, estimator: str = "biased",
                        style: Mapping | None = None) -> Figure:
    """`cka_heatmap` for every config of one estimator (config order as in `cka`), three per row, one colour bar.

    cka, readouts: as `cka_heatmap`."""
    configs = list(dict.fromkeys(cka.loc[cka["estimator"] == estimator, "config"]))
    ncols = min(3, len(configs))
    nrows = math.ceil(len(configs) / ncols)
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN if ncols > 1 else SINGLE_COLUMN + 0.6, 0.7 + 2.4 * nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes[len(configs):]:
            ax.remove()
        for ax, config in zip(axes, configs):
            image = draw_cka(ax, cka, readouts, config, estimator)
            ax.set_title(config, loc="left")
        fig.colorbar(image, ax=axes[:len(configs)].tolist(), label=f"Linear CKA ({estimator})", shrink=0.85)
        figure_legend(fig, legend_handles(), where="top")
    return fig
