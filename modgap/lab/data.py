"""Batches for the lab model: chat sequences with loss labels, log-mel features, expanded `<|AUDIO|>` placeholders.

Every sequence is `user turn, answer turn, transcript turn`:
`<|im_start|>user\n{question or audio}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n<|im_start|>transcript\n
{question words}<|im_end|>`. The user turn holds the question as text (T) or as audio (S). Scoring uses the same
prefix up to the answer cue, so the transcript turn (an ASR-style target) never influences the answer.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Qwen2AudioProcessor

from modgap.corpus.table import read_rows
from modgap.corpus.items import Item, words_of
from modgap.corpus.timing import SAMPLE_RATE
from modgap.lab.model import messages
from modgap.lab.tokenizer import AUDIO_BOS, AUDIO_EOS, IM_END, IM_START

IGNORE = -100
SPREAD_FILL = (2, 9)  # filler ids before each spread word (and after the last): about an audio word's length
ANSWER, TRANSCRIPT = "assistant", "transcript"


@dataclass(frozen=True)
class Sequence:
    """Token ids, their labels (`IGNORE` where no loss is taken; not shifted) and each label's loss weight."""

    ids: list[int]
    labels: list[int]
    weights: list[float]


@dataclass(frozen=True)
class SpeechSet:
    """Spoken items, ready to batch.

    features: [N, 128, F] float16 log-mel, padded to the encoder window F; frames: [N] unpadded mel frames;
    users: per item, the S user turn's ids with the audio placeholders expanded.
    """

    items: list[Item]
    features: torch.Tensor
    frames: torch.Tensor
    users: list[list[int]]


def user_turn(processor: Qwen2AudioProcessor, question: str | None) -> str:
    """The chat's user turn: the question as text, or one `<|AUDIO|>` when `question` is None."""
    return processor.apply_chat_template(messages(question), tokenize=False)


def words(processor: Qwen2AudioProcessor, text: str) -> list[int]:
    """Ids of the spoken words of `text` (punctuation dropped)."""
    return processor.tokenizer(" ".join(words_of(text)), add_special_tokens=False)["input_ids"]


