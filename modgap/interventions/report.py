"""Summaries of the per-item interventions table: accuracy, paired change against the baseline with an exact
McNemar test, each edit's effect over its random-position control, and the papers' table layouts (accuracies in
percent, deltas in points)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.contingency_tables import mcnemar

from modgap.interventions.controls import SITES

KEYS = ["label", "condition", "control", "layer", "site", "select", "op", "metric", "select_layer", "r"]


def mcnemar_exact(baseline_correct, correct) -> dict:
    """Paired change of per-item correctness: fixed (wrong -> right), broken (right -> wrong), both right, both
    wrong, and the exact McNemar p-value (binomial on the discordant pairs; 1.0 when there are none)."""
    b0, b1 = np.asarray(baseline_correct, bool), np.asarray(correct, bool)
    if b0.shape != b1.shape:
        raise ValueError(f"paired correctness of different lengths: {b0.shape} vs {b1.shape}")
    table = np.array([[np.sum(b0 & b1), np.sum(b0 & ~b1)], [np.sum(~b0 & b1), np.sum(~b0 & ~b1)]])
    p = 1.0 if table[0, 1] + table[1, 0] == 0 else float(mcnemar(table, exact=True).pvalue)
    return {"fixed": int(table[1, 0]), "broken": int(table[0, 1]), "both_right": int(table[0, 0]),
            "both_wrong": int(table[1, 1]), "p_mcnemar": p}


def paired_ci(fixed: int, broken: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wald interval of a paired difference in proportions, (fixed - broken) / n, in points (Agresti,
    Categorical Data Analysis 10.1.1; statsmodels has no paired-proportion interval)."""
    d = (fixed - broken) / n
    se = np.sqrt(max(fixed + broken - n * d * d, 0.0)) / n
    return 100 * (d - z * se), 100 * (d + z * se)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per condition (label): n_items, accuracy and baseline accuracy (fractions), delta (points), fixed,
    broken and the exact McNemar p-value against the condition's baseline (S for edits and calibration, T for
    redundancy; the S and T rows are their own baseline)."""
    rows = []
    for label, g in table.groupby("label", sort=False):
        first = g.iloc[0]
        acc, base = float(g["correct"].mean()), float(g["baseline_correct"].mean())
        rows.append({**{k: first[k] for k in KEYS if k in g}, "n_items": len(g), "accuracy": acc,
                     "baseline_accuracy": base, "delta": round(100 * (acc - base), 2),
                     **mcnemar_exact(g["baseline_correct"], g["correct"])})
    return pd.DataFrame(rows)


def _percent(table: pd.DataFrame, mask: pd.Series) -> float:
    sel = table.loc[mask.fillna(False).astype(bool), "correct"]
    return round(100 * float(sel.mean()), 2) if len(sel) else float("nan")


def _by_model(tables: dict[str, pd.DataFrame], columns: dict, name: str) -> pd.DataFrame:
    out = pd.DataFrame([{c: _percent(t, f(t)) for c, f in columns.items()} for t in tables.values()],
                       index=pd.Index(list(tables), name="model"))
    out.columns.name = name
    return out


def p1_table(tables: dict[str, pd.DataFrame], layer: int = 0, k: int = 3) -> pd.DataFrame:
    """P1's interventions table, accuracy in percent: rows = model (the dict keys, one per-item table each);
    columns text, speech, angle bottom-k, angle all, length bottom-k, length all (edits at `layer`, selection by
    cosine at the edited layer; NaN where a condition was not run)."""
    def edit(op: str, select: str):
        return lambda t: ((t["condition"] == "edit") & (t["control"] == "path") & (t["op"] == op)
                          & (t["select"] == select) & (t["layer"] == layer) & (t["metric"] == "cos")
                          & (t["select_layer"] == layer))

    columns = {"text": lambda t: t["condition"] == "T", "speech": lambda t: t["condition"] == "S"}
    for op in ("angle", "length"):
        for select in (f"bottom-{k}", "all"):
            columns[f"{op} {select}"] = edit(op, select)
    return _by_model(tables, columns, f"accuracy (%), edits at layer {layer}")


def p2_calibration_table(tables: dict[str, pd.DataFrame], stats_mode: str = "per_dim") -> pd.DataFrame:
    """P2's calibration table, accuracy in percent: rows = model; columns speech (baseline), input calibration
    (layer 0), output calibration (last layer), text."""
    def calib(site: str):
        return lambda t: (t["condition"] == "calibration") & (t["site"] == site) & (t["op"] == stats_mode)

    columns = {"speech": lambda t: t["condition"] == "S", "input calibration": calib("input"),
               "output calibration": calib("output"), "text": lambda t: t["condition"] == "T"}
    return _by_model(tables, columns, f"accuracy (%), {stats_mode} statistics")


def redundancy_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Text redundancy curve: one row per (model, r) with accuracy (percent), delta against baseline T (points),
    fixed, broken, exact McNemar p and n_items (`summarize` of the redundancy rows)."""
    columns = ["model", "r", "accuracy", "delta", "n_items", "fixed", "broken", "p_mcnemar"]
    frames = [summarize(t[t["condition"] == "redundancy"]).assign(model=model).sort_values("r")
              for model, t in tables.items() if (t["condition"] == "redundancy").any()]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    return out.assign(r=out["r"].astype(int), accuracy=(100 * out["accuracy"]).round(2))[columns]


