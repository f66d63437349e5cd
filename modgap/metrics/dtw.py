"""P2's token alignment: a monotone DTW path through the speech-text similarity matrix, and the aligned pairs.

Written here because no installed library does batched, banded DTW on the GPU with a maximum-similarity objective
(the libraries minimise a cost, one pair of sequences at a time, on the CPU).

Path: cells (i, j) of a `[Ts, Tt]` similarity matrix from (0, 0) to (Ts-1, Tt-1) with steps (1, 0), (0, 1) and
(1, 1), maximising the summed similarity of the visited cells (each counted once). Ties between predecessors are
broken in a fixed order: the diagonal (i-1, j-1) first, then (i-1, j), then (i, j-1).

Note that the objective rewards length where similarities are positive: replacing a diagonal step by two single
steps adds one cell, so with all-positive cosines the path takes no diagonal steps; with all-negative scores (negated
L2 distances) it favours diagonal steps instead.

Band (Sakoe-Chiba, optional): with `short = min(Ts, Tt)`, cell (i, j) is allowed iff
    2 * |i * (Tt - 1) - j * (Ts - 1)|  <=  max(2 * band * (short - 1), Ts + Tt - 2),
that is, for Ts >= Tt, `|i - j * r| <= max(band, (r + 1) / 2)` with `r = (Ts - 1) / (Tt - 1)`: `band` is a
half-width in positions of the longer sequence around the straight line from (0, 0) to (Ts-1, Tt-1) (symmetrically
when Tt > Ts). The band is widened to (r + 1) / 2, the least width that always leaves a path; narrower bands would
leave no step from one column's rows to the next.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .geometry import upcast


def band_rows(j: Tensor, n_s: Tensor, n_t: Tensor, band: float) -> tuple[Tensor, Tensor]:
    """First and last row i that the band (module docstring) allows in column j of matrices `[n_s, n_t]`; broadcast."""
    limit = torch.maximum(2 * band * (torch.minimum(n_s, n_t) - 1).double(), (n_s + n_t - 2).double())
    half = limit.floor().long() // 2  # allowed: |i * (n_t - 1) - centre| <= half, in integers
    centre, slope = j * (n_s - 1), (n_t - 1).clamp(min=1)
    first, last = -((half - centre) // slope), (centre + half) // slope
    return first, torch.where(n_t > 1, last, n_s)  # a single column is all allowed


def dtw_path(sim: Tensor, band: float | None = None) -> Tensor:
    """The DTW path through one similarity matrix `[Ts, Tt]`, `[K, 2]` long rows (i, j) from (0, 0) to (Ts-1, Tt-1)."""
    return dtw_paths(sim.unsqueeze(0), [sim.shape[0]], [sim.shape[1]], band)[0]


def dtw_paths(
    sims: Tensor, lengths_s: Sequence[int] | Tensor, lengths_t: Sequence[int] | Tensor, band: float | None = None
) -> list[Tensor]:
    """DTW paths of B padded similarity matrices `[B, Ts_max, Tt_max]` with true sizes `lengths_s`, `lengths_t` [B].

    Returns one `[K_b, 2]` long path per item on the input's device, equal to `dtw_path(sims[b, :Ts_b, :Tt_b])`.
    The forward pass runs over the whole batch as a wavefront over the anti-diagonals i + j = k, one vector step
    each, stored by text index j: its cost grows with Tt_max, so pass the longer sequence (speech) as rows. Memory:
    a float32 tensor of `B * (Ts_max + Tt_max + 1) * (Tt_max + 1)`. Similarities must be finite (padding may hold
    anything).
    """
    if band is not None and band < 0:
        raise ValueError(f"DTW band must be >= 0, got {band}")
    device = sims.device
    n_s = torch.as_tensor(lengths_s, device=device).long()
    n_t = torch.as_tensor(lengths_t, device=device).long()
    if len(n_s) != len(sims) or len(n_t) != len(sims):
        raise ValueError(f"{len(sims)} matrices but {len(n_s)} speech and {len(n_t)} text lengths")
    if bool((n_s < 1).any() | (n_t < 1).any() | (n_s > sims.shape[1]).any() | (n_t > sims.shape[2]).any()):
        raise ValueError(f"lengths must lie in 1..{tuple(sims.shape[1:])}")
    n_rows, width = int(n_s.max()), int(n_t.max())
    cells = upcast(sims[:, :n_rows, :width])  # cells past an item's lengths never lead into its own cells
    # scores[b, k + 2, j + 1]: first cell (k - j, j) of item b, the anti-diagonal k = i + j being one row, then the
    # best path sum ending there; rows k = -2, -1 and column j = -1 are -inf but for the virtual start cell (-1, -1),
    # which scores 0. Writing the cells through a strided view of `scores` skews them in one local pass.
    n_diagonals = n_rows + width - 1
    scores = cells.new_full((len(sims), n_diagonals + 2, width + 1), float("-inf"))
    scores[:, 0, 0] = 0
    row, col = scores.stride(1), scores.stride(2)
    skewed = scores[:, 2:, 1:].as_strided(cells.shape, (scores.stride(0), row, row + col))  # [b, i, j] -> [b, i + j, j]
    skewed.copy_(cells)
    if band is not None:  # per column j, the first and last anti-diagonal k = i + j of its allowed rows
        j = torch.arange(width, device=device)
        first, last = (rows + j for rows in band_rows(j, n_s[:, None], n_t[:, None], band))
    best = cells.new_empty(len(sims), width)
    for k in range(n_diagonals):  # to each cell of row k + 2 add the best of (i-1, j-1), (i-1, j), (i, j-1)
        torch.maximum(scores[:, k, :-1], scores[:, k + 1, 1:], out=best)
        scores[:, k + 2, 1:] += torch.maximum(best, scores[:, k + 1, :-1], out=best)
        if band is not None:
            scores[:, k + 2, 1:].masked_fill_((first > k) | (last < k), float("-inf"))
    return backtrack(scores.cpu().numpy(), n_s.cpu().numpy(), n_t.cpu().numpy(), device)


def backtrack(scores: np.ndarray, n_s: np.ndarray, n_t: np.ndarray, device: torch.device) -> list[Tensor]:
    """Paths walked back from every item's end cell at once through the forward `scores`: at each cell to the
    predecessor with the highest score, ties going to the diagonal, then (i-1, j), then (i, j-1)."""
    flat, row, plane = scores.reshape(-1), scores.shape[2], scores[0].size
    start = np.arange(len(scores)) * plane + 2 * row + 1  # cell (0, 0) of every item in `flat`
    at = start + (n_s + n_t - 2) * row + n_t - 1  # the end cells
    walked = [at]
    while (moving := at != start).any():
        diagonal, up, left = flat[at - 2 * row - 1], flat[at - row], flat[at - row - 1]
        to_diagonal = (diagonal >= up) & (diagonal >= left)
        to_up = ~to_diagonal & (up >= left)
        at = at - moving * np.where(to_diagonal, 2 * row + 1, np.where(to_up, row, row + 1))
        walked.append(at)
    offsets = np.stack(walked, 1) - start[:, None]  # [B, steps]: (i + j) * row + j, from the end back, then 0s
    diagonal, j = np.divmod(offsets, row)
    cells = np.stack((diagonal - j, j), 2)
    lengths = (offsets != 0).sum(1) + 1
    return [torch.from_numpy(cells[b, : lengths[b]][::-1].copy()).to(device) for b in range(len(cells))]


def aligned_pairs(hs: Tensor, ht: Tensor, path: Tensor, reduce: str = "mean") -> tuple[Tensor, Tensor]:
    """Speech and text vectors paired along a DTW path `[K, 2]`, for hs `[layers, Ts, d]`, ht `[layers, Tt, d]`.

    reduce "mean": per text token j the mean of the speech positions the path maps to j, `([layers, Tt, d], ht)`;
    "none": every path cell its own pair, `([layers, K, d], [layers, K, d])`.
    """
    hs, ht = upcast(hs), upcast(ht)
    speech, text = path.to(hs.device).unbind(1)
    if reduce == "none":
        return hs[:, speech], ht[:, text]
    if reduce != "mean":
        raise ValueError(f"unknown reduce {reduce!r}; expected 'mean' or 'none'")
    sums = hs.new_zeros(ht.shape[:-1] + hs.shape[-1:]).index_add_(1, text, hs[:, speech])
    counts = torch.bincount(text, minlength=ht.shape[1]).to(hs.dtype)
    return sums / counts[:, None], ht
