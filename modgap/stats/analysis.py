"""Statistics of the modality gap (METHODS.md, "P1: correlation with the gap"): P1's one-point-per-checkpoint
regression of GAP on a layer-averaged alignment score, with item-bootstrap CIs and permutation p-values, plus
modgap's per-item, per-layer and per-subject tests with Benjamini-Hochberg FDR, and P1's decomposition of each
checkpoint's accuracies into text loss and modality gap.

Right units (METHODS.md, "Controls: Statistics"): the same items recur in every checkpoint, so item-level models
cluster by item; checkpoint-level fits run per training strategy (P1 never pooled strategies; pooling is an option);
each permutation p comes with its floor (the least p its test can give with n points); R² intervals resample the
checkpoints where there are at least MIN_BOOT_POINTS of them, else they are the item bootstrap's, item noise only.

Input `items`, the metrics stage's long table, one row per (checkpoint, item, layer): model, strategy, step, id,
subject, layer (0 = input embeddings), one float column per metric (cos, l2, aps_cos, ...: functions take the
names), correct_S, correct_T (0/1, constant over the layers of one item).
Accuracies and gaps are in points (percent). A layer-averaged score averages layers 1..L, or 0..L with
include_layer0 (METHODS default: exclude). Every test table carries n_items (distinct item ids) and n_checkpoints
(distinct models) it rests on. Correlations on fewer than 3 points, or on a constant side, are NaN, not an error.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationError, PerfectSeparationWarning

from modgap.checkpoints import ALL

BASE_COLUMNS = ("model", "strategy", "step", "id", "subject", "layer", "correct_S", "correct_T")
ITEM_KEYS = ["model", "id"]
CHECKPOINT_KEYS = ["model", "strategy", "step"]
FIT_FIELDS = ("slope", "intercept", "r2", "pearson_r", "pearson_p", "spearman_rho", "spearman_p")
BOOT_FIELDS = ("slope", "r2", "pearson_r", "spearman_rho")
MIN_POINTS = 3  # with 2 points any line fits exactly (R² = 1): no fit or correlation below this
MIN_BOOT_POINTS = 5  # under 5 checkpoints a bootstrap over them draws from a handful of distinct resamples
POOLED = "pooled"  # the group of item tests pooled over checkpoints (by=None)
R2_FROM_CHECKPOINTS = "checkpoints"  # r2_ci_source: a bootstrap over the fit's points
ITEM_NOISE_ONLY = "items (item noise only)"  # r2_ci_source: the item bootstrap, which holds the checkpoints fixed
CLUSTER_KEYS = {"item": ["id"], "checkpoint+item": ["model", "id"], "none": []}  # cluster unit -> item-table columns
LOGIT_FIELDS = ("coef", "se", "ci_lo", "ci_hi", "p")
BASE_TEXT = "base_text_acc"  # the lab accuracy table's column: the base LM's text accuracy (fraction)


def _names(metrics: Sequence[str] | str) -> list[str]:
    """`metrics` as a list (one name allowed)."""
    return [metrics] if isinstance(metrics, str) else list(metrics)


def _validate(items: pd.DataFrame, metrics: Sequence[str] | str) -> list[str]:
    """Check `items` against the input contract; return `metrics` as a list."""
    metrics = _names(metrics)
    if items.empty:
        raise ValueError("items is empty: no checkpoints to analyse")
    missing = [c for c in (*BASE_COLUMNS, *metrics) if c not in items.columns]
    if missing:
        raise ValueError(f"items lacks column(s) {missing}")
    duplicated = items.duplicated(["model", "id", "layer"])
    if duplicated.any():
        raise ValueError(f"items has duplicate (model, id, layer) rows, first {tuple(items.loc[duplicated.idxmax(), ['model', 'id', 'layer']])}")
    varying = items.groupby("model")[["strategy", "step"]].nunique(dropna=False).max()
    if (varying > 1).any():
        raise ValueError(f"items has model(s) whose {list(varying.index[varying > 1])} vary; one value per checkpoint expected")
    return metrics


def _layers(items: pd.DataFrame, include_layer0: bool) -> pd.DataFrame:
    """The rows of the layers analysed: 1..L, or 0..L with include_layer0."""
    rows = items if include_layer0 else items[items["layer"] > 0]
    if rows.empty:
        raise ValueError("items has no layer > 0 (pass include_layer0=True to analyse layer 0)")
    return rows


def _counts(rows: pd.DataFrame) -> dict[str, int]:
    """n_obs (rows), n_items (distinct ids) and n_checkpoints (distinct models) of `rows`."""
    return {"n_obs": len(rows), "n_items": rows["id"].nunique(), "n_checkpoints": rows["model"].nunique()}


def fdr_bh(p: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """Benjamini-Hochberg q-values of `p`; NaN p-values stay NaN and are left out of the family."""
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return q


def _corr(test: Callable[..., Any], x: Any, y: Any) -> tuple[float, float]:
    """`test`'s (statistic, p) on the finite pairs of x, y; NaN under MIN_POINTS pairs or with a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < MIN_POINTS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    result = test(x, y)
    return float(result.statistic), float(result.pvalue)


