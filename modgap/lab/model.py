"""The tiny Qwen2-Audio: config, processor (tokenizer + Whisper features + one chat template), and prompts."""
from __future__ import annotations

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

from modgap.corpus.timing import SAMPLE_RATE
from modgap.lab.recipe import Recipe
from modgap.lab.tokenizer import AUDIO, IM_END

HOP = 160  # 100 mel frames per second

# One template for both conditions: the user turn holds the audio (S) or the transcript (T), nothing else, so the
# span is the question content only. The generation prompt "<|im_start|>assistant" is the answer cue.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def window_frames(recipe: Recipe) -> int:
    """Mel frames the encoder sees: exactly 2 * max_source_positions (100 per second of window)."""
    return recipe.audio_window_s * SAMPLE_RATE // HOP


def build_config(recipe: Recipe, tokenizer: PreTrainedTokenizerFast) -> Qwen2AudioConfig:
    """A tiny Qwen2AudioConfig sized by `recipe`; the audio window is `recipe.audio_window_s` seconds."""
    pad = tokenizer.pad_token_id
    text = dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        hidden_size=recipe.text_hidden,
        intermediate_size=recipe.text_ffn,
        num_hidden_layers=recipe.text_layers,
        num_attention_heads=recipe.text_heads,
        num_key_value_heads=recipe.text_kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=pad,
        bos_token_id=pad,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
    )
    audio = dict(
        model_type="qwen2_audio_encoder",
        num_mel_bins=128,
        d_model=recipe.audio_d,
        encoder_layers=recipe.audio_layers,
        encoder_attention_heads=recipe.audio_heads,
        encoder_ffn_dim=recipe.audio_ffn,
        max_source_positions=window_frames(recipe) // 2,
    )
    return Qwen2AudioConfig(
        audio_config=audio, text_config=text, audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO)
    )


def build_model(recipe: Recipe, tokenizer: PreTrainedTokenizerFast) -> Qwen2AudioForConditionalGeneration:
    """A randomly initialised tiny model, seeded by `recipe.seed`."""
    torch.manual_seed(recipe.seed)
    model = Qwen2AudioForConditionalGeneration(build_config(recipe, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_processor(recipe: Recipe, tokenizer: PreTrainedTokenizerFast) -> Qwen2AudioProcessor:
    """Tokenizer + WhisperFeatureExtractor (128 mel bins, 16 kHz, 10 ms hop) padding to the encoder window."""
    features = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=HOP, chunk_length=recipe.audio_window_s
    )
    return Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def messages(question: str | None = None) -> list[dict]:
    """The one-turn chat of an item: the question as text (T), or one audio (S) when `question` is None."""
    content = [{"type": "text", "text": question}] if question is not None else [{"type": "audio"}]
    return [{"role": "user", "content": content}]


def prompt(processor: Qwen2AudioProcessor, question: str | None = None) -> str:
    """The chat prompt up to and including the answer cue `<|im_start|>assistant\n`, for T or (no question) S."""
    return processor.apply_chat_template(messages(question), add_generation_prompt=True, tokenize=False)


def num_audio_positions(frames: int) -> int:
    """Audio positions (40 ms each) the encoder gives for `frames` unpadded mel frames."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1
