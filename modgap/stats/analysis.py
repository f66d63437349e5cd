"""Statistics of the modality gap (METHODS.md, "P1: correlation with the gap"): P1's one-point-per-checkpoint
regression of GAP on a layer-averaged alignment score, with item-bootstrap CIs and permutation p-values, plus
modgap's per-item, per-layer and per-subject tests with Benjamini-Hochberg FDR.

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
POOLED = "pooled"  # the group of item tests pooled over checkpoints (by=None)


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
        rows.append({"x": m, "y": "gap", "n_items": scores["id"].nunique()} | fit | cis[m] | {"perm_p": perm})
    return rows


def checkpoint_table(items: pd.DataFrame, metrics: Sequence[str], by: str = "strategy", n_boot: int = 1000,
                     seed: int = 0, n_perm: int = 9999, confidence: float = 0.95,
                     include_layer0: bool = False) -> pd.DataFrame:
    """P1's regression of GAP on each metric's layer-averaged score, per group of `by` and for all checkpoints.

    Columns: group (a value of `by`, or "all"), x, y, n_items, the fit fields (slope, intercept, r2, pearson_r,
    pearson_p, spearman_rho, spearman_p), n_checkpoints, note, {slope,r2,pearson_r,spearman_rho}_{lo,hi}
    (percentile bootstrap CIs over item ids, `n_boot` resamples, seeded) and perm_p (permutation_p). The
    settings are in `.attrs`.
    """
    metrics = _names(metrics)
    if by not in CHECKPOINT_KEYS:
        raise ValueError(f"by={by!r} is not a checkpoint-level column {CHECKPOINT_KEYS}")
    scores = item_scores(items, metrics, include_layer0)
    groups = [(str(name), group) for name, group in scores.groupby(by, sort=True)] + [(ALL, scores)]
    table = pd.DataFrame([{"group": name} | row for name, group in groups
                          for row in _group_fits(group, metrics, n_boot, seed, n_perm, confidence)])
    table.attrs = {"by": by, "include_layer0": include_layer0, "n_boot": n_boot, "seed": seed, "n_perm": n_perm,
                   "confidence": confidence, "ci": "percentile bootstrap over item ids",
                   "perm": "two-sided, Pearson r, gap permuted across checkpoints"}
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


def _logit(rows: pd.DataFrame) -> dict[str, Any]:
    """Logit correct_S ~ z + C(layer) with SEs clustered by (checkpoint, item): z's coef, se, 95% CI, p and a note;
    NaN fields with the reason in `note` on (quasi-)perfect separation, non-convergence or a singular fit (other
    warnings, such as exp overflow on the way to separation, are absorbed)."""
    nan = dict.fromkeys(("coef", "se", "ci_lo", "ci_hi", "p"), math.nan)
    if rows.empty:
        return nan | {"note": "metric is missing or constant within every layer"}
    clusters = rows.groupby(ITEM_KEYS).ngroup().to_numpy()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = smf.logit("correct_S ~ z + C(layer)", rows).fit(disp=0, cov_type="cluster",
                                                                  cov_kwds={"groups": clusters})
    except (PerfectSeparationError, np.linalg.LinAlgError) as e:
        return nan | {"note": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    problems = {f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught
                if issubclass(w.category, PerfectSeparationWarning | ConvergenceWarning)}
    if problems:
        return nan | {"note": "; ".join(sorted(problems, reverse=True))}
    lo, hi = fit.conf_int().loc["z"]
    return {"coef": fit.params["z"], "se": fit.bse["z"], "ci_lo": lo, "ci_hi": hi, "p": fit.pvalues["z"], "note": ""}


def _zscore(values: pd.Series) -> pd.Series:
    """`values` standardised (NaN skipped); all NaN when constant."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision-loss warning on (near-)constant input
        return pd.Series(stats.zscore(values.to_numpy(dtype=float), nan_policy="omit"), index=values.index)


def item_logistic(items: pd.DataFrame, metric: str, by: str | None = None,
                  include_layer0: bool = False) -> pd.DataFrame:
    """Logistic regression `correct_S ~ z(metric) + C(layer)` on (checkpoint, item, layer) rows, per group (by=None:
    all checkpoints pooled; by="model": per checkpoint). z standardises the metric within each layer (so its
    coefficient is log-odds per within-layer SD, and is not confounded with the layer effects). correct_S repeats
    over the layers of an item, so SEs are clustered by (checkpoint, item), not treated as independent rows.

    Columns: group, metric, n_obs, n_items, n_checkpoints, coef, se, ci_lo, ci_hi (95%), p, note.
    """
    _validate(items, [metric])
    data = _grouped(_layers(items, include_layer0), by)
    data = data.assign(z=data.groupby(["group", "layer"])[metric].transform(_zscore))
    return pd.DataFrame([{"group": g, "metric": metric} | _counts(rows) | _logit(rows)
                         for g, group in data.groupby("group", sort=True) for rows in [group.dropna(subset=["z"])]])


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


# ---- output --------------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy types to Python, NaN/NA to None."""
    if value is None or value is pd.NA or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def headline(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """checkpoint_table's headline numbers, ready for JSON: {"settings": table.attrs, "groups": {group: {metric:
    {r2, r2_ci, slope, slope_ci, pearson_r, pearson_r_ci, spearman_rho, spearman_rho_ci, perm_p, n_items,
    n_checkpoints, note}}}}, NaN as None. `metrics`: the x metrics to report, default every one in the table."""
    metrics = list(table["x"].unique()) if metrics is None else list(metrics)
    missing = [m for m in metrics if m not in set(table["x"])]
    if missing:
        raise ValueError(f"checkpoint table has no x metric(s) {missing}")
    groups: dict[str, dict[str, Any]] = {}
    for row in table[table["x"].isin(metrics)].to_dict("records"):
        entry = {f: row[f] for f in ("r2", "slope", "pearson_r", "spearman_rho")}
        entry |= {f"{f}_ci": [row[f"{f}_lo"], row[f"{f}_hi"]] for f in BOOT_FIELDS}
        entry |= {f: row[f] for f in ("perm_p", "n_items", "n_checkpoints", "note")}
        groups.setdefault(row["group"], {})[row["x"]] = {
            k: [_plain(v) for v in val] if isinstance(val, list) else _plain(val) for k, val in entry.items()}
    return {"settings": {k: _plain(v) for k, v in table.attrs.items()}, "groups": groups}
