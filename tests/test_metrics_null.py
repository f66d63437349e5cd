"""CKA permutation null, bootstrap agreement of the readouts and readout stability, checked against a plainly
written HSIC and constructed cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modgap.metrics.baselines import proportional_path
from modgap.metrics.cka import MinibatchCKA, cka_readouts, cross_layer_cka
from modgap.metrics.dtw import aligned_pairs
from modgap.metrics.null import (
    CKAPermutationNull, band_jaccard, band_mask, bootstrap_readouts, item_cka, null_contrast, readout_stability,
)


def slow_cka(x: np.ndarray, y: np.ndarray, unbiased: bool = False) -> float:
    """Linear CKA from the HSIC formulas as written: tr(K H L H) / (n-1)^2, or Song et al.'s unbiased HSIC."""
    n = len(x)
    K, L = x @ x.T, y @ y.T
    if unbiased:
        def hsic(A, B):
            A, B, one = A.copy(), B.copy(), np.ones(n)
            np.fill_diagonal(A, 0)
            np.fill_diagonal(B, 0)
            return (np.trace(A @ B) + (one @ A @ one) * (one @ B @ one) / ((n - 1) * (n - 2))
                    - 2 / (n - 2) * (one @ A @ B @ one)) / (n * (n - 3))
    else:
        H = np.eye(n) - np.ones((n, n)) / n

        def hsic(A, B):
            return np.trace(A @ H @ B @ H) / (n - 1) ** 2
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def slow_cross(xs: torch.Tensor, ys: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    x, y = xs.double().numpy(), ys.double().numpy()
    return torch.tensor([[slow_cka(x[l], y[m], unbiased) for m in range(len(y))] for l in range(len(x))])


def planted_items(n_items: int, seed: int = 0, layers: int = 3, d: int = 6, noise: float = 0.1):
    """Items whose speech is each token's text vector repeated over its word (plus noise). Text layer l is its own
    independent block of features, so speech layer l matches text layer l only. Returns (hs, ht, owner) per item,
    owner `[Ts]` the token each speech position belongs to."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n_items):
        tt = int(torch.randint(4, 9, (1,), generator=g))
        lengths = torch.randint(1, 6, (tt,), generator=g)
        ht = torch.randn(layers, tt, d, generator=g, dtype=torch.float64)
        hs = ht.repeat_interleave(lengths, 1)
        hs = hs + noise * torch.randn(hs.shape, generator=g, dtype=torch.float64)
        items.append((hs, ht, torch.repeat_interleave(torch.arange(tt), lengths)))
    return items


def true_rows(items):
    """Aligned rows of each item under its true pairing (mean of each token's positions)."""
    return [aligned_pairs(hs, ht, torch.stack([torch.arange(len(owner)), owner], 1)) for hs, ht, owner in items]


def run_null(items, **kw) -> CKAPermutationNull:
    null = CKAPermutationNull(**kw)
    for hs, ht, _ in items:
        null.update(hs, ht)
    return null


def test_exact_accumulated_cka_equals_the_plain_hsic_formula():
    g = torch.Generator().manual_seed(0)
    items = [(torch.randn(2, k, 5, generator=g, dtype=torch.float64), torch.randn(3, k, 4, generator=g,
                                                                                    dtype=torch.float64))
             for k in (3, 7, 4, 6)]
    xs, ys = torch.cat([x for x, _ in items], 1), torch.cat([y for _, y in items], 1)
    for unbiased in (False, True):
        torch.testing.assert_close(item_cka(items, unbiased=unbiased), slow_cross(xs, ys, unbiased), rtol=0, atol=1e-9)
    weights = [0, 2, 1, 3]  # a resample: item 1 twice, item 3 three times, item 0 not drawn
    rep = [(x,) * w for (x, _), w in zip(items, weights)]
    xs = torch.cat([x for r in rep for x in r], 1)
    ys = torch.cat([y for (_, y), w in zip(items, weights) for _ in range(w)], 1)
    torch.testing.assert_close(item_cka(items, weights), slow_cross(xs, ys), rtol=0, atol=1e-9)


def test_streamed_null_equals_a_direct_computation_with_the_same_partners():
    items = planted_items(19)  # blocks of 6: 6, 6, 6 and a last block of a single item
    null = run_null(items, n_perm=5, seed=3, block=6).result()
    assert null.nulls.shape == (5, 3, 3) and null.partners.shape == (5, 19)
    for p in range(5):
        xs, ys = [], []
        for a, (hs, ht, _) in enumerate(items):
            b = int(null.partners[p, a])
            k = ht.shape[1]  # default pair count: the speech item's own token count
            xs.append(hs[:, proportional_path(k, hs.shape[1])])
            ys.append(items[b][1][:, proportional_path(k, items[b][1].shape[1])])
        torch.testing.assert_close(null.nulls[p], slow_cross(torch.cat(xs, 1), torch.cat(ys, 1)), rtol=0, atol=1e-9)
    xs = torch.cat([hs[:, proportional_path(ht.shape[1], hs.shape[1])] for hs, ht, _ in items], 1)
    ys = torch.cat([ht for _, ht, _ in items], 1)  # own text, every token once
    torch.testing.assert_close(null.matched, slow_cross(xs, ys), rtol=0, atol=1e-9)


def test_null_partners_are_block_derangements_and_seeded():
    items = planted_items(19)
    a = run_null(items, n_perm=6, seed=1, block=6).result()
    b = run_null(items, n_perm=6, seed=1, block=6).result()
    c = run_null(items, n_perm=6, seed=2, block=6).result()
    assert torch.equal(a.partners, b.partners) and torch.equal(a.nulls, b.nulls)
    assert not torch.equal(a.partners, c.partners)
    index = torch.arange(19)
    assert not (a.partners == index).any()
    assert torch.equal(a.partners[:, :18] // 6, (index[:18] // 6).expand(6, 18))  # within the block
    assert (a.partners[:, 18] // 6 == 2).all()  # the single last item meets the block before
    for p in a.partners[:, :18]:
        assert sorted(p.tolist()) == list(range(18))  # each text used once per full block


def test_planted_alignment_has_a_null_near_zero_and_high_z_on_matched_layers():
    items = planted_items(40, seed=4)
    rows = true_rows(items)
    cka = cross_layer_cka(torch.cat([x for x, _ in rows], 1), torch.cat([y for _, y in rows], 1))
    null = run_null(items, n_perm=20, seed=0, block=10).result()
    out = null_contrast(cka, null.nulls)
    assert out["null_mean"].abs().max() < 0.1
    assert (out["z"].diagonal() > 20).all()
    off = ~torch.eye(3, dtype=torch.bool)
    assert out["z"][off].abs().max() < 5
    # proportional pairing of an item's own text sees part of the alignment: between the null and the true pairing
    assert (null.matched.diagonal() > null.mean.diagonal() + 0.2).all()
    assert (null.matched.diagonal() < cka.double().diagonal() - 0.2).all()
    torch.testing.assert_close(out["excess"], cka.double() - null.mean)
    assert null_contrast(cka, null.nulls)["null_std"].equal(null.std)


def test_null_runs_on_minibatch_accumulators():
    items = planted_items(12)
    null = run_null(items, n_perm=3, block=4, unbiased=True,
                    make_accumulator=lambda L, M, dx, dy: MinibatchCKA(L, M, unbiased=True, batch_size=16)).result()
    assert null.nulls.shape == (3, 3, 3) and torch.isfinite(null.nulls).all()


def test_identical_speech_and_text_give_bootstrap_agreement_one():
    g = torch.Generator().manual_seed(0)
    items = []
    for k in torch.randint(3, 8, (15,), generator=g).tolist():
        x = torch.randn(4, k, 5, generator=g, dtype=torch.float64)
        items.append((x, x.clone()))
    out = bootstrap_readouts(items, n_boot=30, seed=0)
    assert torch.equal(out.best, torch.arange(4)) and torch.equal(out.width, torch.ones(4, dtype=torch.long))
    for agreement in (out.best_agreement, out.width_agreement, out.band_jaccard):
        assert torch.equal(agreement, torch.ones(4, dtype=torch.float64))
    again = bootstrap_readouts(items, n_boot=30, seed=0)
    assert torch.equal(again.boot_best, out.boot_best) and torch.equal(again.boot_width, out.boot_width)


def test_a_near_tie_gives_partial_agreement_that_a_slow_resampling_reproduces():
    g = torch.Generator().manual_seed(1)
    items = []
    for _ in range(12):
        z = torch.randn(1, 5, 3, generator=g, dtype=torch.float64)
        ys = torch.cat([z + 0.7 * torch.randn(z.shape, generator=g, dtype=torch.float64) for _ in range(2)])
        items.append((z, ys))  # speech layer 0 is as close to text layer 0 as to text layer 1
    out = bootstrap_readouts(items, n_boot=40, seed=5, tau=0.999)
    assert 0.05 < out.best_agreement.item() < 0.95
    gen = torch.Generator().manual_seed(5)  # the documented resampling, written out
    best = []
    for _ in range(40):
        draws = torch.randint(12, (12,), generator=gen).tolist()
        xs = torch.cat([items[a][0] for a in draws], 1)
        ys = torch.cat([items[a][1] for a in draws], 1)
        best.append(int(slow_cross(xs, ys)[0].argmax()))
    assert out.boot_best[:, 0].tolist() == best
    assert out.best_agreement.item() == pytest.approx(np.mean(np.array(best) == out.best.item()))


def test_band_mask_rows_sum_to_the_band_widths():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        m = torch.randn(5, 6, generator=g, dtype=torch.float64) * 0.3 + torch.rand(5, 1, generator=g)
        for tau in (0.5, 0.9, 0.95):
            assert torch.equal(band_mask(m, tau).sum(-1), cka_readouts(m, tau)[1])
            assert band_mask(m, tau)[torch.arange(5), cka_readouts(m, tau)[0]].all()


def test_readout_stability_separates_readouts_from_matrix_correlation():
    a = torch.tensor([[10.0, 9.9], [1.0, 0.9]], dtype=torch.float64)  # strong row effects, best match text layer 0
    b = torch.tensor([[9.9, 10.0], [0.9, 1.0]], dtype=torch.float64)  # same rows, best match text layer 1
    out = readout_stability(a, b, tau=0.95)
    assert out["matrix_correlation"] > 0.99
    assert out["best_match_agreement"] == 0.0
    assert out["band_jaccard_per_layer"].tolist() == [1.0, 0.0]  # row 0: both layers in both bands; row 1: disjoint
    assert out["band_jaccard"] == 0.5
    same = readout_stability(a, a)
    assert same["best_match_agreement"] == 1.0 and same["band_jaccard"] == 1.0
    assert same["matrix_correlation"] == pytest.approx(1.0)
    m1 = torch.tensor([[True, True, False]])
    m2 = torch.tensor([[False, True, True]])
    assert band_jaccard(m1, m2).item() == pytest.approx(1 / 3)
