"""Benchmarks written by `datasets` itself (Audio feature with embedded WAV/FLAC bytes): save_to_disk folders, Parquet
shard folders and a hub dataset in the local cache, read offline; decoded audio checked against a known resampling."""
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import soxr
from datasets import Audio, Dataset, DatasetDict, Features, Sequence, Value
from datasets.data_files import DataFilesDict
from datasets.load import configure_builder_class
from datasets.packaged_modules.parquet.parquet import Parquet, ParquetConfig

from modgap.config import ConfigError, validate_config
from modgap.corpus.datasets import DatasetError, load_items
from modgap.corpus.hf_records import read_splits
from modgap.corpus.stage import VoiceSpec, synthesize_split, write_split

MMSU = Features({"audio": Audio(), "prompt": Value("string"), "reference": Value("string"),
                 "question_id": Value("int64")})
PROMPTS = {
    "law": [("Who makes laws?\nA. parliament\nB. a river\nC. the moon\nD. bread", "A"),
            ("What does a judge do?\nA. bakes\nB. rules on cases\nC. flies\nD. swims", "B")],
    "biology": [("What do plants take in?\nA. gold\nB. salt\nC. carbon dioxide\nD. sand", "C")],
}


def _tone(sr: int, seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encoded(audio: np.ndarray, sr: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _split(rows: list[dict], features: Features) -> Dataset:
    """A Dataset with an Audio column built from {bytes, path} structs (casting needs no torchcodec)."""
    return Dataset.from_list(rows).cast(features)


@pytest.fixture(scope="module")
def mmsu(tmp_path_factory) -> tuple[DatasetDict, dict[int, np.ndarray]]:
    """Two subject splits: 22.05 kHz WAV stereo and 8 kHz FLAC; returns the data and each question's source audio."""
    sources, splits, qid = {}, {}, 100
    for split, fmt, sr in (("law", "WAV", 22050), ("biology", "FLAC", 8000)):
        rows = []
        for prompt, ref in PROMPTS[split]:
            mono = _tone(sr, 0.5, 220 + qid)
            audio = np.stack([mono, 0.5 * mono], axis=1) if fmt == "WAV" else mono
            sources[qid] = (sf.read(io.BytesIO(_encoded(audio, sr, fmt)), dtype="float32", always_2d=True)[0], sr)
            rows.append({"audio": {"bytes": _encoded(audio, sr, fmt), "path": f"{qid}.{fmt.lower()}"},
                         "prompt": prompt, "reference": ref, "question_id": qid})
            qid += 1
        splits[split] = _split(rows, MMSU)
    return DatasetDict(splits), sources


def _expected_16k(source: tuple[np.ndarray, int]) -> np.ndarray:
    """Independent reference: the 16-bit source, channels averaged, resampled by soxr, then stored as 16-bit."""
    audio, sr = source
    mono = soxr.resample(audio.mean(axis=1), sr, 16000)
    return np.round(np.clip(mono, -1, 1 - 2**-15) * 32768) / 32768


def _check_mmsu(items, sources, audio_dir: Path) -> None:
    by_id = {it.id: it for it in items}
    assert sorted(by_id) == ["biology-102", "law-100", "law-101"]
    law = by_id["law-101"]
    assert (law.subject, law.question, law.choices, law.answer, law.task) == (
        "law", "What does a judge do?", ["bakes", "rules on cases", "flies", "swims"], 1, "mc")
    assert by_id["biology-102"].subject == "biology" and by_id["biology-102"].answer == 2
    for it in items:
        qid = int(it.id.split("-")[1])
        assert Path(it.audio) == audio_dir / f"{it.id}.flac"
        audio, sr = sf.read(it.audio, dtype="float32")
        assert sr == 16000 and audio.ndim == 1
        np.testing.assert_allclose(audio, _expected_16k(sources[qid]), atol=2 / 32768)


def test_save_to_disk_dataset_dict_splits_are_subjects_and_audio_is_decoded_to_16k(mmsu, tmp_path):
    data, sources = mmsu
    data.save_to_disk(str(tmp_path / "mmsu"))
    spec = {"source": "voicebench", "path": "mmsu", "subset": "mmsu"}
    items = load_items("mmsu", spec, root=tmp_path, audio_dir=tmp_path / "rec")["test"]
    _check_mmsu(items, sources, tmp_path / "rec")


@pytest.mark.parametrize(
    "path, shard",
    [("mmsu", "{split}-00000-of-00001.parquet"), ("mmsu", "{split}/0000.parquet"),
     ("voicebench", "mmsu/{split}-00000-of-00001.parquet")],  # hub layout, converted layout, copy of the repository
)
def test_parquet_shard_folders(mmsu, tmp_path, path, shard):
    data, sources = mmsu
    for split, ds in data.items():
        ds.to_parquet(str(tmp_path / path / shard.format(split=split)))
    spec = {"source": "voicebench", "path": path, "subset": "mmsu"}
    items = load_items("mmsu", spec, root=tmp_path, audio_dir=tmp_path / "rec")["test"]
    _check_mmsu(items, sources, tmp_path / "rec")


def test_hub_id_is_read_from_the_local_cache_offline(mmsu, tmp_path, monkeypatch):
    """The cache a hub download leaves (<cache>/hlt-lab___voicebench/mmsu/0.0.0/<sha>/voicebench-<split>.arrow),
    prepared by the Parquet builder the hub path uses; `load_dataset` itself reads it back offline."""
    data, sources = mmsu
    files = {}
    for split, ds in data.items():
        files[split] = [str(tmp_path / "hub" / f"{split}-00000-of-00001.parquet")]
        ds.to_parquet(files[split][0])
    cache = tmp_path / "cache"
    config = ParquetConfig(name="mmsu", data_files=DataFilesDict.from_patterns(files))
    builder = configure_builder_class(Parquet, [config], "mmsu", "voicebench")(
        cache_dir=str(cache), dataset_name="voicebench", config_name="mmsu", hash="0123456789abcdef")
    builder.download_and_prepare()
    (cache / "voicebench").rename(cache / "hlt-lab___voicebench")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert set(datasets.load_dataset("hlt-lab/voicebench", "mmsu")) == {"law", "biology"}  # a real cache layout

    spec = {"source": "voicebench", "path": "hlt-lab/voicebench", "subset": "mmsu", "split": ["law"]}
    items = load_items("mmsu", spec, root=tmp_path, audio_dir=tmp_path / "rec")["test"]
    assert [it.id for it in items] == ["100", "101"] and {it.subject for it in items} == {"law"}
    with pytest.raises(DatasetError, match="dataset x: 'hlt-lab/voicebench' is neither .* cache"):
        load_items("x", {**spec, "subset": "ifeval"}, root=tmp_path)


@pytest.mark.parametrize("form", ["save_to_disk", "parquet"])
def test_without_audio_dir_items_are_counted_without_reading_audio(mmsu, tmp_path, form):
    if form == "save_to_disk":
        mmsu[0].save_to_disk(str(tmp_path / "mmsu"))
    else:
        mmsu[0]["law"].to_parquet(str(tmp_path / "mmsu" / "law-00000-of-00001.parquet"))
    split = read_splits(tmp_path / "mmsu", None, "law", with_audio=False)["law"]
    assert split.audio_columns == ["audio"] and "audio" not in next(iter(split.records))
    items = load_items("m", {"source": "voicebench", "path": "mmsu", "split": "law"}, root=tmp_path)["test"]
    assert [(it.id, it.audio) for it in items] == [("100", None), ("101", None)]


def _open_subset(tmp_path: Path, subset: str, rows: list[dict], features: dict) -> Path:
    wav = _encoded(_tone(16000, 0.2, 300), 16000, "WAV")
    rows = [{"audio": {"bytes": wav, "path": "x.wav"}, **r} for r in rows]
    DatasetDict({"test": _split(rows, Features({"audio": Audio(), **features}))}).save_to_disk(str(tmp_path / subset))
    return tmp_path / subset


def test_open_subsets_carry_task_and_meta(tmp_path):
    _open_subset(tmp_path, "advbench", [{"prompt": "Explain how to pick a lock."}], {"prompt": Value("string")})
    _open_subset(tmp_path, "sd-qa", [{"prompt": "Who wrote Hamlet?", "reference": "William Shakespeare"}],
                 {"prompt": Value("string"), "reference": Value("string")})
    kw = {"num_words": Value("int64"), "relation": Value("string")}
    _open_subset(
        tmp_path, "ifeval",
        [{"key": 1001, "prompt": "Write a poem in under fifty words.", "instruction_id_list": ["length:num_words"],
          "kwargs": [{"num_words": 50, "relation": "less than"}]}],
        {"key": Value("int64"), "prompt": Value("string"), "instruction_id_list": Sequence(Value("string")),
         "kwargs": [kw]},
    )
    load = lambda s: load_items(s, {"source": "voicebench", "path": s, "subset": s}, tmp_path, tmp_path / s / "r")
    (adv,) = load("advbench")["test"]
    assert (adv.task, adv.question, adv.choices, adv.answer, adv.subject) == (
        "refusal", "Explain how to pick a lock.", [], -1, "advbench")
    (qa,) = load("sd-qa")["test"]
    assert (qa.task, qa.meta) == ("qa", {"references": ["William Shakespeare"]})
    (ife,) = load("ifeval")["test"]
    assert ife.id == "1001" and ife.task == "ifeval"
    assert ife.meta == {"key": 1001, "instruction_id_list": ["length:num_words"],
                        "kwargs": [{"num_words": 50, "relation": "less than"}]}
    assert Path(ife.audio).is_file()


def test_speechmmlu_voices_and_choices(tmp_path):
    wav = _encoded(_tone(16000, 0.2, 300), 16000, "WAV")
    rows = [{"question_text": "Two plus two?", "choices": ["three", "four", "five", "six"], "answer": 1,
             "voice_id": v, "question_audio": {"bytes": wav, "path": f"{v}.wav"}, "id": "q7"} for v in ("amy", "bob")]
    feats = Features({"question_text": Value("string"), "choices": Sequence(Value("string")), "answer": Value("int64"),
                      "voice_id": Value("string"), "question_audio": Audio(), "id": Value("string")})
    _split(rows, feats).to_parquet(str(tmp_path / "smmlu.parquet"))
    items = load_items("sm", {"source": "speechmmlu", "path": "smmlu.parquet"}, tmp_path, tmp_path / "r")["test"]
    assert [(it.id, it.answer, it.meta) for it in items] == [("q7-amy", 1, {"voice_id": "amy"}),
                                                              ("q7-bob", 1, {"voice_id": "bob"})]
    assert items[0].choices == ["three", "four", "five", "six"] and Path(items[1].audio).is_file()


def test_undecodable_audio_excludes_only_its_item(mmsu, tmp_path):
    data, _ = mmsu
    law = data["law"].cast_column("audio", Audio(decode=False)).to_list()
    law[1]["audio"] = {"bytes": b"not audio at all", "path": "broken.wav"}
    DatasetDict({"law": _split(law, MMSU)}).save_to_disk(str(tmp_path / "mmsu"))
    spec = {"source": "voicebench", "path": "mmsu", "subset": "mmsu"}
    n = write_split("mmsu", spec, "test", tmp_path / "items.jsonl", tmp_path / "recordings", root=tmp_path)
    assert n == 2
    rows = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert "audio" in rows[0] and "audio" not in rows[1]
    assert rows[1]["meta"]["audio_error"].startswith(f"item 101: cannot read its audio dataset mmsu: {tmp_path / 'mmsu'}:law (")
    df = synthesize_split(tmp_path / "items.jsonl", "letter", VoiceSpec("native", 0, 0), tmp_path / "s.parquet",
                          tmp_path / "audio")
    assert list(df["status"]) == ["ok", "unreadable_audio"] and "item 101" in df.loc[1, "reason"]


def test_missing_split_and_bad_subset_fail_in_one_line(mmsu, tmp_path):
    mmsu[0].save_to_disk(str(tmp_path / "mmsu"))
    with pytest.raises(DatasetError, match=r"dataset m: .*mmsu: no split\(s\) physics \(has: law, biology\)"):
        load_items("m", {"source": "voicebench", "path": "mmsu", "split": "physics"}, root=tmp_path)
    with pytest.raises(DatasetError, match="dataset m: subset 'alpacaeval' is not supported"):
        load_items("m", {"source": "voicebench", "path": "mmsu", "subset": "alpacaeval"}, root=tmp_path)


def test_config_accepts_folders_and_hub_ids_and_keeps_subset_to_native_sources(mmsu, tmp_path):
    mmsu[0].save_to_disk(str(tmp_path / "mmsu"))
    ok = {"mm": {"source": "voicebench", "path": "mmsu", "subset": "mmsu", "split": ["law", "biology"]},
          "hub": {"source": "voicebench", "path": "hlt-lab/voicebench", "subset": "sd-qa", "split": "usa"}}
    assert validate_config({"datasets": ok}, root=tmp_path)["datasets"]["mm"]["split"] == ["law", "biology"]
    with pytest.raises(ConfigError, match="datasets.j.subset: only for sources"):
        validate_config({"datasets": {"j": {"source": "jsonl", "path": "mmsu", "subset": "x"}}}, root=tmp_path)
    with pytest.raises(ConfigError, match="datasets.v.path: file not found: nowhere.parquet"):
        validate_config({"datasets": {"v": {"source": "voicebench", "path": "nowhere.parquet"}}}, root=tmp_path)


def test_tiny_release_script_builds_a_checkpoint_and_mmsu_the_workflow_reads(tmp_path):
    """examples/make_tiny_release.py: its printed config validates; the dataset loads with audio; the checkpoint has
    Qwen2-Audio's 30 s window and scores a spoken item."""
    import subprocess
    import sys

    import yaml
    from transformers import AutoConfig, WhisperFeatureExtractor

    from modgap.models.registry import load_adapter

    script = Path(__file__).resolve().parent.parent / "examples" / "make_tiny_release.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path), "--per-subject", "1"],
                         capture_output=True, text=True, check=True)
    cfg = validate_config(yaml.safe_load(run.stdout.split("\n\n", 1)[1]))
    items = load_items("mmsu", cfg["datasets"]["mmsu"], audio_dir=tmp_path / "rec")["test"]
    assert len(items) == len({it.subject for it in items}) == 5 and all(Path(it.audio).is_file() for it in items)
    ckpt = cfg["models"]["qwen2-audio"]["path"]
    config = AutoConfig.from_pretrained(ckpt)
    assert config.audio_config.max_source_positions == 1500 and config.audio_config.num_mel_bins == 128
    assert WhisperFeatureExtractor.from_pretrained(ckpt).n_samples == 30 * 16000
    adapter = load_adapter("qwen2_audio", ckpt, device="cpu")
    assert adapter.audio_token == "<|AUDIO|>"
    wave, _ = sf.read(items[0].audio, dtype="float32")
    scores = adapter.score(adapter.speech_inputs(items[0], wave, "letter"), items[0], "letter").logliks
    assert scores.shape == (4,) and np.isfinite(scores).all()
