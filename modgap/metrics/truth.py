"""Ground truth for alignment paths: does a path's speech position fall inside its text token's word? (modgap only)

Inputs shared by every function:
- speech_times_ms `[Ts, 2]`: start and end of each speech position in the recording; its centre is what counts;
- text_words `[Tt]` long: the word index of each text token, -1 for tokens without a word (punctuation, template);
- word_spans_ms `[W, 2]`: true start and end of each word (TTS or forced alignment), a word span being [start, end).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .geometry import upcast


def word_spans_of_tokens(text_words: Tensor, word_spans_ms: Tensor) -> tuple[Tensor, Tensor]:
    """Each text token's word span `[Tt, 2]` (zeros for tokens without a word) and whether it has a word `[Tt]`."""
    has_word = text_words >= 0
    spans = upcast(word_spans_ms)[text_words.clamp(min=0)]
    return spans.masked_fill(~has_word[:, None], 0), has_word


def true_positions(speech_times_ms: Tensor, text_words: Tensor, word_spans_ms: Tensor) -> Tensor:
    """`[Tt, Ts]` bool: whether speech position i's centre lies in text token j's word span (False without a word)."""
    centres = upcast(speech_times_ms).mean(-1)
    spans, has_word = word_spans_of_tokens(text_words, word_spans_ms)
    inside = (centres >= spans[:, :1]) & (centres < spans[:, 1:])
    return inside & has_word[:, None]


def path_truth(
    path_speech_idx: Tensor, path_text_idx: Tensor, speech_times_ms: Tensor, text_words: Tensor, word_spans_ms: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Check N path points (speech position, text token) against the true word spans.

    Returns `(hit [N] bool, miss_ms [N], valid [N] bool)`: valid where the token has a word; hit where the
    position's centre lies in the word span; miss_ms the distance from the centre to the nearest span edge, 0 when
    hit, NaN where not valid (hit is False there). Works for argmax paths (points `(path[l, j], j)`) and DTW paths.
    """
    centres = upcast(speech_times_ms).mean(-1)[path_speech_idx]
    spans, has_word = word_spans_of_tokens(text_words, word_spans_ms)
    start, end = spans[path_text_idx].unbind(-1)
    valid = has_word[path_text_idx]
    hit = valid & (centres >= start) & (centres < end)
    miss_ms = torch.clamp(torch.maximum(start - centres, centres - end), min=0)  # 0 inside the span
    return hit, miss_ms.masked_fill(~valid, float("nan")), valid


def truth_rates(hit: Tensor, miss_ms: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Hit rate over valid points and median miss distance over missed points, along the last dim.

    The median averages the two middle values for an even count (as numpy); NaN where nothing is valid or missed.
    """
    hit_rate = hit.sum(-1) / valid.sum(-1)
    missed = miss_ms.masked_fill(hit | ~valid, float("nan"))
    return hit_rate.to(miss_ms.dtype), torch.nanquantile(missed, 0.5, dim=-1)


def argmax_path_truth(
    path: Tensor, speech_times_ms: Tensor, text_words: Tensor, word_spans_ms: Tensor
) -> tuple[Tensor, Tensor]:
    """Hit rate and median miss in ms `[layers]` each, of P1 argmax paths `[layers, Tt]` (points `(path[l, j], j)`)."""
    tokens = torch.arange(path.shape[-1], device=path.device).expand_as(path)
    return truth_rates(*path_truth(path, tokens, speech_times_ms, text_words, word_spans_ms))


def dtw_path_truth(
    path: Tensor, speech_times_ms: Tensor, text_words: Tensor, word_spans_ms: Tensor
) -> tuple[float, float]:
    """Hit rate and median miss in ms of a DTW path `[K, 2]`, over all its cells (a token may have several)."""
    points = path_truth(path[:, 0], path[:, 1], speech_times_ms, text_words, word_spans_ms)
    hit_rate, median_miss = truth_rates(*points)
    return hit_rate.item(), median_miss.item()
