"""Word timings shared by the TTS engine and the forced aligner."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WordTiming:
    """One word token's span in its recording, in milliseconds from sample 0."""

    word: str
    start_ms: float
    end_ms: float
