"""Voxtral through its official path: a tekken tokenizer as on the hub, prompts rendered by mistral-common.

References: mistral-common's own `encode_chat_completion` of the same request, VoxtralProcessor fed the audio as a
file, WhisperFeatureExtractor on the padded waveform, and the tekken encodings of the prompt's texts.
"""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from mistral_common.protocol.instruct.chunk import AudioChunk, TextChunk
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.audio import Audio
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from transformers import VoxtralProcessor, WhisperFeatureExtractor

import tiny_models as tiny
from modgap.corpus.items import Item, spoken_text, words_of
from modgap.models import LongAudioError, Prompt, load_adapter
from modgap.models.voxtral import char_offsets

ITEM = Item("it-7", "arithmetic", "what is five plus ten", ["fifteen", "eighteen", "twelve", "seventeen"], 0)
INSTRUCTION = "\nAnswer with a letter."
PROMPT = Prompt(instruction={"letter": INSTRUCTION, "cloze": INSTRUCTION}, cue="The answer is")
AUDIO, BEGIN_AUDIO = 24, 25


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return tiny.build_voxtral(tmp_path_factory.mktemp("voxtral"))


@pytest.fixture(scope="module")
def adapter(path):
    return load_adapter("voxtral", path, device="cpu", prompt=PROMPT)


@pytest.fixture(scope="module")
def reference(path):
    return MistralTokenizer.from_file(str(path / "tekken.json"))


def encode(reference: MistralTokenizer, text: str) -> list[int]:
    return reference.instruct_tokenizer.tokenizer.encode(text, bos=False, eos=False)


def reference_ids(reference: MistralTokenizer, content: list, prompt: Prompt) -> list[int]:
    """mistral-common's own encoding of a chat: system message, user turn `content`, the cue as assistant prefix."""
    messages = [SystemMessage(content=prompt.system)] if prompt.system is not None else []
    messages.append(UserMessage(content=content))
    if prompt.cue:
        messages.append(AssistantMessage(content=prompt.cue, prefix=True))
    return reference.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens


def test_tokenizer_and_processor_load_as_on_the_hub(path, adapter):
    assert type(adapter.tokenizer).__name__ == "MistralCommonBackend" and adapter.chat_template is None
    assert adapter.tokenizer.convert_ids_to_tokens(AUDIO) == "[AUDIO]" == adapter.audio_token
    assert VoxtralProcessor.from_pretrained(path).audio_token_id == adapter.audio_token_id == AUDIO
    assert (adapter.window_samples, adapter.positions_per_window, adapter.ms_per_position) == (480000, 375, 80)


@pytest.mark.parametrize("style", ["letter", "cloze"])
def test_ids_equal_mistral_commons_own_encoding(style, adapter, reference):
    transcript, w = spoken_text(ITEM, style), tiny.noise(1.3)
    t, s = adapter.text_inputs(ITEM, style), adapter.speech_inputs(ITEM, w, style)
    text = [TextChunk(text=transcript + INSTRUCTION)]
    assert t.model_inputs["input_ids"][0].tolist() == reference_ids(reference, text, PROMPT)
    audio = [AudioChunk(input_audio=Audio(w, 16000, "wav").to_base64("wav")), TextChunk(text=INSTRUCTION)]
    assert s.model_inputs["input_ids"][0].tolist() == reference_ids(reference, audio, PROMPT)


@pytest.mark.parametrize("style", ["letter", "cloze"])
def test_text_span_decodes_to_the_transcript_and_words(style, adapter, reference):
    t = adapter.text_inputs(ITEM, style)
    transcript, ids = spoken_text(ITEM, style), t.model_inputs["input_ids"][0]
    assert reference.decode(ids[t.span].tolist()) == transcript
    assert (t.span.diff() == 1).all()
    words = words_of(transcript)
    for token, w in zip(ids[t.span].tolist(), t.words):
        piece = reference.instruct_tokenizer.tokenizer.id_to_piece(token)
        assert piece.strip() in ({"", ",", ";", "."} if w < 0 else words[w])
    assert set(t.words) - {-1} == set(range(len(words))) and (np.diff(t.words[t.words >= 0]) >= 0).all()


def test_text_words_of_a_known_sentence(adapter):
    t = adapter.text_inputs(ITEM, "cloze")  # "what is five plus ten": each word one token of the tiny vocabulary
    assert t.words.tolist() == [0, 1, 2, 3, 4]
    odd = Item("it-1", "places", "which farm is kate’s", ["forest"], 0)  # ’ is 3 bytes, none merged
    t = adapter.text_inputs(odd, "cloze")
    pieces = [adapter.tokenizer.tokenizer.instruct_tokenizer.tokenizer.id_to_byte_piece(i)
              for i in t.model_inputs["input_ids"][0, t.span].tolist()]
    assert pieces == [b"wh", b"i", b"ch", b" f", b"a", b"r", b"m", b" is", b" kate", b"\xe2", b"\x80", b"\x99", b"s"]
    assert t.words.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3]


def test_char_offsets_of_byte_offsets():
    # "né x": n (1 byte), é (2 bytes), " ", x. Halves of é cover it; tokens before or after clip to [0,0] or [4,4].
    got = char_offsets("né x", np.array([[-2, 0], [0, 1], [1, 2], [2, 3], [3, 5], [5, 9]]))
    assert got.tolist() == [[0, 0], [0, 1], [1, 2], [1, 2], [2, 4], [4, 4]]


