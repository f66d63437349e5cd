"""The one item format every stage reads, and the words each style speaks."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal

Style = Literal["letter", "cloze"]
Task = Literal["mc", "refusal", "ifeval", "qa"]
LETTERS = "ABCDEFGHIJ"
TASKS = ("mc", "refusal", "ifeval", "qa")
OPEN_TASKS = ("refusal", "ifeval", "qa")  # scored from a generated answer, not from options
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")


class ItemError(ValueError):
    """A benchmark item that cannot be used; the message names the item."""


@dataclass(frozen=True)
class Item:
    """One benchmark question. `audio` is an existing recording.

    task "mc": multiple choice, `answer` indexes `choices`. Open tasks (`OPEN_TASKS`) have no choices (answer -1) and
    are scored from a generated answer: "refusal" (AdvBench: should the model refuse), "ifeval" (meta holds
    `instruction_id_list` and `kwargs`), "qa" (meta holds `references`, the accepted answers).
    """

    id: str
    subject: str
    question: str
    choices: list[str]
    answer: int
    audio: str | None = None
    meta: dict = field(default_factory=dict)
    task: Task = "mc"

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["audio"] is None:
            del d["audio"]
        if not d["meta"]:
            del d["meta"]
        if d["task"] == "mc":
            del d["task"]
        return d


def item_from_dict(d: dict, where: str = "") -> Item:
    """Build and validate an Item from a JSON record; errors name the item (or `where`)."""
    name = d.get("id", where or "<no id>")
    missing = [k for k in ("id", "subject", "question", "choices", "answer") if k not in d]
    if missing:
        raise ItemError(f"item {name}: missing field(s) {', '.join(missing)}")
    unknown = set(d) - {"id", "subject", "question", "choices", "answer", "audio", "meta", "task"}
    if unknown:
        raise ItemError(f"item {name}: unknown field(s) {', '.join(sorted(unknown))}")
    item = Item(
        id=str(d["id"]),
        subject=str(d["subject"]),
        question=str(d["question"]),
        choices=[str(c) for c in d["choices"]],
        answer=d["answer"],
        audio=d.get("audio"),
        meta=dict(d.get("meta") or {}),
        task=d.get("task", "mc"),
    )
    validate_item(item)
    return item


def validate_item(item: Item) -> None:
    """Raise ItemError naming the item when it cannot be asked or scored."""
    if item.task not in TASKS:
        raise ItemError(f"item {item.id}: unknown task {item.task!r} (known: {', '.join(TASKS)})")
    if not words_of(item.question):
        raise ItemError(f"item {item.id}: question has no speakable words")
    if item.task in OPEN_TASKS:
        if item.choices or item.answer != -1:
            raise ItemError(f"item {item.id}: an open task ({item.task}) has no choices and answer -1")
        return
    if not 2 <= len(item.choices) <= len(LETTERS):
        raise ItemError(f"item {item.id}: needs 2..{len(LETTERS)} choices, has {len(item.choices)}")
    if isinstance(item.answer, bool) or not isinstance(item.answer, int):
        raise ItemError(f"item {item.id}: answer must be an integer index, got {item.answer!r}")
    if not 0 <= item.answer < len(item.choices):
        raise ItemError(
            f"item {item.id}: answer index {item.answer} out of range for {len(item.choices)} choices"
        )
    for k, c in enumerate(item.choices):
        if not words_of(c):
            raise ItemError(f"item {item.id}: choice {LETTERS[k]} has no speakable words")


def words_of(text: str) -> list[str]:
    """The speakable word tokens of `text`, in order (punctuation dropped)."""
    return _WORD.findall(text)


def spoken_text(item: Item, style: Style) -> str:
    """Exactly the words the S condition speaks and the T condition reads.

    cloze: the question only. letter: the question, then "A, <choice>; B, <choice>; ...". An open task speaks its
    question only, whatever the style.
    """
    q = item.question.strip()
    if style == "cloze" or item.task in OPEN_TASKS:
        return q
    if style == "letter":
        opts = "; ".join(f"{LETTERS[k]}, {c.strip()}" for k, c in enumerate(item.choices))
        return f"{q} {opts}."
    raise ItemError(f"unknown item style {style!r} (expected 'letter' or 'cloze')")


def read_jsonl(path: str | Path) -> list[Item]:
    """Read items from JSONL; a bad line raises ItemError naming file and line."""
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ItemError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            try:
                items.append(item_from_dict(d, where=f"{path}:{n}"))
            except ItemError as e:
                raise ItemError(f"{path}:{n}: {e}") from None
    return items


def write_jsonl(items: Iterable[Item], path: str | Path) -> None:
    """Write items as JSONL, one record per line."""
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it.to_dict(), ensure_ascii=False) + "\n")
