"""Layer-update synchrony and its shuffled-pair control on constructed cases with known answers."""
from __future__ import annotations

import math

import numpy as np
import torch

from modgap.metrics.dtw import aligned_pairs, dtw_path
from modgap.metrics.synchrony import shuffled_synchrony, update_synchrony


def test_synchrony_is_one_when_speech_states_are_the_text_states():
    h = torch.randn(5, 7, 12, generator=torch.Generator().manual_seed(0))
    identity = torch.stack([torch.arange(7), torch.arange(7)], 1)
    sync = update_synchrony(*aligned_pairs(h, h, identity))
    assert math.isnan(sync[0]) and sync.shape == (5,)
    torch.testing.assert_close(sync[1:], torch.ones(4))


def test_synchrony_matches_a_slow_loop_over_dtw_pairs():
    g = torch.Generator().manual_seed(1)
    hs, ht = torch.randn(4, 9, 6, generator=g), torch.randn(4, 5, 6, generator=g)
    path = dtw_path(torch.randn(9, 5, generator=g))
    expected = []
    for k in range(1, 4):
        cosines = []
        for j in range(5):
            speech = [i for i, jj in path.tolist() if jj == j]
            u = (hs[k, speech].mean(0) - hs[k - 1, speech].mean(0)).double().numpy()
            v = (ht[k, j] - ht[k - 1, j]).double().numpy()
            cosines.append(u @ v / np.linalg.norm(u) / np.linalg.norm(v))
        expected.append(np.mean(cosines))
    np.testing.assert_allclose(update_synchrony(*aligned_pairs(hs, ht, path))[1:].numpy(), expected, rtol=1e-5)


def test_shuffled_control_of_equicorrelated_updates_is_their_pairwise_cosine():
    """Text updates u_j = sqrt(c) e_0 + sqrt(1 - c) e_{j+1} have cos(u_i, u_j) = c for i != j: every derangement
    gives exactly c, the true pairs 1."""
    n, c = 6, 0.3
    u = torch.zeros(n, n + 1, dtype=torch.float64)
    u[:, 0], u[:, 1:] = math.sqrt(c), math.sqrt(1 - c) * torch.eye(n, dtype=torch.float64)
    ys = torch.stack([torch.zeros_like(u), u])  # layer 0 at the origin: the layer-1 update is u
    for seed in range(5):
        shuffled = shuffled_synchrony(ys, ys, torch.Generator().manual_seed(seed))
        assert math.isclose(shuffled[1].item(), c, rel_tol=1e-12)
    assert math.isclose(update_synchrony(ys, ys)[1].item(), 1.0, rel_tol=1e-12)


def test_shuffled_control_averages_the_off_diagonal_cosines():
    """A uniform derangement sends token i to each j != i with probability 1/(n-1): the control's expectation is the
    mean cosine over all mismatched pairs."""
    g = torch.Generator().manual_seed(2)
    n = 4
    xs, ys = (torch.randn(2, n, 3, generator=g, dtype=torch.float64) for _ in range(2))
    us, ut = (xs[1] - xs[0]).numpy(), (ys[1] - ys[0]).numpy()
    cos = (us / np.linalg.norm(us, axis=1, keepdims=True)) @ (ut / np.linalg.norm(ut, axis=1, keepdims=True)).T
    expected = cos[~np.eye(n, dtype=bool)].mean()
    draws = torch.Generator().manual_seed(3)
    mean = np.mean([shuffled_synchrony(xs, ys, draws)[1].item() for _ in range(4000)])
    assert abs(mean - expected) < 0.02


def test_shuffled_control_is_seeded_and_undefined_for_one_pair():
    xs = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(4))
    a = shuffled_synchrony(xs, xs.flip(1), torch.Generator().manual_seed(7))
    b = shuffled_synchrony(xs, xs.flip(1), torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, equal_nan=True)
    assert torch.isnan(shuffled_synchrony(xs[:, :1], xs[:, :1], torch.Generator())).all()
