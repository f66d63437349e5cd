"""DTW base-layer sensitivity against slow references: path agreement token by token, best-match agreement by
plain loops over aligned pairs and CKA matrices."""
from __future__ import annotations

import numpy as np
import torch

from modgap.metrics.base_layers import BaseLayerSensitivity, best_match_agreement, path_agreement
from modgap.metrics.cka import linear_cka
from modgap.metrics.dtw import dtw_path
from modgap.metrics.geometry import token_similarity


def mapped_positions(path: torch.Tensor) -> dict[int, set[int]]:
    """Per text token, the set of speech positions a path maps to it."""
    out: dict[int, set[int]] = {}
    for i, j in path.tolist():
        out.setdefault(j, set()).add(i)
    return out


def slow_path_agreement(path: torch.Tensor, reference: torch.Tensor) -> float:
    a, b = mapped_positions(path), mapped_positions(reference)
    return sum(a[j] == b[j] for j in b) / len(b)


def test_path_agreement_matches_sets_of_mapped_positions():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        ts, tt = int(torch.randint(2, 12, (1,), generator=g)), int(torch.randint(1, 8, (1,), generator=g))
        p, q = (dtw_path(torch.randn(ts, tt, generator=g) - 0.5) for _ in range(2))
        assert path_agreement(p, q) == slow_path_agreement(p, q)
        assert path_agreement(p, p) == 1.0


def test_best_match_agreement_counts_equal_row_argmaxes():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(6, 5, generator=g), torch.rand(6, 5, generator=g)
    b[:3] = a[:3]
    same = sum(int(np.argmax(a[l].numpy()) == np.argmax(b[l].numpy())) for l in range(6))
    assert best_match_agreement(a, b) == same / 6 and best_match_agreement(a, a) == 1.0


def test_sensitivity_against_a_slow_reference_on_a_small_random_case():
    g = torch.Generator().manual_seed(2)
    n_layers, d, default = 4, 5, 2
    items = []
    for _ in range(6):
        tt = int(torch.randint(3, 6, (1,), generator=g))
        ht = torch.randn(n_layers, tt, d, generator=g)  # unrelated states: the pairing decides every best match
        hs = torch.randn(n_layers, 2 * tt, d, generator=g)
        items.append((hs, ht))
    run = BaseLayerSensitivity(list(range(n_layers)), default, "mean", cka_batch=1000, device=torch.device("cpu"))
    agreement, rows = [], {b: ([], []) for b in range(n_layers)}
    for hs, ht in items:
        paths = [dtw_path(token_similarity(hs[b], ht[b], "cos")) for b in range(n_layers)]
        run.update(hs, ht, paths)
        agreement.append([slow_path_agreement(p, paths[default]) for p in paths])
        for b, path in enumerate(paths):  # mean-paired rows, token by token
            for j, speech in sorted(mapped_positions(path).items()):
                rows[b][0].append(hs[:, sorted(speech)].mean(1))
                rows[b][1].append(ht[:, j])
    best = {}
    for b, (xs, ys) in rows.items():  # one batch: the minibatch CKA is the one-shot unbiased CKA
        x, y = torch.stack(xs, 1), torch.stack(ys, 1)
        cka = [[linear_cka(x[l], y[m], unbiased=True) for m in range(n_layers)] for l in range(n_layers)]
        best[b] = [int(np.argmax(row)) for row in cka]
    table = run.table()
    assert table["default"].tolist() == [b == default for b in range(n_layers)]
    np.testing.assert_allclose(table["path_agreement"], np.mean(agreement, 0))
    expected = [np.mean([best[b][l] == best[default][l] for l in range(n_layers)]) for b in range(n_layers)]
    np.testing.assert_allclose(table["best_match_agreement"], expected)
    assert table.loc[default, "path_agreement"] == 1 and table.loc[default, "best_match_agreement"] == 1
    assert (table["n_items"] == 6).all() and not np.allclose(expected, 1)  # the case tells base layers apart


def test_without_cka_only_paths_are_compared():
    hs = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(3))
    run = BaseLayerSensitivity([0, 1, 2], 1, "mean", cka_batch=0, device=torch.device("cpu"))
    run.update(hs, hs[:, ::2], [dtw_path(token_similarity(hs[b], hs[b, ::2], "cos")) for b in range(3)])
    table = run.table()
    assert table["best_match_agreement"].isna().all() and table.loc[1, "path_agreement"] == 1