# ---- layer averages and points -------------------------------------------------------------------------------

def item_scores(items: pd.DataFrame, metrics: Sequence[str], include_layer0: bool = False) -> pd.DataFrame:
    """One row per (checkpoint, item): model, strategy, step, id, subject, correct_S, correct_T, and each metric
    averaged over the layers analysed (NaN layers skipped)."""
    metrics = _validate(items, metrics)
    per_item = _layers(items, include_layer0).groupby(ITEM_KEYS, sort=True)
    varying = per_item[["correct_S", "correct_T", "subject"]].nunique(dropna=False).max()
    if (varying > 1).any():
        raise ValueError(f"items has {list(varying.index[varying > 1])} varying across the layers of one item")
    fixed = {c: "first" for c in ("strategy", "step", "subject", "correct_S", "correct_T")}
    return per_item.agg(fixed | dict.fromkeys(metrics, "mean")).reset_index()


def _aggregate(scores: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """Per group of `keys` of item scores: n_items, text_acc, speech_acc, gap (points) and each metric's item mean."""
    out = scores.groupby(keys, sort=True, dropna=False).agg(
        n_items=("id", "nunique"), text_acc=("correct_T", "mean"), speech_acc=("correct_S", "mean"),
        **{m: (m, "mean") for m in metrics}).reset_index()
    out[["text_acc", "speech_acc"]] *= 100
    out.insert(out.columns.get_loc("speech_acc") + 1, "gap", out["text_acc"] - out["speech_acc"])
    return out.astype({"step": "Int64"}) if pd.api.types.is_numeric_dtype(out["step"]) else out


def checkpoint_points(items: pd.DataFrame, metrics: Sequence[str], include_layer0: bool = False) -> pd.DataFrame:
    """P1's design, one row per checkpoint: model, strategy, step, n_items, text_acc, speech_acc, gap (points),
    and per metric the item mean of its layer average (S_cos, S_l2, APS...)."""
    return _aggregate(item_scores(items, metrics, include_layer0), CHECKPOINT_KEYS, _names(metrics))


def subject_points(items: pd.DataFrame, metrics: Sequence[str], include_layer0: bool = False) -> pd.DataFrame:
    """One row per (checkpoint, subject): model, strategy, step, subject, n_items, text_acc, speech_acc, gap
    (points), and per metric the item mean of its layer average."""
    return _aggregate(item_scores(items, metrics, include_layer0), [*CHECKPOINT_KEYS, "subject"], _names(metrics))


# ---- P1: checkpoint-level regression -------------------------------------------------------------------------

def _fit(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Fit fields of y on x over their finite pairs, with n_checkpoints and a note; NaN fields and a note saying
    why when there are under MIN_POINTS pairs or a side is constant."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    note = (f"{n} checkpoint(s): a fit needs at least {MIN_POINTS}" if n < MIN_POINTS
            else "x is constant" if np.ptp(x) == 0 else "y is constant" if np.ptp(y) == 0 else "")
    if note:
        return dict.fromkeys(FIT_FIELDS, math.nan) | {"n_checkpoints": n, "note": note}
    line, rank = stats.linregress(x, y), stats.spearmanr(x, y)
    # linregress's p (t-test of slope 0) is the same test as pearsonr's p
    return {"slope": line.slope, "intercept": line.intercept, "r2": line.rvalue ** 2, "pearson_r": line.rvalue,
            "pearson_p": line.pvalue, "spearman_rho": rank.statistic, "spearman_p": rank.pvalue,
            "n_checkpoints": n, "note": ""}


def checkpoint_fit(points: pd.DataFrame, x: str, y: str = "gap") -> dict[str, Any]:
    """Linear regression of points[y] on points[x] (one row per checkpoint, as from checkpoint_points): slope,
    intercept, r2, pearson_r, pearson_p, spearman_rho, spearman_p, n_checkpoints, note. Raises only on an empty
    table or a missing column; 1-2 checkpoints (or a constant side) give NaN fields with the reason in `note`."""
    if points.empty:
        raise ValueError("points is empty: no checkpoints to fit")
    missing = [c for c in (x, y) if c not in points.columns]
    if missing:
        raise ValueError(f"points lacks column(s) {missing}")
    return _fit(points[x].to_numpy(dtype=float), points[y].to_numpy(dtype=float))


def _matrices(scores: pd.DataFrame, metrics: list[str]) -> dict[str, np.ndarray]:
    """Item scores as [checkpoints, item ids] arrays (NaN where a checkpoint lacks an item), per column."""
    wide = scores.pivot(index="model", columns="id", values=[*metrics, "correct_S", "correct_T"])
    return {c: wide[c].to_numpy(dtype=float) for c in (*metrics, "correct_S", "correct_T")}


def _points(mats: dict[str, np.ndarray], idx: np.ndarray, metrics: list[str]) -> dict[str, np.ndarray]:
    """Per checkpoint, over the item columns `idx` (repeats count): each metric's item mean, and gap (points)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a checkpoint with no drawn item: NaN, dropped by _fit
        mean = {c: np.nanmean(a[:, idx], axis=1) for c, a in mats.items()}
    return {m: mean[m] for m in metrics} | {"gap": 100 * (mean["correct_T"] - mean["correct_S"])}


def _bootstrap_cis(mats: dict[str, np.ndarray], metrics: list[str], n_boot: int, seed: int,
                   confidence: float) -> dict[str, dict[str, float]]:
    """Percentile CIs of BOOT_FIELDS per metric, resampling item ids with replacement (one resample for every
    checkpoint, points recomputed and refit); NaN when n_boot is 0 or there is too little to resample."""
    n_checkpoints, n_ids = mats["correct_S"].shape
    if n_boot == 0 or n_ids < 2 or n_checkpoints < MIN_POINTS:
        return {m: {f"{f}_{end}": math.nan for f in BOOT_FIELDS for end in ("lo", "hi")} for m in metrics}

    def statistic(idx: np.ndarray) -> np.ndarray:
        points = _points(mats, idx, metrics)
        return np.array([_fit(points[m], points["gap"])[f] for m in metrics for f in BOOT_FIELDS], dtype=float)

    ci = stats.bootstrap((np.arange(n_ids),), statistic, n_resamples=n_boot, vectorized=False, method="percentile",
                         confidence_level=confidence, rng=np.random.default_rng(seed)).confidence_interval
    lo, hi = (np.reshape(bound, (len(metrics), len(BOOT_FIELDS))) for bound in (ci.low, ci.high))
    return {m: {f"{f}_{end}": float(b[i, j]) for j, f in enumerate(BOOT_FIELDS) for end, b in (("lo", lo), ("hi", hi))}
            for i, m in enumerate(metrics)}


def permutation_p(x: np.ndarray, y: np.ndarray, n_perm: int = 9999, seed: int = 0) -> float:
    """Two-sided permutation p of Pearson r (equivalently the slope) of y on x, permuting y across the points:
    exact when n! <= n_perm (scipy enumerates; up to 7 points by default), else n_perm seeded random permutations.
    Expects finite, non-constant x and y (as left by _fit)."""
    def pearson(y_perm: np.ndarray, axis: int) -> np.ndarray:
        return stats.pearsonr(x, y_perm, axis=axis).statistic

    return float(stats.permutation_test((y,), pearson, permutation_type="pairings", vectorized=True,
                                        n_resamples=n_perm, alternative="two-sided",
                                        rng=np.random.default_rng(seed)).pvalue)


def permutation_floor(n: int, n_perm: int = 9999) -> float:
    """The smallest p permutation_p can return over n points, capped at 1; NaN under 2 points. scipy's two-sided p
    is 2 min(p_less, p_greater), each side counting the observed pairing: exact enumeration (n! <= n_perm) gives
    2 / n!, n_perm random permutations give 2 / (n_perm + 1)."""
    if n < 2:
        return math.nan
    total = math.factorial(n)
    return min(1.0, 2 / total if total <= n_perm else 2 / (n_perm + 1))


def _r2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared Pearson r along the last axis; NaN where a side is constant."""
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    den = (xc * xc).sum(-1) * (yc * yc).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(-1) ** 2 / np.where(den > 0, den, 1), np.nan)


