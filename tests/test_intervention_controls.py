"""Control edit sites: random and even positions, other-item targets, identity edits bit for bit."""
from __future__ import annotations

import pytest
import tiny_models as tiny
import torch
from test_interventions import corpus_table, speech

from modgap.corpus.lab_world import generate_lab
from modgap.interventions.controls import (
    apply_row_edits, control_sites, even_positions, other_item_targets, other_item_tokens, random_positions,
)
from modgap.interventions.hooks import RowEdit, prefill_edited, prefill_recorded
from modgap.interventions.ops import angle_projection, length_normalization
from modgap.interventions.runner import select_edits
from modgap.models import load_adapter
from modgap.states import corpus_items


def test_random_positions_are_distinct_sorted_seeded_and_uniform():
    i = torch.tensor([5, 2, 9])
    a = random_positions(i, 12, torch.Generator().manual_seed(0))
    assert torch.equal(a, random_positions(i, 12, torch.Generator().manual_seed(0)))
    assert len(set(a.tolist())) == 3 and torch.equal(a, a.sort().values) and a.max() < 12
    gen = torch.Generator().manual_seed(1)
    counts = torch.bincount(torch.cat([random_positions(i, 12, gen) for _ in range(6000)]), minlength=12)
    assert (counts - 1500).abs().max() < 160  # each position drawn with probability 3/12 per edit set
    with pytest.raises(ValueError):
        random_positions(torch.arange(5), 4, gen)


def test_even_positions_are_the_slice_centres():
    assert even_positions(4, 10).tolist() == [1, 3, 6, 8]
    assert even_positions(1, 7).tolist() == [3]
    assert even_positions(0, 7).tolist() == []
    for m in range(1, 20):
        p = even_positions(m, 19)
        assert len(set(p.tolist())) == m
    with pytest.raises(ValueError):
        even_positions(5, 4)


def test_control_sites_keep_the_targets_and_the_count():
    g = torch.Generator().manual_seed(0)
    hs, ht = torch.randn(30, 8, generator=g), torch.randn(6, 8, generator=g)
    i, j = select_edits(hs, ht, "bottom-3")
    for control in ("path", "random", "even"):
        pos, tgt = control_sites(control, i, j, 30, torch.Generator().manual_seed(2))
        assert torch.equal(tgt, j) and len(pos) == len(i) and len(set(pos.tolist())) == len(i)
    assert torch.equal(control_sites("path", i, j, 30, g)[0], i)
    with pytest.raises(ValueError):
        control_sites("other", i, j, 30, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_identity_ops_at_random_positions_reproduce_the_states_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(40, 16, generator=g).to(dtype)
    positions = random_positions(torch.arange(7), 40, g)
    for fn in (lambda x: x, lambda x: angle_projection(x, x), lambda x: length_normalization(x, x)):
        out = apply_row_edits(h, positions, fn)
        assert out.dtype == dtype and torch.equal(out, h)
    target = torch.randn(7, 16, generator=g).to(dtype) * 4
    out = apply_row_edits(h, positions, lambda x: angle_projection(x, target))
    changed = (out != h).any(-1)
    assert changed[positions].all() and changed.sum() == 7  # only the chosen rows move
    assert torch.equal(h, h.clone())  # input untouched


def test_other_item_targets_never_map_an_item_to_itself_and_are_seeded():
    js = [torch.tensor([0, 2, 4]), torch.tensor([1]), torch.tensor([0, 1]), torch.tensor([3, 5])]
    n_texts = [5, 2, 3, 6]
    for seed in range(50):
        partners, tokens = other_item_targets(js, n_texts, torch.Generator().manual_seed(seed))
        assert all(int(p) != g for g, p in enumerate(partners)) and sorted(partners.tolist()) == [0, 1, 2, 3]
        for g, (j, t) in enumerate(zip(js, tokens)):
            assert len(t) == len(j) and (t >= 0).all() and (t < n_texts[int(partners[g])]).all()
    a = other_item_targets(js, n_texts, torch.Generator().manual_seed(7))
    b = other_item_targets(js, n_texts, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    with pytest.raises(ValueError):
        other_item_targets(js[:1], n_texts[:1], torch.Generator())


def test_other_item_tokens_take_the_same_relative_position():
    j = torch.arange(6)
    assert torch.equal(other_item_tokens(j, 6, 6), j)
    assert other_item_tokens(j, 6, 3).tolist() == [0, 0, 1, 1, 2, 2]  # a shorter text: targets repeat
    assert other_item_tokens(j, 6, 12).tolist() == [1, 3, 5, 7, 9, 11]


def test_control_edits_through_the_hooks_of_a_tiny_model(tmp_path):
    """Through `prefill_edited` on a tiny Qwen2-Audio: identity ops at random, even and path sites leave the logits
    bit for bit; another item's text pasted at random positions moves them (sites are span-relative, as the path's)."""
    rows = corpus_items(corpus_table(generate_lab(0, 0, 3, 5)["test"], tmp_path / "audio"))[:3]
    model = tiny.build_qwen2_audio(tmp_path / "model", tiny.tiny_tokenizer(), window_s=4)
    adapter = load_adapter("qwen2_audio", str(model), device="cpu")
    s_in = speech(adapter, rows)
    t_in = [adapter.text_inputs(r[0], "cloze") for r in rows]
    base, rec_s = prefill_recorded(adapter, s_in, [0])
    _, rec_t = prefill_recorded(adapter, t_in, [0])
    g = torch.Generator().manual_seed(0)
    sites = [select_edits(hs[0], ht[0], "all") for hs, ht in zip(rec_s, rec_t)]
    partners, tokens = other_item_targets([j for _, j in sites], [ht.shape[1] for ht in rec_t], g)
    for control in ("random", "even"):
        plan = {}
        for k, (x, (i, j)) in enumerate(zip(s_in, sites)):
            pos, _ = control_sites(control, i, j, len(x.span), g)
            plan[k] = RowEdit(x.span[pos], lambda h: angle_projection(h, h))
        for p, b in zip(prefill_edited(adapter, s_in, 0, plan), base):
            assert torch.equal(p.logprobs, b.logprobs)
    plan = {k: RowEdit(x.span[i], lambda h: length_normalization(h, h)) for k, (x, (i, _)) in
            enumerate(zip(s_in, sites))}
    assert all(torch.equal(p.logprobs, b.logprobs) for p, b in zip(prefill_edited(adapter, s_in, 0, plan), base))
    plan = {}
    for k, (x, (i, _)) in enumerate(zip(s_in, sites)):
        target = rec_t[int(partners[k])][0][tokens[k]] * 10
        plan[k] = RowEdit(x.span[random_positions(i, len(x.span), g)], lambda h, t=target: angle_projection(h, t))
    edited = prefill_edited(adapter, s_in, 0, plan)
    assert all(not torch.allclose(p.logprobs, b.logprobs, atol=1e-4) for p, b in zip(edited, base))
