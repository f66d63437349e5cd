"""P2's two decision-dynamics tables, each beside its control, from the stage tables only.

- Table 2 type (`attention_table`): the decision position's attention dispersion over the question span, speech and
  text, with the uniform row's values over the same spans (the control);
- Table 5 type (`kv_merge_table`): KV token merging's accuracy change against unedited speech, beside the same
  number of random merges (the control) and the effect, similarity minus random.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from modgap.states.readouts.attention import uniform_dispersion

SUMMARIES = {"attn_cov90": "cov", "attn_cov90_frac": "cov_frac", "attn_max": "max", "attn_entropy": "entropy"}


def attention_table(items: pd.DataFrame) -> pd.DataFrame:
    """Per model and condition (S, T): the item mean of each dispersion summary averaged over blocks, and the
    uniform row's value over the item's span length (`uniform_<summary>`).

    items: the metrics items tables, one row per item and layer: model, id, layer, attn_{cov90, cov90_frac, max,
    entropy, span_len}_{S,T} (NaN at layer 0, which has no attention)."""
    rows = []
    for model, g in items.groupby("model", sort=False):
        per_item = g.groupby("id", sort=True).mean(numeric_only=True)
        for cond in ("S", "T"):
            uniform = uniform_dispersion(per_item[f"attn_span_len_{cond}"].to_numpy())
            row = {"model": model, "condition": cond, "n_items": len(per_item),
                   "span_len": float(per_item[f"attn_span_len_{cond}"].mean())}
            for column, key in SUMMARIES.items():
                row[column.removeprefix("attn_")] = float(per_item[f"{column}_{cond}"].mean())
                row[f"uniform_{column.removeprefix('attn_')}"] = float(np.nanmean(uniform[key]))
            rows.append(row)
    return pd.DataFrame(rows)


def kv_merge_table(controls: pd.DataFrame, conditions: pd.DataFrame) -> pd.DataFrame:
    """Per model and merge setting: blocks, threshold, maximum ratio, the fraction of span positions merged,
    speech accuracy without and with merging (points), the change and its McNemar p, the random-merge control's
    change, and the effect (similarity minus random) with its paired interval and McNemar p.

    controls, conditions: the interventions stage's controls.csv and conditions.csv."""
    merges = controls[controls["op"] == "kv_merge"]
    path = conditions[(conditions["op"] == "kv_merge") & (conditions["control"] == "path")]
    p_merge = path.set_index(["model", "condition"])["mcnemar_p"]
    return pd.DataFrame({
        "model": merges["model"],
        "blocks": [f"{int(a)}-{int(b)}" for a, b in zip(merges["layer"], merges["select_layer"])],
        "threshold": merges["select"], "max_ratio": merges["metric"], "merged_frac": merges["merge_ratio"],
        "n_items": merges["n_items"], "speech": 100 * merges["baseline_accuracy"],
        "merged": 100 * merges["baseline_accuracy"] + merges["path_delta"], "delta": merges["path_delta"],
        "delta_mcnemar_p": [p_merge.get((m, c), np.nan) for m, c in zip(merges["model"], merges["condition"])],
        "random_delta": merges["random_delta"], "effect": merges["effect"], "effect_ci_lo": merges["effect_ci_lo"],
        "effect_ci_hi": merges["effect_ci_hi"], "effect_mcnemar_p": merges["effect_mcnemar_p"],
    }).reset_index(drop=True)
