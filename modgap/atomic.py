"""Atomic writes: every output is written under a temporary sibling name and renamed when complete, so nothing
half-written is ever left looking complete."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def atomic_path(path: str | Path) -> Path:
    """A sibling temporary path; rename it onto `path` when the write is complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write a table atomically (its `attrs` go to the file's metadata)."""
    tmp = atomic_path(path)
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    tmp = atomic_path(path)
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def write_text(text: str, path: str | Path) -> None:
    tmp = atomic_path(path)
    tmp.write_text(text)
    tmp.replace(path)
