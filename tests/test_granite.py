"""Granite-Speech specifics on tiny models: logits_scaling in scoring, the Q-Former's 300 ms blocks and the audio LoRA
loaded as the released checkpoints ship it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tiny_models as tiny
import torch
from safetensors.torch import load_file, save_file
from transformers import GraniteForCausalLM

from modgap.corpus.items import Item
from modgap.models import load_adapter, option_texts

ITEM = Item("it-7", "arithmetic", "what is five plus ten", ["fifteen", "eighteen", "twelve", "seventeen"], 0)

DECODING = {"greedy": True, "max_new_tokens": 3, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def granite(tmp_path_factory, tok):
    return load_adapter("granite_speech", tiny.build_granite(tmp_path_factory.mktemp("base"), tok), device="cpu")


@pytest.fixture(scope="module")
def with_lora(tmp_path_factory, tok):
    return load_adapter("granite_speech", tiny.build_granite_with_lora(tmp_path_factory.mktemp("lora"), tok),
                        device="cpu")


def causal_lm_logliks(lm, prompt: torch.Tensor, tokenizer, style: str) -> np.ndarray:
    """Independent reference: one full forward of prompt + option per option, summing the option's log-probs."""
    out = []
    for text in option_texts(ITEM, style):
        opt = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(lm(torch.cat([prompt, opt], 1)).double(), -1)[0]
        p = prompt.shape[1]
        out.append(sum(float(logp[p - 1 + i, t]) for i, t in enumerate(opt[0])))
    return np.array(out)


@pytest.mark.parametrize("style", ["letter", "cloze"])
def test_text_option_logliks_equal_granite_causal_lm(style, granite):
    """T scores equal GraniteForCausalLM (which divides its logits by logits_scaling) on the same LLM weights, and
    differ from the undivided logits that GraniteSpeechForConditionalGeneration returns."""
    a = granite
    text = a.model.config.text_config
    assert {k: getattr(text, k) for k in tiny.GRANITE_MULTIPLIERS} == tiny.GRANITE_MULTIPLIERS
    lm = GraniteForCausalLM(text).eval()
    lm.model.load_state_dict(a.model.model.language_model.state_dict())
    lm.lm_head.load_state_dict(a.model.lm_head.state_dict())
    x = a.text_inputs(ITEM, style)
    prompt = x.model_inputs["input_ids"]
    ref = causal_lm_logliks(lambda ids: lm(input_ids=ids).logits, prompt, a.tokenizer, style)
    unscaled = causal_lm_logliks(lambda ids: a.model(input_ids=ids).logits, prompt, a.tokenizer, style)
    np.testing.assert_allclose(a.score(x, ITEM, style).logliks, ref, atol=1e-4)
    assert np.abs(ref - unscaled).max() > 100 * 1e-4  # far outside the tolerance the scaled scores meet


def test_a_projector_block_is_one_300_ms_interval(granite):
    """Changing one encoder frame of projector block 1 changes exactly that block's 3 queries (all of them), so the
    block's 3 positions share its interval. The perturbation goes into the projector's input: the conformer itself
    mixes frames across its attention context."""
    a = granite
    window = a.model.config.window_size
    torch.manual_seed(0)
    frames = torch.randn(1, 4 * window, a.model.config.projector_config.encoder_hidden_size)
    with torch.no_grad():
        base = a.model.model.projector(frames)[0]  # [12, d]
        for frame in (window, 2 * window - 1):  # the first and the last frame of block 1
            edited = frames.clone()
            edited[0, frame] += 1.0
            changed = (a.model.model.projector(edited)[0] - base).abs().amax(-1) > 1e-6
            assert torch.nonzero(changed)[:, 0].tolist() == [3, 4, 5]
    times = a.position_times_ms(12)
    np.testing.assert_array_equal(times[3:6], [[300, 600]] * 3)  # 15 encoder frames of 2 x 10 ms mel hops
    np.testing.assert_array_equal(times[::3], [[0, 300], [300, 600], [600, 900], [900, 1200]])
    assert a.time_resolution_ms == 300 and a.ms_per_position == 100


def test_speech_words_by_block(granite):
    """Word indices follow the blocks' intervals: [0, 300) holds 200 ms of word 0, [300, 600) lies in word 1,
    [600, 900) has only 100 ms of it."""
    s = granite.speech_inputs(ITEM, tiny.noise(1.3), "cloze", word_spans_ms=np.array([[0, 200], [200, 700]]))
    assert s.words[:9].tolist() == [0, 0, 0, 1, 1, 1, -1, -1, -1]


def test_lora_loads_from_the_model_folder(with_lora, granite, tok):
    """The peft adapter next to the weights is loaded; S runs with it and T without it (= the base LLM)."""
    a, base = with_lora, granite
    assert a.model._hf_peft_config_loaded and a.model.peft_config["default"].r == tiny.GRANITE_LORA["r"]
    assert len(a.lora_layers) == 2 * a.n_layers  # q_proj and v_proj of every block
    saved = load_file(f"{a.path}/adapter_model.safetensors")
    key = "model.language_model.layers.1.self_attn.v_proj.lora_B"
    torch.testing.assert_close(a.model.get_parameter(f"{key}.default.weight"), saved[f"base_model.model.{key}.weight"])
    assert saved[f"base_model.model.{key}.weight"].abs().min() > 0
    torch.testing.assert_close(a.model.lm_head.weight, base.model.lm_head.weight)  # the same base weights

    s = a.speech_inputs(ITEM, tiny.noise(1.3), "cloze")
    speech = a.prefill(s).logprobs
    assert not torch.allclose(speech, base.prefill(s).logprobs, atol=1e-3)  # the adapter acts on S
    for style in ("letter", "cloze"):
        t = a.text_inputs(ITEM, style)
        np.testing.assert_allclose(a.score(t, ITEM, style).logliks, base.score(t, ITEM, style).logliks, atol=1e-5)
        assert a.generate(t, **DECODING) == base.generate(t, **DECODING)
    torch.testing.assert_close(a.prefill(s).logprobs, speech)  # switched back on for S
    assert isinstance(a.generate(s, **DECODING), str)


def test_missing_lora_files_fail_clearly(tmp_path, tok):
    path = tiny.build_granite(tmp_path, tok)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "has_lora_adapter": True}))
    with pytest.raises(ValueError, match="sets has_lora_adapter but holds no audio LoRA adapter"):
        load_adapter("granite_speech", path, device="cpu")


def test_lora_saved_under_the_old_module_layout_loads_the_same(with_lora, tmp_path):
    """An adapter saved with transformers 4.x module names (`language_model.model.layers...`, the layout the
    checkpoints were released with) is renamed on load by transformers' conversion mapping."""
    shutil.copytree(with_lora.path, tmp_path, dirs_exist_ok=True)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    old = {k.replace("base_model.model.model.language_model.", "base_model.model.language_model.model."): v
           for k, v in saved.items()}
    assert old.keys() != saved.keys()
    save_file(old, tmp_path / "adapter_model.safetensors", metadata={"format": "pt"})
    a = load_adapter("granite_speech", tmp_path, device="cpu")
    lora = {n: w for n, w in with_lora.model.named_parameters() if "lora" in n}
    assert lora.keys() == {n for n, _ in a.model.named_parameters() if "lora" in n}
    for name, weight in lora.items():
        torch.testing.assert_close(a.model.get_parameter(name), weight)
