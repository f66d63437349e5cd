"""The one reader of a corpus items table (`results/corpus/{dataset}/{split}/{voice}/items.parquet`, written by
`modgap.corpus.stage`): its usable rows as `Row`s, each with its item, recording and true word spans.

Three sets of word timings sit in the table (`TRUTH_COLUMNS`): `corpus` (what later stages use), `tts` (the
synthesizer's own word events) and `aligner` (forced alignment). Rows whose `status` is not "ok" were excluded by the
corpus stage with a reason and are never returned.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modgap.corpus.audio import AudioError, read_audio
from modgap.corpus.items import Item
from modgap.corpus.timing import SAMPLE_RATE
from modgap.plan import shard_rows

TRUTH_COLUMNS = {"corpus": ("start_ms", "end_ms"), "tts": ("tts_start_ms", "tts_end_ms"),
                 "aligner": ("align_start_ms", "align_end_ms")}


@dataclass(frozen=True)
class Row:
    """One usable corpus row: the item, its recording's path and its words' spans `[W, 2]` in ms (None for a table
    without word timings, e.g. the lab's training splits)."""

    item: Item
    audio: str
    spans: np.ndarray | None

    @property
    def id(self) -> str:
        return self.item.id

    def wave(self) -> np.ndarray:
        """The recording as `[n]` 16 kHz mono float32; AudioError naming the item and file otherwise."""
        wave, rate = read_audio(self.id, self.audio)
        if rate != SAMPLE_RATE:
            raise AudioError(f"item {self.id}: {self.audio} is {rate} Hz, expected {SAMPLE_RATE}")
        return wave


def read_table(table: str | Path | pd.DataFrame) -> pd.DataFrame:
    """The corpus table (a path or an already read frame), all rows."""
    return table if isinstance(table, pd.DataFrame) else pd.read_parquet(table)


def usable(table: pd.DataFrame) -> pd.DataFrame:
    """The rows the corpus stage kept (status "ok")."""
    return table[table["status"] == "ok"]


def spans_of(row, truth: str = "corpus") -> np.ndarray:
    """`[W, 2]` word spans (ms) of one table row (a namedtuple of `itertuples`) under `truth`."""
    start, end = TRUTH_COLUMNS[truth]
    return np.stack([np.asarray(getattr(row, start), float), np.asarray(getattr(row, end), float)], axis=1)


def read_rows(table: str | Path | pd.DataFrame, truth: str = "corpus") -> list[Row]:
    """The usable rows of a corpus table, in table order, with word spans under `truth` when the table has them."""
    if truth not in TRUTH_COLUMNS:
        raise ValueError(f"unknown word timings {truth!r} (known: {', '.join(TRUTH_COLUMNS)})")
    frame = usable(read_table(table))
    timed = TRUTH_COLUMNS[truth][0] in frame.columns
    return [Row(_item(r), r.audio, spans_of(r, truth) if timed else None) for r in frame.itertuples()]


def _item(row) -> Item:
    """The item of one table row (tables written before `task` and `meta` were columns read as multiple choice)."""
    meta = getattr(row, "meta", None)
    return Item(row.id, row.subject, row.question, list(row.choices), int(row.answer),
                meta=json.loads(meta) if meta else {}, task=getattr(row, "task", "mc"))


def table_style(table: str | Path | pd.DataFrame) -> str:
    """The item style ("cloze" | "letter") the table was voiced in."""
    return str(read_table(table)["style"].iloc[0])


def read_shard(table: str | Path, shard: int, shard_items: int, max_items: int | None) -> tuple[list[Row], str]:
    """The usable rows of shard `shard` of a corpus table (`modgap.plan.shard_rows` cuts the table) and its style;
    ValueError naming the table when every row of the shard was excluded."""
    frame = read_table(table)
    rows = read_rows(frame.iloc[shard_rows(len(frame), shard_items, max_items, shard)])
    if not rows:
        raise ValueError(f"{table}: shard {shard} has no usable item (all excluded by the corpus stage)")
    return rows, table_style(frame)
