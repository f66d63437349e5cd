"""Benchmarks as the `datasets` library writes them: their records by source split, audio left undecoded.

`location` is a `save_to_disk` folder (DatasetDict or Dataset), a Parquet file, a folder of Parquet shards, or else a
hub id read from the local Hugging Face cache only (`HF_DATASETS_CACHE` / `HF_HOME`; never the network, as with
HF_DATASETS_OFFLINE=1). A folder holding a `subset` subfolder (a copy of the hub repository) is read there. In a shard
folder a split is the file-name part before "-00000-of-00001" (`law-00000-of-00001.parquet` is split "law", as the
hub stores VoiceBench's mmsu), else the file's subfolder (`law/0000.parquet`), else the file's name. Audio columns
are cast to `Audio(decode=False)`, so a record's audio is `{"bytes", "path"}` (decoding needs no torchcodec); nothing
is read before the records are iterated.
"""
from __future__ import annotations

import re
from pathlib import Path

from dataclasses import dataclass

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Audio, Dataset, DatasetDict, Features, IterableDataset
from datasets.packaged_modules.cache.cache import Cache

_SHARD = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}$")

Records = Dataset | IterableDataset  # iterating gives one dict per record


@dataclass(frozen=True)
class SourceSplit:
    """One source split: its records and the names of its Audio columns (absent from records read without audio)."""

    records: Records
    audio_columns: list[str]


class HFSourceError(ValueError):
    """A dataset location that cannot be read; the message names it."""


def hf_location(root: Path, path: str) -> Path | str:
    """The local file or folder `path` names (relative to `root`), else `path` itself as a hub id."""
    local = root / path
    return local if local.exists() else path


def read_splits(
    location: Path | str, subset: str | None, wanted: str | list[str] | None, with_audio: bool = True
) -> dict[str, SourceSplit]:
    """The `wanted` source splits (one name, a list, or None for all, in the dataset's order) by name.

    Without `with_audio` the Audio columns are not read at all (Parquet columns are skipped), enough to count items.
    """
    splits = _open(location, subset, with_audio)
    names = list(splits) if wanted is None else [wanted] if isinstance(wanted, str) else list(wanted)
    if missing := [s for s in names if s not in splits]:
        raise HFSourceError(f"{location}: no split(s) {', '.join(missing)} (has: {', '.join(splits)})")
    return {s: _audio_undecoded(splits[s], with_audio) for s in names}


def _audio_columns(features: Features | None) -> list[str]:
    return [k for k, f in (features or {}).items() if isinstance(f, Audio)]


def _audio_undecoded(split: SourceSplit, with_audio: bool) -> SourceSplit:
    records = split.records
    present = [c for c in split.audio_columns if c in (records.features or {})]
    for col in present:
        records = records.cast_column(col, Audio(decode=False)) if with_audio else records.remove_columns(col)
    return SourceSplit(records, split.audio_columns)


def _open(location: Path | str, subset: str | None, with_audio: bool) -> dict[str, SourceSplit]:
    if isinstance(location, str):
        return _with_audio_columns(_from_cache(location, subset))
    if subset and (location / subset).is_dir():  # a copy of the hub repository: one folder per subset
        location = location / subset
    if location.is_dir() and ((location / "dataset_dict.json").is_file() or (location / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(location))
        splits = dict(loaded) if isinstance(loaded, DatasetDict) else {str(loaded.split or "test"): loaded}
        return _with_audio_columns(splits)
    return _from_parquet(location, with_audio)


def _with_audio_columns(splits: dict[str, Records]) -> dict[str, SourceSplit]:
    return {name: SourceSplit(records, _audio_columns(records.features)) for name, records in splits.items()}


def _from_parquet(location: Path, with_audio: bool) -> dict[str, SourceSplit]:
    """Streamed (no copy into the cache); split names as the module says; Audio columns known from the first file's
    embedded schema, and skipped unread without `with_audio`."""
    if location.is_file() and location.suffix.lower() != ".parquet":
        raise HFSourceError(f"{location}: unsupported file type (expected .jsonl, .json, .parquet or a dataset folder)")
    files = [location] if location.is_file() else sorted(location.rglob("*.parquet"))
    if not files:
        raise HFSourceError(f"{location}: no Parquet files (and not a save_to_disk folder)")
    by_split: dict[str, list[str]] = {}
    for f in files:
        shard = _SHARD.match(f.stem)
        split = shard["split"] if shard else f.parent.name if f.parent != location and location.is_dir() else f.stem
        by_split.setdefault(split, []).append(str(f))
    try:
        features = Features.from_arrow_schema(pq.read_schema(files[0]))
        audio = _audio_columns(features)
        columns = None if with_audio else [c for c in features if c not in audio]
        streamed = datasets.load_dataset("parquet", data_files=by_split, columns=columns, streaming=True)
    except (pa.ArrowException, OSError) as e:
        raise HFSourceError(f"{location}: unreadable Parquet ({e})") from None
    return {name: SourceSplit(records, audio) for name, records in streamed.items()}


def _from_cache(repo_id: str, subset: str | None) -> dict[str, Records]:
    """What `load_dataset(repo_id, subset)` prepared earlier, read from the cache with the builder it uses offline."""
    try:
        builder = Cache(repo_id=repo_id, dataset_name=repo_id.split("/")[-1], config_name=subset,
                        version="auto", hash="auto")
        return dict(builder.as_dataset())
    except (ValueError, FileNotFoundError) as e:
        first = str(e).splitlines()[0]
        raise HFSourceError(
            f"{repo_id!r} is neither a local file or folder nor in the local Hugging Face cache ({first})"
        ) from None

