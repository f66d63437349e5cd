"""P1's token alignment path: per text token the best-matching speech position, its score, shape and stability.

`A` is a token similarity matrix from `token_similarity`, `[layers, Ts, Tt]` (leading batch dims allowed); a path
holds one speech index per text token, `[layers, Tt]` long.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .geometry import check_metric, upcast


def alignment_path(A: Tensor, metric: str) -> Tensor:
    """Per text token j, the speech position `argmax_i A[l, i, j]` (argmin for "l2"), `[layers, Tt]` long.

    No monotonicity is imposed. Ties go to the lowest speech index (torch's argmax/argmin return the first extremum).
    """
    check_metric(metric)
    return A.argmax(-2) if metric == "cos" else A.argmin(-2)


def path_values(A: Tensor, path: Tensor) -> Tensor:
    """`A[l, path[l, j], j]`, `[layers, Tt]`, for A `[layers, Ts, Tt]` and path `[layers, Tt]`."""
    return upcast(A).gather(-2, path.unsqueeze(-2)).squeeze(-2)


def alignment_path_score(A: Tensor, path: Tensor, layers: Sequence[int] | None = None) -> Tensor:
    """P1's APS: mean over the selected layers and over text tokens of the path values, a 0-dim tensor.

    A `[layers, Ts, Tt]`, path `[layers, Tt]`; `layers` indexes dim -3 of A (dim 0 without a batch dim) and
    defaults to 1..L, excluding layer 0 (the input embeddings). With a leading batch dim the result is `[B]`.
    For "l2" paths it is the mean distance (lower is better aligned).
    """
    n_layers = A.shape[-3]
    selected = list(range(1, n_layers)) if layers is None else list(layers)
    if not selected:
        raise ValueError(f"empty layer selection for APS over {n_layers} layers")
    index = torch.as_tensor(selected, device=A.device)
    return path_values(A.index_select(-3, index), path.index_select(-2, index)).mean((-2, -1))


def average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of `x` along the last dim, ties given their average rank (as scipy.stats.rankdata), float."""
    ordered = x.sort(-1).values.contiguous()
    below = torch.searchsorted(ordered, x.contiguous(), side="left")
    up_to = torch.searchsorted(ordered, x.contiguous(), side="right")
    return (below + up_to + 1).to(torch.float32) / 2


def path_monotonicity(path: Tensor) -> Tensor:
    """Spearman correlation between j = 0..Tt-1 and `path[l, j]`, `[layers]`; NaN if Tt < 2 or the path is constant.

    Ranks with ties averaged, as scipy.stats.spearmanr.
    """
    ranks = average_ranks(path)
    ranks = ranks - ranks.mean(-1, keepdim=True)
    order = torch.arange(path.shape[-1], device=path.device, dtype=torch.float32)
    order = order - order.mean()
    spread = (ranks.square().sum(-1) * order.square().sum()).sqrt()
    rho = (ranks * order).sum(-1) / spread
    return torch.where(spread > 0, rho, torch.full_like(rho, float("nan")))


def path_consistency(path_cos: Tensor, path_l2: Tensor) -> Tensor:
    """Fraction of text tokens with the same speech position on both paths `[layers, Tt]`, `[layers]`."""
    return (path_cos == path_l2).to(torch.float32).mean(-1)


def bottom_k_tokens(values: Tensor, k: int) -> Tensor:
    """Indices of the k text tokens with the lowest path values `[layers, Tt]`, `[layers, k]` long, lowest first.

    For cosine pass `path_values` as is; for L2 pass the negated distances (the largest distances are the worst
    aligned). Ties go to the lower token index.
    """
    n_tokens = values.shape[-1]
    if k > n_tokens:
        raise ValueError(f"bottom-k needs k <= Tt, got k={k} with Tt={n_tokens}")
    return values.sort(dim=-1, stable=True).indices[..., :k]
