"""The `findings` table: every claim the study makes, next to its control, built from the stage tables only.

One row per claim: claim, statistic, value, ci_lo, ci_hi, n_items, n_checkpoints, control, control_value, verdict,
source (the table it comes from). The README's findings section and the report quote this table; nothing else.
Verdicts are mechanical: an interval above its control's value is "above control", below it "below control",
otherwise "indistinguishable from control"; tests say "significant" only below alpha and print their floor.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


COLUMNS = ["claim", "model", "statistic", "value", "ci_lo", "ci_hi", "n_items", "n_checkpoints", "control",
           "control_value", "verdict", "source"]
ALPHA = 0.05


def interval_verdict(lo: float, hi: float, control: float = 0.0) -> str:
    """Where an interval lies relative to its control's value."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval"
    if lo > control:
        return "above control"
    if hi < control:
        return "below control"
    return "indistinguishable from control"


def item_bootstrap(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean of per-item `values` [n] over item resamples."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(values), (n_boot, len(values)))
    lo, hi = np.percentile(values[draws].mean(1), [2.5, 97.5])
    return float(lo), float(hi)


def path_findings(items: pd.DataFrame, n_boot: int, seed: int, first_layer: int = 1) -> list[dict]:
    """Per checkpoint and path (argmax, DTW): at the layer where the path's hit rate is highest (chosen post hoc,
    layers >= `first_layer`), the mean lift over the time-proportional path with an item-bootstrap interval.

    items: the metrics items tables, columns model, id, layer, gt_hit_<path>, gt_lift_<path>,
    gt_hit_proportional, gt_hit_random_expected."""
    rows = []
    for model, g in items[items["layer"] >= first_layer].groupby("model", sort=False):
        for path in ("argmax", "dtw"):
            best = int(g.groupby("layer")[f"gt_hit_{path}"].mean().idxmax())
            at = g[g["layer"] == best]
            lift = at[f"gt_lift_{path}"].to_numpy(float)
            lo, hi = item_bootstrap(lift, n_boot, seed)
            rows.append({
                "claim": f"{path} path lands inside the true word more often than a time-proportional path "
                         f"(best layer {best}, chosen post hoc)",
                "model": model, "statistic": "mean lift (hit rate - proportional hit rate)",
                "value": float(np.nanmean(lift)), "ci_lo": lo, "ci_hi": hi, "n_items": int(at["id"].nunique()),
                "n_checkpoints": 1,
                "control": f"time-proportional path hit rate {at['gt_hit_proportional'].mean():.3f}; random path "
                           f"{at['gt_hit_random_expected'].mean():.3f}; learned {at[f'gt_hit_{path}'].mean():.3f}",
                "control_value": 0.0, "verdict": interval_verdict(lo, hi), "source": "metrics items.parquet",
            })
    return rows


def cka_findings(cka: Mapping[str, pd.DataFrame], readouts: Mapping[str, pd.DataFrame],
                 summaries: Mapping[str, dict]) -> list[dict]:
    """Per checkpoint, default DTW configuration, biased estimator: (1) how far the best-match cells stand above
    the permutation null (mean z; verdict above control when every best-match cell has z > 3); (2) how often the
    best match survives item resamples; (3) whether true-word pairing gives the same best matches as DTW pairing.

    cka, readouts, summaries: per model, the metrics stage's cka.parquet, cka_readouts.csv and summary.json."""
    rows = []
    for model, table in cka.items():
        default = summaries[model]["dtw_configs"][0]["label"]
        n_items = int(summaries[model]["n_items"])
        cells = table[(table["config"] == default) & (table["estimator"] == "biased")]
        best = readouts[model]
        best = best[(best["config"] == default) & (best["estimator"] == "biased")]
        on_best = cells.merge(best[["speech_layer", "best_text_layer"]],
                              left_on=["speech_layer", "text_layer"], right_on=["speech_layer", "best_text_layer"])
        z = on_best["cka_z"].to_numpy(float)
        rows.append({
            "claim": "best-match CKA cells stand above a shuffled-item null (z > 3 at every speech layer)",
            "model": model, "statistic": "mean z of the best-match cells", "value": float(np.mean(z)),
            "ci_lo": float(np.min(z)), "ci_hi": float(np.max(z)), "n_items": n_items, "n_checkpoints": 1,
            "control": f"permutation null mean {on_best['null_mean'].mean():.3f} (interval: min and max z over "
                       "speech layers)",
            "control_value": 3.0, "verdict": "above control" if np.min(z) > 3 else "not above control at every layer",
            "source": "metrics cka.parquet",
        })
        if "best_agreement" in best and best["best_agreement"].notna().any():
            agree = best["best_agreement"].to_numpy(float)
            rows.append({
                "claim": "best-match text layers are stable under item resampling",
                "model": model, "statistic": "mean bootstrap agreement of the best match", "value": float(agree.mean()),
                "ci_lo": float(agree.min()), "ci_hi": float(agree.max()), "n_items": n_items, "n_checkpoints": 1,
                "control": f"{int(best['n_boot'].iloc[0])} item resamples (interval: min and max over speech layers)",
                "control_value": float("nan"), "verdict": "stable" if agree.min() >= 0.8 else "unstable (< 0.8)",
                "source": "metrics cka_readouts.csv",
            })
        truth = summaries[model]["cka_stability_vs_default"].get("truth-pairs/biased")
        if truth is not None:
            rows.append({
                "claim": "DTW pairing gives the best-match layers that true-word pairing gives",
                "model": model, "statistic": "fraction of speech layers with the same best match",
                "value": truth["best_match_agreement"], "ci_lo": float("nan"), "ci_hi": float("nan"),
                "n_items": n_items, "n_checkpoints": 1,
                "control": f"true-word pairing; band Jaccard {truth['band_jaccard']:.2f}, matrix correlation "
                           f"{truth['matrix_correlation']:.2f}",
                "control_value": 1.0, "verdict": "agrees" if truth["best_match_agreement"] == 1 else "disagrees",
                "source": "metrics summary.json",
            })
    return rows


def fit_findings(fits: pd.DataFrame) -> list[dict]:
    """P1's regression per training strategy and metric: R² with its interval (over checkpoints when there are
    enough, else item noise only) and the permutation p printed with its floor.

    fits: the stats stage's fits.csv (group, x, n_items, n_checkpoints, slope, r2, r2_ci_lo, r2_ci_hi,
    r2_ci_source, perm_p, perm_floor)."""
    rows = []
    for r in fits.itertuples():
        significant = np.isfinite(r.perm_p) and r.perm_p < ALPHA
        floor_note = f"; smallest attainable p {r.perm_floor:.3g}" if r.perm_floor >= ALPHA else ""
        rows.append({
            "claim": f"GAP varies linearly with layer-averaged {r.x} across {r.group} checkpoints (P1)",
            "model": f"{r.group} ({r.n_checkpoints} checkpoints)", "statistic": f"R² (slope {r.slope:.3g})",
            "value": r.r2, "ci_lo": r.r2_ci_lo, "ci_hi": r.r2_ci_hi, "n_items": r.n_items,
            "n_checkpoints": r.n_checkpoints,
            "control": f"permutation p = {r.perm_p:.3g} (floor {r.perm_floor:.3g}); R² interval: {r.r2_ci_source}",
            "control_value": r.perm_floor,
            "verdict": ("significant" if significant else f"not significant{floor_note}" if np.isfinite(r.perm_p)
                        else f"not testable with {r.n_checkpoints} checkpoint(s)"),
            "source": "stats fits.csv",
        })
    return rows


def logistic_findings(logistic: pd.DataFrame) -> list[dict]:
    """Item-level logistic regressions of correct_S on each z-scored metric, clustered as the table says.

    logistic: the stats stage's logistic.csv (group, metric, coef, ci_lo, ci_hi, p, n_items, n_checkpoints,
    cluster_unit, fixed_effects)."""
    return [{
        "claim": f"items with higher {r.metric} are answered correctly from speech more often",
        "model": r.group, "statistic": "logit coefficient per SD", "value": r.coef, "ci_lo": r.ci_lo, "ci_hi": r.ci_hi,
        "n_items": r.n_items, "n_checkpoints": r.n_checkpoints,
        "control": f"p = {r.p:.3g}; SEs clustered by {r.cluster_unit}; fixed effects {r.fixed_effects}",
        "control_value": 0.0, "verdict": interval_verdict(r.ci_lo, r.ci_hi), "source": "stats logistic.csv",
    } for r in logistic.itertuples()]


def edit_findings(controls: pd.DataFrame) -> list[dict]:
    """P1's edits (and P2's KV merges) against their controls, per checkpoint and edit condition: the path run minus
    the same number of edits (merges) at random positions (adjacent pairs), on the same items (paired interval,
    exact McNemar p); the random, evenly spaced and other-item runs' own deltas go in the control text.

    controls: the interventions stage's controls.csv (model, condition, op, n_items, path_delta, random_delta,
    even_delta, other_item_delta, effect, effect_ci_lo, effect_ci_hi, effect_mcnemar_p)."""
    rows = []
    for r in controls.itertuples():
        deltas = ", ".join(f"{name} {getattr(r, f'{name}_delta'):+.1f}" for name in ("path", "random", "even",
                                                                                    "other_item")
                           if np.isfinite(getattr(r, f"{name}_delta", np.nan)))
        rows.append({
            "claim": f"{r.condition}: " + ("merging similar adjacent speech keys beats merging as many random pairs"
                                            if r.op == "kv_merge" else
                                            "editing the alignment path's positions beats editing random positions"),
            "model": r.model, "statistic": "accuracy points, path minus random (paired)", "value": r.effect,
            "ci_lo": r.effect_ci_lo, "ci_hi": r.effect_ci_hi, "n_items": r.n_items, "n_checkpoints": 1,
            "control": f"deltas vs unedited speech: {deltas}; McNemar p = {r.effect_mcnemar_p:.3g}",
            "control_value": 0.0, "verdict": interval_verdict(r.effect_ci_lo, r.effect_ci_hi),
            "source": "interventions controls.csv",
        })
    return rows


def gap_findings(items: pd.DataFrame, n_boot: int, seed: int) -> list[dict]:
    """Per checkpoint: the modality gap in points (text minus speech accuracy on the same items), item-bootstrap
    interval; the control is no gap.

    items: the metrics items tables (model, id, correct_S, correct_T; one row per layer, the answers repeat)."""
    rows = []
    for model, g in items.groupby("model", sort=False):
        answers = g.groupby("id")[["correct_S", "correct_T"]].first()
        per_item = 100.0 * (answers["correct_T"] - answers["correct_S"]).to_numpy(float)
        lo, hi = item_bootstrap(per_item, n_boot, seed)
        rows.append({
            "claim": "the model answers worse from speech than from text (the modality gap)", "model": model,
            "statistic": "gap, points (text minus speech accuracy)", "value": float(per_item.mean()), "ci_lo": lo,
            "ci_hi": hi, "n_items": len(answers), "n_checkpoints": 1,
            "control": f"text {100 * answers['correct_T'].mean():.1f}, speech {100 * answers['correct_S'].mean():.1f}"
                       " (same items)",
            "control_value": 0.0, "verdict": interval_verdict(lo, hi), "source": "metrics items.parquet",
        })
    return rows


def condition_findings(conditions: pd.DataFrame) -> list[dict]:
    """P2's calibration (speech vs unedited speech) and text redundancy (text vs plain text), per checkpoint and
    condition: accuracy change with its paired interval and exact McNemar p.

    conditions: the interventions stage's conditions.csv (model, kind, condition, n_items, accuracy,
    baseline_accuracy as fractions; delta, ci_lo, ci_hi in points; mcnemar_p)."""
    rows = []
    for r in conditions[conditions["kind"].isin(["calibration", "redundancy"])].itertuples():
        against = "unedited speech" if r.kind == "calibration" else "the plain text condition"
        rows.append({
            "claim": f"{r.condition} changes accuracy", "model": r.model,
            "statistic": "accuracy change, points (paired)", "value": r.delta, "ci_lo": r.ci_lo,
            "ci_hi": r.ci_hi, "n_items": r.n_items, "n_checkpoints": 1,
            "control": f"{against} on the same items ({100 * r.baseline_accuracy:.1f}); McNemar p = {r.mcnemar_p:.3g}",
            "control_value": 0.0, "verdict": interval_verdict(r.ci_lo, r.ci_hi), "source": "interventions conditions.csv",
        })
    return rows


def findings_table(rows: list[dict]) -> pd.DataFrame:
    """The findings rows in `COLUMNS` order (one table for the README and the report)."""
    return pd.DataFrame(rows, columns=COLUMNS)
