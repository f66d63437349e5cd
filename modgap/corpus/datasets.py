"""Benchmark loaders: every configured source becomes {split: [Item]} in the one item format.

Sources: `lab` (generated; train/calib/test), and `jsonl`, `voicebench`, `speechmmlu` (test only). `jsonl` is a
local file of items; voicebench and speechmmlu read a .json/.jsonl file of records or anything `hf_records` reads
(save_to_disk folder, Parquet file or shard folder, hub id in the local cache). Relative paths in a spec resolve
against `root`; relative audio paths in records resolve against the record file's folder. Audio is required when the
spec's `audio` is "native" (the default for voicebench and speechmmlu): an existing file or embedded bytes.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from modgap.config import NATIVE_SOURCES
from modgap.corpus.hf_records import HFSourceError, SourceSplit, hf_location, read_splits
from modgap.corpus.items import LETTERS, Item, ItemError, read_jsonl, validate_item
from modgap.corpus.lab_world import generate_lab
from modgap.corpus.audio import AudioError, write_recording

# Option markers inside a prompt, e.g. "A. text", "(B) text", "C: text": first tried at line starts
# (an option is then the rest of its line), then anywhere after whitespace.
_LINE_MARK = r"(?m)^[ \t]*\(?{L}[.):][ \t]*"
_INLINE_MARK = r"(?:^|(?<=\s))\(?{L}[.)][ \t]+"
_LETTER_ANSWER = re.compile(r"^\(?([A-Ja-j])\)?\.?$")


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the one-line message names the dataset and the bad file, field or item."""


def load_items(
    name: str, spec: dict, root: str | Path = ".", audio_dir: str | Path | None = None
) -> dict[str, list[Item]]:
    """Load dataset `name` as {split: items}; raises DatasetError on any unusable input.

    Recordings embedded in the records (a `datasets` Audio column) are decoded to `audio_dir/<id>.flac` (16 kHz mono);
    an undecodable one keeps its item with no audio and the reason in meta["audio_error"]. Without `audio_dir` they
    are not decoded and such items carry no audio (enough to count and inspect the items).
    """
    source = spec.get("source")
    if source not in _LOADERS:
        raise DatasetError(f"dataset {name}: unknown source {source!r} (expected one of {', '.join(_LOADERS)})")
    splits = _LOADERS[source](name, spec, Path(root), Path(audio_dir) if audio_dir is not None else None)
    seen: set[str] = set()
    for item in (it for items in splits.values() for it in items):
        if item.id in seen:
            raise DatasetError(f"dataset {name}: duplicate item id {item.id!r}")
        seen.add(item.id)
    return splits


def _load_lab(name: str, spec: dict, root: Path, audio_dir: Path | None) -> dict[str, list[Item]]:
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


def _load_jsonl(name: str, spec: dict, root: Path, audio_dir: Path | None) -> dict[str, list[Item]]:
    path = _data_path(name, spec, root)
    try:
        items = read_jsonl(path)
    except ItemError as e:
        raise DatasetError(f"dataset {name}: {e}") from None
    _check_nonempty(name, path, items)
    need_audio = _needs_audio(spec)
    return {"test": [replace(it, audio=_audio(name, it.id, it.audio, path.parent, need_audio)) for it in items]}


VOICEBENCH_TASKS = {"mmsu": "mc", "openbookqa": "mc", "advbench": "refusal", "ifeval": "ifeval", "sd-qa": "qa"}
_GENERIC_SPLITS = {"train", "validation", "test"}
_UNREAD = {"bytes": b"", "path": None}  # an embedded recording left unread (see load_items)


