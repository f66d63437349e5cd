"""Compare two results trees table by table: the check that a refactor left every number unchanged.

Usage: python -m modgap.compare OLD_RESULTS NEW_RESULTS [--rtol 1e-6] [--atol 1e-9]
Every CSV and Parquet table under `states/`, `lab/`, `metrics/`, `stats/` and `interventions/` of OLD must exist in
NEW with the same rows; columns both hold must be equal (numbers within rtol/atol, NaN equal to NaN, everything else
exactly). Columns only NEW holds are listed (new readouts add some), columns NEW lacks are an error. Prints one line
per table and exits 1 on any difference.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

STAGES = ("lab", "states", "metrics", "stats", "interventions")


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def tables(root: Path) -> list[Path]:
    """Every CSV and Parquet table of the compared stages, relative to `root`."""
    return sorted(p.relative_to(root) for stage in STAGES for p in (root / stage).rglob("*")
                  if p.suffix in (".csv", ".parquet") and ".zarr" not in str(p))


def column_difference(a: pd.Series, b: pd.Series, rtol: float, atol: float) -> str | None:
    """None when equal, else a short description of the first difference."""
    if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
        x, y = a.to_numpy(np.float64, na_value=np.nan), b.to_numpy(np.float64, na_value=np.nan)
        ok = np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)
        if ok.all():
            return None
        worst = np.nanmax(np.abs(x - y))
        return f"{(~ok).sum()} values differ (max |diff| {worst:.3g})"
    x, y = a.astype(str).to_numpy(), b.astype(str).to_numpy()
    same = (x == y) | (a.isna() & b.isna()).to_numpy()  # None and NaN are one missing value
    return None if same.all() else f"{(~same).sum()} values differ, e.g. {x[~same][0]!r} vs {y[~same][0]!r}"


def compare_table(old: pd.DataFrame, new: pd.DataFrame, rtol: float, atol: float) -> tuple[list[str], list[str]]:
    """(differences, columns only `new` has)."""
    if len(old) != len(new):
        return [f"{len(old)} rows vs {len(new)}"], []
    problems = [f"column {c} missing" for c in old.columns if c not in new.columns]
    for c in old.columns:
        if c in new.columns and (d := column_difference(old[c].reset_index(drop=True), new[c].reset_index(drop=True),
                                                       rtol, atol)):
            problems.append(f"{c}: {d}")
    return problems, [c for c in new.columns if c not in old.columns]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--atol", type=float, default=1e-9)
    args = ap.parse_args(argv)
    old = tables(args.old)
    if not old:
        print(f"no tables under {args.old}", file=sys.stderr)
        return 1
    failed = 0
    for rel in old:
        if not (args.new / rel).is_file():
            print(f"MISSING {rel}")
            failed += 1
            continue
        problems, added = compare_table(read(args.old / rel), read(args.new / rel), args.rtol, args.atol)
        failed += bool(problems)
        extra = f" (new columns: {', '.join(added)})" if added else ""
        print(f"{'DIFF' if problems else 'equal'} {rel}{extra}" + "".join(f"\n    {p}" for p in problems))
    print(f"{len(old) - failed} of {len(old)} tables equal")
    return int(failed > 0)


if __name__ == "__main__":
    sys.exit(main())
