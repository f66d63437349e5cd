"""Streaming moments and the standardized L2 distance against numpy and explicit loops."""
import numpy as np
import pytest
import torch

from modgap.metrics.moments import MomentAccumulator, standardized_l2


def splits(n: int, seed: int) -> list[np.ndarray]:
    """Consecutive index batches of random sizes 0..30 covering range(n)."""
    rng = np.random.default_rng(seed)
    cuts = np.concatenate([[0], np.cumsum(rng.integers(0, 31, n))])
    cuts = np.append(cuts[cuts < n], n)
    return [np.arange(a, b) for a, b in zip(cuts, cuts[1:])] + [np.arange(0)]


def test_layer_moments_match_numpy_over_random_splits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 500, 7)) * rng.uniform(0.1, 5, size=(3, 1, 7)) + 1e6  # large mean: stable merge
    acc = MomentAccumulator((3, 7))
    for rows in splits(500, seed=1):
        acc.update(torch.from_numpy(x[:, rows]))
    ref = x - 1e6  # exact (Sterbenz); numpy's two-pass moments of it are the reference
    assert acc.n == 500 and acc.mean.shape == acc.std.shape == (3, 7) and acc.mean.dtype == torch.float64
    np.testing.assert_allclose(acc.mean.numpy() - 1e6, ref.mean(1), atol=1e-8)
    np.testing.assert_allclose(acc.std.numpy(), ref.std(1, ddof=1), rtol=1e-8)
    np.testing.assert_allclose(acc.scalar_mean.numpy() - 1e6, ref.mean((1, 2)), atol=1e-8)
    np.testing.assert_allclose(acc.scalar_std.numpy(), ref.reshape(3, -1).std(1, ddof=1), rtol=1e-8)


def test_row_moments_and_edge_cases():
    acc = MomentAccumulator(4)
    assert acc.mean.isnan().all() and acc.std.isnan().all() and acc.scalar_std.isnan()
    acc.update(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float16))
    assert acc.mean.tolist() == [1, 2, 3, 4] and acc.std.isnan().all()
    assert acc.scalar_mean.item() == 2.5 and acc.scalar_std.item() == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    acc.update(torch.tensor([[3.0, 2.0, 1.0, 0.0]]))
    assert acc.std.tolist() == pytest.approx(np.std([[1, 2, 3, 4], [3, 2, 1, 0]], 0, ddof=1).tolist())
    with pytest.raises(ValueError, match="expected a batch"):
        acc.update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="expected a batch"):
        acc.update(torch.zeros(1, 2, 4))


def ref_standardized_l2(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pool both conditions, z-score every dimension (skipping constant ones), mean L2 over pairs, by loops."""
    L, n, d = xs.shape
    out = np.zeros(L)
    for l in range(L):
        pool = np.concatenate([xs[l], ys[l]])
        mu, sd = pool.mean(0), pool.std(0, ddof=1)
        for i in range(n):
            diff = [(xs[l, i, k] - mu[k]) / sd[k] - (ys[l, i, k] - mu[k]) / sd[k] for k in range(d) if sd[k] > 0]
            out[l] += np.sqrt(np.sum(np.square(diff))) / n
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_standardized_l2_matches_loop(dtype):
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(3, 40, 6)) * [1, 10, 0.1, 1, 1, 5] + 3
    ys = xs * 0.8 + rng.normal(size=(3, 40, 6))
    xs[:, :, 4] = ys[:, :, 4] = 7.0  # constant over the pool: std 0, skipped
    xs, ys = (torch.from_numpy(z).to(dtype).double().numpy() for z in (xs, ys))
    acc = MomentAccumulator((3, 6))
    acc.update(torch.from_numpy(np.concatenate([xs, ys], 1)))
    assert (acc.std[:, 4] == 0).all()
    got = standardized_l2(torch.from_numpy(xs).to(dtype), torch.from_numpy(ys).to(dtype), acc.std)
    assert got.shape == (3,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref_standardized_l2(xs, ys), rtol=1e-5)
    assert standardized_l2(torch.ones(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 4)).tolist() == [0, 0]
    with pytest.raises(ValueError, match="std"):
        standardized_l2(torch.from_numpy(xs), torch.from_numpy(ys), acc.std[:2])
