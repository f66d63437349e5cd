"""P2's Table 2 and Table 5 types against constructed stage tables with known values."""
import numpy as np
import pandas as pd
import pytest

from modgap.stats.decision_tables import attention_table, kv_merge_table


def items_table(span_s: list[int], span_t: list[int], layers: int = 3) -> pd.DataFrame:
    """Metrics items rows (model m, items i0.., layers 0..layers) whose summaries are a uniform row over each span:
    Cov_0.90 = ceil(0.9 n), max = 1/n, entropy 1; NaN at layer 0."""
    rows = []
    for k, (n_s, n_t) in enumerate(zip(span_s, span_t)):
        for layer in range(layers + 1):
            row = {"model": "m", "id": f"i{k}", "layer": layer}
            for cond, n in (("S", n_s), ("T", n_t)):
                cov = np.ceil(0.9 * n - 1e-9)
                values = {"cov90": cov, "cov90_frac": cov / n, "max": 1 / n, "entropy": 1.0}
                row |= {f"attn_{key}_{cond}": np.nan if layer == 0 else v for key, v in values.items()}
                row[f"attn_span_len_{cond}"] = n
            rows.append(row)
    return pd.DataFrame(rows)


def test_uniform_attention_sits_on_its_control():
    table = attention_table(items_table([10, 20], [4, 5])).set_index("condition")
    for key in ("cov90", "cov90_frac", "max", "entropy"):
        np.testing.assert_allclose(table[key], table[f"uniform_{key}"], err_msg=key)
    assert table.loc["S", "cov90"] == pytest.approx((9 + 18) / 2)  # ceil(0.9 n) by hand
    assert table.loc["T", "max"] == pytest.approx((1 / 4 + 1 / 5) / 2)
    assert table.loc["S", "span_len"] == 15 and table.loc["S", "n_items"] == 2


def test_concentrated_attention_departs_from_its_control():
    items = items_table([10, 10], [4, 4])
    items.loc[items["layer"] > 0, ["attn_cov90_S", "attn_max_S"]] = [1.0, 0.95]  # one position holds 95%
    s = attention_table(items).set_index("condition").loc["S"]
    assert s["cov90"] == 1 and s["uniform_cov90"] == 9 and s["max"] == pytest.approx(0.95)


def test_kv_merge_table_pairs_each_merge_with_its_control():
    base = {"op": "kv_merge", "layer": 7, "select_layer": 21, "select": "cos>0.9", "metric": "max 0.25", "n_items": 100}
    controls = pd.DataFrame([
        {**base, "model": "a", "condition": "kv", "merge_ratio": 0.2, "baseline_accuracy": 0.40, "path_delta": -3.0,
         "random_delta": -1.0, "effect": -2.0, "effect_ci_lo": -4.0, "effect_ci_hi": 0.0, "effect_mcnemar_p": 0.2},
        {**base, "model": "b", "condition": "kv", "merge_ratio": 0.1, "baseline_accuracy": 0.50, "path_delta": 2.0,
         "random_delta": 0.0, "effect": 2.0, "effect_ci_lo": 0.5, "effect_ci_hi": 3.5, "effect_mcnemar_p": 0.03},
        {**base, "op": "angle", "model": "a", "condition": "edit", "merge_ratio": np.nan, "baseline_accuracy": 0.4,
         "path_delta": 1.0, "random_delta": 0.0, "effect": 1.0, "effect_ci_lo": 0.0, "effect_ci_hi": 2.0,
         "effect_mcnemar_p": 0.5},
    ])
    conditions = pd.DataFrame([
        {"model": m, "condition": "kv", "op": "kv_merge", "control": c, "mcnemar_p": p}
        for m, c, p in (("a", "path", 0.01), ("a", "random", 0.9), ("b", "path", 0.3), ("b", "random", 1.0))
    ])
    table = kv_merge_table(controls, conditions).set_index("model")
    assert list(table.index) == ["a", "b"]  # the angle edit is not a merge
    assert table.loc["a", "merged"] == pytest.approx(37.0) and table.loc["b", "merged"] == pytest.approx(52.0)
    assert table.loc["a", "delta_mcnemar_p"] == 0.01 and table.loc["b", "delta_mcnemar_p"] == 0.3
    assert table.loc["a", "blocks"] == "7-21" and table.loc["b", "random_delta"] == 0.0
