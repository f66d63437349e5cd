"""Statistics on the right unit (modgap.stats.analysis): item-clustered logits, per-strategy checkpoint fits, the floor
of every permutation p, R² intervals over checkpoints or flagged item noise only, P1's decomposition, and the stage's
tables naming their cluster unit and floors."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from modgap.stats import analysis as stats
from modgap.stats.options import StatsOptions
from modgap.stats.stage import run_stats

N_ITEMS = 20
SLOPES = {"full": 50.0, "lora": -100.0}  # gap = 30 + slope * cos, planted per strategy
N_S = [4, 6, 8, 10, 12, 14]  # items speech gets right at each step: gap 80 .. 30 points


def recurring_items(n_items: int = 120, n_checkpoints: int = 6, beta: float = 0.8, item_sd: float = 2.5,
                    seed: int = 0) -> pd.DataFrame:
    """One row per (checkpoint, item): the metric is mostly a property of the item (items recur across checkpoints),
    outcomes share a strong item random effect, subjects differ in difficulty, checkpoints in skill. Log-odds:
    beta * z(metric) + item effect + subject + checkpoint."""
    rng = np.random.default_rng(seed)
    item_x, item_u = rng.normal(size=n_items), rng.normal(scale=item_sd, size=n_items)
    subject = rng.integers(0, 3, n_items)
    frames = []
    for c in range(n_checkpoints):
        frames.append(pd.DataFrame({"model": f"ckpt{c}", "id": [f"q{i}" for i in range(n_items)],
                                    "subject": [f"s{s}" for s in subject], "x": item_x + 0.3 * rng.normal(size=n_items),
                                    "offset": item_u + 0.3 * c - 0.5 * subject}))
    df = pd.concat(frames, ignore_index=True)
    eta = beta * sps.zscore(df["x"].to_numpy()) + df["offset"]
    return df.assign(correct_S=(rng.random(len(df)) < 1 / (1 + np.exp(-eta))).astype(int))


def strategy_items(n_checkpoints: int = 6, seed: int = 0) -> pd.DataFrame:
    """The metrics stage's long table for two strategies of `n_checkpoints` steps, layers 1 and 2: each checkpoint's
    layer-averaged cos lies exactly on its strategy's planted line (item noise sums to zero)."""
    rng = np.random.default_rng(seed)
    rows = []
    for strategy, slope in SLOPES.items():
        for k, n_s in enumerate(N_S[:n_checkpoints]):
            gap = 100 * (N_ITEMS - n_s) / N_ITEMS
            noise = rng.normal(0, 0.02, N_ITEMS)
            cos = (gap - 30) / slope + noise - noise.mean()
            for j in range(N_ITEMS):
                for layer in (1, 2):
                    rows.append({"model": f"lab-{strategy}@step{100 * (k + 1)}", "strategy": strategy,
                                 "step": 100 * (k + 1), "id": f"q{j:02d}", "subject": "ab"[j % 2], "layer": layer,
                                 "cos": cos[j], "correct_S": int(j < n_s), "correct_T": 1})
    return pd.DataFrame(rows)


# --- item-level logits, clustered by item ------------------------------------------------------------------------

def test_clustering_by_item_widens_the_se_over_naive_and_checkpoint_item():
    df = recurring_items(n_items=200, beta=1.5)
    by_item, naive, by_row = (stats.clustered_logit(df, "x", cluster=c, effects=["model", "subject"])
                              for c in ("item", "none", "checkpoint+item"))
    assert by_item["note"] == naive["note"] == by_row["note"] == ""
    assert by_item["coef"] == pytest.approx(naive["coef"]) == pytest.approx(by_row["coef"])  # one fit, other SEs
    assert by_item["se"] > 1.4 * naive["se"] and by_item["se"] > 1.4 * by_row["se"]
    assert (by_item["n_items"], by_item["n_clusters"], by_item["n_checkpoints"]) == (200, 200, 6)
    assert (by_row["n_clusters"], by_row["cluster_unit"], naive["n_clusters"]) == (1200, "checkpoint+item", 1200)
    assert by_item["cluster_unit"] == "item" and by_item["fixed_effects"] == "model+subject"
    assert by_item["coef"] > 0 and by_item["p"] < 0.05  # the planted sign survives the item effect


