"""KV token merging (P2 App. C): the merge plan against a slow reference loop, the log-count bias against unmerged
attention, the random control's count, and the model-side merge on a tiny Qwen2-Audio (identity at threshold > 1,
identical cached keys/values inside a group, the driver's rows and controls table)."""
from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from test_interventions import (  # noqa: F401 (fixtures)
    STYLE, granite, hook_snapshot, interventions_options, setup, speech,
)

from modgap.interventions.conditions import KVMerge, conditions_from_options, run_conditions
from modgap.interventions.controls import item_generator
from modgap.interventions.kv_merge import (
    anchors_of, attention, group_means, max_merges, merge_groups, random_links, similarity_links,
)
from modgap.interventions.report import control_effects
from modgap.states import spine


def reference_links(keys: torch.Tensor, threshold: float, max_ratio: float) -> list[bool]:
    """Slow plan: every adjacent pair's cosine by hand, qualifying pairs sorted by (cosine desc, index), the first
    floor(max_ratio * n) kept."""
    n = len(keys)
    pairs = []
    for i in range(n - 1):
        a, b = keys[i].double(), keys[i + 1].double()
        cos = float(a @ b / (a.norm() * b.norm()))
        if cos > threshold:
            pairs.append((-cos, i))
    keep = {i for _, i in sorted(pairs)[: min(math.floor(max_ratio * n), n - 1)]}
    return [i in keep for i in range(n - 1)]


def test_similarity_plan_matches_a_slow_reference_loop():
    base = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    # runs: 0-1-2 near direction 0, 3-4-5 near direction 1, 6-7 direction 2 with a weaker pair (cos 0.928)
    keys = torch.stack([base[0], base[0] + 0.01, base[0] * 2, base[1], base[1] * 3, base[1] + 0.05,
                        base[2], base[2] + 0.4 * base[0]])
    for threshold, ratio in [(0.9, 1.0), (0.9, 0.25), (0.99, 1.0), (1.5, 1.0), (-1.0, 0.5), (0.9, 0.0)]:
        got = similarity_links(keys, threshold, ratio)
        assert got.tolist() == reference_links(keys, threshold, ratio), (threshold, ratio)
    links = similarity_links(keys, 0.9, 1.0)
    assert links.tolist() == [True, True, False, True, True, False, True]
    assert anchors_of(links).tolist() == [0, 0, 0, 3, 3, 3, 6, 6]
    assert int(similarity_links(keys, 0.9, 0.25).sum()) == max_merges(8, 0.25) == 2
    random_keys = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    for threshold in (-0.2, 0.0, 0.3):
        assert similarity_links(random_keys, threshold, 0.3).tolist() == reference_links(random_keys, threshold, 0.3)


def test_merging_identical_keys_with_the_log_count_bias_keeps_the_attention_output():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 8, generator=g) for n in (5, 6, 6))
    k[3], v[3] = k[2], v[2]  # positions 2 and 3 identical
    links = torch.tensor([False, False, True, False, False])
    k_m, log_count = merge_groups(k, anchors_of(links))
    v_m, _ = merge_groups(v, anchors_of(links))
    assert k_m.shape == (5, 8) and torch.allclose(log_count.exp(), torch.tensor([1.0, 1, 2, 1, 1]))
    unmerged = attention(q, k, v)
    assert torch.allclose(attention(q, k_m, v_m, log_count), unmerged, atol=1e-6, rtol=0)
    assert not torch.allclose(attention(q, k_m, v_m), unmerged, atol=1e-3)  # without the bias the mass is lost


def test_duplicated_group_means_equal_one_merged_entry_with_the_log_count_bias():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(n, 8, generator=g) for n in (4, 9, 9))
    anchors = anchors_of(torch.tensor([True, True, False, False, True, False, True, True]))
    k_m, bias = merge_groups(k, anchors)
    v_m, _ = merge_groups(v, anchors)
    duplicated = attention(q, group_means(k, anchors), group_means(v, anchors))
    assert torch.allclose(attention(q, k_m, v_m, bias), duplicated, atol=1e-6, rtol=0)
    assert torch.equal(group_means(k, anchors)[3], k[3])  # a group of one is left exactly


def test_random_control_merges_the_same_count_reproducibly():
    for n, count in [(10, 0), (10, 3), (10, 9), (2, 1)]:
        links = random_links(n, count, item_generator(0, "c", "q1"))
        assert links.shape == (n - 1,) and int(links.sum()) == count
        assert torch.equal(links, random_links(n, count, item_generator(0, "c", "q1")))
    with pytest.raises(ValueError, match="3 merges cannot be drawn from a span of 3"):
        random_links(3, 3, torch.Generator())


