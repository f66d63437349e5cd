"""Dataset loaders: each source on small fixture files, and one-line errors for bad inputs."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from modgap.corpus.datasets import DatasetError, load_items
from modgap.corpus.items import Item, write_jsonl

LAB = {"source": "lab", "seed": 0, "n_train": 20, "n_calib": 5, "n_test": 10, "n_choices": 4}


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)
    return path


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _voicebench(tmp_path: Path, **overrides) -> Path:
    _wav(tmp_path / "audio" / "q0.wav")
    _wav(tmp_path / "audio" / "q1.wav")
    records = [
        {
            "prompt": "Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nC. helium\nD. neon\n"
            "Answer with the letter.",
            "reference": "B",
            "audio": {"path": "audio/q0.wav"},
            "category": "biology",
        },
        {"prompt": "What melts ice? A. heat B. cold", "reference": "(A)", "audio": "audio/q1.wav", "id": "x1"},
    ]
    records[0].update(overrides)
    return _write_jsonl(tmp_path / "openbookqa.jsonl", records)


def test_lab_source_gives_all_splits():
    d = load_items("lab", LAB)
    assert {k: len(v) for k, v in d.items()} == {"train": 20, "calib": 5, "test": 10}
    assert d["test"][0].id == "lab-test-00000"


def test_jsonl_source_resolves_path_against_root(tmp_path):
    items = [Item("a", "s", "what is two plus two", ["four", "five"], 0), Item("b", "s", "is it red", ["yes", "no"], 1)]
    write_jsonl(items, tmp_path / "items.jsonl")
    d = load_items("mine", {"source": "jsonl", "path": "items.jsonl"}, root=tmp_path)
    assert d == {"test": items}


def test_voicebench_parses_embedded_options(tmp_path):
    _voicebench(tmp_path)
    (a, b) = load_items("obqa", {"source": "voicebench", "path": "openbookqa.jsonl"}, root=tmp_path)["test"]
    assert a.question == "Which gas do plants take in?"
    assert a.choices == ["oxygen", "carbon dioxide", "helium", "neon"] and a.answer == 1
    assert a.subject == "biology" and a.id == "obqa-00000"
    assert a.audio == str(tmp_path / "audio" / "q0.wav") and Path(a.audio).is_file()
    assert (b.id, b.subject, b.question, b.choices, b.answer) == ("x1", "obqa", "What melts ice?", ["heat", "cold"], 0)


def test_voicebench_explicit_choices_json_list(tmp_path):
    _wav(tmp_path / "q.wav")
    rec = {"index": 7, "question": "Pick red", "choices": ["red", "blue", "green"], "answer": 0, "audio": "q.wav"}
    (tmp_path / "vb.json").write_text(json.dumps([rec]))
    (item,) = load_items("vb", {"source": "voicebench", "path": "vb.json"}, root=tmp_path)["test"]
    assert (item.id, item.choices, item.answer) == ("7", ["red", "blue", "green"], 0)


def test_speechmmlu_parquet_with_letter_columns(tmp_path):
    _wav(tmp_path / "wav" / "m0.wav")
    _wav(tmp_path / "wav" / "m1.wav")
    pd.DataFrame(
        {
            "question": ["What is the capital of France?", "Which planet is red?"],
            "A": ["Paris", "Venus"], "B": ["Rome", "Mars"], "C": ["Berlin", "Earth"], "D": ["Madrid", "Jupiter"],
            "answer": ["A", "B"],
            "subject": ["geography", "astronomy"],
            "audio": [{"path": "wav/m0.wav"}, {"path": "wav/m1.wav"}],
        }
    ).to_parquet(tmp_path / "smmlu.parquet")
    items = load_items("smmlu", {"source": "speechmmlu", "path": "smmlu.parquet"}, root=tmp_path)["test"]
    assert [it.answer for it in items] == [0, 1]
    assert items[1].choices == ["Venus", "Mars", "Earth", "Jupiter"] and items[1].subject == "astronomy"
    assert items[0].audio == str(tmp_path / "wav" / "m0.wav")


def test_speechmmlu_choices_list_and_index_answer_without_audio_under_tts(tmp_path):
    rec = {"question": "Two plus two?", "choices": ["three", "four"], "answer": 1, "subject": "math"}
    path = _write_jsonl(tmp_path / "m.jsonl", [rec])
    (item,) = load_items("m", {"source": "speechmmlu", "path": str(path), "audio": "tts"})["test"]
    assert (item.answer, item.audio) == (1, None)


@pytest.mark.parametrize(
    "make, spec, match",
    [
        (lambda p: _write_jsonl(p / "e.jsonl", []), {"source": "voicebench", "path": "e.jsonl"}, "no items in"),
        (lambda p: (p / "e.jsonl").write_text(""), {"source": "jsonl", "path": "e.jsonl"}, "no items in"),
        (lambda p: None, {"source": "speechmmlu", "path": "missing.parquet"}, "file not found: .*missing.parquet"),
        (
            lambda p: _voicebench(p, audio="audio/gone.wav"),
            {"source": "voicebench", "path": "openbookqa.jsonl"},
            "item ds-00000: audio file not found: .*gone.wav",
        ),
        (
            lambda p: _voicebench(p, audio=None),
            {"source": "voicebench", "path": "openbookqa.jsonl"},
            "item ds-00000: no audio file",
        ),
        (
            lambda p: _voicebench(p, reference="E"),
            {"source": "voicebench", "path": "openbookqa.jsonl"},
            "answer index 4 out of range for 4 choices",
        ),
        (
            lambda p: _voicebench(p, reference="maybe"),
            {"source": "voicebench", "path": "openbookqa.jsonl"},
            "answer 'maybe' is not a letter",
        ),
        (
            lambda p: _voicebench(p, prompt="?!\nA. yes\nB. no"),
            {"source": "voicebench", "path": "openbookqa.jsonl"},
            "question has no speakable words",
        ),
        (
            lambda p: _voicebench(p, prompt="No options here"),
            {"source": "voicebench", "path": "openbookqa.jsonl"},
            "needs 2..10 choices, has 0",
        ),
        (
            lambda p: _voicebench(p, id="x1"),
            {"source": "voicebench", "path": "openbookqa.jsonl"},
            "duplicate item id 'x1'",
        ),
        (
            lambda p: _write_jsonl(p / "m.jsonl", [{"question": "q", "A": "x", "answer": 0}]),
            {"source": "speechmmlu", "path": "m.jsonl", "audio": "tts"},
            "needs 2..10 choices, has 1",
        ),
        (
            lambda p: _write_jsonl(p / "i.jsonl", [{"id": "a", "subject": "s", "question": "q", "choices": ["x", "y"],
                                                   "answer": 5}]),
            {"source": "jsonl", "path": "i.jsonl"},
            "i.jsonl:1: item a: answer index 5 out of range",
        ),
        (lambda p: (p / "v.json").write_text("{}"), {"source": "voicebench", "path": "v.json"}, "expected a JSON list"),
        (lambda p: (p / "v.csv").write_text("a"), {"source": "voicebench", "path": "v.csv"}, "unsupported file type"),
        (lambda p: None, {"source": "huggingface", "path": "x"}, "unknown source 'huggingface'"),
        (lambda p: None, {**LAB, "n_choices": 11}, "n_choices must be 2..10"),
    ],
)
def test_bad_inputs_raise_one_line_errors_naming_the_dataset(tmp_path, make, spec, match):
    make(tmp_path)
    with pytest.raises(DatasetError, match=match) as err:
        load_items("ds", spec, root=tmp_path)
    msg = str(err.value)
    assert msg.startswith("dataset ds: ") and "\n" not in msg
