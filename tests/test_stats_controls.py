"""Right-unit statistics: item-clustered logit, permutation floors, R² intervals over points, per-strategy fits."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from modgap.stats import permutation_p
from modgap.stats_controls import (
    ITEM_NOISE_ONLY, fit_by_strategy, format_p, item_clustered_logit, permutation_floor, r2_interval,
)


def recurring_items(n_items: int = 120, n_checkpoints: int = 6, beta: float = 0.8, item_sd: float = 2.5,
                    seed: int = 0) -> pd.DataFrame:
    """One row per (checkpoint, item): the metric is mostly a property of the item (items recur across
    checkpoints), outcomes share a strong item random effect, subjects differ in difficulty, checkpoints in skill.
    The outcome's log-odds are beta * z(metric) + item effect + subject + checkpoint."""
    rng = np.random.default_rng(seed)
    item_x, item_u = rng.normal(size=n_items), rng.normal(scale=item_sd, size=n_items)
    subject = rng.integers(0, 3, n_items)
    rows = []
    for c in range(n_checkpoints):
        x = item_x + 0.3 * rng.normal(size=n_items)
        rows.append(pd.DataFrame({"model": f"ckpt{c}", "id": [f"q{i}" for i in range(n_items)],
                                  "subject": [f"s{s}" for s in subject], "x": x, "u": item_u,
                                  "offset": 0.3 * c - 0.5 * subject}))
    df = pd.concat(rows, ignore_index=True)
    z = sps.zscore(df["x"].to_numpy())
    eta = beta * z + df["u"] + df["offset"]
    df["correct_S"] = (rng.random(len(df)) < 1 / (1 + np.exp(-eta))).astype(int)
    return df


def test_clustering_by_item_widens_the_se_over_naive_and_checkpoint_item():
    df = recurring_items(n_items=200, beta=1.5)
    by_item = item_clustered_logit(df, "correct_S", "x")
    naive = item_clustered_logit(df, "correct_S", "x", cluster=None)
    by_row = item_clustered_logit(df, "correct_S", "x", cluster=["model", "id"])
    assert by_item["note"] == naive["note"] == by_row["note"] == ""
    assert by_item["coef"] == pytest.approx(naive["coef"]) == pytest.approx(by_row["coef"])  # same fit, other SEs
    assert by_item["se"] > 1.4 * naive["se"] and by_item["se"] > 1.4 * by_row["se"]
    assert (by_item["n_items"], by_item["n_clusters"], by_item["n_checkpoints"]) == (200, 200, 6)
    assert by_row["n_clusters"] == 1200 and by_row["cluster"] == "model+id" and naive["cluster"] == "none"
    assert by_item["cluster"] == "id" and by_item["fixed_effects"] == "model+subject"
    assert by_item["coef"] > 0 and by_item["p"] < 0.05  # the planted sign survives the item effect


def test_a_planted_effect_is_recovered_without_an_item_effect():
    df = recurring_items(n_items=400, beta=0.8, item_sd=0.0, seed=1)
    out = item_clustered_logit(df, "correct_S", "x")
    assert out["ci_lo"] < 0.8 < out["ci_hi"]
    assert abs(out["coef"] - 0.8) < 3 * out["se"]
    # the confidence interval is the Wald interval of the clustered SE
    assert out["ci_hi"] - out["coef"] == pytest.approx(sps.norm.ppf(0.975) * out["se"], rel=1e-9)


def test_clustered_logit_options_and_failures():
    df = recurring_items(n_items=60, seed=2)
    plain = item_clustered_logit(df, "correct_S", "x", checkpoint_fe=False, subject_fe=False)
    assert plain["fixed_effects"] == "none" and math.isfinite(plain["coef"])
    separated = df.assign(correct_S=(df["x"] > 0).astype(int))
    assert separated.pipe(item_clustered_logit, "correct_S", "x")["note"] != ""
    assert math.isnan(item_clustered_logit(separated, "correct_S", "x")["coef"])
    with pytest.raises(ValueError, match="lacks"):
        item_clustered_logit(df, "correct_S", "nope")


@pytest.mark.parametrize("n, n_perm", [(4, 9999), (5, 9999), (7, 9999), (9, 999)])
def test_permutation_floor_is_what_the_test_reaches_on_a_perfect_fit(n, n_perm):
    x = np.arange(n, dtype=float)
    floor = permutation_floor(n, n_perm)
    assert floor["exact"] == (math.factorial(n) <= n_perm)
    expected = 2 / math.factorial(n) if floor["exact"] else 2 / (n_perm + 1)
    assert floor["floor"] == pytest.approx(expected)
    assert permutation_p(x, 3 * x + 1, n_perm, seed=0) == pytest.approx(floor["floor"])  # nothing beats r = 1


def test_format_p_prints_the_floor():
    assert format_p(2 / 120, permutation_floor(5)["floor"]) == "p = 0.0167 (floor 0.0167)"
    assert permutation_floor(2)["floor"] == 1.0


