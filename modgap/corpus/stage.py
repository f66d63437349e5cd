"""Corpus stage drivers: items -> speech with TTS timings -> forced alignment -> summary.

Each driver reads and writes files only; the TTS, aligner and loaders do the work. Every table is
written to a temporary name and renamed, so an interrupted job never leaves a complete-looking file.
"""
from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from modgap.corpus.align import AlignmentError, PocketsphinxAligner
from modgap.atomic import atomic, write_parquet, write_text
from modgap.corpus.audio import AudioError, read_mono_16k
from modgap.corpus.asr import make_recognizer, word_error_rate
from modgap.corpus.datasets import load_items
from modgap.corpus.items import Item, read_jsonl, spoken_text, words_of, write_jsonl
from modgap.corpus.timing import SAMPLE_RATE, WordTiming
from modgap.paths import NATIVE_VOICE
from modgap.corpus.tts import EspeakTTS, TTSError
from modgap.tables import to_markdown




def write_split(
    name: str, spec: dict, split: str, out_jsonl: str | Path, recordings: str | Path, root: str | Path = "."
) -> int:
    """Load dataset `name` and write one split as item JSONL; returns the item count.

    Recordings embedded in the dataset are decoded into the folder `recordings` (always created), one FLAC per item.
    """
    Path(recordings).mkdir(parents=True, exist_ok=True)
    items = load_items(name, spec, root, audio_dir=recordings)[split]
    with atomic(out_jsonl) as tmp:
        write_jsonl(items, tmp)
    return len(items)


# ---------------------------------------------------------------- speech (TTS or native recordings)


@dataclass(frozen=True)
class VoiceSpec:
    """How one output set is voiced: an espeak voice, or the dataset's own recordings."""

    voice: str
    rate: int
    pitch: int

    @property
    def native(self) -> bool:
        return self.voice == NATIVE_VOICE


_tts: dict[VoiceSpec, EspeakTTS] = {}


def _speak_one(job: tuple[Item, str, VoiceSpec, str]) -> dict:
    """Voice one item into `audio_path`; returns its speech-table row."""
    item, text, voice, audio_path = job
    row = {"status": "ok", "reason": "", "tts_start_ms": None, "tts_end_ms": None}
    if voice.native:
        if item.audio is None:  # its embedded recording could not be decoded (load_items says why)
            return {**row, "status": "unreadable_audio", "reason": item.meta["audio_error"], "duration_ms": 0.0,
                    "audio": ""}
        try:
            audio = read_mono_16k(item.id, item.audio)
        except AudioError as e:
            return {**row, "status": "unreadable_audio", "reason": str(e), "duration_ms": 0.0, "audio": ""}
    else:
        if voice not in _tts:
            _tts[voice] = EspeakTTS(voice.voice, voice.rate, voice.pitch)
        try:
            speech = _tts[voice].synthesize(text)
        except TTSError as e:
            return {**row, "status": "tts_failed", "reason": str(e), "duration_ms": 0.0, "audio": ""}
        audio = speech.audio
        row["tts_start_ms"] = [w.start_ms for w in speech.words]
        row["tts_end_ms"] = [w.end_ms for w in speech.words]
    sf.write(audio_path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return {**row, "duration_ms": 1000.0 * len(audio) / SAMPLE_RATE, "audio": audio_path}


def synthesize_split(
    items_jsonl: str | Path,
    style: str,
    voice: VoiceSpec,
    out_table: str | Path,
    audio_dir: str | Path,
    workers: int = 1,
) -> pd.DataFrame:
    """Voice every item of a split; writes FLAC files under `audio_dir` and the speech table.

    Columns: item fields, style, text (exactly what is spoken and read), words, audio, duration_ms,
    voice, rate, pitch, tts_start_ms/tts_end_ms (per word; None for native recordings), status, reason.
    """
    items = read_jsonl(items_jsonl)
    audio_dir = Path(audio_dir)
    audio_dir.mkdir(parents=True, exist_ok=True)
    texts = [spoken_text(it, style) for it in items]
    jobs = [(it, tx, voice, str(audio_dir / f"{it.id}.flac")) for it, tx in zip(items, texts)]
    rows = _map(_speak_one, jobs, workers, f"speak {voice.voice}")
    df = pd.DataFrame(
        {
            "id": [it.id for it in items],
            "subject": [it.subject for it in items],
            "question": [it.question for it in items],
            "choices": [it.choices for it in items],
            "answer": [it.answer for it in items],
            "task": [it.task for it in items],
            "meta": [json.dumps(it.meta, sort_keys=True) for it in items],
            "style": style,
            "text": texts,
            "words": [words_of(t) for t in texts],
            "voice": voice.voice,
            "rate": voice.rate if not voice.native else None,
            "pitch": voice.pitch if not voice.native else None,
        }
    )
    df = pd.concat([df, pd.DataFrame(rows)], axis=1)
    write_parquet(df, out_table)
    return df


# ---------------------------------------------------------------- forced alignment


@dataclass(frozen=True)
class AlignSpec:
    """Aligner beams and the optional ASR gate."""

    beam: float = 1e-200
    wbeam: float = 1e-200
    pbeam: float = 1e-200
    max_unaligned: float = 0.2
    asr_engine: str | None = None
    max_wer: float = 0.5


_workers: dict[AlignSpec, tuple] = {}


def _align_tools(spec: AlignSpec) -> tuple:
    """This process's aligner and optional recogniser, built on first use.

    Built lazily inside the task rather than in a pool initializer: an initializer that raises
    (say, an unknown recogniser) makes multiprocessing respawn workers forever instead of failing.
    """
    if spec not in _workers:
        recognizer = make_recognizer(spec.asr_engine) if spec.asr_engine else None
        _workers[spec] = (PocketsphinxAligner(spec.beam, spec.wbeam, spec.pbeam, spec.max_unaligned), recognizer)
    return _workers[spec]


def _align_one(job: tuple[str, list[str], str, AlignSpec]) -> dict:
    """Align one recording; returns aligner timings plus status/reason."""
    audio_path, words, text, spec = job
    aligner, recognizer = _align_tools(spec)
    row = {"align_start_ms": None, "align_end_ms": None, "status": "ok", "reason": ""}
    oov = aligner.oov(words)
    if oov:
        return {**row, "status": "oov", "reason": "out-of-vocabulary: " + " ".join(oov)}
    audio, _ = sf.read(audio_path, dtype="float32")
    try:
        spans: list[WordTiming] = aligner.align(audio, words)
    except AlignmentError as e:
        return {**row, "status": "align_failed", "reason": str(e)}
    row["align_start_ms"] = [w.start_ms for w in spans]
    row["align_end_ms"] = [w.end_ms for w in spans]
    if recognizer is not None:
        wer = word_error_rate(text, recognizer.transcribe(audio))
        if wer > spec.max_wer:
            return {**row, "status": "asr_gate", "reason": f"WER {wer:.2f} > {spec.max_wer}"}
    return row


def align_split(
    speech_table: str | Path, spec: AlignSpec, out_table: str | Path, workers: int = 1
) -> pd.DataFrame:
    """Force-align every voiced item; writes the final items table of the split and voice.

    Adds align_start_ms/align_end_ms and start_ms/end_ms: the timings downstream stages use
    (TTS where the audio was synthesized, the aligner for native recordings). `status` != "ok"
    marks an excluded item, with its `reason`; such items are kept in the table, never dropped.
    """
    df = pd.read_parquet(speech_table)
    todo = df.index[df["status"] == "ok"]
    jobs = [(df.at[i, "audio"], list(df.at[i, "words"]), df.at[i, "text"], spec) for i in todo]
    rows = _map(_align_one, jobs, workers, "align")
    out = pd.DataFrame(rows, index=todo).reindex(df.index)
    df["align_start_ms"] = out["align_start_ms"]
    df["align_end_ms"] = out["align_end_ms"]
    aligned = out["status"].notna()
    df.loc[aligned, "status"] = out.loc[aligned, "status"]
    df.loc[aligned, "reason"] = out.loc[aligned, "reason"]
    use_tts = df["tts_start_ms"].notna()
    df["start_ms"] = df["tts_start_ms"].where(use_tts, df["align_start_ms"])
    df["end_ms"] = df["tts_end_ms"].where(use_tts, df["align_end_ms"])
    write_parquet(df, out_table)
    return df


def _map(fn, jobs: list, workers: int, desc: str) -> list:
    """Ordered map with a progress bar, in a process pool when workers > 1."""
    if workers <= 1 or len(jobs) < 2:
        return [fn(j) for j in tqdm(jobs, desc=desc, mininterval=2)]
    with mp.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=8), total=len(jobs), desc=desc, mininterval=2))


