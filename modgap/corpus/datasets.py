"""Benchmark loaders: every configured source becomes {split: [Item]} in the one item format.

Sources: `lab` (generated; train/calib/test), and `jsonl`, `voicebench`, `speechmmlu` (local files;
test only). Relative paths in a spec resolve against `root`; relative audio paths in records resolve
against the record file's folder. Audio is required when the spec's `audio` is "native" (the default
for voicebench and speechmmlu); any audio given must be an existing file.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from modgap.config import NATIVE_SOURCES
from modgap.corpus.items import LETTERS, Item, ItemError, read_jsonl, validate_item
from modgap.corpus.lab_world import generate_lab

# Option markers inside a prompt, e.g. "A. text", "(B) text", "C: text": first tried at line starts
# (an option is then the rest of its line), then anywhere after whitespace.
_LINE_MARK = r"(?m)^[ \t]*\(?{L}[.):][ \t]*"
_INLINE_MARK = r"(?:^|(?<=\s))\(?{L}[.)][ \t]+"
_LETTER_ANSWER = re.compile(r"^\(?([A-Ja-j])\)?\.?$")


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the one-line message names the dataset and the bad file, field or item."""


def load_items(name: str, spec: dict, root: str | Path = ".") -> dict[str, list[Item]]:
    """Load dataset `name` as {split: items}; raises DatasetError on any unusable input."""
    source = spec.get("source")
    if source not in _LOADERS:
        raise DatasetError(f"dataset {name}: unknown source {source!r} (expected one of {', '.join(_LOADERS)})")
    splits = _LOADERS[source](name, spec, Path(root))
    seen: set[str] = set()
    for item in (it for items in splits.values() for it in items):
        if item.id in seen:
            raise DatasetError(f"dataset {name}: duplicate item id {item.id!r}")
        seen.add(item.id)
    return splits


def _load_lab(name: str, spec: dict, root: Path) -> dict[str, list[Item]]:
    try:
        splits = generate_lab(
            seed=spec["seed"], n_train=spec["n_train"], n_calib=spec["n_calib"], n_test=spec["n_test"],
            n_choices=spec.get("n_choices", 4),
        )
    except KeyError as e:
        raise DatasetError(f"dataset {name}: lab source needs {e.args[0]!r}") from None
    except ValueError as e:
        raise DatasetError(f"dataset {name}: {e}") from None
    if not splits["test"]:
        raise DatasetError(f"dataset {name}: no items in the test split (n_test is 0)")
    return splits


def _load_jsonl(name: str, spec: dict, root: Path) -> dict[str, list[Item]]:
    path = _data_path(name, spec, root)
    try:
        items = read_jsonl(path)
    except ItemError as e:
        raise DatasetError(f"dataset {name}: {e}") from None
    _check_nonempty(name, path, items)
    need_audio = _needs_audio(spec)
    return {"test": [replace(it, audio=_audio(name, it.id, it.audio, path.parent, need_audio)) for it in items]}


def _load_voicebench(name: str, spec: dict, root: Path) -> dict[str, list[Item]]:
    """VoiceBench multiple-choice records: `prompt` with embedded options, `reference` letter, `audio`."""
    path = _data_path(name, spec, root)
    items = []
    for k, rec in enumerate(_records(name, path)):
        rid = _record_id(name, rec, k)
        text = rec.get("question") or rec.get("prompt")
        if not text:
            raise DatasetError(f"dataset {name}: {path}: item {rid}: no 'prompt' or 'question' field")
        question, options = _split_options(str(text))
        answer = rec["reference"] if rec.get("reference") is not None else rec.get("answer")
        items.append(_item(name, path, rid, rec, question, rec.get("choices") or options, answer, spec))
    _check_nonempty(name, path, items)
    return {"test": items}


def _load_speechmmlu(name: str, spec: dict, root: Path) -> dict[str, list[Item]]:
    """SpeechMMLU records: `question`, `choices` or columns A, B, ..., `answer` (letter or index), `audio`."""
    path = _data_path(name, spec, root)
    items = []
    for k, rec in enumerate(_records(name, path)):
        rid = _record_id(name, rec, k)
        choices = rec.get("choices")
        if choices is None:
            choices = []
            for letter in LETTERS:
                if rec.get(letter) is None:
                    break
                choices.append(rec[letter])
        items.append(_item(name, path, rid, rec, str(rec.get("question") or ""), choices, rec.get("answer"), spec))
    _check_nonempty(name, path, items)
    return {"test": items}


