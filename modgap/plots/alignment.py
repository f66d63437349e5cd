"""Token-level alignment: one item's similarity matrix with its paths and true word spans (P1 Fig. 6 plus ground
truth), and path statistics per checkpoint (P1 Fig. 8 plus ground-truth hit rates)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .layers import METRIC_LABELS, bootstrap_band, draw_layer_curves, item_means
from .style import (DOUBLE_COLUMN, MARKERS, OKABE_ITO, SEQUENTIAL_CMAP, SERIES_COLORS, SINGLE_COLUMN, category_axis,
                    figure_legend, model_styles, new_figure, order_models, styled)

PATH_STATS = ["mono_cos", "mono_l2", "consistency"]


def token_labels(text_words: np.ndarray, words: Sequence[str]) -> list[str]:
    """Text-axis labels from the words: a word on its first token, "" on its later tokens, "·" without a word."""
    labels = []
    for j, w in enumerate(text_words):
        labels.append("·" if w < 0 else "" if j and text_words[j - 1] == w else words[w])
    return labels


def true_word_rows(speech_ms: np.ndarray, text_words: np.ndarray, word_spans_ms: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each text token whose word contains at least one speech position's centre: the token index and the
    first and last such position (`(tokens, first, last)`, each `[n]`)."""
    centres = speech_ms.mean(axis=1)
    spans = word_spans_ms[np.clip(text_words, 0, None)]
    inside = (centres[:, None] >= spans[:, 0]) & (centres[:, None] < spans[:, 1]) & (text_words >= 0)  # [Ts, Tt]
    tokens = np.flatnonzero(inside.any(axis=0))
    first = inside.argmax(axis=0)[tokens]
    last = len(centres) - 1 - inside[::-1].argmax(axis=0)[tokens]
    return tokens, first, last


def time_ticks(centres_ms: np.ndarray, max_ticks: int = 8) -> tuple[np.ndarray, list[str]]:
    """Positions (fractional speech indices) and labels of round times in seconds along the speech axis."""
    span_s = (centres_ms[-1] - centres_ms[0]) / 1000
    step = next((s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10) if span_s / s <= max_ticks), 20)
    times = np.arange(math.ceil(centres_ms[0] / 1000 / step), math.floor(centres_ms[-1] / 1000 / step) + 1) * step
    return np.interp(times * 1000, centres_ms, np.arange(len(centres_ms))), [f"{t:g}" for t in times]


def similarity_heatmap(sim: np.ndarray, argmax_path: np.ndarray, dtw_path: np.ndarray, speech_ms: np.ndarray,
                       text_words: np.ndarray, words: Sequence[str], word_spans_ms: np.ndarray, title: str = "",
                       tokens: Sequence[str] | None = None, value_label: str = "Cosine similarity",
                       style: Mapping | None = None) -> Figure:
    """One item's token similarity at one layer: speech positions (y, time in s) x text tokens (x), with the argmax
    path (open circles, gid "argmax"), the DTW path (squares on a line, gid "dtw") and, as white boxes (gid "truth"),
    the speech positions inside each token's true word.

    sim `[Ts, Tt]`; argmax_path `[Tt]` speech index per text token; dtw_path `[K, 2]` (speech, text) pairs;
    speech_ms `[Ts, 2]` time span of each speech position; text_words `[Tt]` word index per token (-1: none);
    words `[W]` word strings; word_spans_ms `[W, 2]` true word spans; tokens: optional token strings for the x axis
    (default: each word on its first token).
    """
    sim, speech_ms, text_words = np.asarray(sim), np.asarray(speech_ms, float), np.asarray(text_words)
    dtw_path = np.asarray(dtw_path)
    ts, tt = sim.shape
    with styled(style):
        fig = new_figure(float(np.clip(1.9 + 0.17 * tt, SINGLE_COLUMN, DOUBLE_COLUMN)),
                         float(np.clip(1.8 + 0.03 * ts, 3.0, 6.0)))
        ax = fig.subplots()
        image = ax.imshow(sim, origin="lower", aspect="auto", cmap=SEQUENTIAL_CMAP, interpolation="nearest")
        cols, first, last = true_word_rows(speech_ms, text_words, np.asarray(word_spans_ms, float))
        ax.bar(cols, last - first + 1, bottom=first - 0.5, width=1, facecolor=(1, 1, 1, 0.18), edgecolor="white",
               linewidth=1.0, gid="truth")
        dtw = ax.plot(dtw_path[:, 1], dtw_path[:, 0], color=OKABE_ITO["vermillion"], marker="s", markersize=3,
                      linewidth=1, label="DTW path", gid="dtw", clip_on=False)
        argmax = ax.plot(np.arange(tt), argmax_path, linestyle="none", marker="o", markerfacecolor="white",
                         markeredgecolor="black", markeredgewidth=0.8, markersize=5, label="Argmax path",
                         clip_on=False, gid="argmax")
        stride = math.ceil(tt / 48)
        labels = list(tokens) if tokens is not None else token_labels(text_words, words)
        ax.set_xticks(np.arange(0, tt, stride), labels[::stride], rotation=90)
        ax.set_yticks(*time_ticks(speech_ms.mean(axis=1)))
        ax.set_xlabel("Text token")
        ax.set_ylabel("Speech (s)")
        ax.set_title(title, loc="left")
        fig.colorbar(image, ax=ax, label=value_label, shrink=0.9)
        truth = Patch(facecolor="#DDDDDD", edgecolor="#555555", label="True word span")
        figure_legend(fig, [*argmax, *dtw, truth], where="top")
    return fig


