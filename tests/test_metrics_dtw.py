"""DTW paths against a plain dynamic program, batched against per item, and aligned pairs against a loop."""
import numpy as np
import pytest
import torch
from test_metrics_alignment import repeated_blocks

from modgap.metrics import aligned_pairs, dtw_path, dtw_paths, token_similarity


def allowed(i: int, j: int, ts: int, tt: int, band: float | None) -> bool:
    """The documented band rule, in plain Python."""
    return band is None or 2 * abs(i * (tt - 1) - j * (ts - 1)) <= max(2 * band * (min(ts, tt) - 1), ts + tt - 2)


def reference_dtw(sim: np.ndarray, band: float | None) -> list[tuple[int, int]]:
    """O(Ts * Tt) dynamic program in float32; predecessor ties: diagonal, then (i-1, j), then (i, j-1)."""
    ts, tt = sim.shape
    score: dict[tuple[int, int], np.float32] = {}
    came_from: dict[tuple[int, int], tuple[int, int]] = {}
    for i in range(ts):
        for j in range(tt):
            if not allowed(i, j, ts, tt, band):
                continue
            if i == j == 0:
                score[0, 0] = np.float32(sim[0, 0])
                continue
            best = None
            for before in ((i - 1, j - 1), (i - 1, j), (i, j - 1)):
                if before in score and (best is None or score[before] > score[best]):
                    best = before
            if best is not None:
                score[i, j] = np.float32(sim[i, j]) + score[best]
                came_from[i, j] = best
    path = [(ts - 1, tt - 1)]
    while path[-1] != (0, 0):
        path.append(came_from[path[-1]])
    return path[::-1]


def random_sim(g: torch.Generator, ts: int, tt: int, ties: bool) -> torch.Tensor:
    return torch.randint(0, 3, (ts, tt), generator=g).float() if ties else torch.randn(ts, tt, generator=g)


def check_steps(path: torch.Tensor, ts: int, tt: int) -> None:
    assert path[0].tolist() == [0, 0] and path[-1].tolist() == [ts - 1, tt - 1]
    assert {tuple(step) for step in path.diff(dim=0).tolist()} <= {(1, 0), (0, 1), (1, 1)}


@pytest.mark.parametrize("band", [None, 0, 0.5, 1.3, 4])
@pytest.mark.parametrize("ties", [True, False])
def test_dtw_path_matches_reference(band, ties):
    g = torch.Generator().manual_seed(17)
    edges = [(1, 1), (7, 1), (1, 7), (12, 2), (2, 12)]
    for ts, tt in edges + [torch.randint(1, 13, (2,), generator=g).tolist() for _ in range(40)]:
        sim = random_sim(g, ts, tt, ties)
        path = dtw_path(sim, band)
        assert path.dtype == torch.long
        check_steps(path, ts, tt)
        assert [tuple(cell) for cell in path.tolist()] == reference_dtw(sim.numpy(), band)
        assert all(allowed(i, j, ts, tt, band) for i, j in path.tolist())


def test_band_narrows_the_path_and_wide_band_equals_none():
    g = torch.Generator().manual_seed(5)
    sim = torch.randn(40, 8, generator=g)
    sim[:20, -1] = 10  # lures an unbanded path far off the diagonal
    free, banded = dtw_path(sim), dtw_path(sim, band=3)
    assert torch.equal(free, dtw_path(sim, band=1000))
    assert not all(allowed(i, j, 40, 8, 3) for i, j in free.tolist())
    assert all(allowed(i, j, 40, 8, 3) for i, j in banded.tolist())


