"""espeak-ng speech with word timings: shape, order, fused words, settings, errors, determinism, and timings
checked against the audio itself and against an independent forced aligner."""
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from modgap.corpus.items import words_of
from modgap.corpus.tts import _EV_WORD, EspeakTTS, Speech, TTSError, _espeak

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it has been gone for twenty-one days."
FUSED = ["sit in the house", "it has been done", "one of the best"]


@pytest.fixture(scope="module")
def tts() -> EspeakTTS:
    return EspeakTTS()


def assert_well_formed(speech: Speech, text: str) -> None:
    assert speech.sample_rate == 16000
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    assert np.abs(speech.audio).max() <= 1.0
    assert [w.word for w in speech.words] == words_of(text)
    bounds = [t for w in speech.words for t in (w.start_ms, w.end_ms)]
    assert bounds == sorted(bounds)
    assert 0.0 <= bounds[0] and bounds[-1] <= speech.duration_ms


ODD = [
    "Well... (maybe) yes; no? Dr. Smith's 3.5 kg costs $5, 1,000 U.S.A. e.g.",
    "naïve café’s “quoted” house — then 日本 go",
    "In 1999 and 2024, x2 abc123 rock’n’roll!",
]


@pytest.mark.parametrize("text", [SENTENCE, *ODD])
def test_timings_are_monotone_one_per_token_inside_the_audio(tts, text):
    assert_well_formed(tts.synthesize(text), text)


def test_duration_is_plausible_for_the_rate(tts):
    speech = tts.synthesize(SENTENCE)
    expected_ms = len(words_of(SENTENCE)) / 175 * 60_000
    assert 0.6 * expected_ms < speech.duration_ms < 1.6 * expected_ms
    assert all(w.end_ms > w.start_ms for w in speech.words)


@pytest.mark.parametrize("text", FUSED)
def test_fused_words_each_get_a_span(tts, text):
    with _espeak(tts.voice, tts.rate, tts.pitch) as engine:
        _, events = engine.synth(text)
    assert sum(e.type == _EV_WORD for e in events) < len(words_of(text))  # espeak really fuses a pair here
    speech = tts.synthesize(text)
    assert_well_formed(speech, text)
    assert all(w.end_ms > w.start_ms for w in speech.words)


def test_faster_rate_is_shorter_and_voice_changes_audio(tts):
    slow, fast = EspeakTTS(rate=120).synthesize(SENTENCE), EspeakTTS(rate=300).synthesize(SENTENCE)
    assert fast.duration_ms < 0.6 * slow.duration_ms
    assert fast.words[-1].start_ms < slow.words[-1].start_ms
    female = EspeakTTS("en-us+f3").synthesize(SENTENCE)
    default = tts.synthesize(SENTENCE)
    assert not np.array_equal(female.audio, default.audio)


@pytest.mark.parametrize("voice", ["xx-nope", "en-us+nobody"])
def test_unknown_voice_raises_naming_it(voice):
    with pytest.raises(TTSError, match=voice.replace("+", r"\+")):
        EspeakTTS(voice)


@pytest.mark.parametrize("text", ["", "  ", "?!... -- ;"])
def test_text_without_words_raises(tts, text):
    with pytest.raises(TTSError, match="no speakable words"):
        tts.synthesize(text)


def test_deterministic_across_calls_voices_time_and_threads(tts):
    # espeak carries state from one utterance to the next, and seeds the breath noise of f3 from the clock
    first, breathy = tts.synthesize(SENTENCE), EspeakTTS("en-us+f3").synthesize(SENTENCE)
    EspeakTTS("en-us+m3", rate=220, pitch=70).synthesize(FUSED[0])
    time.sleep(1.1)
    again = tts.synthesize(SENTENCE)
    assert np.array_equal(first.audio, again.audio) and first.words == again.words
    assert np.array_equal(breathy.audio, EspeakTTS("en-us+f3").synthesize(SENTENCE).audio)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda k: EspeakTTS(["en-us", "en-us+f3"][k % 2]).synthesize(SENTENCE), range(8)))
    assert all(np.array_equal(o.audio, first.audio) for o in outs[::2])
    assert all(np.array_equal(o.audio, breathy.audio) for o in outs[1::2])


def rms(speech: Speech, start_ms: float, end_ms: float) -> float:
    a, b = (int(t * speech.sample_rate / 1000) for t in (start_ms, end_ms))
    return float(np.sqrt(np.mean(speech.audio[a:b] ** 2)))


def test_pause_between_words_is_silent_in_the_audio(tts):
    speech = tts.synthesize(SENTENCE)
    dog, and_ = (w for w in speech.words if w.word in ("dog", "and"))
    assert and_.start_ms - dog.end_ms > 50  # the comma's pause is a gap between the two words
    silence = rms(speech, dog.end_ms + 10, and_.start_ms - 10)
    assert silence < 0.1 * rms(speech, dog.start_ms, dog.end_ms)
    assert silence < 0.1 * rms(speech, and_.start_ms, and_.end_ms)


def test_word_starts_agree_with_an_independent_forced_aligner(tts):
    pocketsphinx = pytest.importorskip("pocketsphinx")
    text = "one of the best ideas is to sit in the house; it has been gone for twenty one days"
    speech = tts.synthesize(text)
    decoder = pocketsphinx.Decoder(samprate=16000, bestpath=False, loglevel="ERROR",
                                   beam=1e-200, wbeam=1e-200, pbeam=1e-200)
    decoder.set_align_text(" ".join(w.word.lower() for w in speech.words))
    decoder.start_utt()
    decoder.process_raw((speech.audio * 32767).astype(np.int16).tobytes(), full_utt=True)
    decoder.end_utt()
    aligned = [s for s in decoder.seg() if s.word not in ("<s>", "</s>", "<sil>")]
    assert [s.word.split("(")[0] for s in aligned] == [w.word.lower() for w in speech.words]  # "to(3)": variant
    errors = np.array([abs(w.start_ms - 10 * s.start_frame) for w, s in zip(speech.words, aligned)])
    assert np.median(errors) < 30 and errors.max() < 200
    fused_second = [i for i, w in enumerate(speech.words) if w.word in ("the", "been")]
    assert errors[fused_second].max() < 60  # the boundary found inside a fused WORD event is where the word starts