BASELINES = {"gt_hit_proportional": ("Time-proportional path", "--"), "gt_hit_random_expected": ("Random path", ":")}


def draw_baselines(ax: Axes, items: pd.DataFrame) -> None:
    """The hit rates of the paths that read no states, as horizontal lines (item means)."""
    for column, (label, linestyle) in BASELINES.items():
        ax.axhline(items.groupby("id")[column].first().mean(), color="black", linestyle=linestyle, linewidth=1,
                   label=label, gid=column)


def path_stats(items: pd.DataFrame, first_layer: int = 1, n_boot: int = 1000, seed: int = 0,
               style: Mapping | None = None) -> Figure:
    """(a) Path monotonicity (cos, L2) and consistency per checkpoint: item means over layers >= `first_layer` with
    bootstrap 95% intervals. (b, c) Ground-truth hit rate of the argmax and the DTW path vs layer, one line per
    checkpoint with bootstrap bands.

    items: the concatenated metrics items tables, columns model, id, layer, mono_cos, mono_l2, consistency,
    gt_hit_argmax, gt_hit_dtw, correct_S, correct_T, and the baselines gt_hit_proportional, gt_hit_random_expected
    (drawn as horizontal lines: they read no states, so they are the same at every layer and checkpoint).
    """
    means = item_means(items, PATH_STATS, first_layer)
    models = order_models(means["model"])
    styles = model_styles(items["model"])
    with styled(style):
        fig = new_figure(DOUBLE_COLUMN, 5.2)
        axes = fig.subplot_mosaic([["stats", "stats"], ["argmax", "dtw"]])
        ax = axes["stats"]
        bands = [bootstrap_band(means.loc[means["model"] == m, PATH_STATS].to_numpy(), n_boot, seed)
                 for m in models]
        mean, lo, hi = (np.stack(b) for b in zip(*bands))  # each [n_models, 3]
        for k, column in enumerate(PATH_STATS):
            ax.errorbar(np.arange(len(models)) + (k - 1) * 0.2, mean[:, k], yerr=[mean[:, k] - lo[:, k],
                        hi[:, k] - mean[:, k]], linestyle="none", marker=MARKERS[k], color=SERIES_COLORS[k],
                        capsize=2, label=METRIC_LABELS[column])
        category_axis(ax, models)
        ax.set_ylabel(f"Item mean, layers ≥ {first_layer}")
        ax.set_title("a  Alignment path statistics", loc="left")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
        for key, title in (("argmax", "b  Argmax path"), ("dtw", "c  DTW path")):
            draw_layer_curves(axes[key], items, f"gt_hit_{key}", styles, n_boot, seed)
            draw_baselines(axes[key], items)
            axes[key].set_title(title, loc="left")
        axes["dtw"].sharey(axes["argmax"])
        figure_legend(fig, axes["argmax"].get_legend_handles_labels()[0], where="bottom")
    return fig
