"""Word timings, and the sample rate every recording is stored and read at, shared by TTS, aligner and models."""
from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16000  # Hz: corpus FLAC files, the aligner and every speech LLM front end


@dataclass(frozen=True)
class WordTiming:
    """One word token's span in its recording, in milliseconds from sample 0."""

    word: str
    start_ms: float
    end_ms: float