def test_a_planted_effect_is_recovered_without_an_item_effect():
    out = stats.clustered_logit(recurring_items(n_items=400, item_sd=0.0, seed=1), "x", effects=["model", "subject"])
    assert out["ci_lo"] < 0.8 < out["ci_hi"] and abs(out["coef"] - 0.8) < 3 * out["se"]
    assert out["ci_hi"] - out["coef"] == pytest.approx(sps.norm.ppf(0.975) * out["se"], rel=1e-9)  # Wald interval


def test_clustered_logit_options_and_failures():
    df = recurring_items(n_items=60, seed=2)
    assert stats.clustered_logit(df, "x")["fixed_effects"] == "none"
    separated = stats.clustered_logit(df.assign(correct_S=(df["x"] > 0).astype(int)), "x")
    assert separated["note"] and math.isnan(separated["coef"])
    assert "constant correct_S" in stats.clustered_logit(df.assign(correct_S=1), "x")["note"]
    with pytest.raises(ValueError, match="lack"):
        stats.clustered_logit(df, "nope")
    with pytest.raises(ValueError, match="cluster='id'"):
        stats.clustered_logit(df, "x", cluster="id")


def test_item_logistic_clusters_by_item_with_checkpoint_and_subject_effects():
    df = recurring_items(n_items=150, beta=1.5, seed=3)
    layered = pd.concat([df.assign(layer=1), df.assign(layer=2, x=2 * df["x"] + 5)], ignore_index=True)
    layered = layered.assign(strategy="s", step=1, correct_T=1)
    row = stats.item_logistic(layered, "x").iloc[0]
    assert (row["cluster_unit"], row["n_clusters"], row["fixed_effects"]) == ("item", 150, "layer+model+subject")
    assert row["n_obs"] == 2 * 150 * 6 and row["note"] == ""
    # layer 2 repeats layer 1 after the within-layer z: the same fit as one layer, clustered by item (the SE up to
    # the small-sample factor (N - 1) / (N - K))
    one = stats.clustered_logit(df, "x", effects=["model", "subject"])
    assert row["coef"] == pytest.approx(one["coef"], rel=1e-6) and row["se"] == pytest.approx(one["se"], rel=5e-3)
    plain = stats.item_logistic(layered, "x", cluster="checkpoint+item", checkpoint_effects=False,
                                subject_effects=False).iloc[0]
    assert (plain["fixed_effects"], plain["n_clusters"]) == ("layer", 900) and plain["se"] < row["se"]


# --- permutation floors and R² intervals -------------------------------------------------------------------------

@pytest.mark.parametrize("n, n_perm", [(3, 9999), (4, 9999), (5, 9999), (7, 9999), (9, 999)])
def test_permutation_floor_is_what_the_test_reaches_on_a_perfect_fit(n, n_perm):
    x = np.arange(n, dtype=float)
    expected = 2 / math.factorial(n) if math.factorial(n) <= n_perm else 2 / (n_perm + 1)
    assert stats.permutation_floor(n, n_perm) == pytest.approx(expected)
    assert stats.permutation_p(x, 3 * x + 1, n_perm, seed=0) == pytest.approx(expected)  # nothing beats r = 1


def test_permutation_floor_edges():
    assert stats.permutation_floor(2) == 1.0 and math.isnan(stats.permutation_floor(1))
    assert stats.permutation_floor(4) == pytest.approx(1 / 12)  # 4 checkpoints per strategy: never below 0.083