def redundancy_lens_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Decision dynamics under text redundancy: one row per (model, r, layer) with the mean logit-lens margin and
    normalised entropy at the decision position over the redundancy rows' items, and n_items."""
    columns = ["model", "r", "layer", "lens_margin", "lens_entropy", "n_items"]
    frames = []
    for model, t in tables.items():
        rows = t[t["condition"] == "redundancy"]
        if rows.empty:
            continue
        long = rows[["r", "lens_margin", "lens_entropy"]].explode(["lens_margin", "lens_entropy"])
        long = long.assign(layer=long.groupby(level=0).cumcount(), r=long["r"].astype(int),
                           lens_margin=long["lens_margin"].astype(float), lens_entropy=long["lens_entropy"].astype(float))
        frames.append(long.groupby(["r", "layer"]).agg(lens_margin=("lens_margin", "mean"),
                                                       lens_entropy=("lens_entropy", "mean"),
                                                       n_items=("lens_entropy", "size")).reset_index()
                      .assign(model=model))
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


EDIT_KEYS = ["layer", "site", "select", "op", "metric", "select_layer"]
CONTROL_COLUMNS = ["condition", *EDIT_KEYS, "n_items", "n_edited", "merge_ratio", "baseline_accuracy",
                   *(f"{c}_delta" for c in SITES), "effect", "effect_ci_lo", "effect_ci_hi", "path_only",
                   "random_only", "effect_mcnemar_p"]


def _correct_by_item(run: pd.DataFrame, ids: pd.Index, label: str) -> pd.Series:
    """`correct` of one run indexed by item id, in the order of `ids`; ValueError naming the run if its items
    differ."""
    got = run.set_index("id")["correct"]
    if len(got) != len(ids) or set(got.index) != set(ids):
        raise ValueError(f"{label}: its items differ from those of the path run it is paired with")
    return got.reindex(ids)


def control_effects(table: pd.DataFrame) -> pd.DataFrame:
    """One row per edit condition (P1 edits and KV merges) of one model's per-item table (`CONTROL_COLUMNS`):
    `condition` (the path's label), n_items, mean n_edited, mean realised merge_ratio (KV merges; NaN for edits),
    baseline (unedited S) accuracy as a fraction, each run's delta against that baseline (`<control>_delta`, points;
    NaN for a control not run), and the effect of interest, path minus the random control paired on the same items:
    point estimate and 95% Wald interval (points), the discordant items (path_only: right after the path edit only;
    random_only) and their exact McNemar p (NaN without a random control)."""
    rows = []
    edits = table[table["condition"].isin(["edit", "kv_merge"])]
    for keys, group in edits.groupby(EDIT_KEYS, sort=False, dropna=False):
        runs = {c: summarize(g).iloc[0] for c, g in group.groupby("control")}
        if "path" not in runs:
            raise ValueError(f"edit at {dict(zip(EDIT_KEYS, keys))}: controls without their path run")
        path = group[group["control"] == "path"]
        row = {"condition": runs["path"]["label"], **dict(zip(EDIT_KEYS, keys)), "n_items": len(path),
               "n_edited": float(path["n_edited"].mean()),
               "merge_ratio": float(path["merge_ratio"].mean()),
               "baseline_accuracy": runs["path"]["baseline_accuracy"],
               **{f"{c}_delta": runs[c]["delta"] if c in runs else np.nan for c in SITES}}
        if "random" in runs:
            ids = pd.Index(path["id"])
            random = _correct_by_item(group[group["control"] == "random"], ids, runs["random"]["label"])
            test = mcnemar_exact(random.to_numpy(), path["correct"].to_numpy())
            lo, hi = paired_ci(test["fixed"], test["broken"], len(ids))
            row |= {"effect": round(100 * (test["fixed"] - test["broken"]) / len(ids), 2), "effect_ci_lo": lo,
                    "effect_ci_hi": hi, "path_only": test["fixed"], "random_only": test["broken"],
                    "effect_mcnemar_p": test["p_mcnemar"]}
        rows.append(row)
    return pd.DataFrame(rows, columns=CONTROL_COLUMNS)
