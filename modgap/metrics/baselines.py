"""Controls for alignment paths (METHODS.md, "Controls"): paths that read no states, their ground-truth hit rates,
the learned path's lift over them, classical min-cost DTW next to P2's max-similarity DTW, and true-word pairs.

Conventions (as `truth.py`): speech position k of an item covers `speech_times_ms[k] = [k, k+1) * ms_per_position`
(40 ms for Qwen2-Audio, Qwen2.5-Omni and the lab model; `SpeechLM.position_times_ms` gives it per family, where
the 3 positions of a Granite projector block share the block's 300 ms); a text token j belongs to word
`text_words[j]` (-1: none) with true span `word_spans_ms[w] = [start, end)`. "Inside" is truth.py's: the position's
*centre* lies in the word span. A path is `[..., Tt]` long, one speech index per text token (leading dims: layers,
draws); a pair list is `[K, 2]` long rows (i, j), the format of a DTW path, which `dtw.aligned_pairs` turns into
CKA/moment rows.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .dtw import aligned_pairs, dtw_path, dtw_paths
from .geometry import token_similarity
from .truth import argmax_path_truth, true_positions


def position_times_ms(n_positions: int, ms_per_position: float = 40.0) -> Tensor:
    """`[Ts, 2]` float64 start and end of each speech position: position k covers [k, k+1) * ms_per_position
    (the default rule of `SpeechLM.position_times_ms`, here without a model)."""
    k = torch.arange(n_positions, dtype=torch.float64)[:, None]
    return torch.cat([k, k + 1], 1) * ms_per_position


def proportional_path(n_text: int, n_speech: int) -> Tensor:
    """The time-proportional path `[Tt]` long (reads no states): text token j goes to the speech position that holds
    the centre of the j-th of Tt equal slices of the span, `i_j = floor((j + 1/2) * Ts / Tt)`, computed in integers
    as `(2j + 1) * Ts // (2 Tt)`; always in 0..Ts-1, non-decreasing, and distinct positions when Tt <= Ts."""
    if n_text < 1 or n_speech < 1:
        raise ValueError(f"a path needs Tt >= 1 and Ts >= 1, got Tt={n_text}, Ts={n_speech}")
    j = torch.arange(n_text, dtype=torch.long)
    return (2 * j + 1) * n_speech // (2 * n_text)


def random_path(n_text: int, n_speech: int, generator: torch.Generator, n_draws: int | None = None) -> Tensor:
    """Seeded uniform random path: each text token an independent uniform speech position in 0..Ts-1 (repeats
    allowed, like argmax paths); `[Tt]` long, or `[n_draws, Tt]`. Deterministic given the generator's state."""
    shape = (n_text,) if n_draws is None else (n_draws, n_text)
    return torch.randint(0, n_speech, shape, generator=generator)


