"""Linear CKA (P2 cross-layer CKA) against slow numpy references and constructed answers."""
import numpy as np
import pytest
import torch

from modgap.metrics.cka import (
    CKAAccumulator,
    MinibatchCKA,
    cka_accumulator,
    cka_readouts,
    cross_layer_cka,
    linear_cka,
    matrix_agreement,
    weighted_cka,
)


def ref_hsic(K: np.ndarray, L: np.ndarray, unbiased: bool) -> float:
    """Biased: tr(K H L H) / (n-1)^2. Unbiased: Song et al. (2012) on Grams with the diagonal zeroed by a loop."""
    n = len(K)
    if not unbiased:
        H = np.eye(n) - np.ones((n, n)) / n
        return np.trace(K @ H @ L @ H) / (n - 1) ** 2
    Kt, Lt = K.copy(), L.copy()
    for i in range(n):
        Kt[i, i] = Lt[i, i] = 0.0
    one = np.ones(n)
    bracket = (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
               - 2 / (n - 2) * (one @ Kt @ Lt @ one))
    return bracket / (n * (n - 3))


def ref_cka(x, y, unbiased: bool) -> float:
    """CKA from uncentred linear Grams, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    K, L = x @ x.T, y @ y.T
    return ref_hsic(K, L, unbiased) / np.sqrt(ref_hsic(K, K, unbiased) * ref_hsic(L, L, unbiased))


def related(L: int, M: int, n: int, d_x: int, d_y: int, seed: int = 0, offset: float = 3.0):
    """Speech-like xs `[L, n, d_x]` and text-like ys `[M, n, d_y]` sharing a latent, with a mean offset."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g)
    xs = torch.randn(L, n, d_x, generator=g) + z @ torch.randn(L, 4, d_x, generator=g) + offset
    ys = torch.randn(M, n, d_y, generator=g) * 2 + z @ torch.randn(M, 4, d_y, generator=g) - offset
    return xs, ys


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("n,d_x,d_y", [(9, 20, 7), (60, 5, 12)])
def test_linear_cka_matches_reference(unbiased, n, d_x, d_y):
    xs, ys = related(1, 1, n, d_x, d_y)
    assert linear_cka(xs[0], ys[0], unbiased) == pytest.approx(ref_cka(xs[0], ys[0], unbiased), abs=1e-5)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_is_one_under_orthogonal_map_scale_and_shift(unbiased):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 8, generator=g)
    r, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    y = x @ r * 3.7 + torch.randn(8, generator=g) * 10
    assert abs(r @ r.T - torch.eye(8)).max() < 1e-5
    assert linear_cka(x, y, unbiased) == pytest.approx(1.0, abs=1e-5)


def test_independent_representations_have_small_cka():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4000, 4, generator=g) + 50, torch.randn(4000, 3, generator=g) - 20
    assert linear_cka(x, y) < 0.01  # ~sqrt(d_x d_y) / n for n >> d; large if the offsets were not centred away
    assert abs(linear_cka(x, y, unbiased=True)) < 0.01
    assert linear_cka(x, x[:, :2] + 0.1 * y[:, :2]) > 0.4


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("n,d", [(12, 40), (150, 10)])  # n < d and n > d
@pytest.mark.parametrize("form", ["gram", "feature", "auto"])
def test_cross_layer_cka_matches_per_pair_loop(unbiased, n, d, form):
    xs, ys = related(3, 4, n, d, d + 3, seed=3)
    got = cross_layer_cka(xs, ys, unbiased, form)
    assert got.shape == (3, 4) and got.dtype == torch.float32
    loop = torch.tensor([[linear_cka(x, y, unbiased, form) for y in ys] for x in xs])
    ref = np.array([[ref_cka(x, y, unbiased) for y in ys] for x in xs])
    assert (got - loop).abs().max() <= 1e-5
    assert np.abs(got.double().numpy() - ref).max() <= 1e-5


