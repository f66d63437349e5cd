"""Atomic writes: every output is written under a temporary sibling name and renamed when complete, so nothing
half-written is ever left looking complete (a failed write removes its temporary file)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd


def atomic_path(path: str | Path) -> Path:
    """A sibling temporary path; rename it onto `path` when the write is complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def atomic(path: str | Path) -> Iterator[Path]:
    """Yield the temporary path to write; on success rename it onto `path`, on failure delete it."""
    tmp = atomic_path(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write a table atomically (its `attrs` go to the file's metadata)."""
    with atomic(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic(path) as tmp:
        df.to_csv(tmp, index=False)


def write_text(text: str, path: str | Path) -> None:
    with atomic(path) as tmp:
        tmp.write_text(text)


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
