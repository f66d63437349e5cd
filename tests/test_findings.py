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