def slow_r2_interval(x, y, n_boot, seed, confidence=0.95):
    idx = np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))
    values = []
    for row in idx:
        xs, ys = x[row], y[row]
        if np.ptp(xs) == 0 or np.ptp(ys) == 0:
            continue
        values.append(sps.linregress(xs, ys).rvalue ** 2)
    tail = 100 * (1 - confidence) / 2
    return np.percentile(values, [tail, 100 - tail]), n_boot - len(values)


def test_r2_interval_bootstraps_points_as_a_slow_loop_does():
    rng = np.random.default_rng(0)
    x = rng.normal(size=9)
    y = x + rng.normal(size=9)
    out = r2_interval(x, y, n_boot=500, seed=3)
    (lo, hi), degenerate = slow_r2_interval(x, y, 500, 3)
    assert out["lo"] == pytest.approx(lo, abs=1e-12) and out["hi"] == pytest.approx(hi, abs=1e-12)
    assert out["n_degenerate"] == degenerate
    assert out["r2"] == pytest.approx(sps.linregress(x, y).rvalue ** 2)
    assert out["method"] == "bootstrap over points" and out["flag"] == "" and out["n"] == 9
    x, y = np.array([0.0, 0, 0, 0, 1]), np.array([0.0, 1, 2, 3, 4])  # a third of the resamples miss x = 1
    out = r2_interval(x, y, n_boot=400, seed=1)
    (lo, hi), degenerate = slow_r2_interval(x, y, 400, 1)
    assert out["n_degenerate"] == degenerate > 50
    assert out["lo"] == pytest.approx(lo, abs=1e-12) and out["hi"] == pytest.approx(hi, abs=1e-12)


def test_r2_interval_known_answers():
    x = np.arange(6, dtype=float)
    exact = r2_interval(x, 2 * x + 1, n_boot=300)
    assert exact["r2"] == pytest.approx(1) and exact["lo"] == pytest.approx(1) and exact["hi"] == pytest.approx(1)
    rng = np.random.default_rng(4)
    x = rng.normal(size=400)
    y = 0.6 * x + 0.8 * rng.normal(size=400)  # population R² = 0.36
    wide = r2_interval(x, y, n_boot=1000)
    assert wide["lo"] < 0.36 < wide["hi"] and wide["hi"] - wide["lo"] < 0.2


def test_r2_interval_with_few_points_is_flagged_item_noise_only():
    x, y = np.array([0.0, 1, 2, 3]), np.array([0.0, 1.5, 1.8, 3.2])
    out = r2_interval(x, y)
    assert math.isnan(out["lo"]) and math.isnan(out["hi"]) and out["flag"] == ITEM_NOISE_ONLY and out["n"] == 4
    assert out["r2"] == pytest.approx(sps.linregress(x, y).rvalue ** 2)
    fallback = r2_interval(x, y, item_interval=(0.7, 0.99))
    assert (fallback["lo"], fallback["hi"], fallback["flag"]) == (0.7, 0.99, ITEM_NOISE_ONLY)
    assert fallback["method"] == "bootstrap over items"


def test_fit_by_strategy_fits_each_strategy_and_pools_only_on_request():
    rng = np.random.default_rng(5)
    x = np.linspace(0, 1, 8)
    points = pd.concat([
        pd.DataFrame({"strategy": "lora", "model": [f"l{k}" for k in range(8)], "cos": x,
                      "gap": 2 * x + 0.05 * rng.normal(size=8)}),
        pd.DataFrame({"strategy": "full", "model": [f"f{k}" for k in range(8)], "cos": x + 0.5,
                      "gap": 10 - 2 * x + 0.05 * rng.normal(size=8)}),
    ], ignore_index=True)
    table = fit_by_strategy(points, "cos", n_boot=200, n_perm=999)
    assert table["group"].tolist() == ["full", "lora"]
    slopes = dict(zip(table["group"], table["slope"]))
    assert slopes["lora"] == pytest.approx(2, abs=0.2) and slopes["full"] == pytest.approx(-2, abs=0.2)
    assert (table["perm_floor"] == 2 / 1000).all() and not table["perm_exact"].any()
    assert (table["r2_method"] == "bootstrap over points").all()
    assert table["perm_text"].str.startswith("p = ").all()
    pooled = fit_by_strategy(points, "cos", pooled=True, n_boot=200, n_perm=999)
    assert pooled["group"].tolist() == ["full", "lora", "pooled"]
    assert pooled.iloc[2]["n_checkpoints"] == 16 and pooled.iloc[2]["r2"] < 0.9 * table["r2"].min()
    few = fit_by_strategy(points.groupby("strategy").head(4), "cos", n_boot=50)
    assert (few["r2_flag"] == ITEM_NOISE_ONLY).all() and np.allclose(few["perm_floor"], 2 / 24)
