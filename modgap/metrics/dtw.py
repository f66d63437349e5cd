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
    each, over all items packed side by side at their own width Tt_b + 1 (no padding to Tt_max) and longest first,
    so that step k only touches the items that still have a diagonal k: its cost grows with the true cells, and
    the number of steps is max(Ts_b + Tt_b) - 1, so pass the longer sequence (speech) as rows. Memory: a float32
    tensor of `(max(Ts_b + Tt_b) + 1) * sum(Tt_b + 1)`. The sums are the same float32 additions in the same order
    as a plain dynamic program, so ties and rounding decide exactly as there. Similarities must be finite (padding
    may hold anything).
    """
    # Hand-written: no installed library does batched, banded, maximum-similarity DTW on the GPU. A speech-row scan
    # (closed form S + cummax(c - S) per row) was measured slower on the CPU (torch's cummax and cumsum along a
    # 41-wide row cost more than the three wavefront ops, and it needs float64 to stay exact); so is the skewed
    # [B, Ts_max + Tt_max, Tt_max] layout of the first version (padding, and a step touching B scattered rows).
    if band is not None and band < 0:
        raise ValueError(f"DTW band must be >= 0, got {band}")
    device = sims.device
    n_s = torch.as_tensor(lengths_s, device=device).long()
    n_t = torch.as_tensor(lengths_t, device=device).long()
    if len(n_s) != len(sims) or len(n_t) != len(sims):
        raise ValueError(f"{len(sims)} matrices but {len(n_s)} speech and {len(n_t)} text lengths")
    if bool((n_s < 1).any() | (n_t < 1).any() | (n_s > sims.shape[1]).any() | (n_t > sims.shape[2]).any()):
        raise ValueError(f"lengths must lie in 1..{tuple(sims.shape[1:])}")
    cells = upcast(sims)
    ls, lt = n_s.tolist(), n_t.tolist()
    # items by decreasing number of diagonals Ts + Tt - 1, equal shapes adjacent (one copy each run), then by index
    order = sorted(range(len(ls)), key=lambda b: (-(ls[b] + lt[b]), ls[b], b))
    widths = np.array([lt[b] + 1 for b in order])
    first_col = np.concatenate(([0], np.cumsum(widths)))  # column of each sorted item's j = -1; the total last
    row = int(first_col[-1])
    n_diagonals = ls[order[0]] + lt[order[0]] - 1
    # scores[k + 2, first_col + 1 + j]: cell (k - j, j) of an item (anti-diagonal k = i + j a row), then the best
    # path sum ending there. Everything else is -inf, but for each item's virtual start (-1, -1) at [0, first_col],
    # which scores 0: the -inf column j = -1 separates neighbouring items, and cells outside an item's own cells
    # (i < 0, i >= Ts, outside the band) stay -inf through the steps (-inf + finite), so no padding is ever read.
    scores = _empty((n_diagonals + 2, row), cells).fill_(float("-inf"))
    scores[0, torch.as_tensor(first_col[:-1], device=device)] = 0
    start = 0
    while start < len(order):  # copy each run of equal shapes, skewed: cell (i, j) to row i + j + 2
        b, end = order[start], start + 1
        while end < len(order) and (ls[order[end]], lt[order[end]]) == (ls[b], lt[b]):
            end += 1
        items, ts, tt = order[start:end], ls[b], lt[b]
        stride = items[1] - items[0] if len(items) > 1 else 1
        if stride > 0 and items == list(range(b, b + stride * len(items), stride)):
            source = cells[b : items[-1] + 1 : stride, :ts, :tt]
        else:
            source = cells[torch.tensor(items, device=device), :ts, :tt]
        skewed = scores.as_strided((len(items), ts, tt), (tt + 1, row, row + 1),
                                   scores.storage_offset() + 2 * row + int(first_col[start]) + 1)
        if band is None:
            skewed.copy_(source)
        else:  # cells outside the band stay -inf
            first, last = band_rows(torch.arange(tt, device=device), n_s[b], n_t[b], band)
            i = torch.arange(ts, device=device)[:, None]
            torch.where((i >= first) & (i <= last), source, source.new_tensor(float("-inf")), out=skewed)
        start = end
    # step k updates the items with at least k diagonals: a prefix of the columns
    n_items = np.searchsorted(-np.array([ls[b] + lt[b] - 1 for b in order]), -np.arange(n_diagonals), "right")
    active = first_col[n_items].tolist()
    best = cells.new_empty(row)
    for k in range(n_diagonals):  # to each cell of row k + 2 add the best of (i-1, j-1), (i-1, j), (i, j-1)
        end = active[k]
        torch.maximum(scores[k, : end - 1], scores[k + 1, 1:end], out=best[: end - 1])
        scores[k + 2, 1:end] += torch.maximum(best[: end - 1], scores[k + 1, : end - 1], out=best[: end - 1])
    paths = backtrack(scores.cpu().numpy(), first_col[:-1], np.array(ls)[order], np.array(lt)[order])
    paths = torch.from_numpy(paths[0]).to(device).split(paths[1].tolist())
    out: list[Tensor] = [paths[0]] * len(order)
    for position, b in enumerate(order):
        out[b] = paths[position]
    return out


def _empty(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor of `like`'s dtype and device; on the CPU allocated by numpy, which asks the kernel
    for huge pages on large arrays: filling and walking 100 MB then costs a quarter of torch's own allocation."""
    if like.device.type == "cpu":
        return torch.from_numpy(np.empty(shape, torch.empty(0, dtype=like.dtype).numpy().dtype))
    return like.new_empty(shape)


def backtrack(
    scores: np.ndarray, first_col: np.ndarray, n_s: np.ndarray, n_t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Paths walked back from every item's end cell at once through the forward `scores` (`dtw_paths`' layout,
    items' j = -1 columns `first_col`): at each cell to the predecessor with the highest score, ties going to the
    diagonal, then (i-1, j), then (i, j-1). Returns all paths concatenated, `[sum K, 2]` rows (i, j) from (0, 0)
    to the end, and their lengths K [B]."""
    flat, row = scores.reshape(-1), scores.shape[1]
    start = 2 * row + first_col + 1  # cell (0, 0) of every item in `flat`
    at = start + (n_s + n_t - 2) * row + n_t - 1  # the end cells
    walked = [at]
    while (moving := at != start).any():
        diagonal, up, left = flat[at - 2 * row - 1], flat[at - row], flat[at - row - 1]
        to_diagonal = (diagonal >= up) & (diagonal >= left)
        to_up = ~to_diagonal & (up >= left)
        at = at - moving * np.where(to_diagonal, 2 * row + 1, np.where(to_up, row, row + 1))
        walked.append(at)
    offsets = np.stack(walked[::-1], 1) - start[:, None]  # [B, steps]: 0s, then (i + j) * row + j from (0, 0)
    lengths = (offsets != 0).sum(1) + 1
    steps = offsets.shape[1]
    diagonal, j = np.divmod(offsets[np.arange(steps) >= (steps - lengths)[:, None]], row)
    return np.stack((diagonal - j, j), 1), lengths


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
