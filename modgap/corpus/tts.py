"""Text -> 16 kHz speech with per-word timings, from espeak-ng (espeakng-loader's bundled library, via ctypes).

espeak is a C library with process-global state: every use of it holds `_LOCK`, and each synthesis gets a freshly
loaded copy (see `_Espeak`) so that output does not depend on what was spoken before.
"""
from __future__ import annotations

import _ctypes
import bisect
import ctypes
import itertools
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import espeakng_loader
import numpy as np
import soxr

from modgap.corpus.items import _WORD
from modgap.corpus.timing import SAMPLE_RATE, WordTiming

_SYNCHRONOUS, _PHONEME_EVENTS, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1, 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EV_WORD, _EV_END, _EV_PHONEME = 1, 5, 7
_DATA = Path(espeakng_loader.get_data_path())


@dataclass(frozen=True, eq=False)
class Speech:
    """`audio`: [n_samples] float32 mono in [-1, 1] at `sample_rate` (16000) Hz.
    `words`: one WordTiming per token of `words_of(text)`, in order, monotone and inside the audio."""

    audio: np.ndarray
    sample_rate: int
    words: list[WordTiming]

    @property
    def duration_ms(self) -> float:
        """Length of `audio` in ms."""
        return 1000.0 * len(self.audio) / self.sample_rate


class TTSError(RuntimeError):
    """espeak cannot speak this text or voice; the message names it."""


class _Event(NamedTuple):
    """An espeak event. `pos`: 0-based character offset of a WORD in the text; `sample`: offset in espeak's
    native-rate output; `name`: the phoneme of a PHONEME event, else ""."""

    type: int
    pos: int
    sample: int
    name: str


class _EspeakEvent(ctypes.Structure):
    # espeak_EVENT of speak_lib.h. Checked here: 40 bytes; `sample` is the count of samples delivered before the
    # event (END's equals the total); `text_position` counts characters, not UTF-8 bytes, from 1.
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms, rounded: `sample` is finer
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # union; a PHONEME event's name
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)


class _Espeak:
    """A freshly loaded, initialised copy of libespeak-ng. Create and use only while holding `_LOCK`; `close()` it.

    espeak keeps synthesis state in function statics (e.g. the phase of its pitch flutter) from one utterance to
    the next, with no call to reset it, so the same text comes out a few samples different each time. Unloading
    the library (dlclose: this relies on nothing else in the process holding it open) and loading it again, with a
    fixed noise seed, gives pristine state and bit-identical output, for about 0.4 ms plus 3 ms to load the voice.
    """

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib = lib
        self.sample_rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, str(_DATA).encode(), _PHONEME_EVENTS)
        if self.sample_rate <= 0:
            self.close()
            raise TTSError(f"espeak_Initialize failed with data at {_DATA}")
        lib.espeak_ng_SetRandSeed(0)  # Initialize seeds the noise of breathy voices (f3, whisper) from the clock
        self.chunks: list[np.ndarray] = []
        self.events: list[_Event] = []
        self.callback = _Callback(self._collect)  # keep it alive: espeak holds only the pointer
        lib.espeak_SetSynthCallback(self.callback)

    def close(self) -> None:
        self.lib.espeak_Terminate()
        _ctypes.dlclose(self.lib._handle)

    def _collect(self, wav, n: int, events) -> int:
        if n > 0:
            self.chunks.append(np.frombuffer(ctypes.string_at(wav, 2 * n), dtype=np.int16))
        i = 0
        while (ev := events[i]).type:
            if ev.type in (_EV_WORD, _EV_END, _EV_PHONEME):
                name = ev.id.decode("latin-1") if ev.type == _EV_PHONEME else ""
                self.events.append(_Event(ev.type, ev.text_position - 1, ev.sample, name))
            i += 1
        return 0

    def configure(self, voice: str, rate: int, pitch: int) -> None:
        # espeak accepts an unknown variant ("en-us+nobody") silently, so look for its file ourselves
        variant = voice.partition("+")[2]
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0 or (
            "+" in voice and not (_DATA / "voices" / "!v" / variant).is_file()
        ):
            raise TTSError(f"unknown espeak voice {voice!r}")
        self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)

    def synth(self, text: str) -> tuple[np.ndarray, list[_Event]]:
        """[n] int16 samples at `self.sample_rate` Hz, and the events, for `text`."""
        data = text.encode()
        if self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise TTSError(f"espeak_Synth failed on {text!r}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return audio, self.events

    def phoneme_count(self, word: str) -> int:
        """How many phonemes (pauses not counted) espeak speaks for `word` on its own."""
        data = word.encode()
        ptr = ctypes.c_char_p(data)
        names: list[str] = []
        while ptr.value:
            out = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, ord("|") << 8)
            names += out.decode("latin-1").replace(" ", "|").split("|")
        return sum(1 for n in names if n and not n.startswith("_"))


_LOCK = threading.Lock()


@contextmanager
def _espeak(voice: str, rate: int, pitch: int) -> Iterator[_Espeak]:
    """A fresh espeak set to `voice`, `rate` and `pitch`, used by one thread at a time."""
    with _LOCK:
        engine = _Espeak()
        try:
            engine.configure(voice, rate, pitch)
            yield engine
        finally:
            engine.close()


