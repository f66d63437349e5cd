"""The findings table: each claim built from constructed stage tables with known answers, verdicts mechanical."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modgap.stats import findings


def test_interval_verdicts():
    assert findings.interval_verdict(0.1, 0.3) == "above control"
    assert findings.interval_verdict(-0.3, -0.1) == "below control"
    assert findings.interval_verdict(-0.1, 0.1) == "indistinguishable from control"
    assert findings.interval_verdict(float("nan"), 1.0) == "no interval"


def items(lift: float, n: int = 40) -> pd.DataFrame:
    """Two layers; layer 2 is the best layer, where every item's learned path beats the proportional one by `lift`
    (plus small item noise), layer 1 is worse."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        for layer, hit in ((1, 0.2), (2, 0.5 + lift)):
            noise = rng.normal(0, 0.01)
            rows.append({"model": "lab-full@step400", "id": f"q{i}", "layer": layer, "gt_hit_argmax": hit + noise,
                         "gt_hit_dtw": hit + noise, "gt_hit_proportional": 0.5, "gt_hit_random_expected": 0.2,
                         "gt_lift_argmax": hit + noise - 0.5, "gt_lift_dtw": hit + noise - 0.5})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("lift, verdict", [(0.2, "above control"), (-0.2, "below control")])
def test_path_lift_at_the_best_layer(lift, verdict):
    rows = findings.path_findings(items(lift), n_boot=200, seed=0)
    assert [r["model"] for r in rows] == ["lab-full@step400"] * 2
    for r in rows:
        assert r["value"] == pytest.approx(lift, abs=0.01) and r["verdict"] == verdict
        assert "best layer 2" in r["claim"] and r["n_items"] == 40


def test_edit_findings_report_path_minus_random():
    controls = pd.DataFrame([{"model": "m", "condition": "angle all @0", "op": "angle", "n_items": 200,
                              "path_delta": 20.0, "random_delta": 18.0, "even_delta": 19.0, "other_item_delta": -5.0,
                              "effect": 2.0, "effect_ci_lo": -1.0, "effect_ci_hi": 5.0, "effect_mcnemar_p": 0.3},
                             {"model": "m", "condition": "kv_merge @7-21 cos>0.9 max 0.25", "op": "kv_merge",
                              "n_items": 200, "path_delta": 0.5, "random_delta": -1.0, "even_delta": np.nan,
                              "other_item_delta": np.nan, "effect": 1.5, "effect_ci_lo": 0.5, "effect_ci_hi": 2.5,
                              "effect_mcnemar_p": 0.01}])
    row, merge = findings.edit_findings(controls)
    assert row["value"] == 2.0 and row["verdict"] == "indistinguishable from control"
    assert "random +18.0" in row["control"] and "p = 0.3" in row["control"]
    assert "random pairs" in merge["claim"] and "even" not in merge["control"]
    assert "similarity +0.5" in merge["control"] and "similarity merges" in merge["statistic"]


def test_fit_findings_print_the_floor():
    fits = pd.DataFrame([{"group": "full", "x": "cos", "n_items": 200, "n_checkpoints": 4, "slope": -3.0,
                          "r2": 0.6, "r2_ci_lo": 0.1, "r2_ci_hi": 0.9, "r2_ci_source": "items (item noise only)",
                          "perm_p": 0.25, "perm_floor": 2 / 24}])
    (row,) = findings.fit_findings(fits)
    assert row["verdict"] == "not significant; smallest attainable p 0.0833"
    assert "floor 0.0833" in row["control"] and row["value"] == 0.6
    one = fits.assign(n_checkpoints=1, slope=np.nan, r2=np.nan, perm_p=np.nan, perm_floor=np.nan)
    assert findings.fit_findings(one)[0]["verdict"] == "not testable with 1 checkpoint(s)"  # a released model alone


