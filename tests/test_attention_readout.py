"""Attention dispersion readout: the summaries against constructed rows with known answers, and the decision rows
recomputed under sdpa against the eager attention weights (`output_attentions`) of every family, in a left-padded
batch of prompts of different lengths."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import tiny_models as tiny
from tiny_stores import tiny_store

from modgap.corpus.items import Item
from modgap.metrics.stage import layer_readouts
from modgap.models import load_adapter
from modgap.states.readouts import Seen
from modgap.states.readouts.attention import (AttentionDispersion, dispersion, span_dispersion,
                                                 uniform_dispersion)
from modgap.states.spine import forward

ITEMS = [Item("a", "arithmetic", "what is five plus ten", ["fifteen", "twelve"], 0),
         Item("b", "arithmetic", "which number is just after one", ["two", "three", "four"], 1),
         Item("c", "places", "in which place does kate live", ["forest", "farm"], 1)]


def test_one_position_with_all_the_mass():
    one_hot = torch.zeros(2, 7)
    one_hot[0, 3], one_hot[1, 0] = 0.4, 2.0  # any mass: renormalised over the span
    d = dispersion(one_hot)
    assert d["cov"].tolist() == [1, 1] and d["max"].tolist() == [1, 1] and d["entropy"].tolist() == [0, 0]
    assert d["cov_frac"].tolist() == pytest.approx([1 / 7, 1 / 7])


@pytest.mark.parametrize("n", [1, 2, 10, 37])
def test_uniform_row_is_the_analytic_baseline(n):
    d = dispersion(torch.full((n,), 0.01))
    assert d["cov"].item() == math.ceil(0.9 * n) and d["max"].item() == pytest.approx(1 / n)
    assert math.isnan(d["entropy"]) if n == 1 else d["entropy"].item() == pytest.approx(1.0)
    control = uniform_dispersion(np.array([n]))
    for key, value in d.items():
        np.testing.assert_allclose(control[key], [value.item()], rtol=1e-12, err_msg=key)


def test_coverage_of_a_planted_row_and_head_mean():
    rows = torch.tensor([[[0.6, 0.25, 0.1, 0.05, 0.0], [0.1, 0.1, 0.1, 0.1, 0.6]]])  # [L=1, heads=2, T=5]
    s = span_dispersion(rows, torch.tensor([0, 1, 2, 3]))  # head 2: uniform over the span after renorm
    assert s["cov"].tolist() == [(3 + 4) / 2] and s["max"].tolist() == pytest.approx([(0.6 + 0.25) / 2])
    h = -sum(p * math.log(p) for p in (0.6, 0.25, 0.1, 0.05)) / math.log(4)
    assert s["entropy"].tolist() == pytest.approx([(h + 1.0) / 2])


BUILDERS = {**tiny.BUILDERS, "granite_speech+lora": tiny.build_granite_with_lora}  # S: the audio LoRA on q_proj


@pytest.mark.parametrize("build", list(BUILDERS))
def test_rows_under_sdpa_equal_eager_attention(build, tok, tmp_path):
    family = build.split("+")[0]
    path = BUILDERS[build](tmp_path, tok)
    sdpa = load_adapter(family, path, device="cpu")
    eager = load_adapter(family, path, device="cpu", attn_implementation="eager")
    assert sdpa.model.config.get_text_config()._attn_implementation == "sdpa"
    readout = AttentionDispersion(heatmap_ids={"a", "c"})  # b keeps no rows
    for cond in ("S", "T"):
        inputs = [sdpa.speech_inputs(it, tiny.noise(0.6 + 0.5 * k, seed=k), "cloze") if cond == "S"
                  else sdpa.text_inputs(it, "cloze") for k, it in enumerate(ITEMS)]
        if cond == "T" or family != "voxtral":  # Voxtral pads audio to 30 s windows: its S prompts are equally long
            assert len({x.model_inputs["input_ids"].shape[1] for x in inputs}) == len(inputs)  # left padding
        fwd = forward(sdpa, inputs, attention=True)
        fields = readout(Seen(sdpa, cond, "cloze", ITEMS, inputs, fwd.prefills, None, fwd.attention))
        for g, x in enumerate(inputs):
            with torch.no_grad(), eager._condition(cond):
                out = eager.model.model(**eager._model_inputs(x), output_attentions=True)
            ref = torch.stack([a[0, :, -1] for a in out.attentions]).float()  # [L, heads, T]
            assert fwd.attention[g].shape == ref.shape
            torch.testing.assert_close(fwd.attention[g], ref, atol=1e-5, rtol=0)
            want = span_dispersion(ref, x.span)
            for field, key in (("attn_cov90", "cov"), ("attn_max", "max"), ("attn_entropy", "entropy")):
                assert np.isnan(fields[field][g, 0])
                np.testing.assert_allclose(fields[field][g, 1:], want[key].numpy(), atol=1e-5, err_msg=field)
            assert fields["attn_span_len"][g] == len(x.span)
            rows = fields["attn_rows"][g]  # [n, L+1, heads]: the eager rows over the span, renormalised over it
            if ITEMS[g].id == "b":
                assert rows.shape == (0, ref.shape[0] + 1, ref.shape[1])
                continue
            span = ref[:, :, x.span]
            assert np.isnan(rows[:, 0]).all()
            np.testing.assert_allclose(rows[:, 1:], (span / span.sum(-1, keepdim=True)).permute(2, 0, 1).numpy(),
                                       atol=1e-5)


def test_stored_fields(tmp_path, tok):
    """The states pass stores the readout per item: per block [L+1] (block 0 NaN) and the span length; and the rows
    of the heatmap items only, whose per-head maxima average to the stored max summary."""
    rows, adapter, store = tiny_store(tmp_path, heatmap_rows=(0, 2), batch_items=2, readouts=["attention"])
    heatmap = [rows[0].id, rows[2].id]
    heads = adapter.model.config.get_text_config().num_attention_heads
    assert store.ragged_fields == {"attn_rows": (adapter.n_layers + 1, heads)}
    for cond in ("S", "T"):
        n = store.readout(cond, "attn_span_len")
        kept = store.ragged_items(cond, "attn_rows")
        assert [store.items[i] for i in np.flatnonzero(kept)] == heatmap and (kept[kept > 0] == n[kept > 0]).all()
        for i in np.flatnonzero(kept):
            a = store.ragged(cond, "attn_rows", i)  # [n, L+1, heads]
            np.testing.assert_allclose(a[:, 1:].sum(0), 1, rtol=1e-5)
            np.testing.assert_allclose(a[:, 1:].max(0).mean(-1), store.readout(cond, "attn_max")[i, 1:], rtol=1e-5)
    assert store.readout_fields["attn_span_len"] == () and store.readout_fields["attn_max"] == (adapter.n_layers + 1,)
    for cond in ("S", "T"):
        n = store.readout(cond, "attn_span_len")
        cov, frac = store.readout(cond, "attn_cov90"), store.readout(cond, "attn_cov90_frac")
        assert np.isnan(cov[:, 0]).all() and np.isfinite(cov[:, 1:]).all() and (n > 1).all()
        np.testing.assert_allclose(frac[:, 1:], cov[:, 1:] / n[:, None], rtol=1e-6)
        assert ((cov[:, 1:] >= 1) & (cov[:, 1:] <= n[:, None])).all()
    columns = layer_readouts(store, store.layers)  # the metrics stage's item columns, per layer
    assert columns["attn_max_T"].shape == columns["attn_span_len_T"].shape == (len(rows), len(store.layers))
    assert (columns["attn_span_len_S"] == store.readout("S", "attn_span_len")[:, None]).all()
