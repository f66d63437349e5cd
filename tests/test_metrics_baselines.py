"""Path baselines, hit rates and lift, min-cost DTW and true-word pairs, each against a slow reference or a
constructed case with a known answer."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch

from modgap.metrics.baselines import (
    cosine_cost, derangement, expected_random_hit_rate, hit_rate, lift, min_cost_dtw_path, min_cost_dtw_paths,
    path_baseline_columns, position_times_ms, proportional_pairs, proportional_path, random_path, truth_aligned_pairs, truth_pairs,
    word_index_pairs,
)
from modgap.metrics.dtw import aligned_pairs
from modgap.metrics.geometry import token_similarity
from modgap.metrics.alignment import alignment_path


def spans_of(lengths: list[int], ms: float = 40.0, gap: int = 0) -> torch.Tensor:
    """Word spans `[W, 2]` in ms for words of `lengths` positions, `gap` silent positions before each word."""
    spans, at = [], 0
    for n in lengths:
        at += gap
        spans.append((at * ms, (at + n) * ms))
        at += n
    return torch.tensor(spans, dtype=torch.float32)


def test_position_times_are_40_ms_slots():
    t = position_times_ms(3)
    assert torch.equal(t, torch.tensor([[0.0, 40.0], [40.0, 80.0], [80.0, 120.0]], dtype=torch.float64))


def test_proportional_path_is_the_slice_centre_rule():
    assert proportional_path(4, 10).tolist() == [1, 3, 6, 8]
    for tt, ts in itertools.product(range(1, 13), range(1, 30)):
        expected = [math.floor(Fraction(2 * j + 1, 2) * Fraction(ts, tt)) for j in range(tt)]
        path = proportional_path(tt, ts)
        assert path.tolist() == expected
        assert path.min() >= 0 and path.max() < ts
        if tt <= ts:
            assert len(set(path.tolist())) == tt
    with pytest.raises(ValueError):
        proportional_path(0, 5)


def test_random_path_is_seeded_uniform_and_in_range():
    a = random_path(7, 13, torch.Generator().manual_seed(3), n_draws=5)
    b = random_path(7, 13, torch.Generator().manual_seed(3), n_draws=5)
    assert torch.equal(a, b) and a.shape == (5, 7) and a.min() >= 0 and a.max() < 13
    assert not torch.equal(a, random_path(7, 13, torch.Generator().manual_seed(4), n_draws=5))
    counts = torch.bincount(random_path(1, 4, torch.Generator().manual_seed(0), 40000).flatten(), minlength=4)
    assert (counts - 10000).abs().max() < 400  # ~4.6 SD of a binomial(40000, 1/4)


def test_empirical_random_hit_rate_equals_the_analytic_mean_span_fraction():
    spans = spans_of([3, 9, 1, 5, 12], gap=2)  # words with silence between: Ts covers more than the words
    words = torch.tensor([0, 1, 1, -1, 2, 3, 4, 4])  # a word split in two tokens, a token without a word
    ts = 45
    times = position_times_ms(ts)
    expected = expected_random_hit_rate(times, words, spans).item()
    with_word = [w for w in words.tolist() if w >= 0]
    by_hand = sum((spans[w, 1] - spans[w, 0]).item() / 40 / ts for w in with_word) / len(with_word)
    assert expected == pytest.approx(by_hand)
    paths = random_path(len(words), ts, torch.Generator().manual_seed(0), n_draws=20000)
    rates = hit_rate(paths, times, words, spans)
    assert rates.shape == (20000,)
    se = rates.std().item() / math.sqrt(len(rates))
    assert abs(rates.mean().item() - expected) < 4 * se


def test_hit_rate_matches_a_slow_loop_with_the_centre_rule():
    g = torch.Generator().manual_seed(1)
    spans = spans_of([2, 4, 1, 3], gap=1)
    words = torch.tensor([0, -1, 1, 2, 3, 3])
    times = position_times_ms(15)
    path = torch.randint(0, 15, (6, 6), generator=g)
    slow = []
    for row in path.tolist():
        hits = [spans[w, 0] <= 40 * i + 20 < spans[w, 1] for i, w in zip(row, words.tolist()) if w >= 0]
        slow.append(sum(map(bool, hits)) / len(hits))
    torch.testing.assert_close(hit_rate(path, times, words, spans), torch.tensor(slow, dtype=torch.float64))


def test_planted_alignment_gives_argmax_hits_and_lift_over_the_proportional_path():
    g = torch.Generator().manual_seed(0)
    lengths = [2, 11, 3, 1, 9, 2, 14, 4]  # unequal words: timing alone misplaces tokens
    spans = spans_of(lengths, gap=1)
    ts = int(spans[-1, 1].item() // 40) + 2
    tt, d, layers = len(lengths), 32, 3
    ht = torch.randn(layers, tt, d, generator=g)
    hs = torch.randn(layers, ts, d, generator=g)  # silence: unrelated vectors
    for w, (start, end) in enumerate((spans / 40).long().tolist()):
        hs[:, start:end] = ht[:, w : w + 1] + 0.05 * torch.randn(layers, end - start, d, generator=g)
    words = torch.arange(tt)
    times = position_times_ms(ts)
    learned = hit_rate(alignment_path(token_similarity(hs, ht, "cos"), "cos"), times, words, spans)
    proportional = hit_rate(proportional_path(tt, ts), times, words, spans)
    assert torch.equal(learned, torch.ones(layers))
    assert proportional.item() < 0.75
    assert (lift(learned, proportional) > 0.25).all()
    columns = path_baseline_columns(learned, times, words, spans)
    assert torch.equal(columns["gt_hit_proportional"], proportional.expand(layers))
    assert torch.equal(columns["gt_lift_argmax"], learned - proportional)
    torch.testing.assert_close(columns["gt_hit_random"],
                               expected_random_hit_rate(times, words, spans).to(learned).expand(layers))
    assert (columns["gt_hit_random"] < proportional).all()  # silence between words: random does worse still


def test_proportional_path_misses_predictably_on_unequal_words():
    # words of 2, 10, 2, 10 positions (Ts = 24); slice centres fall at positions 3, 9, 15, 21
    spans, words, times = spans_of([2, 10, 2, 10]), torch.arange(4), position_times_ms(24)
    path = proportional_path(4, 24)
    assert path.tolist() == [3, 9, 15, 21]  # in words 1, 1, 3, 3: the short words are missed
    assert hit_rate(path, times, words, spans).item() == 0.5
    equal = spans_of([6, 6, 6, 6])  # equal words: every slice centre inside its word
    assert hit_rate(path, times, words, equal).item() == 1.0


def slow_min_cost_dtw(cost: list[list[float]], band: float | None = None) -> tuple[float, list[tuple[int, int]]]:
    """Plain DP of classical DTW (min summed cost, steps (1,0),(0,1),(1,1)), ties: diagonal, up, left; the band by
    dtw.py's stated rule."""
    ts, tt = len(cost), len(cost[0])
    limit = max(2 * band * (min(ts, tt) - 1), ts + tt - 2) if band is not None else math.inf

    def allowed(i: int, j: int) -> bool:
        return 2 * abs(i * (tt - 1) - j * (ts - 1)) <= limit

    inf = math.inf
    D = [[inf] * tt for _ in range(ts)]
    for i in range(ts):
        for j in range(tt):
            if not allowed(i, j):
                continue
            if i == 0 and j == 0:
                D[i][j] = cost[0][0]
                continue
            prev = min(D[i - 1][j - 1] if i and j else inf, D[i - 1][j] if i else inf, D[i][j - 1] if j else inf)
            D[i][j] = cost[i][j] + prev
    path, (i, j) = [(ts - 1, tt - 1)], (ts - 1, tt - 1)
    while (i, j) != (0, 0):
        options = [(D[i - 1][j - 1] if i and j else inf, (i - 1, j - 1)), (D[i - 1][j] if i else inf, (i - 1, j)),
                   (D[i][j - 1] if j else inf, (i, j - 1))]
        best = min(v for v, _ in options)
        i, j = next(c for v, c in options if v == best)
        path.append((i, j))
    return D[-1][-1], path[::-1]


