"""Tiny random speech LLMs of every adapter family, saved with a locally trained tokenizer (no downloads).

Each `build_*` writes a model (`save_pretrained`) and its preprocessing (tokenizer with a chat template in the style of
the real checkpoint, feature-extractor config) to a folder and returns it. Text side: 2 layers, hidden 32, 4 heads.
Voxtral, like its hub checkpoints, gets a mistral-common tekken tokenizer (`tekken.json`) instead.
"""
from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import numpy as np
import torch
from mistral_common.tokens.tokenizers.audio import AudioConfig, AudioSpectrogramConfig
from mistral_common.tokens.tokenizers.base import SpecialTokens, TokenizerVersion
from mistral_common.tokens.tokenizers.tekken import Tekkenizer
from peft import LoraConfig, get_peft_model
from tiktoken._educational import bpe_train
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GraniteSpeechConfig,
    GraniteSpeechForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    VoxtralConfig,
    VoxtralForConditionalGeneration,
    WhisperFeatureExtractor,
)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
OMNI_SPECIALS = ["<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>"]
GRANITE_SPECIALS = ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|audio|>"]
CORPUS = [
    "what is five plus ten", "how much is fifteen plus zero", "which number is just after one",
    "in which place does kate live", "cheese eggs beans how many foods", "fifteen eighteen twelve seventeen",
    "forest desert farm island", "A, B, C, D; the answer is", "You are a helpful assistant.", "user assistant system",
]

# Chat templates in the style of each real checkpoint (content list with an audio part, or Granite's string content).
QWEN2_AUDIO_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OMNI_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are Qwen.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GRANITE_TEMPLATE = (
    "{% for message in messages %}<|start_of_role|>{{ message['role'] }}<|end_of_role|>{{ message['content'] }}"
    "<|end_of_text|>\n{% endfor %}{% if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{% endif %}"
)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (decodes back to the exact text) with every family's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = QWEN_SPECIALS + OMNI_SPECIALS + GRANITE_SPECIALS
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=specials[1:], clean_up_tokenization_spaces=False,
    )


def _with_template(tok: PreTrainedTokenizerFast, template: str) -> PreTrainedTokenizerFast:
    tok = copy.deepcopy(tok)
    tok.chat_template = template
    return tok


def _whisper(window_s: int) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=window_s)


def _save(model: torch.nn.Module, out: Path) -> Path:
    model.save_pretrained(out)
    return out


def build_qwen2_audio(out: Path, tok: PreTrainedTokenizerFast, window_s: int = 2, text: dict | None = None,
                      audio: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Qwen2-Audio with a `window_s` encoder window, saved with its Qwen2AudioProcessor (like the lab model); `text`
    and `audio` override text and audio config values (a wider or deeper model), `dtype` is the saved weights'."""
    torch.manual_seed(0)
    config = Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder", num_mel_bins=128, d_model=32, encoder_layers=1,
            encoder_attention_heads=2, encoder_ffn_dim=64, max_source_positions=window_s * 50,
        ) | (audio or {}),
        text_config=dict(model_type="qwen2", vocab_size=len(tok), max_position_embeddings=512, **TEXT) | (text or {}),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    Qwen2AudioProcessor(_whisper(window_s), tok, chat_template=QWEN2_AUDIO_TEMPLATE).save_pretrained(out)
    return _save(Qwen2AudioForConditionalGeneration(config).to(dtype), out)


def build_omni(out: Path, tok: PreTrainedTokenizerFast, window_s: int = 2) -> Path:
    """Qwen2.5-Omni thinker; the feature extractor's `window_s` chunk is its audio window."""
    torch.manual_seed(0)
    ids = tok.convert_tokens_to_ids
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            num_mel_bins=128, d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
            output_dim=32, n_window=50,
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32),
        text_config=dict(
            vocab_size=len(tok), max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}, **TEXT,
        ),
        audio_token_index=ids("<|AUDIO|>"), image_token_index=ids("<|IMAGE|>"), video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"), audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
    )
    _whisper(window_s).save_pretrained(out)
    _with_template(tok, OMNI_TEMPLATE).save_pretrained(out)
    return _save(Qwen2_5OmniThinkerForConditionalGeneration(config), out)


# Voxtral-Mini-3B-2507's tekken.json: its pre-tokenizer pattern, 1000 special tokens (the 20 mistral-common knows for
# older tekken files, [AUDIO] 24 and [BEGIN_AUDIO] 25 as transformers' VoxtralProcessor and VoxtralConfig assume),
# version v7 (no system prompt with audio), 16 kHz audio at 12.5 tokens/s padded to 30 s chunks. Where the other
# named special tokens sit is illustrative.
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
TEKKEN_SPECIALS = {24: SpecialTokens.audio, 25: SpecialTokens.begin_audio, 32: SpecialTokens.args,
                   33: SpecialTokens.call_id, 34: SpecialTokens.transcribe}
TEKKEN_AUDIO = AudioConfig(
    sampling_rate=16000, frame_rate=12.5, chunk_length_s=30.0,
    encoding_config=AudioSpectrogramConfig(num_mel_bins=128, hop_length=160, window_size=400),
)
N_SPECIAL = 1000


