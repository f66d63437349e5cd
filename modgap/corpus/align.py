"""Forced alignment of word tokens to speech: one time span per token."""
from __future__ import annotations

import re

import numpy as np
from pocketsphinx import Decoder

from modgap.corpus.normalize import spoken_words
from modgap.corpus.timing import SAMPLE_RATE, WordTiming

_FRAME_MS = 10.0  # pocketsphinx: 100 frames/s
_FRAME = int(SAMPLE_RATE * _FRAME_MS / 1000)
# Std of a fixed-seed Gaussian dither (full scale 1.0). TTS audio has exact digital zeros in its
# pauses, which the silence model fits badly; the dither cut the worst word-start error on ten
# espeak sentences from 172 ms to 66 ms and keeps results a function of the input alone.
_DITHER = 1e-4
_VARIANT = re.compile(r"\(\d+\)$")  # dictionary variants: "the(2)" -> "the"


def unaligned_speech_fraction(audio: np.ndarray, spans: list[WordTiming]) -> float:
    """Fraction of loud 10 ms frames of `audio` ([n] at 16 kHz) that lie outside every word span.

    Loud: frame RMS above 10% of the 95th-percentile frame RMS (and above 1e-4). A correct alignment
    leaves almost no speech outside its words (lab set: at most 0.02); audio of a different, longer
    text "aligns" with most of its speech labelled silence (0.37 to 0.88 measured).
    """
    n = audio.size // _FRAME
    rms = np.sqrt(np.mean(audio[: n * _FRAME].reshape(n, _FRAME) ** 2, axis=1))
    loud = rms > max(1e-4, 0.1 * float(np.percentile(rms, 95))) if n else np.zeros(0, bool)
    inside = np.zeros(n, bool)
    for w in spans:
        inside[int(w.start_ms // _FRAME_MS) : int(np.ceil(w.end_ms / _FRAME_MS))] = True
    return float((loud & ~inside).sum() / max(int(loud.sum()), 1))


class AlignmentError(RuntimeError):
    """A recording that cannot be aligned to its text; the message says why."""


class PocketsphinxAligner:
    """Aligner on pocketsphinx's en-us acoustic model and dictionary (shipped in the wheel).

    Numbers are spelt out by `spoken_words`; a token's words merge into one span. Wide beams are
    needed: the defaults fail on longer audio with "Final result does not match the grammar".
    """

    def __init__(
        self, beam: float = 1e-200, wbeam: float = 1e-200, pbeam: float = 1e-200, max_unaligned: float = 0.2
    ) -> None:
        self.max_unaligned = max_unaligned
        # FATAL: failures are raised as AlignmentError instead of being logged to stderr.
        self._decoder = Decoder(
            samprate=SAMPLE_RATE, bestpath=False, loglevel="FATAL", beam=beam, wbeam=wbeam, pbeam=pbeam
        )

    def oov(self, words: list[str]) -> list[str]:
        """Tokens with a spoken word missing from the pronunciation dictionary."""
        bad = [t for t in words if any(self._decoder.lookup_word(w) is None for w in spoken_words(t))]
        return list(dict.fromkeys(bad))

    def align(self, audio: np.ndarray, words: list[str]) -> list[WordTiming]:
        """audio: [n] float32 at 16 kHz mono, words: tokens -> one span per token (ms from sample 0).

        Raises AlignmentError for OOV tokens, empty or silent input, or audio that does not match the
        text: pocketsphinx gives no hypothesis, or (text shorter than the audio) labels more than
        `max_unaligned` of the speech as silence between words.
        """
        if audio.ndim != 1 or audio.size == 0:
            raise AlignmentError(f"audio must be a non-empty 1-D array, got shape {audio.shape}")
        if np.max(np.abs(audio)) < 1e-3:
            raise AlignmentError("recording is silent")
        if not words:
            raise AlignmentError("no words to align")
        if bad := self.oov(words):
            raise AlignmentError("out-of-vocabulary: " + " ".join(bad))
        expanded = [spoken_words(t) for t in words]
        flat = [w for ws in expanded for w in ws]
        noise = _DITHER * np.random.default_rng(0).standard_normal(audio.size)
        pcm = (np.clip(audio + noise, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        d = self._decoder
        try:
            # Feature state (live CMN, noise estimate) carries over between utterances, so a word's timing depended
            # on which items this worker aligned before; resetting it makes every alignment a function of its input.
            d.reinit_feat()
            d.set_align_text(" ".join(flat))
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
        except RuntimeError as e:
            raise AlignmentError(f"pocketsphinx failed: {e}") from None
        if d.hyp() is None:
            raise AlignmentError("audio does not match the text (no complete alignment path)")
        segs = [
            (_VARIANT.sub("", s.word), s.start_frame, s.end_frame)
            for s in d.seg()
            if not s.word.startswith(("<", "[", "("))
        ]
        if [s[0] for s in segs] != flat:
            raise AlignmentError("alignment does not cover the words of the text")
        duration_ms = 1000.0 * audio.size / SAMPLE_RATE
        spans: list[WordTiming] = []
        k = 0
        for token, ws in zip(words, expanded):
            first, last = segs[k], segs[k + len(ws) - 1]  # a token's words merge into one span
            k += len(ws)
            end = min((last[2] + 1) * _FRAME_MS, duration_ms)  # end_frame is inclusive
            spans.append(WordTiming(token, first[1] * _FRAME_MS, end))
        if (frac := unaligned_speech_fraction(audio, spans)) > self.max_unaligned:
            raise AlignmentError(f"{frac:.0%} of the speech lies outside the aligned words: audio does not match the text")
        return spans