def all_monotone_paths(ts: int, tt: int):
    """Every path from (0, 0) to (ts-1, tt-1) with steps (1,0), (0,1), (1,1)."""
    def walk(i, j):
        if (i, j) == (ts - 1, tt - 1):
            yield [(i, j)]
            return
        for di, dj in ((1, 1), (1, 0), (0, 1)):
            if i + di < ts and j + dj < tt:
                for rest in walk(i + di, j + dj):
                    yield [(i, j)] + rest
    yield from walk(0, 0)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (6, 1), (4, 3), (9, 4), (17, 6), (5, 8)])
@pytest.mark.parametrize("band", [None, 0, 2.5])
def test_min_cost_dtw_equals_a_slow_dp(shape, band):
    cost = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64)
    path = min_cost_dtw_path(cost, band)
    total, slow_path = slow_min_cost_dtw(cost.tolist(), band)
    assert [tuple(p) for p in path.tolist()] == slow_path
    assert cost[path[:, 0], path[:, 1]].sum().item() == pytest.approx(total, rel=1e-12)


def test_min_cost_dtw_is_the_least_cost_of_all_monotone_paths_and_batches():
    g = torch.Generator().manual_seed(5)
    costs = torch.rand(3, 5, 4, generator=g, dtype=torch.float64)
    sizes = [(5, 4), (3, 4), (4, 2)]
    batched = min_cost_dtw_paths(costs, [s for s, _ in sizes], [t for _, t in sizes])
    for c, (ts, tt), path in zip(costs, sizes, batched):
        c = c[:ts, :tt]
        least = min(sum(c[i, j].item() for i, j in p) for p in all_monotone_paths(ts, tt))
        assert c[path[:, 0], path[:, 1]].sum().item() == pytest.approx(least, rel=1e-12)
        assert torch.equal(path, min_cost_dtw_path(c))


