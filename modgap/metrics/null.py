"""Controls for cross-layer CKA (METHODS.md, "Controls"): a permutation null (speech items paired with other items'
text), bootstrap agreement over items of P2's readouts (best-match text layer, band), and readout stability across
alignment configurations.

Shapes: a CKA matrix is `[L, M]` (speech layer l, text layer m); an item's states are hs `[L, Ts, d_x]`,
ht `[M, Tt, d_y]`; an item's aligned rows are xs `[L, k, d_x]`, ys `[M, k, d_y]` (from `dtw.aligned_pairs`).
Readouts are `cka.cka_readouts`' (best = argmax over text layers; band = text layers within tau of the row max).
The null's accumulators are `cka.cka_accumulator`'s unless a factory `(L, M, d_x, d_y) -> accumulator` is given.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from .baselines import derangement, proportional_pairs
from .cka import CKAAccumulator, MinibatchCKA, cka_accumulator, cka_readouts, matrix_agreement, weighted_cka

Accumulator = CKAAccumulator | MinibatchCKA
AccumulatorFactory = Callable[[int, int, int, int], Accumulator]


def accumulator_result(acc: Accumulator, unbiased: bool) -> Tensor:
    """`[L, M]` CKA of an accumulator under one estimator (an exact accumulator holds both; a minibatch one its own)."""
    return acc.result(unbiased) if isinstance(acc, CKAAccumulator) else acc.result()


# --- permutation null ------------------------------------------------------------------------------------------------
@dataclass
class NullResult:
    """nulls `[P, L, M]`: CKA of each permutation; matched `[L, M]` or None: the same proportional pairing with every
    item's own text (what the null is compared with when the pairing rule itself is under suspicion); partners
    `[P, n_items]` long: the text item paired with each speech item, per permutation."""

    nulls: Tensor
    matched: Tensor | None
    partners: Tensor

    @property
    def mean(self) -> Tensor:
        """Null mean per cell, `[L, M]`."""
        return self.nulls.mean(0)

    @property
    def std(self) -> Tensor:
        """Null standard deviation per cell (n - 1 denominator), `[L, M]`."""
        return self.nulls.std(0)

    def contrast(self, cka: Tensor) -> dict[str, Tensor]:
        """`null_contrast` of an observed CKA matrix `[L, M]` against this null."""
        return null_contrast(cka, self.nulls)


def null_contrast(cka: Tensor, nulls: Tensor) -> dict[str, Tensor]:
    """Observed CKA `[L, M]` against null draws `[P, L, M]`: null_mean, null_std (n - 1), excess = cka - null_mean
    and z = excess / null_std (inf where the null has no spread), each `[L, M]` float64."""
    cka, nulls = cka.double(), nulls.double().to(cka.device)
    mean, std = nulls.mean(0), nulls.std(0)
    excess = cka - mean
    return {"null_mean": mean, "null_std": std, "excess": excess, "z": excess / std}


class CKAPermutationNull:
    """Streamed permutation null of cross-layer CKA: `.update(hs, ht)` item by item, `.result()` a `NullResult`.

    Pairing (no alignment needed, so any speech item can meet any text): speech item a contributes k_a pairs
    (`n_pairs`, default its own Tt, the count of P2's mean-reduced DTW pairs), speech positions
    `proportional_path(k_a, Ts_a)` with text tokens `proportional_path(k_a, Tt_b)` of its partner b (repeats where
    Tt_b < k_a): each speech item weighs in the null as in the observed CKA.
    Permutation: items are taken in blocks of `block` consecutive items; per permutation each block gets a seeded
    uniform derangement (no item meets its own text). A last block of a single item is paired with a uniform
    random item of the block before. Memory: one block of items (speech rows k_a, full text) plus one accumulator per
    permutation (`CKAAccumulator.nbytes` each when exact; bounded by a batch when minibatch), not O(items).
    Deterministic given `seed` and the order of the items.
    """

    def __init__(self, n_perm: int = 20, seed: int = 0, block: int = 32, unbiased: bool = False,
                 matched: bool = True, make_accumulator: AccumulatorFactory | None = None,
                 device: torch.device | str | None = None) -> None:
        if n_perm < 2 or block < 2:
            raise ValueError(f"need n_perm >= 2 and block >= 2, got {n_perm} and {block}")
        self.n_perm, self.block, self.unbiased, self.with_matched = n_perm, block, unbiased, matched
        self._make = make_accumulator or partial(cka_accumulator, unbiased=unbiased, device=device)
        self._gen = torch.Generator().manual_seed(seed)
        self._accs: list[Accumulator] = []
        self._matched: Accumulator | None = None
        self._held: list[tuple[int, Tensor, Tensor]] = []  # (global index, speech rows [L, k, d_x], ht [M, Tt, d_y])
        self._previous: list[tuple[int, Tensor, Tensor]] = []
        self._partners: list[list[int]] = [[] for _ in range(n_perm)]
        self.n_items = 0

    def update(self, hs: Tensor, ht: Tensor, n_pairs: int | None = None) -> None:
        """Add one item: hs `[L, Ts, d_x]`, ht `[M, Tt, d_y]`, and the number of pairs it contributes."""
        k = ht.shape[1] if n_pairs is None else int(n_pairs)
        if not self._accs:
            shape = (hs.shape[0], ht.shape[0], hs.shape[-1], ht.shape[-1])
            self._accs = [self._make(*shape) for _ in range(self.n_perm)]
            self._matched = self._make(*shape) if self.with_matched else None
        speech, text = proportional_pairs(k, hs.shape[1], ht.shape[1])
        rows = hs[:, speech.to(hs.device)]
        if self._matched is not None:
            self._matched.update(rows, ht[:, text.to(ht.device)])
        self._held.append((self.n_items, rows, ht))
        self.n_items += 1
        if len(self._held) == self.block:
            self._flush()

    def _flush(self) -> None:
        """Pair the held block under every permutation, then keep it as the previous block."""
        held = self._held
        for p, acc in enumerate(self._accs):
            if len(held) >= 2:
                partners = [held[b] for b in derangement(len(held), self._gen).tolist()]
            else:
                partners = [self._previous[int(torch.randint(len(self._previous), (1,), generator=self._gen))]]
            for (_, rows, _), (b, _, ht) in zip(held, partners):
                text = proportional_pairs(rows.shape[1], 1, ht.shape[1])[1]
                acc.update(rows, ht[:, text.to(ht.device)])
                self._partners[p].append(b)
        self._previous, self._held = held, []

    def result(self, unbiased: bool | None = None) -> NullResult:
        """The null so far (pairs any held items first; they then count as a block), under the constructor's
        estimator or, from exact accumulators (which hold both), under `unbiased`."""
        if self.n_items < 2:
            raise ValueError(f"a permutation null needs at least 2 items, got {self.n_items}")
        unbiased = self.unbiased if unbiased is None else unbiased
        if unbiased != self.unbiased and not isinstance(self._accs[0], CKAAccumulator):
            raise ValueError("a minibatch null holds one estimator only: build one null per estimator")
        if self._held:
            self._flush()
        nulls = torch.stack([accumulator_result(a, unbiased).double() for a in self._accs])
        matched = None if self._matched is None else accumulator_result(self._matched, unbiased).double()
        return NullResult(nulls, matched, torch.tensor(self._partners))


# --- readouts: bands, bootstrap agreement, stability ----------------------------------------------------------------
def band_mask(m: Tensor, tau: float = 0.95) -> Tensor:
    """`[..., L, M]` bool: text layers in speech layer l's band, by `cka_readouts`' threshold max - (1 - tau)|max|
    (its row sums are `cka_readouts`' band widths)."""
    top = m.max(-1, keepdim=True).values
    return m >= top - (1 - tau) * top.abs()


def band_jaccard(a: Tensor, b: Tensor) -> Tensor:
    """Jaccard overlap |A & B| / |A | B| of two band masks `[..., L, M]`, per speech layer `[..., L]` (NaN when both
    bands are empty, as for a constant layer)."""
    return (a & b).sum(-1).double() / (a | b).sum(-1).double()


def readout_stability(a: Tensor, b: Tensor, tau: float = 0.95) -> dict[str, float | Tensor]:
    """How much P2's readouts change between two CKA matrices `[L, M]` (e.g. two DTW configurations):
    best_match_agreement (fraction of speech layers with the same best-match text layer), band_jaccard (mean over
    speech layers of the bands' Jaccard overlap; per layer in band_jaccard_per_layer `[L]`) and
    matrix_correlation (`cka.matrix_agreement`, which row and column main effects can keep high while best matches
    disagree)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    per_layer = band_jaccard(band_mask(a, tau), band_mask(b, tau))
    return {"best_match_agreement": (cka_readouts(a, tau)[0] == cka_readouts(b, tau)[0]).double().mean().item(),
            "band_jaccard": per_layer.nanmean().item(), "band_jaccard_per_layer": per_layer,
            "matrix_correlation": matrix_agreement(a, b)}


@dataclass
class BootstrapReadouts:
    """Bootstrap over items of the readouts. full `[L, M]`: CKA of all items; best, width `[L]`: its readouts;
    boot_best, boot_width `[B, L]`: each resample's; best_agreement, width_agreement `[L]`: the fraction of resamples
    with the full data's best match / band width; band_jaccard `[L]`: mean Jaccard of resample and full bands."""

    full: Tensor
    best: Tensor
    width: Tensor
    boot_best: Tensor
    boot_width: Tensor
    best_agreement: Tensor
    width_agreement: Tensor
    band_jaccard: Tensor


def item_cka(items: Sequence[tuple[Tensor, Tensor]], weights: Sequence[int] | Tensor | None = None,
             unbiased: bool = False) -> Tensor:
    """CKA `[L, M]` of the items' aligned rows (xs `[L, k_a, d_x]`, ys `[M, k_a, d_y]` each), item a counted
    weights[a] times (default once): equal to CKA of the rows of a resample with those multiplicities."""
    counts = torch.ones(len(items)) if weights is None else torch.as_tensor(weights)
    return resampled_cka(items, counts[None], unbiased)[0]


def resampled_cka(items: Sequence[tuple[Tensor, Tensor]], weights: Tensor, unbiased: bool = False) -> Tensor:
    """CKA `[R, L, M]` of R resamples of the items (`item_cka`), item a counted weights[r, a] times in resample r
    (weights `[R, items]`): one `cka.weighted_cka` over all the rows."""
    xs, ys = torch.cat([x for x, _ in items], 1), torch.cat([y for _, y in items], 1)
    sizes = torch.tensor([x.shape[1] for x, _ in items])
    return weighted_cka(xs, ys, weights.repeat_interleave(sizes, dim=1), unbiased)


def bootstrap_readouts(items: Sequence[tuple[Tensor, Tensor]], n_boot: int = 200, seed: int = 0, tau: float = 0.95,
                       unbiased: bool = False) -> BootstrapReadouts:
    """Bootstrap agreement over items of the best-match and band readouts.

    `items`: per item its aligned rows (xs `[L, k_a, d_x]`, ys `[M, k_a, d_y]`, as the CKA accumulators got them).
    These rows are the per-item sufficient statistic kept: a resample (n item draws with replacement, seeded
    multinomial multiplicities) weights each item's rows by its multiplicity, so nothing is re-extracted or
    re-aligned; k_a (L + M) d numbers per item. All resamples and the full data share one pass over the rows' Grams
    (`resampled_cka`): cost about (sum k_a)^2 L M per resample.
    """
    if len(items) < 2:
        raise ValueError(f"a bootstrap over items needs at least 2 items, got {len(items)}")
    gen = torch.Generator().manual_seed(seed)
    n = len(items)
    counts = [torch.bincount(torch.randint(n, (n,), generator=gen), minlength=n) for _ in range(n_boot)]
    full, *boots = resampled_cka(items, torch.stack([torch.ones(n, dtype=torch.long), *counts]), unbiased)
    best, width = cka_readouts(full, tau)
    band = band_mask(full, tau)
    stacked = torch.stack(boots)  # [B, L, M]
    boot_best, boot_width = zip(*(cka_readouts(m, tau) for m in stacked))
    boot_best, boot_width = torch.stack(boot_best), torch.stack(boot_width)
    return BootstrapReadouts(full, best, width, boot_best, boot_width,
                             (boot_best == best).double().mean(0), (boot_width == width).double().mean(0),
                             band_jaccard(band_mask(stacked, tau), band).mean(0))