# --- on the model ----------------------------------------------------------------------------------------------------
def test_threshold_above_one_reproduces_the_baseline_bit_for_bit(setup):
    adapter, rows, _ = setup
    before = hook_snapshot(adapter.model)
    table = run_conditions(adapter, rows[:3], STYLE, "none", [KVMerge(0, adapter.n_layers - 1, threshold=1.5)],
                           batch_items=2)
    assert hook_snapshot(adapter.model) == before
    s = table[table["condition"] == "S"].set_index("id")
    for control in ("path", "random"):
        merged = table[(table["condition"] == "kv_merge") & (table["control"] == control)].set_index("id")
        assert (merged["n_edited"] == 0).all() and (merged["merge_ratio"] == 0).all()
        for i in s.index:
            assert merged.loc[i, "loglik"] == s.loc[i, "loglik"]  # exact float equality


@pytest.mark.parametrize("family", ["qwen2_audio", "granite"])  # Granite: one prompt per forward
def test_merged_groups_hold_identical_keys_and_values_in_the_cache(setup, request, family):
    adapter, rows, _ = setup
    adapter = adapter if family == "qwen2_audio" else request.getfixturevalue("granite")
    inputs = speech(adapter, rows[:2])
    block = adapter.n_layers - 1
    merge = spine.Merge([block], lambda g, b, keys: similarity_links(keys, -2.0, 0.25))  # every pair qualifies
    with_merge = spine.forward(adapter, inputs, merge=merge).prefills
    plain = spine.forward(adapter, inputs).prefills
    for g, (x, p, q) in enumerate(zip(inputs, with_merge, plain)):
        links = merge.links[g, block]
        assert int(links.sum()) == max_merges(len(x.span), 0.25) > 0
        anchors = anchors_of(links)
        k, v = (t[0, :, x.span].float() for t in (p.cache.layers[block].keys, p.cache.layers[block].values))
        members = torch.nonzero(anchors != torch.arange(len(anchors))).flatten()
        assert torch.allclose(k[:, members], k[:, anchors[members]], atol=1e-6)
        assert torch.allclose(v[:, members], v[:, anchors[members]], atol=1e-6)
        assert not torch.equal(p.logprobs, q.logprobs)


def test_driver_rows_and_controls_table(setup):
    adapter, rows, _ = setup
    cond = KVMerge(0, 1, threshold=-2.0, max_ratio=0.1)
    table = run_conditions(adapter, rows[:3], STYLE, "none", [cond], batch_items=2)
    merged = table[table["condition"] == "kv_merge"]
    assert set(merged["label"]) == {"kv_merge @0-1 cos>-2 max 0.1", "kv_merge @0-1 cos>-2 max 0.1 (random)"}
    path, random = (merged[merged["control"] == c].set_index("id") for c in ("path", "random"))
    spans = {r.id: len(x.span) for r, x in zip(rows[:3], speech(adapter, rows[:3]))}
    for i, n in spans.items():
        assert path.loc[i, "n_edited"] == random.loc[i, "n_edited"] == 2 * max_merges(n, 0.1)
        assert path.loc[i, "merge_ratio"] == pytest.approx(2 * max_merges(n, 0.1) / (2 * n))
    effects = control_effects(table)
    assert len(effects) == 1 and effects.loc[0, "condition"] == "kv_merge @0-1 cos>-2 max 0.1"
    assert effects.loc[0, "merge_ratio"] == pytest.approx(path["merge_ratio"].mean())
    assert effects.loc[0, "n_items"] == 3 and not math.isnan(effects.loc[0, "effect_mcnemar_p"])


def test_options_defaults_and_range_check():
    options = interventions_options()
    assert not options.kv_merge.enabled and options.kv_merge.layers == (7, 21)
    assert options.kv_merge.threshold == 0.9 and options.kv_merge.max_ratio == 0.25
    assert not [c for c in conditions_from_options(options) if isinstance(c, KVMerge)]
    on = interventions_options(kv_merge={"enabled": True, "layers": [0, 1]})
    assert [c for c in conditions_from_options(on) if isinstance(c, KVMerge)] == [KVMerge(0, 1, 0.9, 0.25)]
    on.check_layers("m", 2)
    with pytest.raises(ValueError, match=r"interventions.kv_merge.layers: \[7, 21\] .* blocks 0..1"):
        interventions_options(kv_merge={"enabled": True}).check_layers("m", 2)