def test_gap_and_condition_findings():
    """Ten items, text right on all, speech on four: a 60-point gap; a calibration row keeps its points."""
    rows = [{"model": "m", "id": f"q{i}", "layer": layer, "correct_S": int(i < 4), "correct_T": 1}
            for i in range(10) for layer in (1, 2)]
    (gap,) = findings.gap_findings(pd.DataFrame(rows), n_boot=200, seed=0)
    assert gap["value"] == pytest.approx(60.0) and gap["n_items"] == 10 and gap["verdict"] == "above control"
    conditions = pd.DataFrame([{"model": "m", "kind": "calibration", "condition": "calib-input", "n_items": 200,
                                "accuracy": 0.285, "baseline_accuracy": 0.26, "delta": 2.5, "ci_lo": -5.3,
                                "ci_hi": 10.3, "mcnemar_p": 0.61},
                               {"model": "m", "kind": "edit", "condition": "angle all @0", "n_items": 200,
                                "accuracy": 0.5, "baseline_accuracy": 0.26, "delta": 24.0, "ci_lo": 18.0,
                                "ci_hi": 30.0, "mcnemar_p": 0.001}])
    (calib,) = findings.condition_findings(conditions)
    assert calib["value"] == 2.5 and calib["verdict"] == "indistinguishable from control"
    assert "unedited speech on the same items (26.0)" in calib["control"]


def layered(n: int, columns, layers=(0, 1, 2)) -> pd.DataFrame:
    """n items x `layers` rows of model "m"; `columns(i, layer)` gives each row's values."""
    return pd.DataFrame([{"model": "m", "id": f"q{i:02d}", "layer": layer, **columns(i, layer)}
                         for i in range(n) for layer in layers])


@pytest.mark.parametrize("speech_entropy, verdict", [(0.9, "above control"), (0.6, "indistinguishable from control")])
def test_attention_speech_minus_text_entropy(speech_entropy, verdict):
    """Text entropy 0.6 on every item; speech entropy alternates +-0.05 around `speech_entropy`; layer 0 is NaN."""
    def values(i, layer):
        s = np.nan if layer == 0 else speech_entropy + (0.05 if i % 2 else -0.05)
        return {"attn_entropy_S": s, "attn_entropy_T": np.nan if layer == 0 else 0.6, "attn_cov90_frac_S": 0.5,
                "attn_cov90_frac_T": 0.8, "attn_span_len_S": 10.0, "attn_span_len_T": 4.0}
    (row,) = findings.attention_findings(layered(20, values), n_boot=300, seed=0)
    assert row["value"] == pytest.approx(speech_entropy - 0.6) and row["verdict"] == verdict
    assert "uniform 0.900" in row["control"] and "uniform 1.000" in row["control"]  # ceil(0.9 n) / n, n = 10 and 4


@pytest.mark.parametrize("drop, verdict", [(-2.0, "below control"), (0.0, "indistinguishable from control")])
def test_lens_strata_text_only_minus_both(drop, verdict):
    """Items 0-9 both right, 10-19 text only; at the last layer the text-only margin is `drop` off (item noise +-0.1);
    the shuffled strata differ by 0.0."""
    def values(i, layer):
        return {"correct_S": float(i < 10), "correct_T": 1.0,
                "lens_margin_S": 1.0 + (drop if i >= 10 and layer == 2 else 0.0) + (0.1 if i % 2 else -0.1)}
    strata = pd.DataFrame([{"layer": 2, "stratum": s, "labels": lab, "lens_margin_S": 1.0 + (drop if
                            (lab, s) == ("outcome", "text_only") else 0.0)}
                           for s in ("both", "text_only") for lab in ("outcome", "shuffled")])
    (row,) = findings.lens_strata_findings(layered(20, values), {"m": strata}, n_boot=300, seed=0)
    assert row["value"] == pytest.approx(drop) and row["verdict"] == verdict
    assert row["control_value"] == 0.0 and row["n_items"] == 20 and "last layer (2)" in row["claim"]


