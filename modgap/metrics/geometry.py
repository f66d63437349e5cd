"""Geometry of speech (S) and text (T) hidden states: pooled and token-level similarity, token norms (P1, P2).

Every function takes hidden states as `[..., layers, T, d]` tensors on any device and computes in float32 at least
(float16 and bfloat16 inputs are upcast; float64 stays float64).
"""
from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("cos", "l2")
ZERO_NORM = 1e-12  # norms below this count as zero vectors (cosine 0), as in torch.nn.functional.normalize


def upcast(x: Tensor) -> Tensor:
    """`x` as float32, or float64 if it already is (integers, float16 and bfloat16 become float32)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_metric(metric: str) -> None:
    """ValueError unless `metric` is one of METRICS."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def pooled_similarity(hs: Tensor, ht: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine and L2 distance of the mean-pooled states, `[layers]` each (P1, coarse).

    hs `[layers, Ts, d]` (speech), ht `[layers, Tt, d]` (text); leading batch dims broadcast. The cosine is 0 where
    a pooled vector is zero.
    """
    ms, mt = upcast(hs).mean(-2), upcast(ht).mean(-2)
    norms = ms.norm(dim=-1) * mt.norm(dim=-1)
    dot = (ms * mt).sum(-1)
    cos = torch.where(norms > 0, dot / norms, torch.zeros_like(dot))
    return cos, (ms - mt).norm(dim=-1)


def token_similarity(hs: Tensor, ht: Tensor, metric: str) -> Tensor:
    """Token similarity matrices `A[l, i, j] = f(hs[l, i], ht[l, j])`, `[layers, Ts, Tt]` (P1, fine).

    hs `[layers, Ts, d]`, ht `[layers, Tt, d]`; leading batch dims broadcast (`[B, layers, Ts, d]` gives
    `[B, layers, Ts, Tt]`). metric "cos": cosine similarity, 0 for a zero vector; "l2": Euclidean distance, by
    `|s|^2 + |t|^2 - 2 s.t` (as torch.cdist does for large inputs): near-identical vectors get about
    `sqrt(eps) * |s|` rather than 0.
    """
    check_metric(metric)
    hs, ht = upcast(hs), upcast(ht)
    dot = hs @ ht.transpose(-1, -2)  # only the product and the norms read the states; the rest is [Ts, Tt]
    norm_s, norm_t = hs.norm(dim=-1).unsqueeze(-1), ht.norm(dim=-1).unsqueeze(-2)
    if metric == "cos":
        return dot / (norm_s.clamp_min(ZERO_NORM) * norm_t.clamp_min(ZERO_NORM))
    return (norm_s.square() + norm_t.square() - 2 * dot).clamp_min(0).sqrt()


def token_norms(h: Tensor) -> Tensor:
    """Mean L2 norm of the token vectors of `h` `[layers, T, d]`, `[layers]` (P2)."""
    return upcast(h).norm(dim=-1).mean(-1)
