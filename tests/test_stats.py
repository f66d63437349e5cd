"""modgap.stats on synthetic items with known structure: gap is an exact linear function of layer-averaged cos."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from modgap.stats import analysis as stats
from modgap.tables import to_markdown

N_ITEMS = 20
SLOPE, INTERCEPT = -100.0, 70.0  # gap = INTERCEPT + SLOPE * S_cos, in every group
# (strategy, step, items correct in S); T gets every item right, so gap = 100 * (20 - n_S) / 20 = 10..60
CHECKPOINTS = [("frozen", 100, 18), ("frozen", 200, 16), ("frozen", 300, 14), ("frozen", 400, 12),
               ("full", 100, 10), ("full", 200, 8)]
LAYER0 = 5.0  # a layer-0 cos that would move every layer average if included


def expected_cos(n_s: int) -> float:
    return (100 * (N_ITEMS - n_s) / N_ITEMS - INTERCEPT) / SLOPE


def make_items(seed: int = 0) -> pd.DataFrame:
    """6 checkpoints x 20 items x layers 0..2. Item cos = checkpoint S_cos + zero-sum noise, split across layers 1, 2
    around the item value; l2 is unrelated noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for strategy, step, n_s in CHECKPOINTS:
        noise = rng.normal(0, 0.05, N_ITEMS)
        cos = expected_cos(n_s) + noise - noise.mean()
        spread = rng.normal(0, 0.02, N_ITEMS)
        for j in range(N_ITEMS):
            for layer, value in ((0, LAYER0), (1, cos[j] + spread[j]), (2, cos[j] - spread[j])):
                rows.append({"model": f"lab-{strategy}@step{step}", "strategy": strategy, "step": step,
                             "id": f"q{j:02d}", "subject": "ab"[j % 2], "layer": layer, "cos": value,
                             "l2": rng.normal(3, 1), "correct_S": int(j < n_s), "correct_T": 1})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def items() -> pd.DataFrame:
    return make_items()


@pytest.fixture(scope="module")
def table(items) -> pd.DataFrame:
    return stats.checkpoint_table(items, ["cos", "l2"], n_boot=40, seed=1, pooled=True).set_index(["group", "x"])


def test_points_average_layers_1_to_L_by_default(items):
    points = stats.checkpoint_points(items, ["cos", "l2"])
    assert list(points.columns) == ["model", "strategy", "step", "n_items", "text_acc", "speech_acc", "gap", "cos", "l2"]
    assert len(points) == 6 and (points["n_items"] == N_ITEMS).all()
    by_step = points.set_index(["strategy", "step"])
    for strategy, step, n_s in CHECKPOINTS:
        row = by_step.loc[(strategy, step)]
        assert row["speech_acc"] == pytest.approx(100 * n_s / N_ITEMS) and row["text_acc"] == 100
        assert row["gap"] == pytest.approx(100 - 100 * n_s / N_ITEMS)
        assert row["cos"] == pytest.approx(expected_cos(n_s))
    with_layer0 = stats.checkpoint_points(items, ["cos"], include_layer0=True)
    np.testing.assert_allclose(with_layer0["cos"], (LAYER0 + 2 * points["cos"]) / 3)


def test_fit_recovers_the_line_and_matches_scipy(items):
    points = stats.checkpoint_points(items, ["cos"])
    fit = stats.checkpoint_fit(points, "cos")
    assert fit["slope"] == pytest.approx(SLOPE) and fit["intercept"] == pytest.approx(INTERCEPT)
    assert fit["r2"] == pytest.approx(1.0) and fit["n_checkpoints"] == 6 and fit["note"] == ""
    pearson, spearman = sps.pearsonr(points["cos"], points["gap"]), sps.spearmanr(points["cos"], points["gap"])
    assert fit["pearson_r"] == pytest.approx(pearson.statistic)
    assert fit["pearson_p"] == pytest.approx(pearson.pvalue, abs=1e-12)
    assert fit["spearman_rho"] == pytest.approx(spearman.statistic)
    assert fit["spearman_p"] == pytest.approx(spearman.pvalue)


def test_fit_on_two_points_is_nan_with_a_note_and_empty_raises(items):
    points = stats.checkpoint_points(items, ["cos"])
    fit = stats.checkpoint_fit(points.head(2), "cos")
    assert fit["n_checkpoints"] == 2 and "at least 3" in fit["note"]
    assert all(math.isnan(fit[f]) for f in stats.FIT_FIELDS)
    with pytest.raises(ValueError, match="empty"):
        stats.checkpoint_fit(points.head(0), "cos")
    with pytest.raises(ValueError, match="nope"):
        stats.checkpoint_fit(points, "nope")


