"""Cloze scoring of the lab model: each choice's summed log-likelihood after the answer cue; text (T) vs speech (S)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import torch
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from modgap.corpus.items import Item
from modgap.lab.data import IGNORE, Sequence, SpeechSet, answer_cue, collate, speech_batch, text_user, token_logp, words

Model = Qwen2AudioForConditionalGeneration


def choice_sequences(processor: Qwen2AudioProcessor, user: list[int], item: Item) -> list[Sequence]:
    """One sequence per choice: user turn + answer cue + the choice's words, the loss on the choice's words."""
    prefix = user + answer_cue(processor)
    out = []
    for choice in item.choices:
        target = words(processor, choice)
        out.append(Sequence(prefix + target, [IGNORE] * len(prefix) + target, [0.0] * len(prefix) + [1.0] * len(target)))
    return out


@torch.no_grad()
def logliks(
    model: Model, processor: Qwen2AudioProcessor, items: list[Item], sset: SpeechSet | None = None, batch: int = 32
) -> np.ndarray:
    """[N, C] summed log-likelihood of each choice: condition S when `sset` (the same items, spoken) else T."""
    model.eval()
    pad = processor.tokenizer.pad_token_id
    out = []
    for start in range(0, len(items), batch):
        rows = list(range(start, min(start + batch, len(items))))
        users = [sset.users[r] if sset is not None else text_user(processor, items[r]) for r in rows]
        seqs = [s for r, u in zip(rows, users) for s in choice_sequences(processor, u, items[r])]
        per_item = [len(items[r].choices) for r in rows]
        rep = [r for r, k in zip(rows, per_item) for _ in range(k)]
        b = speech_batch(sset, rep, seqs, pad) if sset is not None else collate(seqs, pad)
        inputs = {k: v for k, v in b.items() if k not in ("labels", "weights")}
        ll = token_logp(model(**inputs).logits, b["labels"]).sum(-1)
        out += [row.tolist() for row in torch.split(ll, per_item)]
    width = max(len(r) for r in out)
    return np.array([r + [-np.inf] * (width - len(r)) for r in out])


def predictions(
    model: Model, processor: Qwen2AudioProcessor, items: list[Item], sset: SpeechSet
) -> pd.DataFrame:
    """Per item: id, subject, answer, and for T and S the predicted index, its text and correctness."""
    rows = {"id": [it.id for it in items], "subject": [it.subject for it in items], "answer": [it.answer for it in items]}
    for cond, spoken in (("text", None), ("speech", sset)):
        pred = logliks(model, processor, items, spoken).argmax(1)
        rows[f"{cond}_pred"] = pred.tolist()
        rows[f"{cond}_pred_text"] = [it.choices[p] for it, p in zip(items, pred)]
        rows[f"{cond}_correct"] = [int(p == it.answer) for it, p in zip(items, pred)]
    return pd.DataFrame(rows)


def constant_baseline(items: list[Item]) -> dict:
    """The best constant answer: always the same choice position, or always the same answer text."""
    n = len(items)
    by_pos = Counter(it.answer for it in items)
    by_text = Counter(it.choices[it.answer] for it in items)
    pos, pos_n = by_pos.most_common(1)[0]
    text, text_n = by_text.most_common(1)[0]
    return {"position": pos, "position_acc": pos_n / n, "text": text, "text_acc": text_n / n, "acc": max(pos_n, text_n) / n}


def distribution(pred_text: pd.Series) -> dict:
    """How spread the predictions are: distinct answers, the most common one and its share, full counts."""
    counts = pred_text.value_counts()
    return {
        "distinct": int(counts.size),
        "top": str(counts.index[0]),
        "top_share": float(counts.iloc[0] / counts.sum()),
        "counts": {str(k): int(v) for k, v in counts.items()},
    }


def summarize(pred: pd.DataFrame, items: list[Item]) -> dict:
    """Accuracies (fractions), gap (points), the constant baseline and both prediction distributions."""
    text_acc, speech_acc = float(pred["text_correct"].mean()), float(pred["speech_correct"].mean())
    base = constant_baseline(items)
    return {
        "text_acc": text_acc,
        "speech_acc": speech_acc,
        "gap": round(100 * (text_acc - speech_acc), 2),
        "constant_baseline_acc": base["acc"],
        "n_items": len(items),
        "text_distinct": distribution(pred["text_pred_text"])["distinct"],
        "speech_distinct": distribution(pred["speech_pred_text"])["distinct"],
        "speech_top_share": distribution(pred["speech_pred_text"])["top_share"],
        "baseline": base,
        "distribution": {c: distribution(pred[f"{c}_pred_text"]) for c in ("text", "speech")},
    }
