"""Statistics on the right unit (METHODS.md, "Controls: Statistics"): item-level logistic regression clustered by
item (items recur across checkpoints), the floor of each permutation test, R² intervals that resample checkpoints
(the points of P1's fit) when there are enough of them, and checkpoint-level fits per training strategy.

Tables are `modgap.stats`' (one row per (checkpoint, item) from `stats.item_scores`, one per checkpoint from
`stats.checkpoint_points`); functions take column names. No file I/O.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationError, PerfectSeparationWarning

from modgap.stats import MIN_POINTS, checkpoint_fit, permutation_p

LOGIT_FIELDS = ("coef", "se", "p", "ci_lo", "ci_hi")
ITEM_NOISE_ONLY = "item noise only"
POOLED = "pooled"


# --- item-level logistic regression, clustered by item ---------------------------------------------------------------
def item_clustered_logit(df: pd.DataFrame, outcome: str, metric: str, cluster: str | Sequence[str] | None = "id",
                         checkpoint_fe: bool = True, subject_fe: bool = True, checkpoint: str = "model",
                         subject: str = "subject", confidence: float = 0.95) -> dict[str, Any]:
    """Logistic regression `outcome ~ z(metric) [+ C(checkpoint)] [+ C(subject)]` on the rows of `df` (e.g. one per
    (checkpoint, item)), with cluster-robust SEs by `cluster` (default the item id: an item's outcomes are correlated
    across the checkpoints it recurs in; a list clusters by the combination, e.g. ["model", "id"]; None: the
    model-based SE, for comparison). z standardises the metric over the rows used (population SD), so the
    coefficient is log-odds per SD. Rows with a missing outcome or metric are dropped.

    Returns coef, se, p, ci_lo, ci_hi (z's, at `confidence`), n_obs, n_items (distinct `id`), n_clusters,
    n_checkpoints, cluster (e.g. "id", "model+id", "none"), fixed_effects ("model+subject", "none"), note. On
    (quasi-)separation, non-convergence or a singular fit the fields are NaN and `note` says why.
    """
    names = [] if cluster is None else [cluster] if isinstance(cluster, str) else list(cluster)
    effects = [c for c, on in ((checkpoint, checkpoint_fe), (subject, subject_fe)) if on]
    needed = [outcome, metric, "id", *names, *effects]
    if missing := [c for c in dict.fromkeys(needed) if c not in df.columns]:
        raise ValueError(f"df lacks column(s) {missing}")
    rows = df.dropna(subset=[outcome, metric]).reset_index(drop=True)
    data = pd.DataFrame({"y": rows[outcome].astype(float), "z": sps.zscore(rows[metric].to_numpy(float))})
    for k, c in enumerate(effects):
        data[f"fe{k}"] = rows[c].astype(str).to_numpy()
    formula = "y ~ z" + "".join(f" + C(fe{k})" for k in range(len(effects)))
    groups = rows.groupby(names, sort=False).ngroup().to_numpy() if names else None
    out = {"n_obs": len(rows), "n_items": rows["id"].nunique(),
           "n_clusters": int(groups.max() + 1) if names and len(rows) else len(rows),
           "n_checkpoints": rows[checkpoint].nunique() if checkpoint in rows else math.nan,
           "cluster": "+".join(names) if names else "none", "fixed_effects": "+".join(effects) or "none"}
    nan = dict.fromkeys(LOGIT_FIELDS, math.nan)
    if len(rows) < 3 or not np.isfinite(data["z"]).all() or data["y"].nunique() < 2:
        return nan | out | {"note": "too few rows, or a constant outcome or metric"}
    kwargs = {"cov_type": "cluster", "cov_kwds": {"groups": groups}} if names else {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = smf.logit(formula, data).fit(disp=0, maxiter=200, **kwargs)
    except (PerfectSeparationError, np.linalg.LinAlgError) as e:
        return nan | out | {"note": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    problems = {f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught
                if issubclass(w.category, PerfectSeparationWarning | ConvergenceWarning)}
    if problems:
        return nan | out | {"note": "; ".join(sorted(problems))}
    lo, hi = fit.conf_int(alpha=1 - confidence).loc["z"]
    return {"coef": float(fit.params["z"]), "se": float(fit.bse["z"]), "p": float(fit.pvalues["z"]),
            "ci_lo": float(lo), "ci_hi": float(hi)} | out | {"note": ""}


# --- permutation floors ----------------------------------------------------------------------------------------------
def permutation_floor(n: int, n_perm: int = 9999) -> dict[str, Any]:
    """The smallest p `stats.permutation_p` can return over n points with `n_perm` resamples.

    modgap's test is scipy's two-sided `permutation_test` (pairings), whose p is 2 min(p_less, p_greater):
    exact enumeration when n! <= n_perm (n <= 7 at the default 9999), where the observed pairing is one of the n!
    and the floor is 2 / n!; otherwise n_perm random permutations with p = (count + 1) / (n_perm + 1), floor
    2 / (n_perm + 1). (The one-sided floors are 1 / n! and 1 / (n_perm + 1).) Returns floor, exact, n_resamples."""
    if n < 2:
        raise ValueError(f"a permutation test needs at least 2 points, got {n}")
    total = math.factorial(n)
    exact = total <= n_perm
    resamples = total if exact else n_perm
    return {"floor": min(1.0, 2 / total if exact else 2 / (n_perm + 1)), "exact": exact, "n_resamples": resamples}


def format_p(p: float, floor: float) -> str:
    """`"p = 0.0167 (floor 0.0167)"`: a permutation p printed with the least value its test can give."""
    return f"p = {p:.3g} (floor {floor:.3g})"


# --- R² intervals ----------------------------------------------------------------------------------------------------
def _r2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared Pearson r along the last axis; NaN where a side is constant."""
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    den = (xc * xc).sum(-1) * (yc * yc).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(-1) ** 2 / np.where(den > 0, den, 1), np.nan)


