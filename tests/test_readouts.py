"""Readouts in the states pass: the registry, the logit lens against constructed logits with a known margin, and the
stored fields against the model's own next-token distribution."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import tiny_models as tiny
from tiny_stores import tiny_store

from modgap.models import load_adapter, option_texts
from modgap.states import readouts
from modgap.states.readouts.lens import lens_margin_entropy


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
    rows, adapter, store = tiny_store(tmp_path, 4, batch_items=3)
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


def test_transcript_rigged_head_reads_the_true_word_at_one_layer(tmp_path):
    """Span states carry a token id in channel 0 and the head is rigged to one-hot logits on it: at layer 2 each
    position holds its word's first token (top1 fraction 1, wrong-word control 0 but top5 1: it ranks second), at the
    other layers token 0, which is no word's (top1 0, top5 1: the target ranks second)."""
    from modgap.states.readouts.transcript import Transcript

    adapter = load_adapter("qwen2_audio", str(tiny.build_qwen2_audio(tmp_path / "m", tiny.tiny_tokenizer(), 4)),
                           device="cpu")
    vocab = adapter.model.config.get_text_config().vocab_size

    class Rig(torch.nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return 10.0 * torch.nn.functional.one_hot(h[..., 0].long(), vocab).float()

    adapter.readout = adapter.model.lm_head = Rig()  # layers < L through the readout, L through lm_head alone
    words = ["dog", "is", "the", "sun"]  # distinct first tokens under the tiny tokenizer
    first = [adapter.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]
    assert 0 not in first and len(set(first)) == len(words)
    word_index = np.array([-1, 0, 0, 1, 2, 2, 2, 3, -1])
    hidden = torch.zeros(adapter.n_layers + 1, len(word_index), adapter.hidden_size)
    hidden[2, word_index >= 0, 0] = torch.tensor([float(first[w]) for w in word_index[word_index >= 0]])
    out = Transcript().item_fields(adapter, words, word_index, hidden)
    expect = np.zeros(adapter.n_layers + 1)
    expect[2] = 1
    assert out["transcript_top1"].tolist() == expect.tolist()
    assert out["transcript_top5"].tolist() == [1.0] * (adapter.n_layers + 1)
    assert out["transcript_wrong_top1"].tolist() == [0.0] * (adapter.n_layers + 1)
    assert out["transcript_wrong_top5"].tolist() == [1.0] * (adapter.n_layers + 1)
    assert out["transcript_n_words"] == 4


def test_stored_transcript_fields(tmp_path):
    """The states pass stores fractions in [0, 1] per layer for S and NaN for T."""
    rows, adapter, store = tiny_store(tmp_path, batch_items=3, readouts=["transcript"])
    top10, wrong = store.readout("S", "transcript_top10"), store.readout("S", "transcript_wrong_top10")
    assert top10.shape == (len(rows), adapter.n_layers + 1)
    assert ((top10 >= 0) & (top10 <= 1)).all() and ((wrong >= 0) & (wrong <= 1)).all()
    assert (store.readout("S", "transcript_n_words") >= 1).all()
    assert np.isnan(store.readout("T", "transcript_top1")).all()