def test_r2_interval_bootstraps_checkpoints_as_a_slow_loop_does():
    rng = np.random.default_rng(0)
    x = rng.normal(size=9)
    y = x + rng.normal(size=9)
    out = stats.r2_interval(x, y, 500, 3, 0.95, (0.0, 1.0))
    idx = np.random.default_rng(3).integers(0, 9, (500, 9))
    slow = [sps.linregress(x[i], y[i]).rvalue ** 2 for i in idx if np.ptp(x[i]) > 0]
    np.testing.assert_allclose([out["r2_ci_lo"], out["r2_ci_hi"]], np.percentile(slow, [2.5, 97.5]), atol=1e-12)
    assert out["r2_ci_source"] == "checkpoints"


def test_r2_interval_source_flips_at_five_checkpoints():
    x = np.arange(6, dtype=float)
    y = np.array([0.0, 1.4, 1.7, 3.5, 3.6, 5.9])
    four, five = (stats.r2_interval(x[:n], y[:n], 200, 0, 0.95, (0.1, 0.9)) for n in (4, 5))
    assert four == {"r2_ci_lo": 0.1, "r2_ci_hi": 0.9, "r2_ci_source": "items (item noise only)"}
    assert five["r2_ci_source"] == "checkpoints" and 0 <= five["r2_ci_lo"] <= five["r2_ci_hi"] <= 1 + 1e-12
    with_nan = stats.r2_interval(np.r_[x[:4], np.nan], np.r_[y[:4], 1.0], 200, 0, 0.95, (0.1, 0.9))
    assert with_nan["r2_ci_source"] == "items (item noise only)"  # only finite pairs count


# --- checkpoint fits per strategy ---------------------------------------------------------------------------------

def test_fits_recover_each_strategys_planted_slope_and_pool_only_on_request():
    items = strategy_items()
    table = stats.checkpoint_table(items, ["cos"], n_boot=50, n_perm=9999).set_index("group")
    assert list(table.index) == ["full", "lora"] and not table.attrs["pooled"]
    for strategy, slope in SLOPES.items():
        row = table.loc[strategy]
        assert row["slope"] == pytest.approx(slope) and row["intercept"] == pytest.approx(30)
        assert row["r2"] == pytest.approx(1) and row["n_checkpoints"] == 6
        assert row["perm_floor"] == pytest.approx(2 / 720) and row["perm_p"] == pytest.approx(row["perm_floor"])
        assert row["r2_ci_source"] == "checkpoints" and row["r2_ci_lo"] == pytest.approx(1)
    pooled = stats.checkpoint_table(items, ["cos"], n_boot=50, n_perm=999, pooled=True).set_index("group")
    assert list(pooled.index) == ["full", "lora", "all"] and pooled.loc["all", "n_checkpoints"] == 12
    assert pooled.loc["all", "r2"] < 0.5 and pooled.loc["all", "perm_floor"] == pytest.approx(2 / 1000)
    few = stats.checkpoint_table(strategy_items(4), ["cos"], n_boot=50).set_index("group")
    assert (few["r2_ci_source"] == "items (item noise only)").all()
    assert (few["r2_ci_lo"] == few["r2_lo"]).all() and np.allclose(few["perm_floor"], 1 / 12)


def test_headline_follows_the_fits():
    table = stats.checkpoint_table(strategy_items(), ["cos"], n_boot=20, n_perm=99)
    head = stats.headline(table)
    json.dumps(head, allow_nan=False)
    assert set(head["groups"]) == {"full", "lora"}
    lora = head["groups"]["lora"]["cos"]
    assert lora["perm_floor"] == pytest.approx(2 / 100) and lora["r2_ci_source"] == "checkpoints"
    assert len(lora["r2_ci"]) == len(lora["r2_item_ci"]) == 2 and "r2_lo" not in lora


# --- P1's decomposition -------------------------------------------------------------------------------------------