_LOADERS: dict[str, Callable[[str, dict, Path], dict[str, list[Item]]]] = {
    "lab": _load_lab,
    "jsonl": _load_jsonl,
    "voicebench": _load_voicebench,
    "speechmmlu": _load_speechmmlu,
}


def _data_path(name: str, spec: dict, root: Path) -> Path:
    if not spec.get("path"):
        raise DatasetError(f"dataset {name}: source {spec['source']!r} needs a 'path'")
    path = root / spec["path"]
    if not path.is_file():
        raise DatasetError(f"dataset {name}: file not found: {path}")
    return path


def _check_nonempty(name: str, path: Path, items: list[Item]) -> None:
    if not items:
        raise DatasetError(f"dataset {name}: no items in {path}")


def _needs_audio(spec: dict) -> bool:
    return spec.get("audio", "native" if spec["source"] in NATIVE_SOURCES else "tts") == "native"


def _records(name: str, path: Path) -> list[dict]:
    """The records of a .jsonl, .json (a list) or .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise DatasetError(f"dataset {name}: {path}: unreadable Parquet ({e})") from None
    elif suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"dataset {name}: {path}:{n}: not valid JSON ({e.msg})") from None
    elif suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"dataset {name}: {path}: not valid JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise DatasetError(f"dataset {name}: {path}: expected a JSON list of records")
    else:
        raise DatasetError(f"dataset {name}: {path}: unsupported file type (expected .jsonl, .json or .parquet)")
    for k, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(f"dataset {name}: {path}: record {k} is not an object")
    return rows


def _record_id(name: str, rec: dict, k: int) -> str:
    for key in ("id", "index", "question_id"):
        if rec.get(key) is not None:
            return str(rec[key])
    return f"{name}-{k:05d}"


def _split_options(text: str) -> tuple[str, list[str]]:
    """(question, options) from a prompt with embedded "A. ..." options; ([text], []) when it has none."""
    for mark in (_LINE_MARK, _INLINE_MARK):
        found: list[re.Match] = []
        for letter in LETTERS:
            m = re.compile(mark.format(L=letter)).search(text, found[-1].end() if found else 0)
            if m is None:
                break
            found.append(m)
        if len(found) >= 2:
            ends = [m.start() for m in found[1:]] + [len(text)]
            options = [text[m.end() : end] for m, end in zip(found, ends)]
            if mark is _LINE_MARK:
                options = [o.split("\n", 1)[0] for o in options]
            return text[: found[0].start()].strip(), [o.strip() for o in options]
    return text.strip(), []


def _answer_index(rid: str, value: object) -> int:
    """An answer letter ("B", "(B)", "b.") or integer index, as an index."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _LETTER_ANSWER.match(value.strip())
        if m:
            return LETTERS.index(m.group(1).upper())
        if value.strip().isdigit():
            return int(value)
    raise ItemError(f"item {rid}: answer {value!r} is not a letter or an index")


def _audio(name: str, rid: str, value: object, folder: Path, required: bool) -> str | None:
    """The item's existing audio file (a path or {"path": ...}, relative to `folder`), or None."""
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        if required:
            raise DatasetError(f"dataset {name}: item {rid}: no audio file (native audio needs one per item)")
        return None
    if not isinstance(path, str):
        raise DatasetError(f"dataset {name}: item {rid}: audio must be a path or {{'path': ...}}, got {path!r}")
    full = folder / path
    if not full.is_file():
        raise DatasetError(f"dataset {name}: item {rid}: audio file not found: {full}")
    return str(full)


def _item(
    name: str, path: Path, rid: str, rec: dict, question: str, choices: object, answer: object, spec: dict
) -> Item:
    """A validated Item from one record's parts; errors name the dataset, file and item."""
    try:
        if not isinstance(choices, list) or any(c is None for c in choices):
            raise ItemError(f"item {rid}: choices must be a list of texts, got {choices!r}")
        item = Item(
            id=rid,
            subject=str(rec.get("subject") or rec.get("category") or name),
            question=question,
            choices=[str(c).strip() for c in choices],
            answer=_answer_index(rid, answer),
            audio=_audio(name, rid, rec.get("audio"), path.parent, _needs_audio(spec)),
        )
        validate_item(item)
    except ItemError as e:
        raise DatasetError(f"dataset {name}: {path}: {e}") from None
    return item
