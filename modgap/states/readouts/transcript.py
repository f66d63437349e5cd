"""Implicit transcription under the logit lens (S only): does a speech position inside a word's true span already
read out that word's first token?

For each word of the spoken transcript (`words_of(spoken_text(item, style))`) its target is the first token of
" " + word under the adapter's own tokenizer (`add_special_tokens=False`): the word as it appears mid-transcript,
after a space. At every span position inside the word's true span (`Inputs.words`, from the corpus's word timings)
and every layer, the target's rank under the model's readout head is counted (rank 0 = argmax; ties rank in the
target's favour); a word is in the top k at a layer when its best position there has rank < k. Fields, per layer:
the fraction of the item's words (those owning at least one span position: `transcript_n_words`) in the top 1, 5
and 10, and the control on the same positions for a WRONG word: the next word of the item (cyclically) whose first
token differs (words without one leave the control). Layer L of the span states is `output_hidden_states`' last,
taken after the final norm, so it gets the head without the norm again. Condition T, and S without word timings or
words, store NaN. Cost: one [rows, V] head call per layer and `CHUNK_ROWS` word positions.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from modgap.corpus.items import spoken_text, words_of
from modgap.models.base import SpeechLM
from modgap.states.readouts import Readout, Seen, register

TOP_K = (1, 5, 10)
CHUNK_ROWS = 256  # positions per head call: [rows, V] float32 logits at a time


def target_ranks(logits_of: Callable[[int, torch.Tensor], torch.Tensor], hidden: torch.Tensor, positions: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
    """Rank of `targets` [m, t] (t token ids per position) at span `positions` [m] in every layer of `hidden`
    [L+1, n, d] -> [L+1, m, t] (0 = argmax), `CHUNK_ROWS` positions at a time; `logits_of(layer, states [rows, d])`
    -> [rows, V]."""
    out = torch.empty(hidden.shape[0], *targets.shape, dtype=torch.long)
    for layer in range(hidden.shape[0]):
        for s in range(0, len(positions), CHUNK_ROWS):
            logits = logits_of(layer, hidden[layer, positions[s : s + CHUNK_ROWS]])  # [rows, V]
            at_target = logits.gather(1, targets[s : s + CHUNK_ROWS].to(logits.device))  # [rows, t]
            out[layer, s : s + CHUNK_ROWS] = (logits[:, None, :] > at_target[..., None]).sum(-1).cpu()
    return out


def word_topk(ranks: torch.Tensor, word_of: torch.Tensor, ks: tuple[int, ...] = TOP_K) -> np.ndarray:
    """ranks [L+1, m] at positions of words `word_of` [m] -> [len(ks), L+1] fraction of the distinct words of
    `word_of` whose best position ranks < k."""
    _, local = torch.unique(word_of, return_inverse=True)
    best = torch.full((ranks.shape[0], int(local.max()) + 1), torch.iinfo(torch.long).max, dtype=torch.long)
    best = best.scatter_reduce(1, local.expand_as(ranks), ranks, "amin")
    return np.stack([(best < k).float().mean(1).numpy() for k in ks])


def wrong_words(first: list[int]) -> list[int]:
    """Per word, the index of the next word (cyclically) whose first token differs from its own; -1 if none."""
    n = len(first)
    return [next(((i + j) % n for j in range(1, n) if first[(i + j) % n] != first[i]), -1) for i in range(n)]


@register
class Transcript(Readout):
    name = "transcript"
    needs = ("span_states",)

    def fields(self, adapter: SpeechLM) -> dict[str, tuple[int, ...]]:
        layers = (adapter.n_layers + 1,)
        return ({f"transcript_top{k}": layers for k in TOP_K} | {f"transcript_wrong_top{k}": layers for k in TOP_K}
                | {"transcript_n_words": ()})

    def __call__(self, seen: Seen) -> dict[str, np.ndarray]:
        shapes = self.fields(seen.adapter)
        out = {k: np.full((len(seen.items), *s), math.nan, np.float32) for k, s in shapes.items()}
        if seen.condition != "S":
            return out
        for b, (item, x, pre) in enumerate(zip(seen.items, seen.inputs, seen.prefills)):
            if x.words is None or pre.hidden is None or not (x.words >= 0).any():
                continue
            values = self.item_fields(seen.adapter, words_of(spoken_text(item, seen.style)), x.words, pre.hidden)
            for k, v in values.items():
                out[k][b] = v
        return out

    def item_fields(self, adapter: SpeechLM, words: list[str], word_index: np.ndarray, hidden: torch.Tensor
                    ) -> dict[str, np.ndarray]:
        """One item: its transcript `words`, each span position's word index [n] (-1 outside) and span states
        [L+1, n, d] -> its fields."""
        first = [ids[0] for ids in adapter.tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]]
        wrong = wrong_words(first)
        positions = torch.from_numpy(np.flatnonzero(word_index >= 0))
        word_of = torch.from_numpy(word_index[positions.numpy()].astype(np.int64))
        last = hidden.shape[0] - 1

        def logits_of(layer: int, h: torch.Tensor) -> torch.Tensor:
            if layer < last:
                return adapter.readout(h)
            return adapter.model.lm_head(h.to(adapter.device, adapter.model.dtype)).float() / adapter.logits_scaling

        keep = torch.tensor([wrong[w] >= 0 for w in word_of.tolist()], dtype=torch.bool)  # words with a control
        targets = torch.tensor([[first[w], first[wrong[w]]] for w in word_of.tolist()])  # wrong[w] = -1: unused
        ranks = target_ranks(logits_of, hidden, positions, targets)  # [L+1, m, 2]: true, wrong word
        control = (word_topk(ranks[:, keep, 1], word_of[keep]) if keep.any()
                   else np.full((len(TOP_K), last + 1), math.nan))
        out = dict(zip((f"transcript_top{k}" for k in TOP_K), word_topk(ranks[..., 0], word_of)))
        out |= dict(zip((f"transcript_wrong_top{k}" for k in TOP_K), control))
        return out | {"transcript_n_words": np.float32(len(torch.unique(word_of)))}

