"""Corpus throughput in times-real-time: TTS + FLAC, then forced alignment, on lab items.

Usage: python bench/corpus_throughput.py [--items 200] [--workers 2] [--voice en-us+f3]
Prints seconds of audio produced per second of wall time for each phase and end to end.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from modgap.corpus.stage import AlignSpec, VoiceSpec, align_split, synthesize_split
from modgap.corpus.items import write_jsonl
from modgap.corpus.lab_world import generate_lab


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--voice", default="en-us+f3")
    ap.add_argument("--rate", type=int, default=175)
    ap.add_argument("--style", default="cloze", choices=["cloze", "letter"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jsonl(generate_lab(0, 0, 0, args.items)["test"], tmp / "items.jsonl")
        t0 = time.perf_counter()
        df = synthesize_split(
            tmp / "items.jsonl", args.style, VoiceSpec(args.voice, args.rate, 50),
            tmp / "speech.parquet", tmp / "audio", workers=args.workers,
        )
        t1 = time.perf_counter()
        df = align_split(tmp / "speech.parquet", AlignSpec(), tmp / "items.parquet", workers=args.workers)
        t2 = time.perf_counter()
    audio_s = df["duration_ms"].sum() / 1000
    print(f"items {len(df)}  style {args.style}  audio {audio_s:.1f} s  workers {args.workers}")
    print(f"speech (TTS + FLAC): {t1 - t0:6.1f} s  {audio_s / (t1 - t0):7.1f}x real time")
    print(f"forced alignment   : {t2 - t1:6.1f} s  {audio_s / (t2 - t1):7.1f}x real time")
    print(f"corpus end to end  : {t2 - t0:6.1f} s  {audio_s / (t2 - t0):7.1f}x real time")
    print(f"excluded: {int((df['status'] != 'ok').sum())}")


if __name__ == "__main__":
    main()