def r2_interval(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0,
                confidence: float = 0.95, min_points: int = 5,
                item_interval: tuple[float, float] | None = None) -> dict[str, Any]:
    """R² of the regression of y on x (one point per checkpoint) with a percentile bootstrap interval over the
    points: `n_boot` resamples of the n finite pairs with replacement (numpy `default_rng(seed)`,
    `integers(0, n, (n_boot, n))`), resamples with a constant side dropped (counted in n_degenerate).

    With fewer than `min_points` points a bootstrap over them is meaningless: lo, hi are `item_interval` (pass
    `stats.checkpoint_table`'s r2_lo, r2_hi, a bootstrap over items that holds the checkpoints fixed) or NaN, and
    flag is "item noise only". Returns r2, lo, hi, n, n_degenerate, method, flag.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    r2 = float(_r2(x, y)) if n >= MIN_POINTS else math.nan
    if n < min_points:
        lo, hi = item_interval if item_interval is not None else (math.nan, math.nan)
        method = "bootstrap over items" if item_interval is not None else "none"
        return {"r2": r2, "lo": lo, "hi": hi, "n": n, "n_degenerate": 0, "method": method, "flag": ITEM_NOISE_ONLY}
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    boot = _r2(x[idx], y[idx])
    finite = boot[np.isfinite(boot)]
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail]) if len(finite) else (math.nan, math.nan)
    return {"r2": r2, "lo": float(lo), "hi": float(hi), "n": n, "n_degenerate": int(n_boot - len(finite)),
            "method": "bootstrap over points", "flag": ""}


# --- checkpoint-level fits per training strategy ---------------------------------------------------------------------
def fit_by_strategy(points: pd.DataFrame, x: str, y: str = "gap", by: str = "strategy", pooled: bool = False,
                    n_boot: int = 2000, seed: int = 0, n_perm: int = 9999, min_points: int = 5) -> pd.DataFrame:
    """P1's checkpoint-level regression of y on x fitted per value of `by` (P1 never pooled training strategies),
    plus one row over all points when `pooled`. One row per group: group, x, y, `stats.checkpoint_fit`'s fields,
    r2_lo, r2_hi, r2_method, r2_flag (`r2_interval`), perm_p (`stats.permutation_p`, NaN when the fit is not
    defined), perm_floor, perm_exact (`permutation_floor`) and perm_text (`format_p`)."""
    if by not in points.columns:
        raise ValueError(f"points lacks the grouping column {by!r}")
    groups = [(str(k), g) for k, g in points.groupby(by, sort=True)] + ([(POOLED, points)] if pooled else [])
    rows = []
    for name, g in groups:
        fit = checkpoint_fit(g, x, y)
        xs, ys = g[x].to_numpy(float), g[y].to_numpy(float)
        ok = np.isfinite(xs) & np.isfinite(ys)
        interval = r2_interval(xs, ys, n_boot, seed, min_points=min_points)
        perm = math.nan if fit["note"] else permutation_p(xs[ok], ys[ok], n_perm, seed)
        floor = permutation_floor(max(int(ok.sum()), 2), n_perm)
        rows.append({"group": name, "x": x, "y": y} | fit
                    | {"r2_lo": interval["lo"], "r2_hi": interval["hi"], "r2_method": interval["method"],
                       "r2_flag": interval["flag"], "perm_p": perm, "perm_floor": floor["floor"],
                       "perm_exact": floor["exact"],
                       "perm_text": "" if math.isnan(perm) else format_p(perm, floor["floor"])})
    return pd.DataFrame(rows)