class EspeakTTS:
    """espeak-ng speech for one voice ("en-us", or with a variant: "en-us+m3"), rate (words/min, 80-450) and
    pitch (0-100). Same text and settings give bit-identical audio."""

    def __init__(self, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> None:
        if not 80 <= rate <= 450:
            raise ValueError(f"espeak rate must be 80..450 words/min, got {rate}")
        if not 0 <= pitch <= 100:
            raise ValueError(f"espeak pitch must be 0..100, got {pitch}")
        self.voice, self.rate, self.pitch = voice, rate, pitch
        with _espeak(voice, rate, pitch):  # raises TTSError now for an unknown voice
            pass

    def synthesize(self, text: str) -> Speech:
        """Speak `text`; raises TTSError when it has no speakable words."""
        tokens = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        if not tokens:
            raise TTSError(f"no speakable words in {text!r}")
        with _espeak(self.voice, self.rate, self.pitch) as engine:
            native, events = engine.synth(text)
            spans = _word_spans(text, tokens, events, len(native), engine.phoneme_count)
        audio = soxr.resample(native.astype(np.float32) / 32768.0, engine.sample_rate, SAMPLE_RATE)
        duration, ms = 1000.0 * len(audio) / SAMPLE_RATE, 1000.0 / engine.sample_rate
        words = [
            WordTiming(text[s:e], min(a * ms, duration), min(b * ms, duration))
            for (s, e), (a, b) in zip(tokens, spans)
        ]
        return Speech(np.clip(audio, -1.0, 1.0), SAMPLE_RATE, words)


def _owners(tokens: list[tuple[int, int]], positions: list[int]) -> list[int | None]:
    """The token each WORD event (at character `positions`) speaks: the token containing it, else the first token
    starting before the next event to its right (the "," of "1,000" speaks "thousand" for "000"), else None (the
    event speaks only non-word characters, such as "$" of "$5")."""
    starts = [s for s, _ in tokens]
    owners: list[int | None] = []
    for i, p in enumerate(positions):
        right = next((q for q in itertools.islice(positions, i + 1, None) if q > p), math.inf)
        t = bisect.bisect_right(starts, p) - 1
        if t >= 0 and p < tokens[t][1]:
            owners.append(t)
        elif t + 1 < len(tokens) and starts[t + 1] < right:
            owners.append(t + 1)
        else:
            owners.append(None)
    return owners


def _word_spans(
    text: str,
    tokens: list[tuple[int, int]],
    events: list[_Event],
    n_samples: int,
    phoneme_count: Callable[[str], int],
) -> list[tuple[float, float]]:
    """(start, end) in native samples for each token (character span in `text`).

    WORD events give starts and are mapped to tokens by character position, never by count: espeak fuses some
    pairs ("in the", "has been", "twenty-one") into one event, and speaks a number as several. A group (the
    tokens from one event's token up to the next event's token) ends at the next WORD event, or earlier at the
    pause phonemes that close it, or at END.
    """
    words = [e for e in events if e.type == _EV_WORD]
    owners = iter(_owners(tokens, [e.pos for e in words]))
    groups: list[list] = []  # [first token, start, end or None while open, non-pause phonemes' samples]
    pause = None  # where the trailing run of pause phonemes of the open group began

    def close(at: int) -> None:
        nonlocal pause
        if groups and groups[-1][2] is None:
            groups[-1][2] = at if pause is None else pause
        pause = None

    for ev in events:
        is_open = bool(groups) and groups[-1][2] is None
        if ev.type == _EV_WORD:
            owner = next(owners)
            if owner is not None and groups and owner <= groups[-1][0]:
                pause = None  # the same token speaks on (one number, several words)
                continue
            close(ev.sample)
            if owner is not None:
                groups.append([owner, ev.sample, None, []])
        elif ev.type == _EV_PHONEME and is_open:
            if not ev.name.startswith("_"):
                groups[-1][3].append(ev.sample)
                pause = None
            elif pause is None:
                pause = ev.sample
        elif ev.type == _EV_END:
            close(ev.sample)
    close(n_samples)
    if not groups:
        raise TTSError(f"espeak spoke no words of {text!r}")

    spans: list[tuple[float, float]] = []
    firsts = [0] + [g[0] for g in groups[1:]] + [len(tokens)]
    for (_, start, end, onsets), lo, hi in zip(groups, firsts, firsts[1:]):
        end = max(start, end)
        starts = _group_starts(text, tokens[lo:hi], start, end, onsets, phoneme_count)
        spans += zip(starts, starts[1:] + [end])
    return spans


def _group_starts(
    text: str,
    group: list[tuple[int, int]],
    start: float,
    end: float,
    onsets: list[int],
    phoneme_count: Callable[[str], int],
) -> list[float]:
    """Start of each token of a group that shares one WORD event spanning [start, end].

    When the phonemes each token has on its own add up to the group's phonemes ("in"=I n, "the"=D @2 against
    I n D @2), a token starts at the onset of its first phoneme. Otherwise the span is split in proportion to
    character offsets.
    """
    if len(group) == 1:
        return [start]
    counts = [phoneme_count(text[s:e]) for s, e in group]
    if sum(counts) == len(onsets) and min(counts) > 0:
        starts = [start] + [float(onsets[c]) for c in itertools.accumulate(counts[:-1])]
        if all(a < b for a, b in zip(starts, starts[1:] + [end])):
            return starts
    first, last = group[0][0], group[-1][1]
    return [start + (end - start) * (s - first) / (last - first) for s, _ in group]
