"""Pluggable speech recognisers for the optional WER quality gate (off by default: the built-in
"pocketsphinx", with its default en-us LM, is poor on espeak audio, WER about 0.7).

To use a local Whisper: write a class with `name` and `transcribe(audio: [n] float32 16 kHz) -> str`,
call `register_recognizer("whisper", WhisperRecognizer)` in a module the align workers import,
and set the gate's engine to "whisper" (options reach the class via `make_recognizer(**options)`).
"""
from __future__ import annotations

from typing import Callable, Protocol

import jiwer
import numpy as np
from pocketsphinx import Decoder

from modgap.corpus.items import words_of
from modgap.corpus.normalize import spoken_words
from modgap.corpus.timing import SAMPLE_RATE



class Recognizer(Protocol):
    """Free speech recognition of one recording."""

    name: str

    def transcribe(self, audio: np.ndarray) -> str:
        """audio: [n] float32 at 16 kHz mono -> the recognised text."""
        ...


class PocketsphinxRecognizer:
    """pocketsphinx with its default en-us acoustic model, dictionary and language model."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, audio: np.ndarray) -> str:
        """audio: [n] float32 at 16 kHz mono -> lower-case words ("" when nothing is recognised)."""
        d = self._decoder
        d.start_utt()
        d.process_raw((np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr if hyp is not None else ""


_REGISTRY: dict[str, Callable[..., Recognizer]] = {"pocketsphinx": PocketsphinxRecognizer}


def register_recognizer(name: str, factory: Callable[..., Recognizer]) -> None:
    """Make `make_recognizer(name, **options)` call `factory(**options)`; replaces any previous one."""
    _REGISTRY[name] = factory


def make_recognizer(name: str, **options) -> Recognizer:
    """A new recogniser of the registered `name`; ValueError naming it and the known ones if unknown."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown recognizer {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def _normalised(text: str) -> str:
    return " ".join(w for t in words_of(text) for w in spoken_words(t))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of `hypothesis` against `reference` on normalised words (numbers spelt out, lower case).

    Raises ValueError when the reference has no words.
    """
    ref = _normalised(reference)
    if not ref:
        raise ValueError("word_error_rate: reference has no words")
    return float(jiwer.wer(ref, _normalised(hypothesis)))
