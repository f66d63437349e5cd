"""Readouts in the states pass: the registry, the logit lens against constructed logits with a known margin, and the
stored fields against the model's own next-token distribution."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import tiny_models as tiny
from test_interventions import corpus_table

from conftest import defaults
from modgap.corpus.lab_world import generate_lab
from modgap.corpus.table import read_rows
from modgap.models import load_adapter, option_texts
from modgap.states import readouts
from modgap.states.options import StatesOptions
from modgap.states.readouts.lens import lens_margin_entropy
from modgap.states.stage import dump_states
from modgap.states.store import StoreReader


def test_planted_margin_and_entropy():
    """Layer 0: uniform logits (margin 0, entropy 1); layer 1: the correct option 2 nats above the best other."""
    vocab = 50
    logits = torch.zeros(2, vocab)
    logits[1, [3, 7, 9]] = torch.tensor([5.0, 3.0, 1.0])
    margin, entropy = lens_margin_entropy(logits, [7, 3, 9], answer=1)  # correct = token 3
    assert margin.tolist() == pytest.approx([0.0, 2.0])
    p = torch.softmax(logits[1], -1)
    assert entropy[0].item() == pytest.approx(1.0)
    assert entropy[1].item() == pytest.approx(float(-(p * p.log()).sum()) / math.log(vocab), rel=1e-5)
    wrong, _ = lens_margin_entropy(logits, [7, 3, 9], answer=0)  # correct = token 7: 2 nats below token 3
    assert wrong[1].item() == pytest.approx(-2.0)


def test_registry_refuses_unknown_names_and_needs():
    with pytest.raises(ValueError, match="states.readouts: unknown readout"):
        readouts.enabled(["nope"])

    class Bad(readouts.Readout):
        name, needs = "bad", ("attention_of_everything",)

    with pytest.raises(ValueError, match="unknown needs"):
        readouts.register(Bad)


def test_stored_lens_at_the_last_layer_is_the_scored_distribution(tmp_path):
    """The store's lens fields at layer L equal margin and entropy of the prefill's own next-token log-probs."""
    lab = generate_lab(0, 0, 0, 4)
    rows = read_rows(corpus_table(lab["test"], tmp_path / "audio"))
    adapter = load_adapter("qwen2_audio", str(tiny.build_qwen2_audio(tmp_path / "m", tiny.tiny_tokenizer(), 4)),
                           device="cpu")
    options = StatesOptions.from_config(defaults("states", batch_items=3))
    dump_states(adapter, rows, "cloze", tmp_path / "s.zarr", options, "tiny")
    store = StoreReader(tmp_path / "s.zarr")
    assert store.readout_fields == {"lens_margin": (adapter.n_layers + 1,), "lens_entropy": (adapter.n_layers + 1,)}
    for cond in ("S", "T"):
        margin, entropy = store.readout(cond, "lens_margin"), store.readout(cond, "lens_entropy")
        assert margin.shape == (len(rows), adapter.n_layers + 1) and np.isfinite(margin).all()
        for n, row in enumerate(rows):
            x = adapter.text_inputs(row.item, "cloze") if cond == "T" else adapter.speech_inputs(row.item, row.wave(), "cloze")
            logp = adapter.prefill(x).logprobs
            first = [ids[0] for ids in adapter.tokenizer(option_texts(row.item, "cloze"),
                                                         add_special_tokens=False)["input_ids"]]
            others = max(logp[t] for k, t in enumerate(first) if k != row.item.answer)
            assert margin[n, -1] == pytest.approx(float(logp[first[row.item.answer]] - others), abs=1e-4)
            h = -(logp.exp() * logp).sum() / math.log(len(logp))
            assert entropy[n, -1] == pytest.approx(float(h), abs=1e-4)
