"""Pooled and token-level similarity against numpy loops."""
import numpy as np
import pytest
import torch

from modgap.metrics import pooled_similarity, token_norms, token_similarity


def states(seed: int, dtype: torch.dtype, layers: int = 3, ts: int = 30, tt: int = 9, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(layers, ts, d, generator=g).to(dtype), torch.randn(layers, tt, d, generator=g).to(dtype))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pooled_similarity_matches_loop(dtype):
    hs, ht = states(0, dtype)
    cos, l2 = pooled_similarity(hs, ht)
    assert cos.dtype == l2.dtype == torch.float32 and cos.shape == (3,)
    s, t = hs.double().numpy(), ht.double().numpy()
    for layer in range(3):
        ms, mt = s[layer].mean(0), t[layer].mean(0)
        assert cos[layer].item() == pytest.approx(cosine(ms, mt), rel=1e-4, abs=1e-6)
        assert l2[layer].item() == pytest.approx(np.linalg.norm(ms - mt), rel=1e-4)


def test_pooled_similarity_of_identical_and_zero_states():
    hs, _ = states(1, torch.float32)
    cos, l2 = pooled_similarity(hs, hs)
    np.testing.assert_allclose(cos.numpy(), 1, rtol=1e-6)
    np.testing.assert_allclose(l2.numpy(), 0, atol=1e-6)
    cos, l2 = pooled_similarity(torch.zeros_like(hs), hs)
    assert (cos == 0).all() and (l2 > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("metric", ["cos", "l2"])
def test_token_similarity_matches_loop(dtype, metric):
    hs, ht = states(2, dtype)
    A = token_similarity(hs, ht, metric)
    assert A.shape == (3, 30, 9) and A.dtype == torch.float32
    s, t = hs.double().numpy(), ht.double().numpy()
    expected = np.empty(A.shape)
    for layer in range(3):
        for i in range(30):
            for j in range(9):
                a, b = s[layer, i], t[layer, j]
                expected[layer, i, j] = cosine(a, b) if metric == "cos" else np.linalg.norm(a - b)
    np.testing.assert_allclose(A.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_token_similarity_bounds_identity_and_batch():
    hs, ht = states(3, torch.float32)
    assert (token_similarity(hs, ht, "l2") >= 0).all()
    np.testing.assert_allclose(token_similarity(hs, hs, "cos").diagonal(dim1=-2, dim2=-1).numpy(), 1, rtol=1e-6)
    hs2, ht2 = states(4, torch.float32)
    for metric in ("cos", "l2"):
        batched = token_similarity(torch.stack((hs, hs2)), torch.stack((ht, ht2)), metric)
        one_by_one = torch.stack((token_similarity(hs, ht, metric), token_similarity(hs2, ht2, metric)))
        np.testing.assert_allclose(batched.numpy(), one_by_one.numpy(), rtol=1e-6, atol=1e-6)


def test_token_similarity_unknown_metric():
    hs, ht = states(5, torch.float32)
    with pytest.raises(ValueError, match="'dot'"):
        token_similarity(hs, ht, "dot")


def test_token_norms_matches_loop():
    hs, _ = states(6, torch.float16)
    s = hs.double().numpy()
    expected = [np.mean([np.linalg.norm(v) for v in s[layer]]) for layer in range(3)]
    np.testing.assert_allclose(token_norms(hs).numpy(), expected, rtol=1e-4)