def r2_interval(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, confidence: float,
                item_interval: tuple[float, float]) -> dict[str, Any]:
    """The interval of R² of y on x (one point per checkpoint): with at least MIN_BOOT_POINTS finite points, a
    percentile bootstrap over them (`n_boot` resamples `default_rng(seed).integers(0, n, (n_boot, n))`, those
    with a constant side dropped), source "checkpoints"; with fewer, `item_interval` (the bootstrap over items,
    which holds the checkpoints fixed), source "items (item noise only)". Returns r2_ci_lo, r2_ci_hi, r2_ci_source.
    """
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < MIN_BOOT_POINTS:
        return {"r2_ci_lo": item_interval[0], "r2_ci_hi": item_interval[1], "r2_ci_source": ITEM_NOISE_ONLY}
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    boot = _r2(x[idx], y[idx])
    boot = boot[np.isfinite(boot)]
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail]) if len(boot) else (math.nan, math.nan)
    return {"r2_ci_lo": float(lo), "r2_ci_hi": float(hi), "r2_ci_source": R2_FROM_CHECKPOINTS}


def _group_fits(scores: pd.DataFrame, metrics: list[str], n_boot: int, seed: int, n_perm: int,
                confidence: float) -> list[dict[str, Any]]:
    """checkpoint_table's rows for one group of checkpoints, one per metric."""
    mats = _matrices(scores, metrics)
    points = _points(mats, np.arange(mats["correct_S"].shape[1]), metrics)
    cis = _bootstrap_cis(mats, metrics, n_boot, seed, confidence)
    rows = []
    for m in metrics:
        fit = _fit(points[m], points["gap"])
        ok = np.isfinite(points[m]) & np.isfinite(points["gap"])
        perm = math.nan if fit["note"] else permutation_p(points[m][ok], points["gap"][ok], n_perm, seed)
        interval = r2_interval(points[m], points["gap"], n_boot, seed, confidence, (cis[m]["r2_lo"], cis[m]["r2_hi"]))
        rows.append({"x": m, "y": "gap", "n_items": scores["id"].nunique()} | fit | cis[m] | interval
                    | {"perm_p": perm, "perm_floor": permutation_floor(fit["n_checkpoints"], n_perm)})
    return rows