def _load_voicebench(name: str, spec: dict, root: Path, audio_dir: Path | None) -> dict[str, list[Item]]:
    """VoiceBench records: `prompt` (or `question`), `audio`, and by task (from `subset`; "mc" without one):
    mc (mmsu, openbookqa): options embedded in the prompt ("A. ..."; or a `choices` list), `reference` letter;
    refusal (advbench): the prompt only; ifeval: `key`, `instruction_id_list`, `kwargs` (None entries dropped) to meta;
    qa (sd-qa): `reference` answer(s) to meta["references"]. Assumed from the published subsets' columns.
    """
    subset = spec.get("subset")
    if subset is not None and subset not in VOICEBENCH_TASKS:
        raise DatasetError(f"dataset {name}: subset {subset!r} is not supported (known: {', '.join(VOICEBENCH_TASKS)})")
    task = VOICEBENCH_TASKS[subset] if subset else "mc"

    def parts(rid: str, rec: dict) -> tuple:
        text = rec.get("question") or rec.get("prompt")
        if not text:
            raise ItemError(f"item {rid}: no 'prompt' or 'question' field")
        if task == "mc":
            question, options = _split_options(str(text))
            answer = rec["reference"] if rec.get("reference") is not None else rec.get("answer")
            return question, rec.get("choices") or options, answer, {}
        return str(text).strip(), [], -1, _open_task_meta(rid, task, rec)

    return _native_items(name, spec, root, audio_dir, task, parts)


def _open_task_meta(rid: str, task: str, rec: dict) -> dict:
    """meta of an open-task record: IFEval's instruction ids and arguments, or QA's accepted answers."""
    if task == "ifeval":
        if not rec.get("instruction_id_list"):
            raise ItemError(f"item {rid}: ifeval needs 'instruction_id_list'")
        kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in rec.get("kwargs") or []]
        return {"key": rec.get("key"), "instruction_id_list": list(rec["instruction_id_list"]), "kwargs": kwargs}
    if task == "qa":
        refs = rec.get("reference") if rec.get("reference") is not None else rec.get("answers")
        refs = [refs] if isinstance(refs, str) else list(refs or [])
        if not refs:
            raise ItemError(f"item {rid}: qa needs a 'reference' answer")
        return {"references": [str(r) for r in refs]}
    return {}


def _load_speechmmlu(name: str, spec: dict, root: Path, audio_dir: Path | None) -> dict[str, list[Item]]:
    """SpeechMMLU records: `question_text` (or `question`), `question_audio` (or `audio`), `answer` (index 0-3 or
    letter), choices as a `choices` list, columns A, B, ..., or options embedded in the question ("A. ..."); a record
    with a `voice_id` is one voice of a question (id suffixed with it, voice in meta). The choice layout is assumed."""

    def parts(rid: str, rec: dict) -> tuple:
        question = str(rec.get("question_text") or rec.get("question") or "")
        choices = rec.get("choices")
        if choices is None:
            choices = []
            for letter in LETTERS:
                if rec.get(letter) is None:
                    break
                choices.append(rec[letter])
        if not choices:
            question, choices = _split_options(question)
        meta = {"voice_id": str(rec["voice_id"])} if rec.get("voice_id") is not None else {}
        return question, choices, rec.get("answer"), meta

    return _native_items(name, spec, root, audio_dir, "mc", parts)


_LOADERS: dict[str, Callable[[str, dict, Path, Path | None], dict[str, list[Item]]]] = {
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
    """The records of a .jsonl or .json (a list) file."""
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"dataset {name}: {path}:{n}: not valid JSON ({e.msg})") from None
    else:
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"dataset {name}: {path}: not valid JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise DatasetError(f"dataset {name}: {path}: expected a JSON list of records")
    for k, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(f"dataset {name}: {path}: record {k} is not an object")
    return rows


def _record_id(name: str, rec: dict, k: int) -> str:
    """The record's own id (`voice_id` appended: one voice of a question), else `<name>-<position>`."""
    voice = f"-{rec['voice_id']}" if rec.get("voice_id") is not None else ""
    for key in ("id", "index", "question_id", "key"):
        if rec.get(key) is not None:
            return f"{rec[key]}{voice}"
    return f"{name}-{k:05d}{voice}"


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


