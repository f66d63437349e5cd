"""Text normalisation, pocketsphinx forced alignment of espeak speech, and the recogniser registry."""
from __future__ import annotations

import numpy as np
import pytest

from modgap.corpus import asr
from modgap.corpus.align import AlignmentError, PocketsphinxAligner
from modgap.corpus.items import words_of
from modgap.corpus.normalize import spoken_words
from modgap.corpus.timing import WordTiming
from modgap.corpus.tts import EspeakTTS


@pytest.fixture(scope="module")
def aligner() -> PocketsphinxAligner:
    return PocketsphinxAligner()


@pytest.fixture(scope="module")
def tts() -> EspeakTTS:
    return EspeakTTS("en-us", 175, 50)


@pytest.mark.parametrize(
    "token, words",
    [
        ("12", ["twelve"]),
        ("21", ["twenty", "one"]),
        ("100", ["one", "hundred"]),
        ("101", ["one", "hundred", "one"]),
        ("3rd", ["third"]),
        ("21st", ["twenty", "first"]),
        ("don’t", ["don't"]),
        ("Paris", ["paris"]),
    ],
)
def test_spoken_words(token: str, words: list[str]) -> None:
    assert spoken_words(token) == words


def test_alignment_agrees_with_tts_timings(aligner: PocketsphinxAligner, tts: EspeakTTS) -> None:
    text = "The quick brown fox jumps over the lazy dog near the river bank today."
    speech = tts.synthesize(text)
    assert 3000 < speech.duration_ms < 5000
    spans = aligner.align(speech.audio, words_of(text))
    assert [s.word for s in spans] == words_of(text)
    starts = np.array([s.start_ms for s in spans])
    ends = np.array([s.end_ms for s in spans])
    assert np.all(starts < ends) and np.all(ends[:-1] <= starts[1:])
    assert starts[0] >= 0 and ends[-1] <= speech.duration_ms
    err = np.abs(starts - [w.start_ms for w in speech.words])
    assert np.median(err) < 30 and err.max() < 100, err


def test_numbers_map_back_to_their_tokens(aligner: PocketsphinxAligner, tts: EspeakTTS) -> None:
    text = "What is twelve plus 7 times 21?"
    speech = tts.synthesize(text)
    spans = aligner.align(speech.audio, words_of(text))
    assert [s.word for s in spans] == ["What", "is", "twelve", "plus", "7", "times", "21"]
    for got, want in zip(spans, speech.words):
        assert abs(got.start_ms - want.start_ms) < 100, (got, want)
    assert abs(spans[-1].end_ms - speech.words[-1].end_ms) < 100  # "twenty one" merged


def test_out_of_vocabulary_token(aligner: PocketsphinxAligner, tts: EspeakTTS) -> None:
    words = words_of("the zxqvbl is here")
    assert aligner.oov(words) == ["zxqvbl"]
    assert aligner.oov(words_of("don’t count 3rd")) == []
    with pytest.raises(AlignmentError, match="zxqvbl"):
        aligner.align(tts.synthesize("the zxqvbl is here").audio, words)


def test_audio_that_does_not_match_the_text(aligner: PocketsphinxAligner, tts: EspeakTTS) -> None:
    audio = tts.synthesize("Hello there.").audio
    text = "Which of the following best describes the function of the mitochondria in a cell?"
    with pytest.raises(AlignmentError, match="does not match"):
        aligner.align(audio, words_of(text))
    # the decoder is still usable afterwards
    assert len(aligner.align(audio, ["Hello", "there"])) == 2


def test_empty_audio_raises(aligner: PocketsphinxAligner) -> None:
    with pytest.raises(AlignmentError, match="non-empty"):
        aligner.align(np.zeros(0, np.float32), ["hello"])


def test_recognizer_registry(monkeypatch: pytest.MonkeyPatch, tts: EspeakTTS) -> None:
    with pytest.raises(ValueError, match="'whisper'.*pocketsphinx"):
        asr.make_recognizer("whisper")

    class Echo:
        name = "echo"

        def __init__(self, text: str) -> None:
            self.text = text

        def transcribe(self, audio: np.ndarray) -> str:
            return self.text

    monkeypatch.setattr(asr, "_REGISTRY", dict(asr._REGISTRY))
    asr.register_recognizer("echo", Echo)
    assert asr.make_recognizer("echo", text="one 2").transcribe(np.zeros(10, np.float32)) == "one 2"
    hyp = asr.make_recognizer("pocketsphinx").transcribe(tts.synthesize("Hello there.").audio)
    assert isinstance(hyp, str)


def test_word_error_rate() -> None:
    assert asr.word_error_rate("one two three", "one two four") == pytest.approx(1 / 3)
    assert asr.word_error_rate("It is 21.", "it is twenty one") == 0.0
    assert asr.word_error_rate("one two", "") == 1.0
    with pytest.raises(ValueError):
        asr.word_error_rate("", "one")


def test_unaligned_speech_fraction_on_a_constructed_signal():
    from modgap.corpus.align import unaligned_speech_fraction

    audio = np.zeros(16000, np.float32)  # 1 s: loud 100-300 ms and 500-700 ms, silence elsewhere
    audio[1600:4800] = 0.5
    audio[8000:11200] = 0.5
    assert unaligned_speech_fraction(audio, [WordTiming("a", 100, 300), WordTiming("b", 500, 700)]) == 0.0
    assert unaligned_speech_fraction(audio, [WordTiming("a", 100, 300)]) == 0.5
    assert unaligned_speech_fraction(audio, [WordTiming("a", 0, 200)]) == 0.75


def test_silent_recording_is_rejected():
    with pytest.raises(AlignmentError, match="silent"):
        PocketsphinxAligner().align(np.zeros(16000, np.float32), ["hello", "there"])


def test_alignment_does_not_depend_on_earlier_utterances():
    tts = EspeakTTS("en-us+f3", 185, 50)
    texts = ["yellow black how many colours", "which is bigger fourteen or eighteen", "what is one plus one"]
    speech = [tts.synthesize(t) for t in texts]
    fresh = PocketsphinxAligner().align(speech[0].audio, words_of(texts[0]))
    used = PocketsphinxAligner()
    for s, t in zip(speech[1:], texts[1:]):
        used.align(s.audio, words_of(t))
    assert used.align(speech[0].audio, words_of(texts[0])) == fresh