# ---------------------------------------------------------------- summary


def agreement_ms(df: pd.DataFrame) -> np.ndarray:
    """|TTS word start - aligner word start| in ms over all words of aligned, synthesized items."""
    both = df["tts_start_ms"].notna() & df["align_start_ms"].notna()
    if not both.any():
        return np.zeros(0)
    tts = np.concatenate([np.asarray(v, float) for v in df.loc[both, "tts_start_ms"]])
    ali = np.concatenate([np.asarray(v, float) for v in df.loc[both, "align_start_ms"]])
    return np.abs(tts - ali)


def summarize_split(df: pd.DataFrame, tolerance_ms: float) -> dict:
    """Counts, exclusions by reason, audio hours and TTS-vs-aligner agreement for one table."""
    diff = agreement_ms(df)
    agree = None
    if diff.size:
        agree = {
            "words": int(diff.size),
            "median_ms": float(np.median(diff)),
            "p90_ms": float(np.percentile(diff, 90)),
            "max_ms": float(diff.max()),
            f"within_{tolerance_ms:g}ms": float(np.mean(diff <= tolerance_ms)),
        }
    return {
        "items": int(len(df)),
        "ok": int((df["status"] == "ok").sum()),
        "excluded": {k: int(v) for k, v in df.loc[df["status"] != "ok", "status"].value_counts().items()},
        "audio_s": float(df["duration_ms"].sum() / 1000.0),
        "agreement": agree,
    }


def write_summary(tables: dict[str, str], out_json: str | Path, out_md: str | Path, tolerance_ms: float) -> dict:
    """Summarise every `split/voice` table of a dataset as JSON and a Markdown table."""
    summary = {key: summarize_split(pd.read_parquet(path), tolerance_ms) for key, path in tables.items()}
    write_text(json.dumps(summary, indent=2) + "\n", out_json)
    rows = []
    for key, s in summary.items():
        a = s["agreement"]
        rows.append({
            "split/voice": key, "items": s["items"], "ok": s["ok"],
            "excluded": ", ".join(f"{k}: {v}" for k, v in s["excluded"].items()) or "0",
            "audio (s)": f"{s['audio_s']:.0f}",
            "agreement median / p90 / max (ms)":
                f"{a['median_ms']:.0f} / {a['p90_ms']:.0f} / {a['max_ms']:.0f}" if a else "n/a (no TTS timings)",
            "within tol.": f"{a[f'within_{tolerance_ms:g}ms']:.1%}" if a else "n/a",
        })
    write_text(to_markdown(pd.DataFrame(rows)) + "\n", out_md)
    return summary