def test_table_fits_every_group_and_all_when_pooled(items, table):
    assert set(table.index) == {(g, m) for g in ("frozen", "full", "all") for m in ("cos", "l2")}
    assert (table["n_items"] == N_ITEMS).all()
    assert table["n_checkpoints"].to_dict() == {("frozen", "cos"): 4, ("frozen", "l2"): 4, ("full", "cos"): 2,
                                                ("full", "l2"): 2, ("all", "cos"): 6, ("all", "l2"): 6}
    expected = stats.checkpoint_fit(stats.checkpoint_points(items, ["cos"]), "cos")
    for f in stats.FIT_FIELDS:
        assert table.loc[("all", "cos"), f] == pytest.approx(expected[f], abs=1e-12)
    frozen = table.loc[("frozen", "cos")]
    assert frozen["slope"] == pytest.approx(SLOPE) and frozen["r2"] == pytest.approx(1.0)
    full = table.loc[("full", "cos")]
    assert "at least 3" in full["note"] and math.isnan(full["slope"]) and math.isnan(full["slope_lo"])
    assert math.isnan(full["perm_p"])
    assert table.attrs["include_layer0"] is False and table.attrs["pooled"] is True
    unpooled = stats.checkpoint_table(items, ["cos"], n_boot=0)
    assert list(unpooled["group"]) == ["frozen", "full"]  # P1 fitted each strategy on its own


def test_permutation_p_is_exact_two_sided(table):
    # a perfectly monotone group: only the identity of 4! (6!) pairings reaches |r| = 1, two-sided doubles it
    assert table.loc[("frozen", "cos"), "perm_p"] == pytest.approx(2 / 24)
    assert table.loc[("all", "cos"), "perm_p"] == pytest.approx(2 / 720)


def test_bootstrap_cis_cover_the_truth_and_follow_the_seed(items, table):
    for group in ("frozen", "all"):
        row = table.loc[(group, "cos")]
        assert row["slope_lo"] < SLOPE < row["slope_hi"]
        assert 0 < row["r2_lo"] <= row["r2_hi"] <= 1.0 and row["pearson_r_lo"] <= row["pearson_r_hi"] < 0
        assert row["spearman_rho_hi"] < 0
    ci = ["slope_lo", "slope_hi", "r2_lo", "r2_hi", "spearman_rho_lo"]
    first, again, other = (stats.checkpoint_table(items, ["cos"], n_boot=20, seed=s, pooled=True)[ci]
                           for s in (1, 1, 2))
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first.iloc[[0, 2]], other.iloc[[0, 2]])


def test_item_layer_tests_match_scipy_and_multipletests(items):
    tests = stats.item_layer_tests(items, ["cos", "l2"])
    assert list(tests.columns) == ["group", "layer", "metric", "n_obs", "n_items", "n_checkpoints",
                                   "pb_r", "pb_p", "pb_q", "gap_rho", "gap_p", "gap_q"]
    assert len(tests) == 3 * 2 and (tests["n_checkpoints"] == 6).all() and (tests["n_items"] == N_ITEMS).all()
    layer1 = items[items["layer"] == 1]
    row = tests.set_index(["layer", "metric"]).loc[(1, "cos")]
    expected = sps.pointbiserialr(layer1["correct_S"], layer1["cos"])
    assert row["pb_r"] == pytest.approx(expected.statistic) and row["pb_p"] == pytest.approx(expected.pvalue)
    rho = sps.spearmanr(layer1["cos"], layer1["correct_T"] - layer1["correct_S"])
    assert row["gap_rho"] == pytest.approx(rho.statistic) and row["gap_p"] == pytest.approx(rho.pvalue)
    # layer 0 is constant: NaN, left out of the family of the 5 other (layer, metric) tests
    assert tests.loc[(tests["layer"] == 0) & (tests["metric"] == "cos"), ["pb_r", "pb_q"]].isna().all(axis=None)
    finite = tests["pb_p"].notna()
    assert finite.sum() == 5
    np.testing.assert_allclose(tests.loc[finite, "pb_q"], multipletests(tests.loc[finite, "pb_p"], method="fdr_bh")[1])


def test_item_layer_tests_per_checkpoint_and_constant_outcomes(items):
    solved = items.assign(correct_S=np.where(items["model"] == "lab-full@step200", 1, items["correct_S"]))
    tests = stats.item_layer_tests(solved, ["cos"], by="model", include_layer0=False)
    assert len(tests) == 6 * 2 and (tests["n_checkpoints"] == 1).all() and (tests["n_obs"] == N_ITEMS).all()
    constant = tests[tests["group"] == "lab-full@step200"]
    assert constant[["pb_r", "pb_p", "gap_rho"]].isna().all(axis=None)
    assert tests.loc[tests["group"] != "lab-full@step200", "pb_r"].notna().all()


def logistic_items(separated: bool) -> tuple[pd.DataFrame, float]:
    """One checkpoint, 400 items, 3 layers shifting the item's metric; correct_S ~ Bernoulli(sigmoid(0.3 + 1.5 x)),
    or x > 0 when separated. Returns the items and the true coefficient per SD of x."""
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, 400)
    correct = (x > 0) if separated else rng.random(400) < 1 / (1 + np.exp(-(0.3 + 1.5 * x)))
    rows = [{"model": "m", "strategy": "m", "step": np.nan, "id": j, "subject": "s", "layer": layer,
             "cos": x[j] * (1 + layer) + 10 * layer, "correct_S": int(correct[j]), "correct_T": 1}
            for j in range(400) for layer in (0, 1, 2)]
    return pd.DataFrame(rows), 1.5 * x.std()