def checkpoint_table(items: pd.DataFrame, metrics: Sequence[str], by: str = "strategy", n_boot: int = 1000,
                     seed: int = 0, n_perm: int = 9999, confidence: float = 0.95, include_layer0: bool = False,
                     pooled: bool = False) -> pd.DataFrame:
    """P1's regression of GAP on each metric's layer-averaged score, per group of `by` (P1 fitted each training
    strategy on its own), and over all checkpoints together only when `pooled`.

    Columns: group (a value of `by`, or "all" when pooled), x, y, n_items, the fit fields (slope, intercept, r2,
    pearson_r, pearson_p, spearman_rho, spearman_p), n_checkpoints, note, {slope,r2,pearson_r,spearman_rho}_{lo,hi}
    (percentile bootstrap CIs over item ids, `n_boot` resamples, seeded: item noise with the checkpoints fixed),
    r2_ci_lo, r2_ci_hi, r2_ci_source (r2_interval: over checkpoints when there are enough), perm_p
    (permutation_p) and perm_floor (permutation_floor of the group's n_checkpoints). The settings are in `.attrs`.
    """
    metrics = _names(metrics)
    if by not in CHECKPOINT_KEYS:
        raise ValueError(f"by={by!r} is not a checkpoint-level column {CHECKPOINT_KEYS}")
    scores = item_scores(items, metrics, include_layer0)
    groups = [(str(name), group) for name, group in scores.groupby(by, sort=True)] + ([(ALL, scores)] if pooled else [])
    table = pd.DataFrame([{"group": name} | row for name, group in groups
                          for row in _group_fits(group, metrics, n_boot, seed, n_perm, confidence)])
    table.attrs = {"by": by, "pooled": pooled, "include_layer0": include_layer0, "n_boot": n_boot, "seed": seed,
                   "n_perm": n_perm, "confidence": confidence, "ci": "percentile bootstrap over item ids",
                   "r2_ci": f"percentile bootstrap over checkpoints with >= {MIN_BOOT_POINTS}, else over item ids",
                   "perm": "two-sided, Pearson r, gap permuted across checkpoints; perm_floor: least p attainable"}
    return table