def test_cosine_cost_path_on_a_planted_alignment_follows_the_words():
    g = torch.Generator().manual_seed(2)
    lengths = [3, 7, 2, 6]
    ht = torch.randn(4, 16, generator=g)
    hs = torch.cat([ht[w].expand(n, 16) for w, n in enumerate(lengths)]) + 0.01 * torch.randn(18, 16, generator=g)
    path = min_cost_dtw_path(cosine_cost(hs, ht))
    owner = torch.repeat_interleave(torch.arange(4), torch.tensor(lengths))
    assert torch.equal(owner[path[:, 0]], path[:, 1])  # every cell pairs a position with its own word's token


def test_truth_pairs_take_every_position_of_the_true_word():
    spans = torch.tensor([[0.0, 80.0], [100.0, 220.0], [305.0, 315.0]])  # the last word holds no position centre
    words = torch.tensor([0, -1, 1, 1, 2])
    times = position_times_ms(8)  # centres 20, 60, 100, 140, 180, 220, 260, 300
    pairs = truth_pairs(words, times, spans)
    assert pairs.tolist() == [[0, 0], [1, 0], [2, 2], [3, 2], [4, 2], [2, 3], [3, 3], [4, 3]]
    speech_words = torch.tensor([0, 0, 1, 1, 1, -1, -1, -1])
    assert torch.equal(word_index_pairs(words, speech_words), pairs)


def test_truth_aligned_pairs_drop_uncovered_tokens_and_match_aligned_pairs():
    g = torch.Generator().manual_seed(0)
    hs, ht = torch.randn(2, 8, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    pairs = torch.tensor([[0, 0], [1, 0], [2, 2], [3, 2], [4, 2], [2, 3], [3, 3], [4, 3]])
    xs, ys = truth_aligned_pairs(hs, ht, pairs)
    assert xs.shape == ys.shape == (2, 3, 4)
    torch.testing.assert_close(xs[:, 0], hs[:, :2].mean(1))
    torch.testing.assert_close(xs[:, 1], hs[:, 2:5].mean(1))
    assert torch.equal(ys, ht[:, [0, 2, 3]])
    xs, ys = truth_aligned_pairs(hs, ht, pairs, "none")
    ref = aligned_pairs(hs, ht, pairs, "none")
    assert torch.equal(xs, ref[0]) and torch.equal(ys, ref[1])


def test_proportional_pairs_have_equal_counts():
    s, t = proportional_pairs(6, 20, 3)
    assert s.tolist() == proportional_path(6, 20).tolist() and t.tolist() == [0, 0, 1, 1, 2, 2]


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in range(2, 9):
        for seed in range(20):
            sigma = derangement(n, torch.Generator().manual_seed(seed))
            assert sorted(sigma.tolist()) == list(range(n)) and all(s != a for a, s in enumerate(sigma.tolist()))
    same = [derangement(10, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(*same)
    with pytest.raises(ValueError):
        derangement(1, torch.Generator())
