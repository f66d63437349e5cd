"""States driver on a tiny random Qwen2-Audio and real lab speech: store contents, resume, shards, accuracy."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
import tiny_models as tiny

from modgap.corpus.stage import AlignSpec, VoiceSpec, align_split, synthesize_split
from modgap.corpus.items import write_jsonl
from modgap.corpus.lab_world import generate_lab
from modgap.models import load_adapter
from conftest import defaults
from modgap.corpus.table import read_rows
from modgap.plan import shard_rows
from modgap.states.options import StatesOptions
from modgap.states.stage import accuracy_table, dump_states
from modgap.states.store import StoreReader


def spec_of(**overrides) -> StatesOptions:
    return StatesOptions.from_config(defaults("states", **overrides))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("states")
    write_jsonl(generate_lab(0, 0, 0, 6)["test"], tmp / "items.jsonl")
    synthesize_split(tmp / "items.jsonl", "cloze", VoiceSpec("en-us", 175, 50), tmp / "s.parquet", tmp / "audio")
    table = align_split(tmp / "s.parquet", AlignSpec(), tmp / "items.parquet")
    path = tiny.build_qwen2_audio(tmp / "model", tiny.tiny_tokenizer(), window_s=4)
    return tmp, read_rows(table), load_adapter("qwen2_audio", str(path), device="cpu")


def test_store_holds_span_states_scores_and_word_indices(setup, tmp_path):
    _, rows, adapter = setup
    spec = spec_of(layers=[0, 2], batch_items=1)  # one item per forward: bit-equal to a direct forward
    pred = dump_states(adapter, rows, "cloze", tmp_path / "s.zarr", spec, "tiny")
    r = StoreReader(tmp_path / "s.zarr")
    assert r.items == [row.id for row in rows] and r.layers == [0, 2]
    item, spans = rows[1].item, rows[1].spans
    inputs = adapter.speech_inputs(item, rows[1].wave(), spans)
    direct = adapter.model(**adapter._model_inputs(inputs), output_hidden_states=True).hidden_states
    expect = torch.stack([direct[l][0, inputs.span] for l in (0, 2)]).to(torch.float16)
    assert torch.equal(r.hidden("S", 1), expect)
    pos = r.positions("S", 1)
    assert (pos["word"].to_numpy() == inputs.words).all() and pos["start_ms"].iloc[1] == 40
    assert pos["word"].max() == len(spans) - 1
    assert set(pred["condition"]) == {"S", "T"} and len(pred) == 2 * len(rows)
    scores = adapter.score(inputs, item, "cloze")
    stored = pred[(pred["condition"] == "S") & (pred["id"] == item.id)].iloc[0]
    assert stored["prediction"] == scores.pred and stored["correct"] == int(scores.pred == item.answer)
    assert np.allclose(r.loglik("S")[1][: len(item.choices)], scores.logliks, atol=1e-4)


def test_resumed_dump_equals_uninterrupted(setup, tmp_path, monkeypatch):
    _, rows, adapter = setup
    spec = spec_of(batch_items=2)
    dump_states(adapter, rows, "cloze", tmp_path / "full.zarr", spec, "tiny")
    real_prefill = adapter.prefill_batch
    calls = {"n": 0}

    def dying_prefill(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # mid-way through the second batch: S done, T not
            raise KeyboardInterrupt
        return real_prefill(*args, **kwargs)

    monkeypatch.setattr(adapter, "prefill_batch", dying_prefill)
    with pytest.raises(KeyboardInterrupt):
        dump_states(adapter, rows, "cloze", tmp_path / "resumed.zarr", spec, "tiny")
    assert not (tmp_path / "resumed.zarr").exists() and (tmp_path / "resumed.zarr.partial").exists()
    monkeypatch.setattr(adapter, "prefill_batch", real_prefill)
    dump_states(adapter, rows, "cloze", tmp_path / "resumed.zarr", spec, "tiny")
    a, b = StoreReader(tmp_path / "full.zarr"), StoreReader(tmp_path / "resumed.zarr")
    for i in range(len(rows)):
        for c in ("S", "T"):
            assert torch.equal(a.hidden(c, i), b.hidden(c, i))
    pd.testing.assert_frame_equal(a.items_table(), b.items_table())


def test_batched_dump_equals_one_item_at_a_time(setup, tmp_path):
    _, rows, adapter = setup
    for b in (1, 4):
        dump_states(adapter, rows, "cloze", tmp_path / f"b{b}.zarr", spec_of(batch_items=b), "tiny")
    one, four = StoreReader(tmp_path / "b1.zarr"), StoreReader(tmp_path / "b4.zarr")
    for c in ("S", "T"):
        for i in range(len(rows)):  # float32 states within 1e-5, so float16 within one rounding step
            torch.testing.assert_close(one.hidden(c, i), four.hidden(c, i), rtol=2**-10, atol=1e-5)
            pd.testing.assert_frame_equal(one.positions(c, i), four.positions(c, i))
        np.testing.assert_allclose(one.loglik(c), four.loglik(c), rtol=0, atol=1e-5)
    pd.testing.assert_frame_equal(one.items_table(), four.items_table())


def test_bad_layer_and_empty_shard(setup, tmp_path):
    _, rows, adapter = setup
    with pytest.raises(ValueError, match=r"states.layers: \[9\] out of range"):
        dump_states(adapter, rows, "cloze", tmp_path / "x.zarr", spec_of(layers=[0, 9]), "tiny")
    assert shard_rows(10, 4, None, 2) == slice(8, 10)
    with pytest.raises(ValueError, match="shard 3 is empty"):
        shard_rows(10, 4, None, 3)


def test_accuracy_table_gap_in_points():
    pred = pd.DataFrame({"id": ["a", "a", "b", "b"], "condition": ["S", "T", "S", "T"], "score": [0, 1, 1, 1]})
    row = accuracy_table(pred, model="m").iloc[0]
    assert (row["text_acc"], row["speech_acc"], row["gap"], row["n_items"]) == (1.0, 0.5, 50.0, 2)


def test_accuracy_table_means_scores_of_scored_items():
    """Fractional scores average; an item unscored in either condition is counted apart, not as wrong."""
    pred = pd.DataFrame({"id": list("aabbcc"), "condition": list("STSTST"),
                         "score": [0.25, 0.75, 1.0, 1.0, np.nan, 1.0]})
    row = accuracy_table(pred, model="m").iloc[0]
    assert (row["text_acc"], row["speech_acc"], row["gap"]) == (0.875, 0.625, 25.0)
    assert (row["n_items"], row["n_unscored"]) == (2, 1)