def test_cross_layer_cka_keeps_float64_and_rejects_bad_input():
    xs, ys = related(2, 2, 6, 3, 3)
    assert cross_layer_cka(xs.double(), ys.double()).dtype == torch.float64
    assert cross_layer_cka(xs.half(), ys.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="at least 4"):
        cross_layer_cka(xs[:, :3], ys[:, :3], unbiased=True)
    with pytest.raises(ValueError, match="same n"):
        cross_layer_cka(xs, ys[:, :5])
    with pytest.raises(ValueError, match="unknown form"):
        cross_layer_cka(xs, ys, form="dual")


def random_splits(n: int, seed: int) -> list[torch.Tensor]:
    """Consecutive index batches of random sizes 1..40 covering range(n), with empty batches first and third."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.cat([torch.tensor([0]), torch.randint(1, 41, (n,), generator=g).cumsum(0)])
    cuts = cuts[cuts < n].tolist() + [n]
    splits = [torch.arange(a, b) for a, b in zip(cuts, cuts[1:])]
    return [splits[0][:0], splits[0], splits[0][:0], *splits[1:]]


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_accumulator_equals_one_shot_on_concatenation(unbiased, dtype):
    xs, ys = related(3, 2, 700, 6, 9, seed=4, offset=500.0)  # offset: the sums must not cancel
    xs, ys = xs.to(dtype), ys.to(dtype)
    acc = CKAAccumulator(3, 2, 6, 9, unbiased, buffer_rows=50)
    splits = random_splits(700, seed=5)
    for i, rows in enumerate(splits):
        acc.update(xs[:, rows], ys[:, rows])
        if i == len(splits) // 2:
            half = cross_layer_cka(xs[:, : rows[-1] + 1].double(), ys[:, : rows[-1] + 1].double(), unbiased)
            assert (acc.result() - half).abs().max() < 1e-9
    full = cross_layer_cka(xs.double(), ys.double(), unbiased)
    assert acc.n == 700
    assert (acc.result() - full).abs().max() < 1e-9
    assert (acc.result(not unbiased) - cross_layer_cka(xs.double(), ys.double(), not unbiased)).abs().max() < 1e-9


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("block_bytes", [1, 8 * 21 * 37 * 5, 2**26])  # one row, 5 rows, all rows per block
def test_weighted_cka_equals_the_numpy_reference_on_repeated_rows(unbiased, block_bytes):
    xs, ys = related(3, 4, 37, 6, 5, seed=7)
    xs, ys = xs.double(), ys.double()
    weights = torch.randint(0, 4, (3, 37), generator=torch.Generator().manual_seed(8))
    weights[0] = 1
    got = weighted_cka(xs, ys, weights, unbiased, block_bytes)
    assert got.shape == (3, 3, 4) and got.dtype == torch.float64
    for r in range(3):
        rows = torch.arange(37).repeat_interleave(weights[r]).numpy()
        want = [[ref_cka(xs[l, rows], ys[m, rows], unbiased) for m in range(4)] for l in range(3)]
        np.testing.assert_allclose(got[r].numpy(), want, rtol=0, atol=1e-9)


def test_weighted_cka_rejects_bad_weights():
    xs, ys = related(2, 2, 5, 3, 3)
    with pytest.raises(ValueError, match="weights"):
        weighted_cka(xs, ys, torch.ones(5))
    with pytest.raises(ValueError, match="at least 4"):
        weighted_cka(xs, ys, torch.tensor([[1, 1, 1, 0, 0]]), unbiased=True)


def test_float32_products_stay_within_float32_rounding_and_leave_float64_inputs_exact():
    xs, ys = related(3, 2, 700, 6, 9, seed=4, offset=500.0)
    want = cross_layer_cka(xs.double(), ys.double())
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.float64, 1e-9)):
        acc = CKAAccumulator(3, 2, 6, 9, buffer_rows=50, product_dtype=torch.float32)
        for rows in random_splits(700, seed=5):
            acc.update(xs[:, rows].to(dtype), ys[:, rows].to(dtype))
        assert (acc.result() - want).abs().max() < tolerance


def test_accumulator_rejects_bad_shapes_and_too_few_items():
    acc = CKAAccumulator(2, 3, 4, 5, unbiased=True)
    with pytest.raises(ValueError, match="d_x, d_y"):
        acc.update(torch.zeros(2, 1, 5), torch.zeros(3, 1, 5))
    with pytest.raises(ValueError, match="layers"):
        acc.update(torch.zeros(1, 1, 4), torch.zeros(3, 1, 5))
    acc.update(torch.randn(2, 3, 4), torch.randn(3, 3, 5))
    with pytest.raises(ValueError, match="at least 4"):
        acc.result()


def test_minibatch_single_batch_equals_unbiased_one_shot():
    xs, ys = related(3, 4, 300, 8, 5, seed=6)
    mb = MinibatchCKA(3, 4, batch_size=300)
    for rows in random_splits(300, seed=7):
        mb.update(xs[:, rows], ys[:, rows])
    assert mb.batches == 1
    assert (mb.result() - cross_layer_cka(xs.double(), ys.double(), unbiased=True)).abs().max() < 1e-6


def test_minibatch_result_scores_held_rows_without_consuming_them():
    xs, ys = related(2, 2, 250, 8, 5, seed=8)
    mb = MinibatchCKA(2, 2, batch_size=100)
    mb.update(xs[:, :150], ys[:, :150])
    first = mb.result()
    assert mb.batches == 1 and mb.result().equal(first)
    mb.update(xs[:, 150:], ys[:, 150:])
    assert mb.batches == 2 and not mb.result().equal(first)


def test_minibatch_many_batches_close_to_full_value():
    """Each batch's unbiased HSIC estimates the population HSIC, so on n = 8000 pairs in 16 batches of 500 the
    minibatch CKA and the one-shot CKA differ by sampling noise only (<= 0.002 over 5 seeds): tolerance 0.02. The biased
    minibatch estimator is inflated by finite-batch bias (CKA of independent layers ~ d / batch)."""
    xs, ys = related(3, 3, 8000, 6, 6, seed=9)
    full = cross_layer_cka(xs.double(), ys.double(), unbiased=True)
    mb = MinibatchCKA(3, 3, batch_size=500)
    for rows in torch.arange(8000).split(333):
        mb.update(xs[:, rows], ys[:, rows])
    assert mb.batches == 16
    assert (mb.result() - full).abs().max() < 0.02


def test_accumulator_factory_modes():
    assert isinstance(cka_accumulator(3, 3, 8, 8, True), CKAAccumulator)
    assert isinstance(cka_accumulator(3, 3, 8, 8, True, max_bytes=1000), MinibatchCKA)
    assert isinstance(cka_accumulator(3, 3, 8, 8, False, mode="exact", max_bytes=1000), CKAAccumulator)
    assert isinstance(cka_accumulator(3, 3, 8, 8, False, mode="minibatch"), MinibatchCKA)
    assert CKAAccumulator.nbytes(33, 33, 512, 512) > 33 * 33 * 512 * 512 * 8
    with pytest.raises(ValueError, match="unknown mode"):
        cka_accumulator(3, 3, 8, 8, False, mode="fast")


def test_cka_readouts_on_a_known_band():
    m = torch.full((4, 6), 0.3, dtype=torch.float64)
    m[0, 0] = 0.9  # no band: width 1
    m[1, 1:5] = torch.tensor([0.951, 1.0, 0.96, 0.94])  # band of 3 around 2; 0.94 < 0.95 outside
    m[2, 3:6] = torch.tensor([0.5, 0.49, 0.476])  # band of 3 around 3
    m[3] = torch.tensor([-0.2, -0.01, -0.0104, -0.3, -0.05, -0.0106])  # all negative: threshold -0.0105
    best, width = cka_readouts(m)
    assert best.tolist() == [0, 2, 3, 1] and width.tolist() == [1, 3, 3, 2]
    assert best.dtype == width.dtype == torch.long
    assert cka_readouts(m, tau=0.5)[1].tolist() == [1, 4, 6, 3]


def test_matrix_agreement():
    g = torch.Generator().manual_seed(10)
    a, b = torch.rand(5, 5, generator=g), torch.rand(5, 5, generator=g)
    assert matrix_agreement(a, b) == pytest.approx(np.corrcoef(a.ravel().numpy(), b.ravel().numpy())[0, 1], abs=1e-9)
    assert matrix_agreement(a, 2 * a + 1) == pytest.approx(1.0)
    assert matrix_agreement(a, -a) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        matrix_agreement(a, b[:4])