@pytest.mark.parametrize("spoken, verdict", [(0.8, "above control"), (0.2, "indistinguishable from control")])
def test_transcript_best_layer_against_wrong_words(spoken, verdict):
    """Layer 2 is the best layer: spoken-word fraction `spoken`, wrong-word fraction 0.2, item noise +-0.05."""
    def values(i, layer):
        noise = 0.05 if i % 2 else -0.05
        return {"transcript_top10_S": (spoken if layer == 2 else 0.1) + noise, "transcript_wrong_top10_S": 0.2}
    items = layered(20, values)
    table = pd.DataFrame({"layer": [0, 1, 2], "transcript_top10_S": [0.1, 0.1, spoken],
                          "transcript_wrong_top10_S": [0.2] * 3, "level": 0.5,
                          "emergence_layer": 2.0 if spoken > 0.5 else np.nan, "emergence_layer_wrong": np.nan})
    (row,) = findings.transcript_findings(items, {"m": table}, n_boot=300, seed=0)
    assert row["value"] == pytest.approx(spoken - 0.2) and row["verdict"] == verdict
    assert "best layer 2" in row["claim"] and "wrong-word top-10 fraction 0.200" in row["control"]


def test_synchrony_against_shuffled_pairs():
    """DTW pairs 0.3 above the shuffled pairs on every item (+-0.02 noise); true-word pairs equal to them (+-0.02)."""
    def values(i, layer):
        noise = 0.02 if i % 2 else -0.02
        return {"sync_dtw": np.nan if layer == 0 else 0.4 + noise, "sync_truth": np.nan if layer == 0 else 0.1 + noise,
                "sync_shuffled": np.nan if layer == 0 else 0.1}
    dtw, truth = findings.synchrony_findings(layered(20, values), n_boot=300, seed=0)
    assert dtw["value"] == pytest.approx(0.3) and dtw["verdict"] == "above control"
    assert truth["value"] == pytest.approx(0.0, abs=1e-12)
    assert truth["verdict"] == "indistinguishable from control" and "true-word" in truth["claim"]


def test_probe_selectivity_at_the_best_layer():
    """Linear probe: 0.9 vs 0.3 control on 200 items at layer 1 (selectivity 0.6, SE about 0.04); MLP: 0.52 vs 0.5
    (SE about 0.05)."""
    probes = pd.DataFrame([
        {"layer": 0, "condition": "S", "probe": "linear", "subset": "all", "accuracy": 0.4, "control_accuracy": 0.3},
        {"layer": 1, "condition": "S", "probe": "linear", "subset": "all", "accuracy": 0.9, "control_accuracy": 0.3},
        {"layer": 1, "condition": "S", "probe": "mlp", "subset": "all", "accuracy": 0.52, "control_accuracy": 0.5},
    ]).assign(n_items=200, selectivity=lambda f: f["accuracy"] - f["control_accuracy"])
    linear, mlp = findings.probe_findings({"m": probes})
    se = np.sqrt((0.9 * 0.1 + 0.3 * 0.7) / 200)
    assert linear["value"] == pytest.approx(0.6) and linear["ci_lo"] == pytest.approx(0.6 - 1.959964 * se)
    assert linear["verdict"] == "above control" and "best layer 1" in linear["claim"]
    assert mlp["verdict"] == "indistinguishable from control" and "0.500" in mlp["control"]


def test_base_layer_agreement_against_the_default():
    """Base layers 0-3, default 2: path agreement 0.9, 0.7, (1), 0.95 -> mean 0.85, unstable (min 0.7 < 0.8);
    best-match agreement not computed (NaN) -> no row."""
    table = pd.DataFrame({"base_layer": [0, 1, 2, 3], "default": [False, False, True, False],
                          "path_agreement": [0.9, 0.7, 1.0, 0.95], "best_match_agreement": np.nan, "n_items": 50})
    (row,) = findings.base_layer_findings({"m": table})
    assert row["value"] == pytest.approx(0.85) and (row["ci_lo"], row["ci_hi"]) == (0.7, 0.95)
    assert row["verdict"] == "unstable (< 0.8)" and "default base layer 2" in row["control"]
    stable = findings.base_layer_findings({"m": table.assign(path_agreement=[0.9, 0.85, 1.0, 0.95])})
    assert stable[0]["verdict"] == "stable"
