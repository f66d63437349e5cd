"""modgap.plots on small seeded synthetic tables that follow the stage contracts: each figure's artists, the
bootstrap bands, the style context and the atomic save."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from modgap import plots  # noqa: E402
from modgap.checkpoints import parse_model  # noqa: E402
from modgap.plots.style import order_models, stars  # noqa: E402

STRATEGIES, STEPS = ["frozen", "full"], [50, 100, 200, 400]
LAB = [f"lab-{s}@step{n}" for s in STRATEGIES for n in STEPS]
LAYERS = range(5)
CONFIGS = ["base2-cos-bandnone", "base1-cos-bandnone", "base2-l2-bandnone"]


def accuracy_table(models=LAB, base=True, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    text = rng.uniform(0.85, 0.95, len(models)).round(3)
    speech = rng.uniform(0.2, 0.5, len(models)).round(3)
    table = pd.DataFrame({"model": models, "dataset": "lab", "voice": "en-us+f3", "text_acc": text,
                          "speech_acc": speech, "gap": (100 * (text - speech)).round(1), "n_items": 200})
    if base:
        table["base_text_acc"] = np.where(np.arange(len(models)) == 0, np.nan, 0.96)
    return table


def items_table(models=LAB, n_items=30, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for k, model in enumerate(models):
        for i in range(n_items):
            correct = rng.integers(0, 2, 2)
            for layer in LAYERS:
                u = rng.uniform(size=8)
                rows.append({"model": model, "id": f"q{i:03d}", "subject": "s", "layer": layer,
                             "cos": 0.2 + 0.1 * layer + 0.05 * k + 0.1 * u[0], "l2": 1 + layer ** 1.5 + u[1],
                             "aps_cos": 0.3 + 0.1 * u[2], "aps_l2": 2 + u[3], "mono_cos": u[4], "mono_l2": u[5],
                             "consistency": u[6], "norm_S": 5.0, "norm_T": 4.0, "gt_hit_argmax": u[7] * layer / 4,
                             "gt_miss_ms_argmax": 80 * u[0], "gt_hit_dtw": 0.5 + 0.1 * u[2],
                             "gt_miss_ms_dtw": 40 * u[1], "std_l2": u[3], "correct_S": correct[0],
                             "correct_T": correct[1], "n_S": 60, "n_T": 12,
                             "gt_hit_proportional": 0.6 + 0.001 * i, "gt_hit_random_expected": 0.1 + 0.001 * i,
                             "sync_dtw": np.nan if layer == 0 else 0.8 + 0.1 * u[0],
                             "sync_truth": np.nan if layer == 0 else 0.7 + 0.1 * u[1],
                             "sync_shuffled": np.nan if layer == 0 else 0.1 * u[2]})
    return pd.DataFrame(rows)


def base_layer_tables(models=LAB, default=2) -> dict[str, pd.DataFrame]:
    layers = np.array(LAYERS)
    return {m: pd.DataFrame({"base_layer": layers, "default": layers == default,
                             "path_agreement": 1 - 0.1 * k * np.abs(layers - default), "path_agreement_sd": 0.05,
                             "best_match_agreement": 1 - 0.05 * np.abs(layers - default), "n_items": 20})
            for k, m in enumerate(models)}


def points_table(models=LAB, seed=0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    parsed = [parse_model(m) for m in models]
    points = pd.DataFrame({"model": models, "strategy": [c.strategy for c in parsed],
                           "step": [c.step for c in parsed], "n_items": 200, "text_acc": 0.94,
                           "speech_acc": rng.uniform(0.2, 0.5, len(models))})
    points["gap"] = 100 * (points["text_acc"] - points["speech_acc"])
    for metric in ("cos", "l2", "aps_cos", "aps_l2"):
        points[metric] = rng.uniform(0, 1, len(models))
    fits = pd.DataFrame([{"strategy": s, "x": metric, "slope": -10.0, "intercept": 70.0, "r2": 0.5, "r2_ci_lo": 0.2,
                          "r2_ci_hi": 0.8, "r2_ci_source": "checkpoints", "pearson_r": -0.7, "spearman_rho": -0.6,
                          "n_checkpoints": 4,
                          "n_items": 200} for s in [*STRATEGIES, "all"] for metric in ("cos", "l2", "aps_cos",
                                                                                          "aps_l2")])
    return points, fits


def heatmap_arrays(tt=12, seed=0) -> dict:
    """Text tokens over 9 words (the last word has two tokens, one token has no word); 40 ms speech positions."""
    rng = np.random.default_rng(seed)
    text_words = np.r_[np.arange(tt - 3), -1, tt - 3, tt - 3]
    reps = rng.integers(3, 7, tt - 2)
    ends = np.cumsum(reps) * 40.0
    word_spans = np.stack([np.r_[0.0, ends[:-1]], ends], axis=1)
    ts = int(reps.sum()) + 4
    speech_ms = np.stack([np.arange(ts) * 40.0, np.arange(1, ts + 1) * 40.0], axis=1)
    sim = rng.uniform(-0.2, 0.6, (ts, tt))
    argmax_path = sim.argmax(axis=0)
    k = np.linspace(0, 1, ts + tt)
    dtw_path = np.stack([np.round(k * (ts - 1)), np.round(k * (tt - 1))], axis=1).astype(int)
    return {"sim": sim, "argmax_path": argmax_path, "dtw_path": dtw_path, "speech_ms": speech_ms,
            "text_words": text_words, "words": [f"word{w}" for w in range(tt - 2)], "word_spans_ms": word_spans}


def cka_tables(n_layers=5, seed=0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, readouts = [], []
    for config in CONFIGS:
        for estimator in ("biased", "unbiased"):
            s, t = np.meshgrid(range(n_layers), range(n_layers), indexing="ij")
            m = np.clip(np.exp(-0.3 * (s - t) ** 2) * (0.5 + 0.1 * s) + 0.05 * rng.uniform(size=s.shape), 0, 1)
            rows += [{"config": config, "base_layer": 2, "metric": "cos", "band": -1, "estimator": estimator,
                      "speech_layer": a, "text_layer": b, "cka": m[a, b], "cka_excess": m[a, b] - 0.1 * b}
                     for a in range(n_layers) for b in range(n_layers)]
            excess = m - 0.1 * t
            readouts += [{"config": config, "estimator": estimator, "speech_layer": a,
                          "best_text_layer": int(m[a].argmax()), "band_width": int((m[a] >= 0.95 * m[a].max()).sum()),
                          "best_text_layer_excess": int(excess[a].argmax()), "best_agreement": 0.5 + 0.1 * a,
                          "tau": 0.95} for a in range(n_layers)]
    return pd.DataFrame(rows), pd.DataFrame(readouts)


def condition_tables(models=LAB[:3]) -> tuple[pd.DataFrame, pd.DataFrame]:
    names = ["speech", "text", "angle-bottom3@L0", "angle-all@L0", "length-bottom3@L0", "length-all@L0",
             "calib-input", "calib-output", "redundancy-r2"]
    p_values = [1.0, 1.0, 0.03, 0.2, 0.004, 0.0004, 0.0001, 0.5, 0.01]
    rows = []
    for k, model in enumerate(models):
        for j, (name, p) in enumerate(zip(names, p_values)):
            delta = 0.0 if name in ("speech", "text") else (-1) ** j * (j + k) * 0.8
            rows.append({"model": model, "condition": name, "op": name.split("-")[0], "select": "", "layer": 0,
                         "accuracy": 0.4 + delta / 100, "delta": delta, "ci_lo": delta - 2, "ci_hi": delta + 2,
                         "mcnemar_p": p, "fixed": 5, "broken": 3, "n_items": 200,
                         "kind": "edit" if "@" in name else "other", "control": "path" if "@" in name else "none"})
    conditions = pd.DataFrame(rows)
    redundancy = pd.DataFrame([{"model": m, "r": r, "accuracy": 0.9 - 0.05 * np.log2(r) - 0.01 * k, "n_items": 200}
                               for k, m in enumerate(models) for r in (1, 2, 4, 8)])
    return conditions, redundancy


def figure_texts(fig: Figure, gid: str) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_gid() == gid]


def gid_artists(fig: Figure, gid: str) -> list:
    return [a for a in fig.findobj() if a.get_gid() == gid]


def all_figures() -> dict[str, Figure]:
    """One of each figure on the synthetic tables (for the font and saving checks)."""
    items = items_table(n_items=12)
    points, fits = points_table()
    cka, readouts = cka_tables()
    conditions, redundancy = condition_tables()
    return {
        "accuracy": plots.accuracy_bars(accuracy_table()),
        "layers": plots.layer_curves(items, n_boot=50),
        "gap": plots.gap_scatter(points, fits),
        "distributions": plots.item_distributions(items),
        "heatmap": plots.similarity_heatmap(**heatmap_arrays(), title="q001, layer 2"),
        "paths": plots.path_stats(items, n_boot=50),
        "cka": plots.cka_heatmap(cka, readouts, CONFIGS[0]),
        "cka_grid": plots.cka_small_multiples(cka, readouts),
        "interventions": plots.intervention_bars(conditions),
        "edit_layers": plots.edit_layer_curves(conditions),
        "calibration": plots.calibration_bars(conditions),
        "redundancy": plots.redundancy_curve(redundancy),
        "synchrony": plots.synchrony_curves(items, n_boot=50),
        "base_layers": plots.base_layer_agreement(base_layer_tables()),
    }


# ---------------------------------------------------------------- shared helpers


def test_model_order_and_stars():
    shuffled = ["lab-full@step400", "qwen", "lab-frozen@step100", "lab-full@step50", "lab-frozen@step50"]
    assert order_models(shuffled) == ["qwen", "lab-full@step50", "lab-full@step400", "lab-frozen@step50",
                                      "lab-frozen@step100"]
    assert parse_model("lab-frozen@step50").step == 50 and parse_model("qwen").step is None
    assert [stars(p) for p in (0.0005, 0.005, 0.03, 0.05, 0.5, np.nan)] == ["***", "**", "*", "", "", ""]


def test_bootstrap_band_deterministic_and_contains_mean():
    values = np.random.default_rng(1).normal(size=(40, 5))
    values[3, 2] = np.nan
    a, b = plots.bootstrap_band(values, n_boot=500, seed=7), plots.bootstrap_band(values, n_boot=500, seed=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    mean, lo, hi = a
    np.testing.assert_allclose(mean, np.nanmean(values, axis=0))
    assert np.all(lo < mean) and np.all(mean < hi)
    assert not np.array_equal(plots.bootstrap_band(values, n_boot=500, seed=8)[1], lo)


def test_save_writes_png_and_pdf_atomically(tmp_path):
    fig = plots.redundancy_curve(condition_tables()[1])
    paths = [tmp_path / "figs" / "r.png", tmp_path / "figs" / "r.pdf"]
    plots.save(fig, paths)
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["r.pdf", "r.png"]


def test_style_dict_takes_effect():
    conditions = condition_tables()[0]
    default = plots.calibration_bars(conditions).axes[0].yaxis.label.get_fontsize()
    big = plots.calibration_bars(conditions, style={"font.size": 13}).axes[0].yaxis.label.get_fontsize()
    assert default == 10 and big == 13


def test_every_figure_readable_fonts():
    """No text under 8 pt at the saved size, and nothing drawn outside a figure that fits a page."""
    for name, fig in all_figures().items():
        fig.canvas.draw()
        sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
        assert min(sizes) >= 8, name
        assert fig.get_figwidth() <= 7.2 + 1e-9, name


# ---------------------------------------------------------------- figures


@pytest.mark.parametrize("base", [True, False])
def test_accuracy_bars(base):
    table = accuracy_table(models=["qwen2-audio", *LAB], base=base)
    ax = plots.accuracy_bars(table).axes[0]
    n_base = int(table["base_text_acc"].notna().sum()) if base else 0
    assert len(ax.patches) == 2 * len(table) + n_base
    assert figure_texts(ax.figure, "gap") == [f"{g:.1f}" for g in table.set_index("model").loc[
        order_models(table["model"]), "gap"]]
    assert [t.get_text() for t in ax.get_xticklabels()] == order_models(table["model"])


def test_accuracy_bars_one_model_per_panel():
    table = pd.concat([accuracy_table(["qwen"], base=False), accuracy_table(["qwen"], base=False).assign(
        dataset="bbh")])
    fig = plots.accuracy_bars(table)
    assert len(fig.axes) == 2 and all(len(ax.patches) == 2 for ax in fig.axes)


def test_layer_curves():
    items = items_table(n_items=10)
    fig = plots.layer_curves(items, n_boot=50)
    cos_ax, l2_ax = fig.axes
    assert len(cos_ax.get_lines()) == len(LAB) and len(gid_artists(fig, "band")) == 2 * len(LAB)
    first = cos_ax.get_lines()[0]
    assert first.get_label() == "lab-frozen@step50"
    np.testing.assert_allclose(first.get_ydata(), items[items["model"] == "lab-frozen@step50"].groupby("layer")[
        "cos"].mean())
    assert first.get_color() != cos_ax.get_lines()[1].get_color()  # lighter early step


def test_gap_scatter():
    points, fits = points_table()
    fig = plots.gap_scatter(points, fits)
    assert len(fig.axes) == 4
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in gid_artists(ax, "checkpoint")) == len(LAB)
    assert len(gid_artists(ax, "fit")) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"{s}: R²=0.50 [0.20, 0.80]" for s in [*STRATEGIES, "all"]]


def test_item_distributions():
    items = items_table(n_items=20)
    fig = plots.item_distributions(items, "aps_cos")
    means = items[items["layer"] >= 1].groupby(["model", "id"])[["correct_S"]].mean()
    n_groups = sum(means.loc[m, "correct_S"].nunique() for m in LAB)
    assert len(gid_artists(fig, "wrong")) + len(gid_artists(fig, "correct")) == n_groups


def test_similarity_heatmap():
    arrays = heatmap_arrays()
    fig = plots.similarity_heatmap(**arrays, title="q001, layer 2")
    ax = fig.axes[0]
    assert ax.get_images()[0].get_array().shape == arrays["sim"].shape
    (argmax,), (dtw,) = gid_artists(ax, "argmax"), gid_artists(ax, "dtw")
    assert len(argmax.get_xdata()) == arrays["sim"].shape[1] and len(dtw.get_xdata()) == len(arrays["dtw_path"])
    np.testing.assert_array_equal(argmax.get_ydata(), arrays["argmax_path"])
    truth = [p for p in ax.patches if p.get_gid() == "truth"] or gid_artists(ax, "truth")[0].patches
    assert len(truth) == int((arrays["text_words"] >= 0).sum())  # every token with a word has speech inside it
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:2] == ["word0", "word1"] and labels[-3:] == ["·", "word9", ""]


def test_path_stats():
    items = items_table(n_items=10)
    fig = plots.path_stats(items, n_boot=50)
    stats = fig.axes[0]
    assert [c.get_label() for c in stats.containers] == ["Monotonicity (cos)", "Monotonicity (L2)", "Consistency"]
    assert all(len(c.lines[0].get_xdata()) == len(LAB) for c in stats.containers)
    assert sum(len(ax.get_lines()) == len(LAB) + 2 for ax in fig.axes) == 2  # + the two baselines
    for ax in fig.axes[1:3]:  # the proportional and random paths' mean hit rates, as horizontal lines
        (prop,) = gid_artists(ax, "gt_hit_proportional")
        assert prop.get_ydata()[0] == pytest.approx(0.6 + 0.001 * 4.5)  # mean over the 10 items
        assert len(gid_artists(ax, "gt_hit_random_expected")) == 1


def test_cka_heatmap():
    cka, readouts = cka_tables()
    fig = plots.cka_heatmap(cka, readouts, CONFIGS[1], "unbiased")
    ax = fig.axes[0]
    image = ax.get_images()[0]
    assert image.get_array().shape == (5, 5) and image.get_clim() == (0, 1)
    rows = readouts[(readouts["config"] == CONFIGS[1]) & (readouts["estimator"] == "unbiased")]
    (best,) = gid_artists(ax, "best")
    np.testing.assert_array_equal(best.get_xdata(), rows["best_text_layer"])
    band_cells = sum(p.get_width() for p in gid_artists(ax, "band"))
    assert band_cells == rows["band_width"].sum()
    null = fig.axes[1]  # panel b: CKA minus the null mean, with its own best matches
    (best_excess,) = gid_artists(null, "best")
    np.testing.assert_array_equal(best_excess.get_xdata(), rows["best_text_layer_excess"])
    assert "50%–90%" in null.get_title(loc="left")


def test_cka_small_multiples():
    cka, readouts = cka_tables()
    fig = plots.cka_small_multiples(cka, readouts, "biased")
    assert sum(len(ax.get_images()) for ax in fig.axes) == len(CONFIGS)
    assert [ax.get_title(loc="left") for ax in fig.axes if ax.get_images()] == CONFIGS


def test_intervention_bars_and_stars():
    conditions, _ = condition_tables()
    fig = plots.intervention_bars(conditions)
    edits = ["angle-bottom3@L0", "angle-all@L0", "length-bottom3@L0", "length-all@L0"]
    ax = fig.axes[0]
    assert [c.get_label() for c in ax.containers if hasattr(c, "patches")] == edits
    assert len(ax.patches) == 3 * len(edits)
    p = conditions.set_index("condition").loc[edits, "mcnemar_p"]
    assert sorted(figure_texts(fig, "stars")) == sorted(stars(v) for v in p if v < 0.05)


def test_calibration_bars():
    conditions, _ = condition_tables()
    fig = plots.calibration_bars(conditions)
    assert len(fig.axes[0].patches) == 3 * 4
    assert sorted(figure_texts(fig, "stars")) == ["***"] * 3  # calib-input p=1e-4, calib-output p=0.5


def test_redundancy_curve():
    _, redundancy = condition_tables()
    fig = plots.redundancy_curve(redundancy)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3 and ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8"]


def test_synchrony_curves():
    items = items_table(n_items=10)
    fig = plots.synchrony_curves(items, n_boot=50)
    dtw_ax, truth_ax = fig.axes
    first = items[items["model"] == "lab-frozen@step50"].groupby("layer")
    means = [line.get_ydata() for line in dtw_ax.get_lines() if len(line.get_ydata()) == len(LAYERS) - 1]
    np.testing.assert_allclose(means[0], first["sync_dtw"].mean().iloc[1:])  # the first model's line, then the others'
    shuffled = [y for y in means if np.allclose(y, first["sync_shuffled"].mean().iloc[1:])]
    assert len(shuffled) == 1 and [t.get_title() for t in fig.axes] == ["DTW pairs", "True-word pairs"]


def test_base_layer_agreement():
    tables = base_layer_tables()
    fig = plots.base_layer_agreement(tables)
    path_ax, best_ax = fig.axes
    lines = [line for line in path_ax.get_lines() if line.get_label() in tables]
    assert [line.get_label() for line in lines] == list(plots.style.order_models(tables))
    for line in lines:
        np.testing.assert_allclose(line.get_ydata(), tables[line.get_label()]["path_agreement"])
    defaults = gid_artists(fig, "default")
    assert len(defaults) == 2 * len(tables) and all(a.get_xdata()[0] == 2 for a in defaults)