def answer_cue(processor: Qwen2AudioProcessor) -> list[int]:
    """Ids of `<|im_start|>assistant\n`, after which a choice is scored."""
    return processor.tokenizer(f"{IM_START}{ANSWER}\n", add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class LossWeights:
    """Per-row loss = answer * mean NLL(answer turn) + transcript * mean NLL(transcript turn) + lm * mean NLL(all)."""

    answer: float = 1.0
    transcript: float = 1.0
    lm: float = 0.0


def training_sequence(processor: Qwen2AudioProcessor, user: list[int], item: Item, w: LossWeights) -> Sequence:
    """user + answer turn + transcript turn, weighted by `w` (lm > 0 makes every token after the first a target)."""
    tok = processor.tokenizer
    end = tok.convert_tokens_to_ids(IM_END)
    answer = words(processor, item.choices[item.answer]) + [end]
    transcript = tok(f"\n{IM_START}{TRANSCRIPT}\n", add_special_tokens=False)["input_ids"]
    spoken = words(processor, item.question) + [end]
    ids = user + answer_cue(processor) + answer + transcript + spoken
    skip = len(ids) - len(answer) - len(transcript) - len(spoken)
    weights = (
        [0.0] * skip + [w.answer / len(answer)] * len(answer) + [0.0] * len(transcript)
        + [w.transcript / len(spoken)] * len(spoken)
    )
    if w.lm:
        weights = [0.0] + [x + w.lm / (len(ids) - 1) for x in weights[1:]]
        return Sequence(ids, [IGNORE, *ids[1:]], weights)
    labels = [IGNORE] * skip + answer + [IGNORE] * len(transcript) + spoken
    return Sequence(ids, labels, weights)


def text_user(processor: Qwen2AudioProcessor, item: Item) -> list[int]:
    """Ids of the T user turn of `item`."""
    return processor.tokenizer(user_turn(processor, item.question), add_special_tokens=False)["input_ids"]


def spread_user(processor: Qwen2AudioProcessor, item: Item, rng: random.Random) -> list[int]:
    """A T user turn laid out like an S one: the question's words between `<|audio_bos|>` and `<|audio_eos|>`, each
    after a few filler ids (the pad id, which is also the CTC blank), as CTC places words among blank positions.

    A language model trained on these reads a question spread over audio-like lengths (a plain-text LM does not:
    its accuracy halves once fillers separate the words), and blank audio positions have an embedding to land on.
    """
    tok = processor.tokenizer
    fill = [tok.pad_token_id]
    spread = [i for w in words(processor, item.question) for i in fill * rng.randint(*SPREAD_FILL) + [w]]
    head = tok(f"{IM_START}user\n{AUDIO_BOS}", add_special_tokens=False)["input_ids"]
    tail = tok(f"{AUDIO_EOS}{IM_END}\n", add_special_tokens=False)["input_ids"]
    return head + spread + fill * rng.randint(*SPREAD_FILL) + tail


def text_sequences(
    processor: Qwen2AudioProcessor, items: list[Item], w: LossWeights, spread: float = 0.0, seed: int = 0
) -> list[Sequence]:
    """One text training sequence per item; a `spread` fraction of them (seeded) with a `spread_user` turn.

    Filler ids are never targets.
    """
    rng = random.Random(seed)
    out = []
    for it in items:
        if rng.random() >= spread:
            out.append(training_sequence(processor, text_user(processor, it), it, w))
            continue
        seq = training_sequence(processor, spread_user(processor, it, rng), it, w)
        pad = processor.tokenizer.pad_token_id
        labels = [IGNORE if t == pad else t for t in seq.labels]
        lm_was, lm_now = w.lm / (len(seq.ids) - 1), w.lm / sum(t != IGNORE for t in labels)  # LM mean over targets
        weights = [0.0 if t == IGNORE else x - lm_was + lm_now for t, x in zip(labels, seq.weights)]
        out.append(Sequence(seq.ids, labels, weights))
    return out


def speech_set(processor: Qwen2AudioProcessor, items: list[Item], waves: list[np.ndarray]) -> SpeechSet:
    """Log-mel features and expanded S user turns of spoken items (16 kHz waves, at most one window long)."""
    window = processor.feature_extractor.n_samples
    too_long = [it.id for it, w in zip(items, waves) if len(w) > window]
    if too_long:
        raise ValueError(f"{len(too_long)} clips exceed the {window / SAMPLE_RATE:g} s audio window, e.g. {too_long[0]}")
    text = user_turn(processor, None)
    feats, frames, users = [], [], []
    for w in waves:
        enc = processor(text=text, audio=w, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        feats.append(enc["input_features"][0].half())
        frames.append(int(enc["feature_attention_mask"].sum()))
        users.append(enc["input_ids"][0].tolist())
    return SpeechSet(list(items), torch.stack(feats), torch.tensor(frames), users)


def token_logp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`[B, T-1]` log-probability of each next label under `logits` `[B, T, V]` (labels `[B, T]`, unshifted), 0 where
    the label is IGNORE."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    return logp.gather(-1, target.clamp(min=0)[..., None])[..., 0] * (target != IGNORE)


def collate(seqs: list[Sequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask, labels and weights, each [B, T]."""
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id)
    labels = torch.full((len(seqs), width), IGNORE)
    weights = torch.zeros((len(seqs), width))
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        n = len(s.ids)
        ids[r, :n], labels[r, :n], weights[r, :n] = torch.tensor(s.ids), torch.tensor(s.labels), torch.tensor(s.weights)
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def speech_batch(sset: SpeechSet, rows: list[int], seqs: list[Sequence], pad_id: int) -> dict[str, torch.Tensor]:
    """`collate(seqs)` plus input_features [B, 128, F] float32 and feature_attention_mask [B, F] of items `rows`."""
    batch = collate(seqs, pad_id)
    idx = torch.tensor(rows)
    batch["input_features"] = sset.features[idx].float()
    width = sset.features.shape[-1]
    batch["feature_attention_mask"] = (torch.arange(width)[None, :] < sset.frames[idx, None]).long()
    return batch


def load_table(path: str) -> tuple[list[Item], list[np.ndarray]]:
    """Usable items of a corpus items.parquet (`modgap.corpus.table`) and their 16 kHz waves."""
    rows = read_rows(path)
    return [r.item for r in rows], [r.wave() for r in rows]
