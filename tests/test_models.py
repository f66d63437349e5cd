"""Model adapters on tiny random models of every family (built and saved locally; nothing is downloaded)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import tiny_models as tiny
from transformers import Qwen2AudioProcessor

from modgap.corpus.items import Item, spoken_text, words_of
from modgap.models import (
    FAMILIES,
    LongAudioError,
    Prompt,
    extract_answer,
    load_adapter,
    option_texts,
    positions_to_words,
)
from modgap.models.base import Inputs, SpeechLM, normalized
from modgap.models.granite_speech import log_mel
from modgap.models.hooks import hooked

ITEM = Item("it-7", "arithmetic", "what is five plus ten", ["fifteen", "eighteen", "twelve", "seventeen"], 0)
SECONDS = 1.3
MS_PER_POSITION = {"qwen2_audio": 40, "qwen2_5_omni": 40, "voxtral": 80, "granite_speech": 100}
# 1.3 s = 20800 samples. Whisper: 130 frames -> ((129 // 2 + 1) - 2) // 2 + 1 = 32; Voxtral: ceil(20800 / 1280) = 17;
# Granite: (20800 // 160 + 1) // 2 = 65 encoder frames -> 5 blocks of 15 -> 15 positions (block padding: 1.5 s).
POSITIONS = {"qwen2_audio": 32, "qwen2_5_omni": 32, "voxtral": 17, "granite_speech": 15}


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tok):
    return {f: build(tmp_path_factory.mktemp(f), tok) for f, build in tiny.BUILDERS.items()}


@pytest.fixture(scope="module")
def adapters(paths):
    return {f: load_adapter(f, p, device="cpu") for f, p in paths.items()}


@pytest.fixture(scope="module")
def inputs(adapters):
    """Per family: S (1.3 s) and T inputs of ITEM in both styles."""
    return {
        f: {"S": a.speech_inputs(ITEM, tiny.noise(SECONDS), "cloze"), "letter": a.text_inputs(ITEM, "letter"),
            "cloze": a.text_inputs(ITEM, "cloze")}
        for f, a in adapters.items()
    }


def test_families_are_registered():
    assert set(FAMILIES) == set(tiny.BUILDERS)


@pytest.mark.parametrize("family", list(tiny.BUILDERS))
def test_speech_span_matches_geometry(family, adapters, inputs):
    a, s = adapters[family], inputs[family]["S"]
    ids = s.model_inputs["input_ids"][0]
    assert a.ms_per_position == MS_PER_POSITION[family]
    assert len(s.span) == POSITIONS[family]
    assert (ids[s.span] == a.model.config.audio_token_id).all()
    assert (s.span.diff() == 1).all()
    times = a.position_times_ms(len(s.span))
    assert times.shape == (len(s.span), 2) and times[0, 0] == 0
    slack = 3 if family == "granite_speech" else 1  # Granite pads to whole projector blocks of 3 positions
    assert abs(times[-1, 1] - SECONDS * 1000) < slack * a.ms_per_position  # n * ms ~ duration
    assert s.condition == "S" and s.item_id == ITEM.id and s.words is None


@pytest.mark.parametrize("family", list(tiny.BUILDERS))
@pytest.mark.parametrize("style", ["letter", "cloze"])
def test_text_span_decodes_to_the_transcript(family, style, adapters, inputs):
    t = inputs[family][style]
    transcript = spoken_text(ITEM, style)
    assert adapters[family].tokenizer.decode(t.model_inputs["input_ids"][0, t.span]) == transcript
    assert t.text.count(transcript) == 1
    assert len(t.words) == len(t.span)
    assert set(t.words) - {-1} == set(range(len(words_of(transcript))))
    assert (np.diff(t.words[t.words >= 0]) >= 0).all()


def test_text_words_from_offsets(tok, inputs):
    t = inputs["qwen2_audio"]["letter"]
    pieces = [tok.decode([i]) for i in t.model_inputs["input_ids"][0, t.span]]
    words = words_of(spoken_text(ITEM, "letter"))
    for piece, w in zip(pieces, t.words):
        if w < 0:
            assert piece.strip() in {"", ",", ";", "."}
        else:
            assert piece.strip() in words[w]


def test_qwen2_audio_inputs_equal_its_processor(paths, adapters, inputs):
    s = inputs["qwen2_audio"]["S"]
    processor = Qwen2AudioProcessor.from_pretrained(paths["qwen2_audio"])
    one_audio = s.text.replace("<|AUDIO|>" * len(s.span), "<|AUDIO|>")
    ref = processor(text=one_audio, audio=tiny.noise(SECONDS), sampling_rate=16000, return_tensors="pt")
    assert torch.equal(ref["input_ids"], s.model_inputs["input_ids"])
    assert torch.equal(ref["input_features"], s.model_inputs["input_features"])
    assert torch.equal(ref["feature_attention_mask"], s.model_inputs["feature_attention_mask"])


def torchaudio_log_mel(w: np.ndarray) -> torch.Tensor:
    """GraniteSpeechFeatureExtractor's features written with torch.stft and torchaudio's HTK filterbank formula
    (torchaudio.functional.melscale_fbanks), independently of transformers' numpy audio utilities."""
    spec = torch.stft(torch.from_numpy(w), 512, 160, 400, window=torch.hann_window(400), center=True,
                      pad_mode="reflect", return_complex=True).abs().pow(2)  # [257, frames]
    freqs = torch.linspace(0, 8000, 257)
    mels = torch.linspace(0.0, 2595.0 * np.log10(1.0 + 8000 / 700.0), 82)
    pts = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    slopes, diff = pts[None] - freqs[:, None], pts[1:] - pts[:-1]
    bank = torch.clamp(torch.min(-slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]), min=0)
    logmel = (spec.T @ bank).clip(min=1e-10).log10()
    logmel = torch.maximum(logmel, logmel.max() - 8.0) / 4 + 1
    return logmel[: len(logmel) // 2 * 2].reshape(1, -1, 160)


@pytest.mark.parametrize("seconds", [1.3, 2.01])
def test_granite_log_mel_matches_torchaudio_recipe(seconds):
    w = tiny.noise(seconds, seed=1)
    ours, ref = log_mel(w, tiny.GRANITE_FEATURES), torchaudio_log_mel(w)
    assert ours.shape == ref.shape == (1, (len(w) // 160 + 1) // 2, 160)
    assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("family", list(tiny.BUILDERS))
@pytest.mark.parametrize("condition", ["S", "cloze"])
def test_hidden_states_equal_a_direct_forward(family, condition, adapters, inputs):
    a, x = adapters[family], inputs[family][condition]
    states = a.hidden_states(x)
    assert states.shape == (a.n_layers + 1, len(x.span), a.hidden_size)
    with torch.no_grad():
        ref = a.model(**x.model_inputs, output_hidden_states=True).hidden_states
    assert len(ref) == a.n_layers + 1
    torch.testing.assert_close(states, torch.stack(ref)[:, 0, x.span])


@pytest.mark.parametrize("family", ["voxtral", "granite_speech"])
def test_layer0_over_the_speech_span_is_the_projected_audio(family, adapters, inputs):
    a, s = adapters[family], inputs[family]["S"]
    with torch.no_grad():
        audio = a.model.get_audio_features(s.model_inputs["input_features"]).pooler_output.reshape(-1, a.hidden_size)
    scale = getattr(a.model.config.text_config, "embedding_multiplier", 1.0)  # Granite's LLM scales its inputs
    torch.testing.assert_close(a.hidden_states(s)[0], audio[: len(s.span)] * scale)


def slow_logliks(a, x, item, style) -> np.ndarray:
    """Independent reference: one full forward of prompt + option per option, summing the option's log-probs (of
    the logits divided by Granite's logits_scaling, as GraniteForCausalLM does)."""
    scale = getattr(a.model.config.get_text_config(), "logits_scaling", 1.0)
    out = []
    for text in option_texts(item, style):
        opt = torch.tensor([a.tokenizer(text, add_special_tokens=False)["input_ids"]])
        ids = torch.cat([x.model_inputs["input_ids"], opt], 1)
        extra = {k: v for k, v in x.model_inputs.items() if k not in ("input_ids", "attention_mask")}
        with torch.no_grad():
            logits = a.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0]
        logp = torch.log_softmax(logits.double() / scale, -1)
        p = x.model_inputs["input_ids"].shape[1]
        out.append(sum(float(logp[p - 1 + i, t]) for i, t in enumerate(opt[0])))
    return np.array(out)


@pytest.mark.parametrize("family", list(tiny.BUILDERS))
@pytest.mark.parametrize("condition", ["S", "T"])
@pytest.mark.parametrize("style", ["letter", "cloze"])
def test_option_scores_equal_a_slow_reference(family, condition, style, adapters, inputs):
    a = adapters[family]
    x = inputs[family]["S" if condition == "S" else style]
    ref = slow_logliks(a, x, ITEM, style)
    prefill = a.prefill(x)
    for norm in ("none", "tokens", "chars"):
        scores = a.score_prefill(prefill, ITEM, style, norm)
        np.testing.assert_allclose(scores.logliks, ref, atol=1e-4)
        assert scores.pred == int(np.argmax(normalized(ref, scores.n_tokens, scores.n_chars, norm)))
    if style == "cloze":
        assert scores.n_tokens.max() > 1  # the batched multi-token path ran
        np.testing.assert_allclose(normalized(ref, scores.n_tokens, scores.n_chars, "tokens"), ref / scores.n_tokens)
    else:
        assert (scores.n_tokens == 1).all()


# Items of different prompt lengths (T) and durations (S), so the batch is left-padded.
BATCH = [
    (ITEM, 1.3),
    (Item("it-8", "places", "in which place does kate live", ["forest", "desert farm", "island"], 2), 0.7),
    (Item("it-9", "counting", "how many", ["fifteen eighteen", "twelve"], 1), 1.9),
]



def batch_prompts(adapter: SpeechLM, condition: str) -> list[Inputs]:
    """The BATCH items' cloze prompts in `condition` (S: noise recordings of the listed lengths)."""
    return [adapter.speech_inputs(it, tiny.noise(sec, seed=k), "cloze") if condition == "S"
            else adapter.text_inputs(it, "cloze") for k, (it, sec) in enumerate(BATCH)]

@pytest.mark.parametrize("family", list(tiny.BUILDERS))
@pytest.mark.parametrize("condition", ["S", "T"])
def test_batched_prefill_equals_unbatched(family, condition, adapters):
    a = adapters[family]
    xs = batch_prompts(a, condition)
    assert len({len(x.span) for x in xs}) == len(xs)  # Voxtral S pads each to whole windows, all others left-pad
    for b, x, (it, _) in zip(a.prefill_batch(xs, hidden=True), xs, BATCH):
        s = a.prefill(x, hidden=True)
        assert b.inputs is x and b.cache.get_seq_length() == s.length  # the item's cache, padding cut off
        torch.testing.assert_close(b.hidden, s.hidden, rtol=0, atol=1e-5)
        torch.testing.assert_close(b.logprobs, s.logprobs, rtol=0, atol=1e-5)
        scores = a.score_prefill(b, it, "cloze").logliks
        np.testing.assert_allclose(scores, a.score_prefill(s, it, "cloze").logliks, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one condition"):
        a.prefill_batch([a.speech_inputs(ITEM, tiny.noise(SECONDS), "cloze"), a.text_inputs(ITEM, "cloze")])


@pytest.mark.parametrize("family", list(tiny.BUILDERS))
@pytest.mark.parametrize("condition", ["S", "T"])
def test_option_scores_of_a_batch_equal_the_slow_reference(family, condition, adapters):
    """Options of items with prompts of different lengths, scored in one forward over left-padded caches."""
    a = adapters[family]
    xs = [a.speech_inputs(it, tiny.noise(sec, seed=k), "cloze") if condition == "S" else a.text_inputs(it, "cloze")
          for k, (it, sec) in enumerate(BATCH)]
    items = [it for it, _ in BATCH]
    prefills = a.prefill_batch(xs)
    assert condition == "S" or len({p.length for p in prefills}) == len(xs)  # Voxtral S: whole windows, equal
    scores = a.score_prefills(prefills, items, "cloze", "tokens")
    assert [s.n_tokens.max() for s in scores] != [1] * len(xs)  # several-token options ran over the merged cache
    for s, x, it in zip(scores, xs, items):
        ref = slow_logliks(a, x, it, "cloze")
        np.testing.assert_allclose(s.logliks, ref, atol=1e-4)
        assert s.pred == int(np.argmax(ref / s.n_tokens))
    assert a.score_prefills([], [], "cloze") == []


@pytest.mark.parametrize("family", list(tiny.BUILDERS))
def test_hooks_see_and_edit_the_span(family, adapters, inputs):
    a, s = adapters[family], inputs[family]["S"]
    base = a.prefill(s, hidden=True)
    seen = {}

    def record(layer):
        def fn(h):
            seen[layer] = h.clone()
        return fn

    with hooked(a, {layer: record(layer) for layer in (0, 1, a.n_layers)}):
        a.prefill(s)
    full = len(s.model_inputs["input_ids"][0])
    torch.testing.assert_close(seen[0][0, s.span], base.hidden[0])  # layer 0: merged embeddings, audio included
    torch.testing.assert_close(seen[1][0, s.span], base.hidden[1])
    assert seen[a.n_layers].shape == (1, full, a.hidden_size)  # block L output, before the final norm
    assert a.hook_module(1) is a.layers[0] and a.hook_module(a.n_layers) is a.layers[-1]

    def zero(positions):
        def fn(h):
            h = h.clone()
            h[:, positions] = 0
            return h
        return fn

    with hooked(a, {0: zero(s.span)}):
        edited = a.prefill(s, hidden=True)
    assert (edited.hidden[0] == 0).all() and not torch.allclose(edited.logprobs, base.logprobs)
    # At layer L only the last position reaches the logits: zeroing it (and the span) leaves uniform logits.
    with hooked(a, {a.n_layers: zero(torch.cat([s.span, torch.tensor([full - 1])]))}):
        edited = a.prefill(s, hidden=True)
    assert (edited.hidden[-1] == 0).all()  # the final RMSNorm keeps zeros zero
    torch.testing.assert_close(edited.logprobs, torch.full_like(base.logprobs, -np.log(len(base.logprobs))))
    torch.testing.assert_close(a.prefill(s).logprobs, base.logprobs)  # hooks removed
    with pytest.raises(ValueError, match="out of range"):
        a.hook_module(a.n_layers + 1)


@pytest.mark.parametrize(
    "family, placeholders, content",
    # 4.5 s with 2 s windows. Whisper: 2 + 2 + 0.5 s -> 50 + 50 + 12 positions. Voxtral's 30 s windows: test_voxtral.
    [("qwen2_audio", 112, 112), ("qwen2_5_omni", 112, 112)],
)
def test_long_audio_rejected_or_windowed(family, placeholders, content, paths, adapters):
    w = tiny.noise(4.5)
    with pytest.raises(LongAudioError, match=r"item it-7: audio is 4\.50 s, longer than .* 2 s"):
        adapters[family].speech_inputs(ITEM, w, "cloze")
    a = load_adapter(family, paths[family], device="cpu", long_audio="window")
    s = a.speech_inputs(ITEM, w, "cloze")
    assert (s.model_inputs["input_ids"] == a.audio_token_id).sum() == placeholders
    assert len(s.span) == content
    times = a.position_times_ms(content)
    assert abs(times[-1, 1] - 4500) < a.ms_per_position
    assert times[round(2000 / a.ms_per_position), 0] == 2000  # the second window starts at 2 s
    assert a.hidden_states(s).shape == (a.n_layers + 1, content, a.hidden_size)


def test_granite_takes_long_audio_whole(adapters):
    s = adapters["granite_speech"].speech_inputs(ITEM, tiny.noise(4.5), "cloze")
    assert len(s.span) == 45  # (72000 // 160 + 1) // 2 = 225 encoder frames = 15 blocks of 3


def test_speech_words_from_timings(adapters):
    a = adapters["qwen2_audio"]
    spans = np.array([[100, 300], [300, 700], [900, 1250]])
    words = a.speech_inputs(ITEM, tiny.noise(SECONDS), "cloze", word_spans_ms=spans).words
    # 40 ms positions: [80,120) is half in word 0; [280,320) ties -> the earlier word; [720,760) is in the pause;
    # [1240,1280) has only 10 ms of word 2.
    assert words[[0, 1, 2, 7, 8, 17, 18, 30, 31]].tolist() == [-1, -1, 0, 0, 1, 1, -1, 2, -1]


def test_lab_model_scores_like_the_lab_scorer(tmp_path):
    """The lab model, saved as the workflow saves it, scores through the adapter exactly as its own cloze scorer."""
    from modgap.lab import data, recipe, score
    from modgap.lab import model as lab
    from modgap.lab.tokenizer import build_tokenizer

    r = recipe.get_recipe("smoke")
    tok = build_tokenizer([ITEM.question, *ITEM.choices])
    model, processor = lab.build_model(r, tok), lab.build_processor(r, tok)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    a = load_adapter("qwen2_audio", tmp_path, device="cpu")
    assert a.window_samples == r.audio_window_s * 16000
    w = tiny.noise(SECONDS)
    text = a.score(a.text_inputs(ITEM, "cloze"), ITEM, "cloze").logliks
    speech = a.score(a.speech_inputs(ITEM, w, "cloze"), ITEM, "cloze").logliks
    np.testing.assert_allclose(text, score.logliks(model, processor, [ITEM])[0], atol=1e-4)
    lab_speech = score.logliks(model, processor, [ITEM], data.speech_set(processor, [ITEM], [w]))[0]
    np.testing.assert_allclose(speech, lab_speech, atol=1e-3)  # the lab keeps log-mel features in float16


def test_positions_to_words():
    times = np.array([[0, 40], [40, 80], [80, 120], [120, 160], [160, 200], [200, 240]])
    words = np.array([[50, 130], [130, 230]])
    # [0,40): no overlap; [40,80): 30 of 40 in word 0; [80,120): inside 0; [120,160): 10 vs 30 -> word 1;
    # [160,200): inside 1; [200,240): 30 of 40 in word 1.
    assert positions_to_words(times, words).tolist() == [-1, 0, 0, 1, 1, 1]
    assert positions_to_words([[0, 40]], [[30, 50]]).tolist() == [-1]  # 10 of 40 ms: minority
    assert positions_to_words([[0, 40]], [[0, 20], [20, 40]]).tolist() == [0]  # tie: the earlier word
    assert positions_to_words([[0, 40], [40, 80]], np.zeros((0, 2))).tolist() == [-1, -1]
    assert positions_to_words([[3, 6]], [[0, 3], [4, 6]]).tolist() == [1]  # a token " is" with its space


def test_prompt_options_are_shared_and_outside_the_span(paths, tok):
    prompt = Prompt(system="Be brief.", instruction={"letter": "\nAnswer with a letter."}, cue="The answer is")
    a = load_adapter("qwen2_audio", paths["qwen2_audio"], device="cpu", prompt=prompt)
    s, t = a.speech_inputs(ITEM, tiny.noise(SECONDS), "letter"), a.text_inputs(ITEM, "letter")
    for x in (s, t):
        assert x.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
        assert x.text.endswith("\nAnswer with a letter.<|im_end|>\n<|im_start|>assistant\nThe answer is")
    assert tok.decode(t.model_inputs["input_ids"][0, t.span]) == spoken_text(ITEM, "letter")
    assert len(s.span) == POSITIONS["qwen2_audio"]


OPEN = Item("qa-1", "qa", "what is five plus ten", [], -1, task="qa")
PROBE_T = "Which one is the probe? A, this one; B, that one."  # base._PROBE in letter style


def test_instruction_follows_the_style_and_skips_open_tasks(paths):
    prompt = Prompt(instruction={"letter": "\nAnswer with a letter.", "cloze": None})
    a = load_adapter("qwen2_audio", paths["qwen2_audio"], device="cpu", prompt=prompt)
    end = "<|im_end|>\n<|im_start|>assistant\n"
    assert a.text_inputs(ITEM, "letter").text.endswith(f"{spoken_text(ITEM, 'letter')}\nAnswer with a letter.{end}")
    assert a.speech_inputs(ITEM, tiny.noise(SECONDS), "letter").text.endswith(f"<|audio_eos|>\n\nAnswer with a letter.{end}")
    assert a.text_inputs(ITEM, "cloze").text.endswith(f"user\n{ITEM.question}{end}")
    assert a.text_inputs(OPEN, "letter").text.endswith(f"user\n{OPEN.question}{end}")  # generation: no letter asked
    assert a.speech_inputs(OPEN, tiny.noise(SECONDS), "letter").text.endswith(f"<|audio_eos|>\n{end}")


def test_prompt_ids_render_system_instruction_and_cue(paths, tok):
    """The fingerprint ids decode to the probe's S and T prompts through the template, and move with every part."""
    def ids(**prompt):
        return load_adapter("qwen2_audio", paths["qwen2_audio"], device="cpu", prompt=Prompt(**prompt)).prompt_ids

    bare = ids()("letter")
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"  # the template's own
    assert tok.decode(bare["T"]) == f"{system}{PROBE_T}<|im_end|>\n<|im_start|>assistant\n"
    one_second = "<|AUDIO|>" * 25  # the probe's second of silence: 25 positions of 40 ms
    assert tok.decode(bare["S"]) == (f"{system}Audio 1: <|audio_bos|>{one_second}<|audio_eos|>\n<|im_end|>\n"
                                     "<|im_start|>assistant\n")
    assert tok.decode(ids(system="Be brief.")("letter")["T"]).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    for changed in (ids(system="Be brief."), ids(cue="The answer is"), ids(instruction={"letter": "\nA letter."})):
        new = changed("letter")
        assert new["S"] != bare["S"] and new["T"] != bare["T"]
    assert ids(instruction={"letter": "\nA letter."})("cloze") == ids()("cloze")  # a letter instruction only
    assert tok.decode(ids(cue="The answer is")("letter")["S"]).endswith("assistant\nThe answer is")


def test_load_run_asks_with_the_runs_prompt(paths):
    from modgap.models import load_run
    from modgap.plan import model_run

    system = "Knowledge Cutoff Date: April 2024.\nToday's Date: April 9, 2025.\nYou are Granite."
    run = model_run("g", "granite_speech", str(paths["granite_speech"]), device="cpu", dtype="float32", system=system,
                    instruction={"letter": "\nAnswer with a letter."}, cue="Answer:")
    t = load_run(run).text_inputs(ITEM, "letter")
    assert t.text == (f"<|start_of_role|>system<|end_of_role|>{system}<|end_of_text|>\n<|start_of_role|>user"
                      f"<|end_of_role|>{spoken_text(ITEM, 'letter')}\nAnswer with a letter.<|end_of_text|>\n"
                      "<|start_of_role|>assistant<|end_of_role|>Answer:")


@pytest.mark.parametrize("family", list(tiny.BUILDERS))
@pytest.mark.parametrize("condition", ["S", "T"])
def test_prefill_projects_only_the_last_position(family, condition, adapters):
    """The head sees one position per prompt, and the next-token log-probs equal the model's full forward's."""
    a = adapters[family]
    xs = batch_prompts(a, condition)
    if condition == "S" and not a.batch_audio:
        xs = xs[:1]
    seen = []
    handle = a.model.lm_head.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    try:
        prefills = a.prefill_batch(xs)
    finally:
        handle.remove()
    assert seen == [(len(xs), 1, a.hidden_size)]
    for x, p in zip(xs, prefills):
        with torch.no_grad(), a._condition(x.condition):
            full = a.model(**a._model_inputs(x)).logits  # [1, T, V]: every position
        assert full.shape[1] == x.model_inputs["input_ids"].shape[1]
        # Granite's forward leaves out the logits_scaling division that GraniteForCausalLM applies (test_granite.py)
        expected = torch.log_softmax(full[0, -1].float() / a.logits_scaling, -1)
        torch.testing.assert_close(p.logprobs, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", list(tiny.BUILDERS))
def test_no_deprecated_transformers_api(family, adapters):
    """Prefill (batched, so item caches are cut), option scoring and generation raise no deprecation warning, neither
    a Python warning nor transformers' logged one (`past_key_values` is to be removed in transformers 5.40)."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    class Raise(logging.Handler):
        def emit(self, record):
            if "deprecated" in record.getMessage():
                raise AssertionError(record.getMessage())

    a, handler, logger = adapters[family], Raise(), logging.getLogger("transformers")
    hf_logging.warning_once.cache_clear()  # a warning logged earlier in the session would be swallowed
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            xs = [a.text_inputs(it, "cloze") for it, _ in BATCH]
            scores = [a.score_prefill(p, it, "cloze") for p, (it, _) in zip(a.prefill_batch(xs), BATCH)]
            assert max(s.n_tokens.max() for s in scores) > 1  # options of several tokens ran over the cache
            a.generate(xs[0], greedy=True, max_new_tokens=2, repetition_penalty=1.0)
    finally:
        logger.removeHandler(handler)


def test_device_map_loads_without_moving_the_model(paths, adapters):
    a = load_adapter("qwen2_audio", paths["qwen2_audio"], device="cuda", device_map="cpu")  # device is not used
    assert a.device == torch.device("cpu") and {p.device.type for p in a.model.parameters()} == {"cpu"}
    s = a.speech_inputs(ITEM, tiny.noise(SECONDS), "cloze")
    np.testing.assert_allclose(a.score(s, ITEM, "cloze").logliks,
                               adapters["qwen2_audio"].score(s, ITEM, "cloze").logliks, rtol=0, atol=1e-6)


def test_bfloat16_and_generation(paths):
    a = load_adapter("qwen2_audio", paths["qwen2_audio"], dtype="bfloat16", device="cpu")
    s = a.speech_inputs(ITEM, tiny.noise(SECONDS), "letter")
    assert a.hidden_states(s).dtype == torch.bfloat16
    assert np.isfinite(a.score(s, ITEM, "letter").logliks).all()
    answer = a.generate(s, greedy=True, max_new_tokens=3, repetition_penalty=1.0)
    assert isinstance(answer, str) and extract_answer(answer, ITEM, "letter") in range(-1, len(ITEM.choices))
    inputs, eos = a._model_inputs(s), a.model.generation_config.eos_token_id
    ids = inputs["input_ids"]
    with torch.no_grad(), a._condition("S"):
        for _ in range(3):  # greedy decoding by hand, one full forward per token
            logits = a.model(**{**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], 1)
            if int(ids[0, -1]) in np.atleast_1d(eos if eos is not None else []):
                break
    assert answer == a.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize(
    "response, expected",
    [("The answer is (B).", 1), ("B", 1), ("I think C because it adds up.", 2), ("none", -1), ("b.", 1),
     ("Answer: D", 3), ("A) fifteen", 0), ("It is a hard one", -1), ("The answer is E.", -1), ("", -1),
     ("(C) is right, not (A)", 2), ("I would choose option D", 3)],
)
def test_extract_letter(response, expected):
    assert extract_answer(response, ITEM, "letter") == expected


@pytest.mark.parametrize(
    "response, expected",
    [("Fifteen.", 0), ("it is seventeen, not fifteen", 3), ("fifteenth", -1), ("no idea", -1)],
)
def test_extract_choice(response, expected):
    assert extract_answer(response, ITEM, "cloze") == expected


def test_bad_family_path_and_options(paths, tmp_path):
    with pytest.raises(ValueError, match=r"unknown model family 'whisper' \(known: qwen2_audio, qwen2_5_omni, "
                                         r"voxtral, granite_speech\)"):
        load_adapter("whisper", paths["qwen2_audio"])
    missing = tmp_path / "no" / "model"
    with pytest.raises(FileNotFoundError, match=f"model path '{missing}' does not exist"):
        load_adapter("qwen2_audio", missing)
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        load_adapter("qwen2_audio", paths["qwen2_audio"], dtype="float64")
    with pytest.raises(ValueError, match="unknown long_audio 'crop'"):
        load_adapter("qwen2_audio", paths["qwen2_audio"], long_audio="crop")


@pytest.mark.parametrize("family", FAMILIES)
def test_readout_at_the_last_layer_is_the_models_own_head(family, adapters, inputs):
    """`readout` of hook point L (the last block's output, before the final norm) reproduces the next-token logits:
    the model's own for every family, and GraniteForCausalLM's (divided by logits_scaling) for Granite."""
    a, s = adapters[family], inputs[family]["S"]
    last = {}

    def keep(h):
        last["h"] = h[0, -1].clone()

    with hooked(a, {a.n_layers: keep}):
        logits = a.model(**a._model_inputs(s)).logits[0, -1].float()
    torch.testing.assert_close(a.readout(last["h"]), logits / a.logits_scaling, rtol=1e-4, atol=1e-4)


def test_granite_readout_divides_by_logits_scaling(tmp_path, tok):
    """With the released checkpoints' logits_scaling 8, the readout equals GraniteForCausalLM on the same LM."""
    from transformers import GraniteForCausalLM

    a = load_adapter("granite_speech", str(tiny.build_granite(tmp_path, tok)), device="cpu")
    model = a.model
    lm = GraniteForCausalLM(model.config.text_config).eval()
    lm.model.load_state_dict(model.model.language_model.state_dict())
    lm.lm_head.load_state_dict(model.lm_head.state_dict())
    h = torch.randn(3, a.hidden_size)
    with torch.no_grad():
        expected = lm.lm_head(lm.model.norm(h)) / 8.0
    assert a.logits_scaling == 8.0
    torch.testing.assert_close(a.readout(h), expected)
