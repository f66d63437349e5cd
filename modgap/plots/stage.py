"""Plot stage drivers: read the cached tables (never a store, never a model), draw, save PNG and PDF.

Each driver writes one figure family; `out` is a path stem, saved as `<out>.png` and `<out>.pdf`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import (accuracy_bars, attention_dispersion, attention_rows_figure, base_layer_agreement, calibration_bars,
               cka_heatmap, cka_small_multiples, decomposition_lines, edit_layer_curves, gap_scatter, intervention_bars,
               item_distributions, layer_curves, lens_strata_curves, path_stats, probe_curves, redundancy_curve,
               redundancy_entropy_curves, save, similarity_heatmap, synchrony_curves, transcript_curves)

FORMATS = ("png", "pdf")


def _save(fig, out: str | Path) -> None:
    save(fig, [f"{out}.{ext}" for ext in FORMATS])


def metric_items(tables: Mapping[str, str | Path]) -> pd.DataFrame:
    """Every model's metrics items table (one row per item and layer) with a `model` column."""
    return pd.concat([pd.read_parquet(p).assign(model=m) for m, p in tables.items()], ignore_index=True)


def plot_accuracy(accuracy_csv: str | Path, out: str | Path, style: dict) -> None:
    _save(accuracy_bars(pd.read_csv(accuracy_csv), style=style), out)


def plot_metrics(tables: Mapping[str, str | Path], out: Mapping[str, str | Path], options: dict, first_layer: int
                 ) -> None:
    """Layer curves, path statistics, per-item distributions and update synchrony (`out` keys layers, paths,
    items_cos, items_aps, synchrony)."""
    items = metric_items(tables)
    boot, seed, style = options["bootstrap"], options["seed"], options["style"]
    _save(layer_curves(items, n_boot=boot, seed=seed, style=style), out["layers"])
    _save(synchrony_curves(items, n_boot=boot, seed=seed, style=style), out["synchrony"])
    _save(path_stats(items, first_layer=first_layer, n_boot=boot, seed=seed, style=style), out["paths"])
    for key, metric in (("items_cos", "cos"), ("items_aps", "aps_cos")):
        _save(item_distributions(items, metric, first_layer=first_layer, seed=seed, style=style), out[key])


def plot_probes(tables: Sequence[str | Path], out: Mapping[str, str | Path], style: dict) -> None:
    """Probe accuracy per layer on all items (`out` key all) and on the items text gets right and speech gets wrong
    (key flipped), from every model's probes table."""
    table = pd.concat([pd.read_csv(p) for p in tables], ignore_index=True)
    _save(probe_curves(table, "all", style=style), out["all"])
    _save(probe_curves(table, "text_right_speech_wrong", style=style), out["flipped"])


def plot_attention(tables: Mapping[str, str | Path], out: str | Path, options: dict) -> None:
    """The decision position's attention dispersion per layer, S vs T (the states readout `attention`)."""
    _save(attention_dispersion(metric_items(tables), n_boot=options["bootstrap"], seed=options["seed"],
                               style=options["style"]), out)


def plot_attention_rows(npz: str | Path, model: str, out: str | Path, style: dict) -> None:
    """The heatmap items' decision attention rows of one model (a `modgap.metrics.attention_rows` file)."""
    _save(attention_rows_figure(np.load(npz), title=model, style=style), out)


def plot_base_layers(tables: Mapping[str, str | Path], out: str | Path, style: dict) -> None:
    """Every model's DTW base-layer agreement (`tables`: model -> its base_layers.csv)."""
    _save(base_layer_agreement({m: pd.read_csv(p) for m, p in tables.items()}, style=style), out)


def plot_gap(points_csv: str | Path, fits_csv: str | Path, decomposition_csv: str | Path,
             out: Mapping[str, str | Path], style: dict) -> None:
    """GAP vs each metric with the fits (`out` key scatter) and P1's decomposition over steps (key decomposition)."""
    fits = pd.read_csv(fits_csv).rename(columns={"group": "strategy"})
    _save(gap_scatter(pd.read_csv(points_csv), fits, style=style), out["scatter"])
    _save(decomposition_lines(pd.read_csv(decomposition_csv), style=style), out["decomposition"])


def plot_cka(cka_parquet: str | Path, readouts_csv: str | Path, out: Mapping[str, str | Path], style: dict) -> None:
    """The default configuration's matrix (biased and unbiased) and the stability small multiples (biased)."""
    cka, readouts = pd.read_parquet(cka_parquet), pd.read_csv(readouts_csv)
    default = cka.attrs["modgap"]["dtw_configs"][0]["label"]
    for estimator in ("biased", "unbiased"):
        _save(cka_heatmap(cka, readouts, default, estimator, style=style), out[estimator])
    _save(cka_small_multiples(cka, readouts, "biased", style=style), out["grid"])


def plot_heatmaps(npz: str | Path, model: str, layers: Sequence[int], outs: Sequence[str | Path], style: dict) -> None:
    """One heatmap per chosen item and layer (`layers` as configured) of a `modgap.metrics.heatmap` file, in
    `modgap.paths.heatmap_stems` order."""
    data = np.load(npz)
    ids, drawn = [str(i) for i in data["ids"]], [int(x) for x in data["layers"]]
    if len(drawn) != len(layers):
        raise ValueError(f"{npz}: holds layers {drawn}, expected {len(layers)} ({list(layers)})")
    for out, (item, at) in zip(outs, [(i, x) for i in ids for x in drawn], strict=True):
        key = f"{item}/L{at}"
        fig = similarity_heatmap(
            data[f"{key}/sim"], data[f"{key}/argmax_path"], data[f"{key}/dtw_path"], data[f"{item}/speech_ms"],
            data[f"{item}/text_words"], [str(w) for w in data[f"{item}/words"]], data[f"{item}/word_spans_ms"],
            title=f"{model} · {item} · layer {at}", style=style)
        _save(fig, out)


def plot_interventions(conditions_csv: str | Path, redundancy_csv: str | Path, out: Mapping[str, str | Path],
                       style: dict) -> None:
    """Edit deltas, the layer sweep of the edits and their controls, calibration and the redundancy curve (the
    redundancy table holds percent; figures take fractions)."""
    conditions = pd.read_csv(conditions_csv)
    redundancy = pd.read_csv(redundancy_csv)
    _save(intervention_bars(conditions, style=style), out["edits"])
    _save(edit_layer_curves(conditions, style=style), out["edit_layers"])
    _save(calibration_bars(conditions, style=style), out["calibration"])
    _save(redundancy_curve(redundancy.assign(accuracy=redundancy["accuracy"] / 100), style=style), out["redundancy"])


def plot_lens_strata(tables: Mapping[str, str | Path], out: str | Path, style: dict) -> None:
    """Lens margin and entropy by outcome stratum, one row per model (`tables`: model -> lens_strata.csv)."""
    _save(lens_strata_curves({m: pd.read_csv(p) for m, p in tables.items()}, style=style), out)


def plot_transcript(tables: Mapping[str, str | Path], out: str | Path, style: dict) -> None:
    """Implicit transcription per layer beside its wrong-word control (`tables`: model -> transcript.csv)."""
    _save(transcript_curves({m: pd.read_csv(p) for m, p in tables.items()}, style=style), out)


def plot_redundancy_lens(lens_csv: str | Path, out: str | Path, style: dict) -> None:
    """Decision entropy vs layer under text redundancy (the interventions' redundancy_lens table)."""
    _save(redundancy_entropy_curves(pd.read_csv(lens_csv), style=style), out)