def tiny_tekken(version: str = "v7") -> dict:
    """A tekken.json of a byte-level BPE trained on CORPUS (checked by building the Tekkenizer in memory)."""
    ranks = bpe_train(" ".join(CORPUS), 330, TEKKEN_PATTERN, visualise=None)  # [bytes -> rank], ranks 0-255 the bytes
    vocab = [{"rank": r, "token_bytes": base64.b64encode(b).decode(), "token_str": b.decode("utf-8", "replace")}
             for b, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    specials = [dict(t) for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS]
    specials += [{"rank": i, "token_str": TEKKEN_SPECIALS.get(i, Tekkenizer.SPECIAL_TOKEN_TEMPLATE.format(id=i)),
                  "is_control": True} for i in range(len(specials), N_SPECIAL)]
    Tekkenizer(vocab, specials, TEKKEN_PATTERN, len(vocab) + N_SPECIAL, N_SPECIAL, TokenizerVersion(version),
               audio_config=TEKKEN_AUDIO)
    audio = {"sampling_rate": TEKKEN_AUDIO.sampling_rate, "frame_rate": TEKKEN_AUDIO.frame_rate,
             "chunk_length_s": TEKKEN_AUDIO.chunk_length_s, "audio_encoding_config": vars(TEKKEN_AUDIO.encoding_config)}
    config = {"pattern": TEKKEN_PATTERN, "num_vocab_tokens": len(vocab), "default_vocab_size": len(vocab) + N_SPECIAL,
              "default_num_special_tokens": N_SPECIAL, "version": version}
    return {"config": config, "vocab": vocab, "special_tokens": specials, "audio": audio}


def build_voxtral(out: Path, version: str = "v7") -> Path:
    """Voxtral with the real checkpoint's audio geometry (30 s windows, max_source_positions 1500, encoder
    intermediate_size = 4 * hidden_size, audio token 24), saved as on the hub: tekken.json (tokenizer `version`) and
    the Whisper preprocessor_config.json, no chat template."""
    torch.manual_seed(0)
    tekken = tiny_tekken(version)
    config = VoxtralConfig(
        audio_config=dict(
            hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
            max_source_positions=1500, num_mel_bins=128,
        ),
        text_config=dict(
            model_type="llama", vocab_size=tekken["config"]["default_vocab_size"], max_position_embeddings=131072,
            head_dim=8, **TEXT,
        ),
        audio_token_id=24,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "tekken.json").write_text(json.dumps(tekken))
    features = _whisper(30).to_dict() | {"processor_class": "VoxtralProcessor"}
    (out / "preprocessor_config.json").write_text(json.dumps(features))
    return _save(VoxtralForConditionalGeneration(config), out)


GRANITE_FEATURES = {  # ibm-granite/granite-speech-3.3 preprocessor_config.json values
    "feature_extractor_type": "GraniteSpeechFeatureExtractor", "sampling_rate": 16000, "n_fft": 512,
    "win_length": 400, "hop_length": 160, "n_mels": 80, "projector_window_size": 15, "projector_downsample_rate": 5,
}


# granite-3.3-2b-instruct's multipliers, the LLM of granite-speech-3.3-2b (the 8b LLMs of Granite 3.x use
# attention_multiplier 0.0078125 and logits_scaling 16).
GRANITE_MULTIPLIERS = dict(
    embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.015625, logits_scaling=8.0
)
# The audio LoRA as the model card describes it: rank 64 on the LLM's query and value projections.
GRANITE_LORA = dict(r=64, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def build_granite(out: Path, tok: PreTrainedTokenizerFast) -> Path:
    """Granite-Speech without a LoRA adapter; its feature-extractor config is written as JSON (needs no torchaudio)."""
    torch.manual_seed(0)
    config = GraniteSpeechConfig(
        text_config=dict(
            model_type="granite", vocab_size=len(tok), max_position_embeddings=512, **GRANITE_MULTIPLIERS, **TEXT
        ),
        encoder_config=dict(
            input_dim=160, num_layers=2, hidden_dim=32, feedforward_mult=2, num_heads=2, output_dim=8,
            context_size=20, max_pos_emb=32, conv_kernel_size=3,
        ),
        projector_config=dict(
            model_type="blip_2_qformer", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=1,
        ),
        audio_token_index=tok.convert_tokens_to_ids("<|audio|>"), has_lora_adapter=False,
        window_size=15, downsample_rate=5,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "preprocessor_config.json").write_text(json.dumps(GRANITE_FEATURES))
    _with_template(tok, GRANITE_TEMPLATE).save_pretrained(out)
    return _save(GraniteSpeechForConditionalGeneration(config), out)


def build_granite_with_lora(out: Path, tok: PreTrainedTokenizerFast) -> Path:
    """`build_granite` with `has_lora_adapter` and a random non-zero audio LoRA saved by peft next to the weights
    (adapter_config.json, adapter_model.safetensors), as the released checkpoints ship it."""
    build_granite(out, tok)
    model = GraniteSpeechForConditionalGeneration.from_pretrained(out)
    model.config.has_lora_adapter = True
    model.save_pretrained(out)
    torch.manual_seed(1)
    lora = get_peft_model(model, LoraConfig(**GRANITE_LORA))
    for name, weight in lora.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (an adapter that changes nothing)
            torch.nn.init.normal_(weight, std=0.5)
    lora.save_pretrained(out)
    return out



def noise(seconds: float, seed: int = 0) -> np.ndarray:
    """[seconds * 16000] float32 seeded white noise (std 0.1): audio input whose content does not matter."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)

BUILDERS = {
    "qwen2_audio": build_qwen2_audio, "qwen2_5_omni": build_omni,
    "voxtral": lambda out, tok: build_voxtral(out),  # its own tekken vocabulary, as on the hub
    "granite_speech": build_granite,
}
