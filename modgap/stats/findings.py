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

from modgap.metrics.lens_strata import item_strata
from modgap.states.readouts.attention import uniform_dispersion

COLUMNS = ["claim", "model", "statistic", "value", "ci_lo", "ci_hi", "n_items", "n_checkpoints", "control",
           "control_value", "verdict", "source"]
ALPHA = 0.05
STABLE_AGREEMENT = 0.8  # agreement from which a best match (or path) counts as stable
Z95 = 1.959964  # two-sided 95% normal quantile


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


def item_mean_row(claim: str, model: str, statistic: str, per_item: np.ndarray, n_boot: int, seed: int,
                  control: str, source: str) -> dict:
    """A findings row for the mean of per-item values [n] (NaN skipped) against a control of 0: the item-bootstrap
    interval, the finite items counted, one checkpoint."""
    lo, hi = item_bootstrap(per_item, n_boot, seed)
    return {"claim": claim, "model": model, "statistic": statistic, "value": float(np.nanmean(per_item)),
            "ci_lo": lo, "ci_hi": hi, "n_items": int(np.isfinite(per_item).sum()), "n_checkpoints": 1,
            "control": control, "control_value": 0.0, "verdict": interval_verdict(lo, hi), "source": source}


def stability_verdict(lowest: float) -> str:
    """Stable when the lowest agreement reaches `STABLE_AGREEMENT`."""
    return "stable" if lowest >= STABLE_AGREEMENT else f"unstable (< {STABLE_AGREEMENT})"