def derangement(n: int, generator: torch.Generator) -> Tensor:
    """A uniform random permutation `[n]` long with no fixed point (sigma[a] != a for all a), by rejection from
    `torch.randperm` (about e draws on average); needs n >= 2. Deterministic given the generator's state."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {n}")
    index = torch.arange(n)
    while True:
        sigma = torch.randperm(n, generator=generator)
        if not bool((sigma == index).any()):
            return sigma


def hit_rate(path: Tensor, speech_times_ms: Tensor, text_words: Tensor, word_spans_ms: Tensor) -> Tensor:
    """Fraction of the tokens with a word whose path position lies inside the word span (truth.py's centre rule),
    `[...]` for a path `[..., Tt]` (e.g. `[layers, Tt]` -> `[layers]`); NaN if no token has a word. This is
    `truth.argmax_path_truth`'s hit rate, which accepts any path of one position per token."""
    return argmax_path_truth(path, speech_times_ms, text_words, word_spans_ms)[0]


def expected_random_hit_rate(speech_times_ms: Tensor, text_words: Tensor, word_spans_ms: Tensor) -> Tensor:
    """Analytic hit rate of `random_path` (0-dim float): the mean over tokens with a word of
    #(positions inside the word span) / Ts. NaN if no token has a word."""
    inside = true_positions(speech_times_ms, text_words, word_spans_ms)  # [Tt, Ts]
    has_word = text_words >= 0
    return inside[has_word].double().mean(-1).mean() if bool(has_word.any()) else torch.tensor(float("nan"))


def lift(learned_hits: Tensor, proportional_hits: Tensor) -> Tensor:
    """The learned path's lift over the time-proportional one: learned - proportional hit rate, broadcast (per item
    and layer, e.g. `[items, layers]` - `[items, 1]`). Positive: the states locate words better than timing does."""
    return learned_hits - proportional_hits


def min_cost_dtw_path(cost: Tensor, band: float | None = None) -> Tensor:
    """Classical DTW: the monotone path `[K, 2]` (steps (1,0), (0,1), (1,1), from (0, 0) to (Ts-1, Tt-1), each cell
    counted once) of least summed cost through `cost` `[Ts, Tt]`, optionally in dtw.py's Sakoe-Chiba band.

    `dtw.py` only maximises; minimising sum(cost) is maximising sum(-cost) over the same paths, so this is
    `dtw_path(-cost)` with its tie order (diagonal, then (i-1, j), then (i, j-1)). With a non-negative cost such as
    1 - cos it prefers diagonal steps (fewer cells), where P2's objective on positive cosines takes none."""
    return dtw_path(-cost, band)


def min_cost_dtw_paths(costs: Tensor, lengths_s: Tensor | list[int], lengths_t: Tensor | list[int],
                       band: float | None = None) -> list[Tensor]:
    """`min_cost_dtw_path` of B padded cost matrices `[B, Ts_max, Tt_max]` at once (`dtw.dtw_paths`' batching)."""
    return dtw_paths(-costs, lengths_s, lengths_t, band)


def cosine_cost(hs: Tensor, ht: Tensor) -> Tensor:
    """Classical DTW's cost 1 - cos, `[..., Ts, Tt]`, for hs `[..., Ts, d]`, ht `[..., Tt, d]`."""
    return 1 - token_similarity(hs, ht, "cos")


def pairs_from_mask(mask: Tensor) -> Tensor:
    """Pairs `[K, 2]` long rows (i, j) of the true cells of a `[Tt, Ts]` bool mask, sorted by j then i."""
    j, i = torch.nonzero(mask, as_tuple=True)
    return torch.stack([i, j], 1)


def truth_pairs(text_words: Tensor, speech_times_ms: Tensor, word_spans_ms: Tensor) -> Tensor:
    """True-word pairing `[K, 2]` long rows (i, j): every text token j with every speech position i whose centre
    lies in j's word span (truth.py's rule), sorted by j then i; the format of a DTW path, for `truth_aligned_pairs`.
    Tokens without a word, or whose word holds no position centre (a word shorter than a position), get no pair."""
    return pairs_from_mask(true_positions(speech_times_ms, text_words, word_spans_ms))


def word_index_pairs(text_words: Tensor, speech_words: Tensor) -> Tensor:
    """True-word pairing from word indices on both sides: `[K, 2]` rows (i, j) with speech_words[i] ==
    text_words[j] >= 0, sorted by j then i. For the stores' speech `word` column, which `positions_to_words` fills
    by majority overlap (not the centre rule): the two differ only at word edges and for words under a position."""
    mask = (text_words[:, None] == speech_words[None, :]) & (text_words >= 0)[:, None]
    return pairs_from_mask(mask)


def truth_aligned_pairs(hs: Tensor, ht: Tensor, pairs: Tensor, reduce: str = "mean") -> tuple[Tensor, Tensor]:
    """CKA/moment rows of a pair list that need not cover every text token (`truth_pairs`), by `dtw.aligned_pairs`.

    reduce "mean": per covered token j the mean of its speech positions, `([layers, n, d], [layers, n, d])` with n
    the covered tokens in order (uncovered ones dropped: aligned_pairs would give them 0/0); "none": every pair its
    own row, `[layers, K, d]` each."""
    xs, ys = aligned_pairs(hs, ht, pairs, reduce)
    if reduce == "none":
        return xs, ys
    covered = torch.bincount(pairs[:, 1].to(xs.device), minlength=ht.shape[1]) > 0
    return xs[:, covered], ys[:, covered]


def proportional_pairs(n_pairs: int, n_speech: int, n_text: int) -> tuple[Tensor, Tensor]:
    """Alignment-free pairs of equal count: speech indices `proportional_path(n_pairs, Ts)` and text indices
    `proportional_path(n_pairs, Tt)`, `[n_pairs]` long each (pair k joins the centres of slice k of both spans;
    indices repeat on a side shorter than n_pairs). Used to pair one item's speech with another item's text."""
    return proportional_path(n_pairs, n_speech), proportional_path(n_pairs, n_text)


def path_baseline_columns(learned_hits: Tensor, speech_times_ms: Tensor, text_words: Tensor,
                          word_spans_ms: Tensor, prefix: str = "argmax") -> dict[str, Tensor]:
    """Per-layer columns `[layers]` to sit next to a learned path's hit rate `learned_hits` `[layers]` (the metrics
    table's gt_hit_argmax or gt_hit_dtw) for one item: gt_hit_proportional (`proportional_path`), gt_hit_random
    (`expected_random_hit_rate`, analytic) and gt_lift_<prefix> (learned - proportional). The baselines read no
    states, so they are equal across layers."""
    n_text, n_speech = len(text_words), len(speech_times_ms)
    proportional = hit_rate(proportional_path(n_text, n_speech).to(text_words.device), speech_times_ms, text_words,
                            word_spans_ms).to(learned_hits.dtype)
    random = expected_random_hit_rate(speech_times_ms, text_words, word_spans_ms).to(learned_hits)
    return {"gt_hit_proportional": proportional.expand_as(learned_hits),
            "gt_hit_random": random.expand_as(learned_hits),
            f"gt_lift_{prefix}": lift(learned_hits, proportional)}