def test_item_logistic_recovers_the_coefficient_with_item_clustered_se():
    data, truth = logistic_items(separated=False)
    fit = stats.item_logistic(data, "cos").iloc[0]
    assert fit["note"] == "" and fit["ci_lo"] < truth < fit["ci_hi"] and fit["coef"] > 0 and fit["p"] < 1e-6
    assert (fit["n_obs"], fit["n_items"], fit["n_checkpoints"]) == (800, 400, 1)
    # two copies of each item's outcome (layers 1, 2, same z) must not shrink the SE by sqrt(2): clustered by item,
    # it is the robust SE of a one-layer fit
    one = data[data["layer"] == 1].assign(z=lambda d: sps.zscore(d["cos"]))
    single = smf.logit("correct_S ~ z", one).fit(disp=0, cov_type="HC0")
    assert fit["coef"] == pytest.approx(single.params["z"], rel=1e-4)
    assert fit["se"] == pytest.approx(single.bse["z"], rel=0.02)


def test_item_logistic_reports_separation_in_a_note():
    data, _ = logistic_items(separated=True)
    fit = stats.item_logistic(data, "cos").iloc[0]
    assert fit["note"] and math.isnan(fit["coef"]) and math.isnan(fit["ci_lo"]) and fit["n_items"] == 400
    constant = stats.item_logistic(data.assign(correct_S=1), "cos").iloc[0]
    assert "constant correct_S" in constant["note"] and math.isnan(constant["p"])


def test_subject_tables(items):
    points = stats.subject_points(items, ["cos"])
    assert len(points) == 6 * 2 and (points["n_items"] == N_ITEMS // 2).all()
    tests = stats.subject_tests(items, ["cos", "l2"])
    assert list(tests.columns) == ["target", "metric", "n_points", "n_subjects", "n_checkpoints", "n_items",
                                   "pearson_r", "pearson_p", "pearson_q", "spearman_rho", "spearman_p", "spearman_q"]
    assert len(tests) == 4 and (tests[["n_points", "n_subjects", "n_checkpoints", "n_items"]] == [12, 2, 6, 20]).all(axis=None)
    row = tests.set_index(["target", "metric"]).loc[("gap", "cos")]
    assert row["pearson_r"] == pytest.approx(sps.pearsonr(points["cos"], points["gap"]).statistic)
    gap = tests[tests["target"] == "gap"]
    np.testing.assert_allclose(gap["pearson_q"], multipletests(gap["pearson_p"], method="fdr_bh")[1])
    within = stats.within_subject_tests(items, ["cos", "l2"])
    assert len(within) == 2 * 2 and (within["n_obs"] == 60).all() and (within["n_checkpoints"] == 6).all()
    cos = within[within["metric"] == "cos"]
    np.testing.assert_allclose(cos["pb_q"], multipletests(cos["pb_p"], method="fdr_bh")[1])


def test_bad_inputs_raise_one_clear_line(items):
    with pytest.raises(ValueError, match="items is empty"):
        stats.checkpoint_table(items.head(0), ["cos"])
    with pytest.raises(ValueError, match="'aps_cos'"):
        stats.checkpoint_points(items, ["cos", "aps_cos"])
    with pytest.raises(ValueError, match="duplicate"):
        stats.item_layer_tests(pd.concat([items, items.head(1)]), ["cos"])
    with pytest.raises(ValueError, match="correct_S"):
        stats.item_scores(items.assign(correct_S=items["layer"] % 2), ["cos"])
    with pytest.raises(ValueError, match="no layer > 0"):
        stats.checkpoint_points(items[items["layer"] == 0], ["cos"])


def test_fdr_keeps_nan_out_of_the_family():
    p = [0.01, np.nan, 0.04, 0.03]
    q = stats.fdr_bh(p)
    assert math.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3]], multipletests([0.01, 0.04, 0.03], method="fdr_bh")[1])


def test_headline_and_markdown(table):
    flat = table.reset_index()
    flat.attrs = table.attrs
    head = stats.headline(flat, ["cos"])
    json.dumps(head, allow_nan=False)
    cos = head["groups"]["all"]["cos"]
    assert cos["r2"] == pytest.approx(1.0) and cos["n_items"] == N_ITEMS and cos["n_checkpoints"] == 6
    assert len(cos["slope_ci"]) == 2 and head["groups"]["full"]["cos"]["r2"] is None
    assert cos["perm_floor"] == pytest.approx(2 / 720) and cos["r2_ci_source"] == "checkpoints"
    assert head["settings"]["n_boot"] == 40
    with pytest.raises(ValueError, match="aps_l2"):
        stats.headline(flat, ["aps_l2"])
    md = to_markdown(flat[["group", "x", "n_items", "slope", "r2"]])
    lines = md.splitlines()
    assert lines[0].startswith("|") and "slope" in lines[0] and set(lines[1]) <= set("|-: ")
    assert "-100.000" in md and "—" in md and len(lines) == 2 + len(flat)
