"""Layer-update synchrony (P2 Fig. 5): do the speech and text states of aligned pairs move the same way from one
layer to the next?

Inputs are aligned rows xs, ys `[layers, n, d]` (`dtw.aligned_pairs`, `baselines.truth_aligned_pairs`) at the
analysed layers. The update of analysed layer k is `h[k] - h[k - 1]`, the step from the previous analysed layer
(one block when every layer is stored); the first analysed layer has none (NaN). Mean pairing commutes with the
difference (a mean of updates is the update of the means), so the updates of the rows are the rows of the updates.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .baselines import derangement
from .geometry import upcast


def layer_updates(h: Tensor) -> Tensor:
    """`h[k] - h[k - 1]` for k = 1..layers-1, `[layers - 1, n, d]` for h `[layers, n, d]`."""
    h = upcast(h)
    return h[1:] - h[:-1]


def update_synchrony(xs: Tensor, ys: Tensor) -> Tensor:
    """Mean over the n pairs of cos(speech update, text update), `[layers]` (NaN at the first layer and for n = 0)."""
    cos = torch.nn.functional.cosine_similarity(layer_updates(xs), layer_updates(ys), dim=-1).mean(-1)
    return torch.cat([cos.new_full((1,), float("nan")), cos])


def shuffled_synchrony(xs: Tensor, ys: Tensor, generator: torch.Generator) -> Tensor:
    """The shuffled-pair control of `update_synchrony`, `[layers]`: the same speech rows with the item's text rows
    permuted by a seeded derangement (no row keeps its partner; one permutation for all layers). NaN for n < 2."""
    n = ys.shape[1]
    if n < 2:
        return upcast(xs).new_full((xs.shape[0],), float("nan"))
    return update_synchrony(xs, ys[:, derangement(n, generator).to(ys.device)])