@pytest.mark.parametrize("band", [None, 2])
def test_dtw_paths_batched_equals_per_item(band):
    g = torch.Generator().manual_seed(11)
    lengths_s = torch.randint(1, 25, (24,), generator=g)
    lengths_t = torch.randint(1, 9, (24,), generator=g)
    padding = torch.tensor([float("nan"), float("inf"), float("-inf"), 1e6])
    sims = padding[torch.randint(0, 4, (24, 30, 10), generator=g)]  # padding must not matter
    for b, (ts, tt) in enumerate(zip(lengths_s.tolist(), lengths_t.tolist())):
        sims[b, :ts, :tt] = random_sim(g, ts, tt, ties=b % 2 == 0)
    paths = dtw_paths(sims, lengths_s, lengths_t, band)
    assert len(paths) == 24
    for b, (ts, tt) in enumerate(zip(lengths_s.tolist(), lengths_t.tolist())):
        assert torch.equal(paths[b], dtw_path(sims[b, :ts, :tt], band))


@pytest.mark.parametrize("band", [None, 0, 1.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtw_paths_repeated_shapes_match_reference(band, dtype):
    """Items of equal shapes, adjacent, strided and scattered in the batch (each run is copied at once), in a
    non-contiguous batch with garbage padding, against the plain dynamic program."""
    g = torch.Generator().manual_seed(23)
    shapes = [(9, 4), (4, 9), (6, 6), (1, 5), (7, 1)]
    pick = [0, 0, 0, 1, 2, 1, 2, 1, 3, 0, 4, 4, 2, 3, 0, 1]
    sims = torch.full((len(pick), 11, 10), float("nan"), dtype=dtype).transpose(1, 2).contiguous().transpose(1, 2)
    for b, shape in enumerate(pick):
        ts, tt = shapes[shape]
        sims[b, :ts, :tt] = random_sim(g, ts, tt, ties=b % 3 == 0).to(dtype)
    lengths_s, lengths_t = zip(*(shapes[shape] for shape in pick))
    paths = dtw_paths(sims, lengths_s, lengths_t, band)
    for b, (ts, tt) in enumerate(zip(lengths_s, lengths_t)):
        sim = sims[b, :ts, :tt].float().numpy()
        assert [tuple(cell) for cell in paths[b].tolist()] == reference_dtw(sim, band)


def test_dtw_paths_rejects_bad_arguments():
    sims = torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="lengths"):
        dtw_paths(sims, [5, 6], [4, 4])
    with pytest.raises(ValueError, match="lengths"):
        dtw_paths(sims, [5, 0], [4, 4])
    with pytest.raises(ValueError, match="2 matrices"):
        dtw_paths(sims, [5], [4])
    with pytest.raises(ValueError, match="band"):
        dtw_paths(sims, [5, 5], [4, 4], band=-1)


@pytest.mark.parametrize("seed", range(3))
def test_known_answer_dtw_maps_each_position_to_its_token(seed):
    case = repeated_blocks(seed)
    A = token_similarity(case.hs, case.ht, "cos")
    expected = torch.stack((torch.arange(len(case.owner)), case.owner), 1)
    for layer in range(len(A)):
        assert torch.equal(dtw_path(A[layer]), expected)


def test_aligned_pairs_match_loop():
    g = torch.Generator().manual_seed(2)
    hs, ht = torch.randn(3, 20, 5, generator=g).half(), torch.randn(3, 7, 5, generator=g).half()
    path = dtw_path(torch.randn(20, 7, generator=g))
    xs, ys = aligned_pairs(hs, ht, path)
    assert xs.shape == ht.shape and xs.dtype == torch.float32 and torch.equal(ys, ht.float())
    for j in range(7):
        rows = [i for i, jj in path.tolist() if jj == j]
        np.testing.assert_allclose(xs[:, j].numpy(), hs[:, rows].float().mean(1).numpy(), rtol=1e-6)
    xs, ys = aligned_pairs(hs, ht, path, reduce="none")
    assert xs.shape == ys.shape == (3, len(path), 5)
    for k, (i, j) in enumerate(path.tolist()):
        assert torch.equal(xs[:, k], hs[:, i].float()) and torch.equal(ys[:, k], ht[:, j].float())
    with pytest.raises(ValueError, match="'sum'"):
        aligned_pairs(hs, ht, path, reduce="sum")
