"""Ground-truth checks of alignment paths: a hand case, a numpy loop, and the known-answer construction."""
import math

import numpy as np
import pytest
import torch
from test_metrics_alignment import repeated_blocks

from modgap.metrics import (
    alignment_path,
    argmax_path_truth,
    dtw_path,
    dtw_path_truth,
    path_truth,
    token_similarity,
    true_positions,
)

MS = 40  # per speech position in the known-answer case

# hand case: three 40 ms positions (centres 20, 60, 100 ms), words [0, 40) and [40, 100), a token without a word
SPEECH_MS = torch.tensor([[0.0, 40.0], [40.0, 80.0], [80.0, 120.0]])
TEXT_WORDS = torch.tensor([0, -1, 1])
WORD_SPANS_MS = torch.tensor([[0.0, 40.0], [40.0, 100.0]])


def test_true_positions_hand_case():
    expected = [[True, False, False], [False, False, False], [False, True, False]]  # span ends are exclusive
    assert true_positions(SPEECH_MS, TEXT_WORDS, WORD_SPANS_MS).tolist() == expected


def test_true_positions_match_loop():
    g = torch.Generator().manual_seed(4)
    starts = torch.rand(30, generator=g) * 1000
    speech_ms = torch.stack((starts, starts + 30), 1)
    word_spans_ms = torch.sort(torch.rand(6, 2, generator=g) * 1000, dim=1).values
    text_words = torch.randint(-1, 6, (10,), generator=g)
    centres = speech_ms.double().mean(1).numpy()
    spans = word_spans_ms.double().numpy()
    expected = [[w >= 0 and spans[w, 0] <= c < spans[w, 1] for c in centres] for w in text_words.tolist()]
    assert true_positions(speech_ms, text_words, word_spans_ms).tolist() == expected


def test_path_truth_hand_case():
    hit, miss_ms, valid = path_truth(
        torch.tensor([0, 1, 1, 0, 2]), torch.tensor([0, 0, 1, 2, 2]), SPEECH_MS, TEXT_WORDS, WORD_SPANS_MS
    )
    assert hit.tolist() == [True, False, False, False, False]
    assert valid.tolist() == [True, True, False, True, True]
    np.testing.assert_array_equal(miss_ms.numpy(), [0, 20, np.nan, 20, 0])  # centre 100 sits on the exclusive end


def test_argmax_path_truth_rates_and_nan():
    path = torch.tensor([[0, 2, 1], [1, 0, 0], [0, 0, 1]])  # hits, misses, hits
    hit_rate, median_miss = argmax_path_truth(path, SPEECH_MS, TEXT_WORDS, WORD_SPANS_MS)
    np.testing.assert_allclose(hit_rate.numpy(), [1, 0, 1])
    np.testing.assert_array_equal(median_miss.numpy(), [np.nan, 20, np.nan])  # median over missed points only
    hit_rate, median_miss = argmax_path_truth(path[:, :1], SPEECH_MS, torch.tensor([-1]), WORD_SPANS_MS)
    assert torch.isnan(hit_rate).all() and torch.isnan(median_miss).all()  # no token with a word


@pytest.mark.parametrize("seed", range(3))
def test_known_answer_truth(seed):
    case = repeated_blocks(seed)
    n_speech, n_tokens = len(case.owner), len(case.anchor)
    speech_ms = torch.stack((torch.arange(n_speech) * MS, torch.arange(n_speech) * MS + MS), 1).float()
    word_spans_ms = torch.stack((case.block_start, case.block_start + case.repeats), 1).float() * MS
    text_words = torch.arange(n_tokens)
    argmax = alignment_path(token_similarity(case.hs, case.ht, "cos"), "cos")
    dtw = dtw_path(token_similarity(case.hs, case.ht, "cos")[1])
    hit_rate, median_miss = argmax_path_truth(argmax, speech_ms, text_words, word_spans_ms)
    assert hit_rate.tolist() == [1, 1, 1] and torch.isnan(median_miss).all()
    hit_rate, median_miss = dtw_path_truth(dtw, speech_ms, text_words, word_spans_ms)
    assert hit_rate == 1 and math.isnan(median_miss)

    shift = MS * n_speech + 100  # every word now starts after the whole recording
    shifted = word_spans_ms + shift
    centres = speech_ms.mean(1)
    hit_rate, median_miss = argmax_path_truth(argmax, speech_ms, text_words, shifted)
    expected = np.median((shifted[:, 0] - centres[case.anchor]).numpy())
    assert hit_rate.tolist() == [0, 0, 0] and median_miss.tolist() == pytest.approx([expected] * 3)
    hit_rate, median_miss = dtw_path_truth(dtw, speech_ms, text_words, shifted)
    expected = np.median((shifted[case.owner, 0] - centres).numpy())
    assert hit_rate == 0 and median_miss == pytest.approx(expected)