def _native_items(
    name: str, spec: dict, root: Path, audio_dir: Path | None, task: str, parts: Callable[[str, dict], tuple]
) -> dict[str, list[Item]]:
    """Items of every wanted source split, as the test split. `parts(rid, record)` gives (question, choices, answer,
    meta). Ids are the record's own (prefixed "<split>-" when several splits are read); the subject is the record's,
    else its split's name (unless train/validation/test), else the dataset's name."""
    sources = _record_sources(name, spec, root, with_audio=audio_dir is not None)
    items = []
    for split, where, folder, records in sources:
        for k, rec in enumerate(records):
            rid = _record_id(name, rec, k)
            rid = f"{split}-{rid}" if len(sources) > 1 else rid
            try:
                question, choices, answer, meta = parts(rid, rec)
                item = _item(rid, _subject(name, split, rec), question, choices, answer, meta, task)
                item = _with_audio(name, item, rec, folder, audio_dir, where, _needs_audio(spec))
            except ItemError as e:
                raise DatasetError(f"dataset {name}: {where}: {e}") from None
            items.append(item)
    if not items:
        raise DatasetError(f"dataset {name}: no items in {', '.join(str(s[1]) for s in sources)}")
    return {"test": items}


def _record_sources(name: str, spec: dict, root: Path, with_audio: bool) -> list[tuple[str, str, Path, Iterable]]:
    """(split, where, folder for relative audio paths, records) per source split; .json/.jsonl files are one split."""
    if not spec.get("path"):
        raise DatasetError(f"dataset {name}: source {spec['source']!r} needs a 'path'")
    path = spec["path"]
    local = root / path
    if local.suffix.lower() in (".json", ".jsonl", ".parquet") and not local.is_file():
        raise DatasetError(f"dataset {name}: file not found: {local}")
    if local.suffix.lower() in (".json", ".jsonl"):
        return [("test", str(local), local.parent, _records(name, local))]
    location = hf_location(root, path)
    try:
        splits = read_splits(location, spec.get("subset"), spec.get("split"), with_audio)
    except HFSourceError as e:
        raise DatasetError(f"dataset {name}: {e}") from None
    folder = location if isinstance(location, Path) and location.is_dir() else Path(str(location)).parent
    return [(split, f"{location}:{split}", folder, _with_record_audio(src)) for split, src in splits.items()]


def _with_record_audio(split: SourceSplit) -> Iterable[dict]:
    """Records with their recording under `audio`: the Audio column "audio", else "question_audio", else the first;
    `_UNREAD` where the split was read without audio."""
    columns = split.audio_columns
    column = next((c for c in ("audio", "question_audio") if c in columns), columns[0] if columns else None)
    for rec in split.records:
        yield rec if column is None else {**rec, "audio": rec.get(column, _UNREAD)}


def _subject(name: str, split: str, rec: dict) -> str:
    return str(rec.get("subject") or rec.get("category") or (split if split not in _GENERIC_SPLITS else name))


def _item(rid: str, subject: str, question: str, choices: object, answer: object, meta: dict, task: str) -> Item:
    """A validated Item from one record's parts (no audio yet); raises ItemError naming the item."""
    if not isinstance(choices, list) or any(c is None for c in choices):
        raise ItemError(f"item {rid}: choices must be a list of texts, got {choices!r}")
    item = Item(
        id=rid, subject=subject, question=question, choices=[str(c).strip() for c in choices],
        answer=_answer_index(rid, answer), meta=meta, task=task,
    )
    validate_item(item)
    return item


def _with_audio(
    name: str, item: Item, rec: dict, folder: Path, audio_dir: Path | None, where: str, required: bool
) -> Item:
    """`item` with its recording: an existing file, or embedded bytes decoded to `audio_dir` (see load_items)."""
    value = rec.get("audio")
    if not (isinstance(value, dict) and value.get("bytes") is not None):
        return replace(item, audio=_audio(name, item.id, value, folder, required))
    if audio_dir is None:
        return item
    out = audio_dir / f"{item.id}.flac"
    try:
        write_recording(item.id, value, folder, out, f"dataset {name}: {where}")
    except AudioError as e:
        return replace(item, meta={**item.meta, "audio_error": str(e)})
    return replace(item, audio=str(out))