def difference_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of mean(a) - mean(b) for two independent item groups `a` [n], `b` [m], each
    resampled on its own."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1) - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def layer_mean(items: pd.DataFrame, column: str) -> pd.Series:
    """id -> the item's mean of `column` over its layers (NaN layers skipped)."""
    return items.groupby("id", sort=True)[column].mean()


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
            rows.append(item_mean_row(
                f"{path} path lands inside the true word more often than a time-proportional path "
                f"(best layer {best}, chosen post hoc)",
                model, "mean lift (hit rate - proportional hit rate)", at[f"gt_lift_{path}"].to_numpy(float),
                n_boot, seed,
                f"time-proportional path hit rate {at['gt_hit_proportional'].mean():.3f}; random path "
                f"{at['gt_hit_random_expected'].mean():.3f}; learned {at[f'gt_hit_{path}'].mean():.3f}",
                "metrics items.parquet"))
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
                "control_value": float("nan"), "verdict": stability_verdict(agree.min()),
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
        labels = {"path": "similarity" if r.op == "kv_merge" else "path", "random": "random", "even": "even",
                  "other_item": "other_item"}
        deltas = ", ".join(f"{label} {getattr(r, f'{name}_delta'):+.1f}" for name, label in labels.items()
                           if np.isfinite(getattr(r, f"{name}_delta", np.nan)))
        rows.append({
            "claim": f"{r.condition}: " + ("merging similar adjacent speech keys beats merging as many random pairs"
                                            if r.op == "kv_merge" else
                                            "editing the alignment path's positions beats editing random positions"),
            "model": r.model, "statistic": ("accuracy points, similarity merges minus random merges (paired)"
                                            if r.op == "kv_merge" else "accuracy points, path minus random (paired)"),
            "value": r.effect,
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
        rows.append(item_mean_row(
            "the model answers worse from speech than from text (the modality gap)", model,
            "gap, points (text minus speech accuracy)",
            100.0 * (answers["correct_T"] - answers["correct_S"]).to_numpy(float), n_boot, seed,
            f"text {100 * answers['correct_T'].mean():.1f}, speech {100 * answers['correct_S'].mean():.1f} (same items)",
            "metrics items.parquet"))
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


def attention_findings(items: pd.DataFrame, n_boot: int, seed: int) -> list[dict]:
    """Per checkpoint: normalised attention entropy of the decision position over the speech span minus over the text
    span, per item averaged over layers, item-bootstrap interval; a uniform row has entropy 1 on both spans, so the
    control is no difference (the uniform Cov_0.90 fractions go in the control text).

    items: the metrics items tables, columns model, id, layer, attn_entropy_{S,T}, attn_cov90_frac_{S,T},
    attn_span_len_{S,T} (NaN at layer 0)."""
    rows = []
    for model, g in items.groupby("model", sort=False):
        uniform = {c: uniform_dispersion(g.groupby("id")[f"attn_span_len_{c}"].first().to_numpy())["cov_frac"].mean()
                   for c in "ST"}
        rows.append(item_mean_row(
            "the decision position's attention over the speech span is more dispersed than over the text span",
            model, "normalised entropy, speech minus text span (layer mean)",
            (layer_mean(g, "attn_entropy_S") - layer_mean(g, "attn_entropy_T")).to_numpy(float), n_boot, seed,
            f"uniform attention: entropy 1 on both spans; Cov_0.90 fraction speech "
            f"{layer_mean(g, 'attn_cov90_frac_S').mean():.3f} (uniform {uniform['S']:.3f}), text "
            f"{layer_mean(g, 'attn_cov90_frac_T').mean():.3f} (uniform {uniform['T']:.3f})",
            "metrics items.parquet"))
    return rows


def lens_strata_findings(items: pd.DataFrame, strata: Mapping[str, pd.DataFrame], n_boot: int,
                         seed: int) -> list[dict]:
    """P2's only_t2t contrast per checkpoint: at the last layer, the speech lens margin of text-only items minus
    both-right items (two-group item bootstrap); the control is the same difference under the shuffled strata.

    items: the metrics items tables (model, id, layer, correct_S, correct_T, lens_margin_S); strata: per model, the
    metrics stage's lens_strata.csv (layer, stratum, labels, lens_margin_S)."""
    rows = []
    for model, table in strata.items():
        g = items[items["model"] == model]
        last = int(g["layer"].max())
        margin = g[g["layer"] == last].set_index("id")["lens_margin_S"]
        named = item_strata(g)
        at = table[table["layer"] == last].set_index(["labels", "stratum"])["lens_margin_S"]
        shuffled = float(at.get(("shuffled", "text_only"), np.nan) - at.get(("shuffled", "both"), np.nan))
        text_only, both = (margin.reindex(named.index[named == s]).to_numpy(float) for s in ("text_only", "both"))
        lo, hi = difference_bootstrap(text_only, both, n_boot, seed)
        rows.append({
            "claim": f"at the last layer ({last}) the speech lens margin is lower on items only text gets right "
                     "than on items both get right",
            "model": model, "statistic": "speech lens margin, text-only minus both-right items",
            "value": float(np.nanmean(text_only) - np.nanmean(both)) if len(text_only) and len(both) else np.nan,
            "ci_lo": lo, "ci_hi": hi, "n_items": len(text_only) + len(both), "n_checkpoints": 1,
            "control": f"the same difference with the strata shuffled ({shuffled:.3f}); {len(text_only)} text-only, "
                       f"{len(both)} both-right items",
            "control_value": shuffled, "verdict": interval_verdict(lo, hi, shuffled), "source": "metrics lens_strata.csv",
        })
    return rows


def transcript_findings(items: pd.DataFrame, transcripts: Mapping[str, pd.DataFrame], n_boot: int,
                        seed: int) -> list[dict]:
    """Per checkpoint, at the layer where the mean top-10 fraction is highest (post hoc): the fraction of words
    whose first token is in the lens top 10 in their speech span minus the wrong-word control's, item-bootstrap
    interval; the emergence layers go in the claim and control text.

    items: the metrics items tables (model, id, layer, transcript_top10_S, transcript_wrong_top10_S); transcripts:
    per model, the transcript.csv of `modgap.metrics.transcript.transcript_table`."""
    rows = []
    for model, table in transcripts.items():
        if table["transcript_top10_S"].isna().all():  # no item with words
            continue
        best = table.loc[table["transcript_top10_S"].idxmax()]
        at = items[(items["model"] == model) & (items["layer"] == best["layer"])]
        rows.append(item_mean_row(
            f"speech states carry their words' tokens in the logit lens (best layer {int(best['layer'])}, "
            f"chosen post hoc; top-10 fraction reaches {best['level']:g} at layer {best['emergence_layer']:g})",
            model, "top-10 fraction, spoken word minus wrong word",
            (at["transcript_top10_S"] - at["transcript_wrong_top10_S"]).to_numpy(float), n_boot, seed,
            f"wrong-word top-10 fraction {best['transcript_wrong_top10_S']:.3f} (spoken "
            f"{best['transcript_top10_S']:.3f}); wrong-word emergence layer {best['emergence_layer_wrong']:g}",
            "metrics transcript.csv"))
    return rows


def synchrony_findings(items: pd.DataFrame, n_boot: int, seed: int) -> list[dict]:
    """Per checkpoint and pairing (DTW, true-word): layer-update synchrony minus the shuffled-pair control, per item
    averaged over layers, item-bootstrap interval.

    items: the metrics items tables, columns model, id, layer, sync_dtw, sync_truth, sync_shuffled."""
    rows = []
    for model, g in items.groupby("model", sort=False):
        shuffled = layer_mean(g, "sync_shuffled")
        for column, pairing in (("sync_dtw", "DTW"), ("sync_truth", "true-word")):
            rows.append(item_mean_row(
                f"speech and text states on {pairing} pairs update in the same direction layer to layer",
                model, "update cosine minus shuffled pairs (layer mean)",
                (layer_mean(g, column) - shuffled).to_numpy(float), n_boot, seed,
                f"shuffled pairs {shuffled.mean():.3f}, {pairing} pairs {layer_mean(g, column).mean():.3f}",
                "metrics items.parquet"))
    return rows


def probe_findings(probes: Mapping[str, pd.DataFrame]) -> list[dict]:
    """Per checkpoint, condition, probe and subset: selectivity (accuracy minus shuffled-label accuracy) at the layer
    where it is highest (post hoc, so biased upwards), with a normal interval for the difference of two proportions
    on n items.

    probes: per model, the probes.csv (layer, condition, probe, subset, accuracy, control_accuracy, selectivity,
    n_items)."""
    rows = []
    for model, table in probes.items():
        for (condition, probe, subset), g in table.dropna(subset=["selectivity"]).groupby(
                ["condition", "probe", "subset"], sort=False):
            r = g.loc[g["selectivity"].idxmax()]
            se = np.sqrt((r.accuracy * (1 - r.accuracy) + r.control_accuracy * (1 - r.control_accuracy)) / r.n_items)
            lo, hi = r.selectivity - Z95 * se, r.selectivity + Z95 * se
            rows.append({
                "claim": f"a {probe} probe reads the gold option from the {condition} decision state ({subset} items; "
                         f"best layer {int(r.layer)}, chosen post hoc)",
                "model": model, "statistic": "selectivity (accuracy minus shuffled-label accuracy)",
                "value": float(r.selectivity), "ci_lo": float(lo), "ci_hi": float(hi), "n_items": int(r.n_items),
                "n_checkpoints": 1,
                "control": f"shuffled-label accuracy {r.control_accuracy:.3f} (probe accuracy {r.accuracy:.3f})",
                "control_value": 0.0, "verdict": interval_verdict(lo, hi), "source": "metrics probes.csv",
            })
    return rows


def base_layer_findings(base_layers: Mapping[str, pd.DataFrame]) -> list[dict]:
    """Per checkpoint: mean path agreement and best-match agreement of the non-default DTW base layers with the
    default base layer (the reference, agreement 1); interval: min and max over those base layers.

    base_layers: per model, the metrics stage's base_layers.csv (base_layer, default, path_agreement,
    best_match_agreement, n_items)."""
    rows = []
    for model, table in base_layers.items():
        others = table[~table["default"].astype(bool)]
        reference = int(table.loc[table["default"].astype(bool), "base_layer"].iloc[0])
        for column, what in (("path_agreement", "DTW path barely changes"),
                             ("best_match_agreement", "CKA best matches barely change")):
            values = others[column].dropna().to_numpy(float)
            if not len(values):
                continue
            rows.append({
                "claim": f"the {what} with the base layer DTW aligns",
                "model": model, "statistic": f"mean {column.replace('_', ' ')} over non-default base layers",
                "value": float(values.mean()), "ci_lo": float(values.min()), "ci_hi": float(values.max()),
                "n_items": int(table["n_items"].iloc[0]), "n_checkpoints": 1,
                "control": f"default base layer {reference} (agreement 1); {len(values)} other base layer(s) "
                           "(interval: min and max over them)",
                "control_value": 1.0, "verdict": stability_verdict(values.min()), "source": "metrics base_layers.csv",
            })
    return rows


def findings_table(rows: list[dict]) -> pd.DataFrame:
    """The findings rows in `COLUMNS` order (one table for the README and the report)."""
    return pd.DataFrame(rows, columns=COLUMNS)