# ---- per item and per layer ----------------------------------------------------------------------------------

def _item_tests(data: pd.DataFrame, keys: list[str], metrics: list[str], family: list[str]) -> pd.DataFrame:
    """Per group of `keys` and metric, over (checkpoint, item) rows: point-biserial r, p of the metric vs correct_S
    (pb_*) and Spearman rho, p vs the item gap correct_T - correct_S (gap_*), with BH q-values within `family`."""
    rows = []
    for key, group in data.groupby(keys, sort=True):
        for m in metrics:
            rated = group[group[m].notna()]
            pb_r, pb_p = _corr(stats.pointbiserialr, rated["correct_S"], rated[m])
            gap_rho, gap_p = _corr(stats.spearmanr, rated[m], rated["correct_T"] - rated["correct_S"])
            rows.append(dict(zip(keys, key)) | {"metric": m} | _counts(rated)
                        | {"pb_r": pb_r, "pb_p": pb_p, "gap_rho": gap_rho, "gap_p": gap_p})
    table = pd.DataFrame(rows)
    for p in ("pb_p", "gap_p"):
        table.insert(table.columns.get_loc(p) + 1, p[:-1] + "q", table.groupby(family)[p].transform(fdr_bh))
    return table


def _grouped(rows: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """`rows` with a `group` column: "pooled" (all checkpoints together) when by is None, else rows[by]."""
    if by is not None and by not in rows.columns:
        raise ValueError(f"items lacks the grouping column {by!r}")
    return rows.assign(group=POOLED if by is None else rows[by].astype(str))


def item_layer_tests(items: pd.DataFrame, metrics: Sequence[str], by: str | None = None,
                     include_layer0: bool = True) -> pd.DataFrame:
    """Per (group, layer, metric): point-biserial of the metric vs correct_S and Spearman vs the item gap, over the
    group's (checkpoint, item) rows: by=None pools all checkpoints (their rows count as independent), by="model"
    tests each checkpoint. FDR family: all layers and metrics of one group, per test.

    Columns: group, layer, metric, n_obs, n_items, n_checkpoints, pb_r, pb_p, pb_q, gap_rho, gap_p, gap_q.
    """
    metrics = _validate(items, metrics)
    data = _grouped(_layers(items, include_layer0), by)
    return _item_tests(data, ["group", "layer"], metrics, family=["group"])


def _zscore(values: pd.Series) -> pd.Series:
    """`values` standardised (NaN skipped); all NaN when constant."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision-loss warning on (near-)constant input
        return pd.Series(stats.zscore(values.to_numpy(dtype=float), nan_policy="omit"), index=values.index)


def clustered_logit(rows: pd.DataFrame, metric: str, outcome: str = "correct_S", cluster: str = "item",
                    effects: Sequence[str] = (), within: str | None = None,
                    confidence: float = 0.95) -> dict[str, Any]:
    """Logistic regression `outcome ~ z [+ C(within)] [+ C(effect) ...]` with cluster-robust SEs.

    z standardises `metric` within each level of `within` (e.g. layer; None: over all rows), so its coefficient is
    log-odds per SD and is not confounded with the `within` effects; rows without an outcome or a z (missing metric,
    constant within its level) are dropped. `cluster` is the unit whose outcomes may correlate (CLUSTER_KEYS):
    "item" (the same items recur in every checkpoint, and an item's outcome repeats over its layers),
    "checkpoint+item" (ignores that recurrence) or "none" (model-based SEs, for comparison).

    Returns coef, se, ci_lo, ci_hi (Wald, at `confidence`), p of z, n_obs, n_items, n_checkpoints, cluster_unit,
    n_clusters, fixed_effects (e.g. "layer+model+subject", or "none") and note: NaN fields with the reason in note
    on too few rows, a constant outcome, (quasi-)separation, non-convergence or a singular fit (other warnings,
    such as exp overflow on the way to separation, are absorbed).
    """
    if cluster not in CLUSTER_KEYS:
        raise ValueError(f"cluster={cluster!r} is not one of {list(CLUSTER_KEYS)}")
    keys, terms = CLUSTER_KEYS[cluster], [c for c in (within, *effects) if c is not None]
    if missing := [c for c in dict.fromkeys([outcome, metric, "id", "model", *keys, *terms]) if c not in rows]:
        raise ValueError(f"rows lack column(s) {missing}")
    z = rows.groupby(within)[metric].transform(_zscore) if within else _zscore(rows[metric])
    rows = rows.assign(z=z).dropna(subset=["z", outcome]).reset_index(drop=True)
    groups = rows.groupby(keys, sort=False).ngroup().to_numpy() if keys else None
    out = _counts(rows) | {"cluster_unit": cluster, "n_clusters": len(rows) if groups is None else len(set(groups)),
                           "fixed_effects": "+".join(terms) or "none"}
    nan = dict.fromkeys(LOGIT_FIELDS, math.nan) | out
    if len(rows) < MIN_POINTS or rows[outcome].nunique() < 2:
        return nan | {"note": f"{len(rows)} row(s) with a defined z, or a constant {outcome}: no fit"}
    formula = f"{outcome} ~ z" + "".join(f" + C({c})" for c in terms)
    kwargs = {} if groups is None else {"cov_type": "cluster", "cov_kwds": {"groups": groups}}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = smf.logit(formula, rows).fit(disp=0, maxiter=200, **kwargs)
    except (PerfectSeparationError, np.linalg.LinAlgError) as e:
        return nan | {"note": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    problems = {f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught
                if issubclass(w.category, PerfectSeparationWarning | ConvergenceWarning)}
    if problems:
        return nan | {"note": "; ".join(sorted(problems, reverse=True))}
    lo, hi = fit.conf_int(alpha=1 - confidence).loc["z"]
    return {"coef": float(fit.params["z"]), "se": float(fit.bse["z"]), "ci_lo": float(lo), "ci_hi": float(hi),
            "p": float(fit.pvalues["z"])} | out | {"note": ""}


def item_logistic(items: pd.DataFrame, metric: str, by: str | None = None, include_layer0: bool = False,
                  cluster: str = "item", checkpoint_effects: bool = True,
                  subject_effects: bool = True) -> pd.DataFrame:
    """clustered_logit `correct_S ~ z(metric) + C(layer) [+ C(model)] [+ C(subject)]` on (checkpoint, item, layer)
    rows, per group (by=None: all checkpoints pooled; by="model": per checkpoint). z standardises the metric within
    each layer. SEs are clustered by `cluster`, by default the item: the same items recur in every checkpoint and
    correct_S repeats over an item's layers, so neither rows nor (checkpoint, item) pairs are independent.
    Checkpoint fixed effects absorb differences in skill between checkpoints, subject fixed effects differences in
    difficulty between subjects.

    Columns: group, metric, coef, se, ci_lo, ci_hi (95%), p, n_obs, n_items, n_checkpoints, cluster_unit,
    n_clusters, fixed_effects, note.
    """
    _validate(items, [metric])
    data = _grouped(_layers(items, include_layer0), by)
    effects = [c for c, on in (("model", checkpoint_effects), ("subject", subject_effects)) if on]
    return pd.DataFrame([{"group": g, "metric": metric} | clustered_logit(rows, metric, cluster=cluster,
                                                                          effects=effects, within="layer")
                         for g, rows in data.groupby("group", sort=True)])


# ---- per subject ---------------------------------------------------------------------------------------------

def subject_tests(items: pd.DataFrame, metrics: Sequence[str], include_layer0: bool = False) -> pd.DataFrame:
    """Across (checkpoint, subject) points (subject_points): Pearson and Spearman of each metric vs the subject gap
    and vs subject speech accuracy. The points share checkpoints and subjects, so the p-values treat dependent
    points as independent. FDR family: all metrics of one target, per test.

    Columns: target (gap | speech_acc), metric, n_points, n_subjects, n_checkpoints, n_items, pearson_r,
    pearson_p, pearson_q, spearman_rho, spearman_p, spearman_q.
    """
    metrics = _names(metrics)
    points = subject_points(items, metrics, include_layer0)
    n = {"n_points": len(points), "n_subjects": points["subject"].nunique(),
         "n_checkpoints": points["model"].nunique(), "n_items": items["id"].nunique()}
    rows = []
    for target in ("gap", "speech_acc"):
        for m in metrics:
            r, r_p = _corr(stats.pearsonr, points[m], points[target])
            rho, rho_p = _corr(stats.spearmanr, points[m], points[target])
            rows.append({"target": target, "metric": m} | n
                        | {"pearson_r": r, "pearson_p": r_p, "spearman_rho": rho, "spearman_p": rho_p})
    table = pd.DataFrame(rows)
    for p in ("pearson_p", "spearman_p"):
        table.insert(table.columns.get_loc(p) + 1, p[:-1] + "q", table.groupby("target")[p].transform(fdr_bh))
    return table


def within_subject_tests(items: pd.DataFrame, metrics: Sequence[str], include_layer0: bool = False) -> pd.DataFrame:
    """Per (subject, metric), over the subject's (checkpoint, item) rows pooled across checkpoints: point-biserial
    of the layer-averaged metric vs correct_S, and Spearman vs the item gap. FDR family: all subjects of one metric,
    per test.

    Columns: subject, metric, n_obs, n_items, n_checkpoints, pb_r, pb_p, pb_q, gap_rho, gap_p, gap_q.
    """
    metrics = _names(metrics)
    return _item_tests(item_scores(items, metrics, include_layer0), ["subject"], metrics, family=["metric"])


# ---- P1's decomposition -------------------------------------------------------------------------------------

def decomposition(points: pd.DataFrame, lab: pd.DataFrame | None) -> pd.DataFrame:
    """P1's decomposition of each checkpoint's accuracies, in points: the base LM's text accuracy, the speech LM's
    text and speech accuracy, text_loss = base_text_acc - text_acc (what alignment training cost the LM in text)
    and gap = text_acc - speech_acc (the modality gap).

    points: checkpoint_points' table (text_acc, speech_acc on the analysed items). lab: the lab stage's accuracy
    table (columns checkpoint and, when the lab stage wrote it, base_text_acc: a fraction, the base LM on the lab
    test split), or None when no model is a lab checkpoint. Where the base accuracy is unknown, base_text_acc and
    text_loss are NaN and `note` says why.

    Columns: model, strategy, step, n_items, base_text_acc, text_acc, speech_acc, text_loss, gap, note.
    """
    base = pd.Series(math.nan, index=points.index)
    if lab is None:
        note = "no lab accuracy table: no model is a lab checkpoint"
    elif BASE_TEXT not in lab:
        note = f"the lab accuracy table has no {BASE_TEXT} column"
    else:
        if (lab[BASE_TEXT] > 1).any():
            raise ValueError(f"lab accuracy table: {BASE_TEXT} must be a fraction, found {lab[BASE_TEXT].max()}")
        base = points["model"].map(lab.set_index("checkpoint")[BASE_TEXT]) * 100
        note = np.where(base.isna(), f"no {BASE_TEXT} for this model in the lab accuracy table", "")
    out = points[["model", "strategy", "step", "n_items"]].assign(base_text_acc=base.to_numpy(float))
    out[["text_acc", "speech_acc"]] = points[["text_acc", "speech_acc"]]
    return out.assign(text_loss=out["base_text_acc"] - out["text_acc"], gap=out["text_acc"] - out["speech_acc"],
                      note=note)


# ---- output --------------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy types to Python, NaN/NA to None."""
    if value is None or value is pd.NA or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def headline(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """checkpoint_table's headline numbers, ready for JSON: {"settings": table.attrs, "groups": {group: {metric:
    {r2, r2_ci (over checkpoints when there are enough), r2_ci_source, r2_item_ci, slope, slope_ci, pearson_r,
    pearson_r_ci, spearman_rho, spearman_rho_ci (*_ci: the item bootstrap), perm_p, perm_floor, n_items,
    n_checkpoints, note}}}}, NaN as None. A group "all" appears only
    when the table was pooled. `metrics`: the x metrics to report, default every one in the table."""
    metrics = list(table["x"].unique()) if metrics is None else list(metrics)
    missing = [m for m in metrics if m not in set(table["x"])]
    if missing:
        raise ValueError(f"checkpoint table has no x metric(s) {missing}")
    groups: dict[str, dict[str, Any]] = {}
    for row in table[table["x"].isin(metrics)].to_dict("records"):
        entry = {f: row[f] for f in ("r2", "slope", "pearson_r", "spearman_rho")}
        entry |= {f"{f}_ci": [row[f"{f}_lo"], row[f"{f}_hi"]] for f in BOOT_FIELDS if f != "r2"}
        entry |= {"r2_ci": [row["r2_ci_lo"], row["r2_ci_hi"]], "r2_ci_source": row["r2_ci_source"],
                  "r2_item_ci": [row["r2_lo"], row["r2_hi"]]}
        entry |= {f: row[f] for f in ("perm_p", "perm_floor", "n_items", "n_checkpoints", "note")}
        groups.setdefault(row["group"], {})[row["x"]] = {
            k: [_plain(v) for v in val] if isinstance(val, list) else _plain(val) for k, val in entry.items()}
    return {"settings": {k: _plain(v) for k, v in table.attrs.items()}, "groups": groups}
