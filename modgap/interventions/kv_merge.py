"""KV token merging (P2 App. C): pure planning and algebra (no model, no I/O).

A merge plan of a speech span of n positions is a boolean vector `links` [n - 1]: links[i] merges position i with
position i + 1, so the merged groups are the runs of linked positions and the number of merges (positions removed)
is `links.sum()`. Each position's group is given by its `anchors` [n] (the first position of its group).

Merging a group of m keys/values into one with a log-count bias (+log m on its attention logit) gives every query
exactly the attention output it gets when each of the m slots holds the group's mean key and mean value
(`merged_attention` vs `group_means`): m identical keys receive m times the mass of one. The model-side merge
(`modgap.models.hooks.merge_kv`) uses that duplicated form, so sequence length, masks, the KV cache the options are
scored from and every attention implementation stay as they are.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def max_merges(n: int, max_ratio: float) -> int:
    """The most merges a span of n positions may take: floor(max_ratio * n), at most n - 1."""
    return max(min(math.floor(max_ratio * n), n - 1), 0)


def similarity_links(keys: Tensor, threshold: float, max_ratio: float) -> Tensor:
    """Links [n - 1] of keys [n, d]: adjacent positions whose key cosine exceeds `threshold`, keeping the
    `max_merges(n, max_ratio)` most similar pairs when more qualify (ties: the earlier pair). Chained links make
    groups longer than two (a run of pairwise similar neighbours)."""
    n = keys.shape[0]
    links = torch.zeros(max(n - 1, 0), dtype=torch.bool)
    if n < 2:
        return links
    k = keys.float()
    cos = torch.nn.functional.cosine_similarity(k[:-1], k[1:], dim=-1).cpu()  # [n - 1]
    candidates = torch.nonzero(cos > threshold).flatten()
    order = sorted(candidates.tolist(), key=lambda i: (-float(cos[i]), i))[: max_merges(n, max_ratio)]
    links[order] = True
    return links


def random_links(n: int, count: int, generator: torch.Generator) -> Tensor:
    """Links [n - 1] with `count` adjacent pairs drawn uniformly without replacement (the control: the same number
    of merges as the similarity plan, at random pairs); ValueError when count exceeds the n - 1 pairs."""
    if count > max(n - 1, 0):
        raise ValueError(f"{count} merges cannot be drawn from a span of {n} positions")
    links = torch.zeros(max(n - 1, 0), dtype=torch.bool)
    links[torch.randperm(max(n - 1, 0), generator=generator)[:count]] = True
    return links


def anchors_of(links: Tensor) -> Tensor:
    """The first position of each position's group, [n] long, for links [n - 1]."""
    starts = torch.cat([torch.ones(1, dtype=torch.bool), ~links.bool().cpu()])  # a position not linked to its left
    return torch.cummax(torch.where(starts, torch.arange(len(starts)), 0), dim=0).values


def group_means(x: Tensor, anchors: Tensor) -> Tensor:
    """x [n, d] with every row replaced by the float32 mean of its group (`anchors` [n]), in x's dtype; a group of
    one keeps its row exactly."""
    a = anchors.to(x.device)
    sums = torch.zeros_like(x, dtype=torch.float32).index_add_(0, a, x.float())
    ones = torch.ones(len(a), dtype=torch.float32, device=x.device)
    counts = torch.zeros(len(x), dtype=torch.float32, device=x.device).index_add_(0, a, ones)
    single = (counts[a] == 1)[:, None]
    return torch.where(single, x, (sums[a] / counts[a][:, None]).to(x.dtype))


def merge_groups(x: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """The merged sequence: one float32 mean row per group, [g, d], and its log-count bias log m, [g]."""
    first = torch.unique(anchors)
    counts = torch.bincount(anchors, minlength=len(anchors))[first].float()
    return group_means(x, anchors).float()[first], counts.log()


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """Softmax attention of queries q [n_q, d] over keys k [n, d] and values v [n, d_v], scaled by 1/sqrt(d), with
    an optional additive logit bias [n] (float64 reference, no mask): [n_q, d_v]."""
    logits = q.double() @ k.double().T / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias.double()
    return torch.softmax(logits, dim=-1) @ v.double()


def realised_ratio(n_merged: int, n_span: int, n_layers: int) -> float:
    """Merges per span position per merged layer: n_merged (summed over layers) / (n_span * n_layers)."""
    return n_merged / (n_span * n_layers) if n_span and n_layers else 0.0
