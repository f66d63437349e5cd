"""P1 alignment paths: a constructed case with a known answer, and each statistic against scipy or a loop."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from modgap.metrics import (
    alignment_path,
    alignment_path_score,
    bottom_k_tokens,
    path_consistency,
    path_monotonicity,
    path_values,
    token_similarity,
)


@dataclass
class RepeatedBlocks:
    """Speech made of text token j's vector repeated k_j times plus noise, one clean copy (the anchor) per block."""

    hs: torch.Tensor  # [layers, Ts, d]
    ht: torch.Tensor  # [layers, Tt, d]
    owner: torch.Tensor  # [Ts]: the text token each speech position repeats
    block_start: torch.Tensor  # [Tt]
    repeats: torch.Tensor  # [Tt]
    anchor: torch.Tensor  # [Tt]: the noise-free position of each block


def repeated_blocks(seed: int, layers: int = 3, n_tokens: int = 8, d: int = 64, noise: float = 0.1) -> RepeatedBlocks:
    """Text vectors form a centred simplex (pairwise cosine -1/(Tt-1)), so off-block similarities are negative."""
    g = torch.Generator().manual_seed(seed)
    repeats = torch.randint(2, 6, (n_tokens,), generator=g)
    owner = torch.repeat_interleave(torch.arange(n_tokens), repeats)
    block_start = repeats.cumsum(0) - repeats
    anchor = block_start + (torch.rand(n_tokens, generator=g) * repeats).long()
    basis = torch.linalg.qr(torch.randn(layers, d, n_tokens, generator=g)).Q  # orthonormal columns per layer
    ht = (basis - basis.mean(-1, keepdim=True)).transpose(1, 2) * d**0.5
    hs = ht[:, owner] + noise * torch.randn(layers, len(owner), d, generator=g)
    hs[:, anchor] = ht
    return RepeatedBlocks(hs, ht, owner, block_start, repeats, anchor)


@pytest.mark.parametrize("seed", range(3))
def test_known_answer_paths(seed):
    case = repeated_blocks(seed)
    expected = case.anchor.expand(3, -1)
    A_cos, A_l2 = token_similarity(case.hs, case.ht, "cos"), token_similarity(case.hs, case.ht, "l2")
    path_cos, path_l2 = alignment_path(A_cos, "cos"), alignment_path(A_l2, "l2")
    assert torch.equal(path_cos, expected) and torch.equal(path_l2, expected)
    assert path_monotonicity(path_cos).tolist() == [1, 1, 1]
    assert path_consistency(path_cos, path_l2).tolist() == [1, 1, 1]
    assert alignment_path_score(A_cos, path_cos).item() == pytest.approx(1, abs=1e-5)
    assert alignment_path_score(A_l2, path_l2).item() == pytest.approx(0, abs=1e-2)


def test_alignment_path_ties_take_lowest_index():
    A = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [3.0, 0.0]]])
    assert alignment_path(A, "cos").tolist() == [[1, 0]]
    assert alignment_path(A, "l2").tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="'dot'"):
        alignment_path(A, "dot")


def test_path_values_and_aps_match_loop():
    g = torch.Generator().manual_seed(7)
    A = torch.randn(5, 12, 6, generator=g)
    path = torch.randint(0, 12, (5, 6), generator=g)
    values = path_values(A, path)
    expected = np.array([[A[l, path[l, j], j].item() for j in range(6)] for l in range(5)])
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-6)
    assert alignment_path_score(A, path).item() == pytest.approx(expected[1:].mean(), rel=1e-5)
    assert alignment_path_score(A, path, [0, 3]).item() == pytest.approx(expected[[0, 3]].mean(), rel=1e-5)
    batched = alignment_path_score(torch.stack((A, -A)), torch.stack((path, path)), [2])
    np.testing.assert_allclose(batched.numpy(), [expected[2].mean(), -expected[2].mean()], rtol=1e-5)
    with pytest.raises(ValueError, match="empty layer selection"):
        alignment_path_score(A, path, [])
    with pytest.raises(ValueError, match="empty layer selection"):
        alignment_path_score(A[:1], path[:1])


@pytest.mark.parametrize("n_tokens", [2, 3, 7, 30])
def test_path_monotonicity_matches_scipy(n_tokens):
    g = torch.Generator().manual_seed(n_tokens)
    path = torch.randint(0, 6, (40, n_tokens), generator=g)  # many ties
    path[0] = 4  # constant: NaN
    path[1] = torch.arange(n_tokens).flip(0)  # exactly -1
    expected = [spearmanr(np.arange(n_tokens), row).statistic if len(set(row.tolist())) > 1 else np.nan for row in path]
    np.testing.assert_allclose(path_monotonicity(path).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert path_monotonicity(path)[1].item() == pytest.approx(-1)


def test_path_monotonicity_single_token_is_nan():
    assert torch.isnan(path_monotonicity(torch.tensor([[3], [0]]))).all()


def test_path_consistency():
    path_cos = torch.tensor([[0, 1, 2, 3], [5, 5, 5, 5]])
    path_l2 = torch.tensor([[0, 1, 9, 3], [0, 0, 0, 0]])
    assert path_consistency(path_cos, path_l2).tolist() == [0.75, 0.0]


def test_bottom_k_tokens():
    g = torch.Generator().manual_seed(3)
    values = torch.randint(0, 4, (6, 10), generator=g).float()  # ties: the lower token index first
    expected = np.argsort(values.numpy(), axis=-1, kind="stable")[:, :3]
    assert bottom_k_tokens(values, 3).tolist() == expected.tolist()
    assert bottom_k_tokens(values, 10).shape == (6, 10)
    with pytest.raises(ValueError, match="k=11.*Tt=10"):
        bottom_k_tokens(values, 11)