def test_speech_placeholders_and_features_match_the_processor(path, adapter, tmp_path):
    w = tiny.noise(1.3)
    s = adapter.speech_inputs(ITEM, w, "letter")
    sf.write(tmp_path / "q.wav", w, 16000, subtype="FLOAT")
    conversation = [
        {"role": "user", "content": [{"type": "audio", "path": str(tmp_path / "q.wav")},
                                     {"type": "text", "text": INSTRUCTION}]},
        {"role": "assistant", "content": PROMPT.cue},
    ]
    ref = VoxtralProcessor.from_pretrained(path).apply_chat_template(conversation, continue_final_message=True)
    assert torch.equal(s.model_inputs["input_ids"], ref["input_ids"])
    ids = s.model_inputs["input_ids"][0]
    where = torch.nonzero(ids == AUDIO)[:, 0]
    assert len(where) == 375 and (where.diff() == 1).all() and ids[where[0] - 1] == BEGIN_AUDIO  # one 30 s window
    assert torch.equal(s.span, where[:17])  # ceil(20800 / 1280) positions cover the recording, the rest padding
    padded = np.pad(w, (0, 480000 - w.size))
    features = WhisperFeatureExtractor.from_pretrained(path)(padded, sampling_rate=16000, return_tensors="pt")
    assert torch.equal(s.model_inputs["input_features"], features["input_features"])  # [1, 128, 3000]


def test_long_audio_in_30s_windows(path, adapter):
    w = tiny.noise(31)
    with pytest.raises(LongAudioError, match=r"item it-7: audio is 31\.00 s, longer than the voxtral window of 30 s"):
        adapter.speech_inputs(ITEM, w, "letter")
    a = load_adapter("voxtral", path, device="cpu", long_audio="window")
    s = a.speech_inputs(ITEM, w, "letter")
    assert (s.model_inputs["input_ids"] == AUDIO).sum() == 750 and len(s.span) == 388  # ceil(496000 / 1280)
    assert s.model_inputs["input_features"].shape == (2, 128, 3000)
    times = a.position_times_ms(len(s.span))
    assert times[375, 0] == 30000 and times[-1, 1] == 31040
    assert a.hidden_states(s).shape == (a.n_layers + 1, 388, a.hidden_size)


def test_forward_on_both_conditions(adapter):
    s, t = adapter.speech_inputs(ITEM, tiny.noise(1.3), "letter"), adapter.text_inputs(ITEM, "letter")
    for x in (s, t):
        p = adapter.prefill(x, hidden=True)
        assert p.hidden.shape == (adapter.n_layers + 1, len(x.span), adapter.hidden_size) == (3, len(x.span), 32)
        assert torch.isfinite(p.logprobs).all() and p.logprobs.shape == (adapter.model.config.text_config.vocab_size,)
    with torch.no_grad():
        audio = adapter.model.get_audio_features(s.model_inputs["input_features"]).pooler_output
    torch.testing.assert_close(adapter.hidden_states(s)[0], audio.reshape(-1, 32)[: len(s.span)])


def around_the_question(x) -> tuple[list[int], list[int]]:
    """The ids before the question content and after it (for S, after the padding placeholders too)."""
    ids = x.model_inputs["input_ids"][0].tolist()
    end = max(i for i, t in enumerate(ids) if t == AUDIO) if x.condition == "S" else int(x.span[-1])
    return ids[: int(x.span[0])], ids[end + 1 :]


def test_instruction_and_cue_are_identical_in_both_conditions(adapter, reference):
    s_before, s_after = around_the_question(adapter.speech_inputs(ITEM, tiny.noise(1.3), "letter"))
    t_before, t_after = around_the_question(adapter.text_inputs(ITEM, "letter"))
    bos, inst, end_inst = 1, 3, 4
    assert s_before == [bos, inst, BEGIN_AUDIO] and t_before == [bos, inst]
    assert s_after == t_after == encode(reference, INSTRUCTION) + [end_inst] + encode(reference, PROMPT.cue)


def test_system_prompt_with_audio(tmp_path, reference):
    system = Prompt(system="Be brief.", instruction=PROMPT.instruction, cue=PROMPT.cue)
    with pytest.raises(ValueError, match=r"^voxtral: .* takes no system prompt with audio \(.*version 13\.\)$"):
        load_adapter("voxtral", tiny.build_voxtral(tmp_path / "v7"), device="cpu", prompt=system)
    a = load_adapter("voxtral", tiny.build_voxtral(tmp_path / "v13", version="v13"), device="cpu", prompt=system)
    s_before, s_after = around_the_question(a.speech_inputs(ITEM, tiny.noise(1.3), "letter"))
    t_before, t_after = around_the_question(a.text_inputs(ITEM, "letter"))
    begin_system, end_system, inst = 17, 18, 3
    assert t_before == [1, begin_system, *encode(reference, "Be brief."), end_system, inst]
    assert s_before == t_before + [BEGIN_AUDIO] and s_after == t_after


def test_tokenizer_window_must_equal_the_encoders(tmp_path):
    path = tiny.build_voxtral(tmp_path / "m")
    tekken = json.loads((path / "tekken.json").read_text())
    tekken["audio"]["chunk_length_s"] = 15.0
    (path / "tekken.json").write_text(json.dumps(tekken))
    with pytest.raises(ValueError, match="mistral-common pads audio to 240000 samples but the encoder window is 480000"):
        load_adapter("voxtral", path, device="cpu")
