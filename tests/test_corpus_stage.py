"""Corpus drivers on real lab items: speech, alignment, agreement, exclusions and the summary."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from modgap.corpus.stage import (
    AlignSpec, VoiceSpec, agreement_ms, align_split, synthesize_split, write_split, write_summary,
)
from modgap.corpus.items import Item, write_jsonl
from modgap.corpus.lab_world import generate_lab


@pytest.fixture(scope="module")
def lab_corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    write_jsonl(generate_lab(0, 0, 0, 200)["test"], tmp / "items.jsonl")
    synthesize_split(tmp / "items.jsonl", "cloze", VoiceSpec("en-us+f3", 185, 50), tmp / "s.parquet", tmp / "audio", 2)
    return tmp, align_split(tmp / "s.parquet", AlignSpec(), tmp / "items.parquet", workers=2)


def test_timings_monotone_and_inside_audio(lab_corpus):
    _, df = lab_corpus
    assert (df["status"] == "ok").all()
    for _, row in df.iterrows():
        audio, sr = sf.read(row["audio"])
        assert sr == 16000 and abs(1000 * len(audio) / sr - row["duration_ms"]) < 1e-6
        for kind in ("tts", "align"):
            start, end = np.asarray(row[f"{kind}_start_ms"]), np.asarray(row[f"{kind}_end_ms"])
            assert len(start) == len(row["words"])
            assert (start >= 0).all() and (end <= row["duration_ms"]).all() and (start <= end).all()
            assert (np.diff(start) >= 0).all() and (start[1:] >= end[:-1] - 1e-6).all()


def test_tts_agrees_with_forced_alignment(lab_corpus):
    _, df = lab_corpus
    diff = agreement_ms(df)
    assert diff.size == sum(len(w) for w in df["words"])
    assert np.mean(diff <= 60) >= 0.95, f"within 60 ms: {np.mean(diff <= 60):.3f}"


def test_summary_counts_and_agreement(lab_corpus, tmp_path):
    tmp, _ = lab_corpus
    summary = write_summary({"test/en-us+f3": tmp / "items.parquet"}, tmp_path / "s.json", tmp_path / "s.md", 60)
    assert json.loads((tmp_path / "s.json").read_text()) == summary
    s = summary["test/en-us+f3"]
    assert s["items"] == s["ok"] == 200 and s["excluded"] == {}
    assert s["agreement"]["median_ms"] < 30 and s["agreement"]["within_60ms"] >= 0.95
    row = next(line for line in (tmp_path / "s.md").read_text().splitlines() if "test/en-us+f3" in line)
    assert [c.strip() for c in row.strip("|").split("|")][:4] == ["test/en-us+f3", "200", "200", "0"]


def test_oov_and_mismatched_items_are_marked_not_dropped(tmp_path):
    items = [
        Item("good", "s", "what is two plus three", ["five", "six"], 0),
        Item("oov", "s", "what is zxqvbl plus three", ["five", "six"], 0),
        Item("short", "s", "hello", ["five", "six"], 0),
    ]
    write_jsonl(items, tmp_path / "items.jsonl")
    synthesize_split(tmp_path / "items.jsonl", "cloze", VoiceSpec("en-us", 175, 50), tmp_path / "s.parquet", tmp_path / "a")
    # make "short" a recording of a different, longer sentence than its text
    sf.write(tmp_path / "a" / "short.flac", sf.read(tmp_path / "a" / "good.flac")[0], 16000)
    df = align_split(tmp_path / "s.parquet", AlignSpec(), tmp_path / "items.parquet").set_index("id")
    assert df.loc["good", "status"] == "ok"
    assert df.loc["oov", "status"] == "oov" and "zxqvbl" in df.loc["oov", "reason"]
    assert df.loc["short", "status"] == "align_failed"
    summary = write_summary({"x": tmp_path / "items.parquet"}, tmp_path / "s.json", tmp_path / "s.md", 60)["x"]
    assert summary["items"] == 3 and summary["excluded"] == {"oov": 1, "align_failed": 1}


def test_native_recordings_are_resampled_and_aligned(tmp_path):
    write_jsonl([Item("n1", "s", "what is two plus three", ["five", "six"], 0)], tmp_path / "tts.jsonl")
    synthesize_split(tmp_path / "tts.jsonl", "cloze", VoiceSpec("en-us", 175, 50), tmp_path / "t.parquet", tmp_path / "t")
    audio, _ = sf.read(tmp_path / "t" / "n1.flac")
    wav = tmp_path / "rec.wav"
    import soxr

    sf.write(wav, soxr.resample(audio, 16000, 22050), 22050)
    write_jsonl([Item("n1", "s", "what is two plus three", ["five", "six"], 0, audio=str(wav))], tmp_path / "n.jsonl")
    df = synthesize_split(tmp_path / "n.jsonl", "cloze", VoiceSpec("native", 0, 0), tmp_path / "n.parquet", tmp_path / "n")
    assert df.loc[0, "tts_start_ms"] is None and abs(df.loc[0, "duration_ms"] - 1000 * len(audio) / 16000) < 1
    out = align_split(tmp_path / "n.parquet", AlignSpec(), tmp_path / "items.parquet")
    assert out.loc[0, "status"] == "ok" and list(out.loc[0, "start_ms"]) == list(out.loc[0, "align_start_ms"])


def test_interrupted_write_leaves_no_table(tmp_path, monkeypatch):
    write_jsonl([Item("a", "s", "what is two plus three", ["five", "six"], 0)], tmp_path / "items.jsonl")

    def boom(self, path, *_, **__):  # half a file, then the process is interrupted
        Path(path).write_bytes(b"PAR1")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(KeyboardInterrupt):
        synthesize_split(tmp_path / "items.jsonl", "cloze", VoiceSpec("en-us", 175, 50), tmp_path / "s.parquet", tmp_path / "a")
    assert not (tmp_path / "s.parquet").exists() and not list(tmp_path.glob("*.partial"))


def test_unknown_asr_gate_fails_fast_in_a_pool(tmp_path):
    items = [Item(f"q{k}", "s", "what is two plus three", ["five", "six"], 0) for k in range(3)]
    write_jsonl(items, tmp_path / "items.jsonl")
    synthesize_split(tmp_path / "items.jsonl", "cloze", VoiceSpec("en-us", 175, 50), tmp_path / "s.parquet", tmp_path / "a")
    with pytest.raises(ValueError, match="unknown recognizer 'whisper'"):
        align_split(tmp_path / "s.parquet", AlignSpec(asr_engine="whisper"), tmp_path / "items.parquet", workers=2)
    assert not (tmp_path / "items.parquet").exists()


def test_unreadable_native_audio_excludes_its_item_not_the_job(tmp_path):
    """A native JSONL dataset whose second recording is garbage bytes: that item is excluded with a reason naming it
    and its file, the other is voiced and aligned, and the summary counts the exclusion."""
    write_jsonl([Item("n1", "s", "what is two plus three", ["five", "six"], 0)], tmp_path / "tts.jsonl")
    synthesize_split(tmp_path / "tts.jsonl", "cloze", VoiceSpec("en-us", 175, 50), tmp_path / "t.parquet", tmp_path / "t")
    (tmp_path / "garbage.wav").write_bytes(b"RIFF this is not a recording" * 10)
    records = [{"id": "n1", "subject": "s", "question": "what is two plus three", "choices": ["five", "six"],
                "answer": 0, "audio": "t/n1.flac"},
               {"id": "bad", "subject": "s", "question": "what is two plus two", "choices": ["four", "six"],
                "answer": 0, "audio": "garbage.wav"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_split("mine", {"source": "jsonl", "path": "data.jsonl", "audio": "native"}, "test", tmp_path / "i.jsonl",
                tmp_path / "recordings", root=tmp_path)
    synthesize_split(tmp_path / "i.jsonl", "cloze", VoiceSpec("native", 0, 0), tmp_path / "n.parquet", tmp_path / "n")
    df = align_split(tmp_path / "n.parquet", AlignSpec(), tmp_path / "items.parquet").set_index("id")
    assert df.loc["n1", "status"] == "ok"
    assert df.loc["bad", "status"] == "unreadable_audio" and df.loc["bad", "audio"] == ""
    assert df.loc["bad", "reason"].startswith(f"item bad: cannot read its audio {tmp_path / 'garbage.wav'} (")
    summary = write_summary({"test/native": tmp_path / "items.parquet"}, tmp_path / "s.json", tmp_path / "s.md", 60)
    assert summary["test/native"]["items"] == 2 and summary["test/native"]["ok"] == 1
    assert summary["test/native"]["excluded"] == {"unreadable_audio": 1}
    assert "unreadable_audio: 1" in (tmp_path / "s.md").read_text()
