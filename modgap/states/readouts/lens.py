"""Logit lens at the decision position (P2 Figs. 6 and 8): per layer, the margin of the correct option and the
normalised entropy of the next-token distribution under the model's own readout head (`SpeechLM.readout`).

Option scores are the first token of each option's continuation (`option_texts`: the letter for letter items, the
choice's first token for cloze items; options sharing a first token tie). margin = log p(correct) - max over the
other options' log p; entropy = H(p) / log V over the whole vocabulary. Layer l is hook point l (0 = input
embeddings, L = the last block's output, whose readout is the model's own next-token distribution).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from modgap.models.base import SpeechLM, option_texts
from modgap.states.readouts import Readout, Seen, register


def lens_margin_entropy(logits: torch.Tensor, options: list[int], answer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [layers, V] of one item, its options' token ids (K >= 2; none for an open task, whose margin is NaN)
    and the correct option's index -> (margin [layers], normalised entropy [layers])."""
    logp = torch.log_softmax(logits.float(), -1)
    entropy = -(logp.exp() * logp).sum(-1) / math.log(logp.shape[-1])
    if not options:
        return torch.full_like(entropy, math.nan), entropy
    scores = logp[:, options]  # [layers, K]
    others = torch.cat([scores[:, :answer], scores[:, answer + 1 :]], 1)
    return scores[:, answer] - others.max(-1).values, entropy


@register
class LogitLens(Readout):
    name = "lens"
    needs = ("decision_states",)

    def fields(self, adapter: SpeechLM) -> dict[str, tuple[int, ...]]:
        return {"lens_margin": (adapter.n_layers + 1,), "lens_entropy": (adapter.n_layers + 1,)}

    def __call__(self, seen: Seen) -> dict[str, np.ndarray]:
        first = [[ids[0] for ids in seen.adapter.tokenizer(option_texts(it, seen.style), add_special_tokens=False)
                  ["input_ids"]] if it.choices else [] for it in seen.items]
        logits = seen.head(seen.decision).cpu()  # [B, L+1, V]
        out = [lens_margin_entropy(lg, f, it.answer) for lg, f, it in zip(logits, first, seen.items)]
        return {"lens_margin": torch.stack([m for m, _ in out]).numpy(),
                "lens_entropy": torch.stack([e for _, e in out]).numpy()}