def constructed_points() -> pd.DataFrame:
    return pd.DataFrame({"model": ["lab-full@step100", "lab-full@step200", "other"],
                         "strategy": ["full", "full", "other"], "step": [100, 200, np.nan], "n_items": 200, "text_acc": [90.0, 92.5, 80.0],
                         "speech_acc": [30.0, 42.5, 70.0], "gap": [60.0, 50.0, 10.0], "cos": 0.5})


def test_decomposition_arithmetic():
    lab = pd.DataFrame({"checkpoint": ["lab-full@step100", "lab-full@step200"], "text_acc": [0.9, 0.925],
                        "base_text_acc": [0.95, 0.95]})
    table = stats.decomposition(constructed_points(), lab)
    assert list(table.columns) == ["model", "strategy", "step", "n_items", "base_text_acc", "text_acc", "speech_acc",
                                   "text_loss", "gap", "note"]
    np.testing.assert_allclose(table["base_text_acc"], [95, 95, np.nan])
    np.testing.assert_allclose(table["text_loss"], [5, 2.5, np.nan])
    np.testing.assert_allclose(table["gap"], [60, 50, 10])
    assert list(table["note"][:2]) == ["", ""] and "no base_text_acc for this model" in table["note"][2]


def test_decomposition_without_a_base_accuracy_says_why():
    no_lab = stats.decomposition(constructed_points(), None)
    assert no_lab["base_text_acc"].isna().all() and (no_lab["note"].str.contains("no model is a lab checkpoint")).all()
    lab = pd.DataFrame({"checkpoint": ["lab-full@step100"], "text_acc": [0.9]})
    no_column = stats.decomposition(constructed_points(), lab)
    assert no_column["text_loss"].isna().all() and (no_column["note"].str.contains("no base_text_acc column")).all()
    with pytest.raises(ValueError, match="fraction"):
        stats.decomposition(constructed_points(), lab.assign(base_text_acc=95.0))


# --- the stage's tables -------------------------------------------------------------------------------------------

def test_tables_name_their_cluster_unit_and_permutation_floors(tmp_path):
    items = strategy_items().assign(l2=lambda d: np.random.default_rng(1).normal(size=len(d)))
    tables = {}
    for model, frame in items.groupby("model"):
        tables[model] = tmp_path / f"{model}.parquet"
        frame.drop(columns=["model", "strategy", "step"]).to_parquet(tables[model])
    lab = tmp_path / "lab.csv"
    pd.DataFrame({"checkpoint": list(tables), "base_text_acc": 0.97}).to_csv(lab, index=False)
    names = ["points", "fits", "decomposition", "item_layer", "item_layer_by_model", "logistic", "subjects",
             "within_subject"]
    out = {n: tmp_path / f"{n}.csv" for n in names} | {"markdown": tmp_path / "tables.md",
                                                       "headline": tmp_path / "headline.json"}
    options = StatsOptions(metrics=("cos",), item_metrics=("l2",), n_boot=20, n_perm=9999, seed=0, cluster="item",
                           checkpoint_effects=True, subject_effects=True, pool_strategies=False)
    head = run_stats(tables, options, False, out, lab)
    assert set(head["groups"]) == {"full", "lora"}
    md = out["markdown"].read_text()
    assert "z(metric) + C(layer) + C(checkpoint) + C(subject), SEs clustered by item" in md
    assert "perm_floor" in md and "0.00278" in md  # 2/6!, not 0.003 or 0.000
    logistic = pd.read_csv(out["logistic"])
    assert {"cluster_unit", "n_clusters", "fixed_effects"} <= set(logistic.columns)
    assert (logistic["cluster_unit"] == "item").all() and (logistic["n_clusters"] == N_ITEMS).all()
    decomposition = pd.read_csv(out["decomposition"])
    assert len(decomposition) == 12 and np.allclose(decomposition["text_loss"], -3)  # text 100, base 97
