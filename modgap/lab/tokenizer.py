"""A word-level tokenizer for the lab world, wrapped as a `PreTrainedTokenizerFast` with Qwen2-Audio's specials."""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<|endoftext|>"
UNK = "<unk>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
AUDIO, AUDIO_BOS, AUDIO_EOS = "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"
SPECIALS = [PAD, UNK, IM_START, IM_END, AUDIO, AUDIO_BOS, AUDIO_EOS]
TEMPLATE_WORDS = ["system", "user", "assistant", "transcript"]


def build_tokenizer(texts: Iterable[str], extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Train a lower-cased word-level tokenizer on `texts`; every word of `extra_words` is in the vocabulary too.

    Words split on whitespace and punctuation; ids are deterministic (specials first, then by frequency, then
    alphabetically). Unknown words map to `<unk>`.
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1, show_progress=False)
    corpus = [*TEMPLATE_WORDS, *sorted(set(extra_words)), *texts]
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=IM_END,
        additional_special_tokens=SPECIALS[2:],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
