"""States driver on a tiny random Qwen2-Audio and real lab speech: store contents, resume, shards, accuracy."""
from __future__ import annotations

import functools
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
import tiny_models as tiny

import zarr

from modgap.corpus.stage import AlignSpec, VoiceSpec, align_split, synthesize_split, write_split
from modgap.corpus.items import write_jsonl
from modgap.corpus.lab_world import generate_lab
from modgap.models import load_adapter
from conftest import defaults
from modgap.corpus.table import read_rows, read_shard
from modgap.plan import shard_rows
from modgap.states.options import StatesOptions
from modgap.states import spine, stage
from modgap.states.stage import accuracy_table, dump_states, write_tables
from modgap.states.store import StoreReader, StoreWriter


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
    inputs = adapter.speech_inputs(item, rows[1].wave(), "cloze", spans)
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
    """Also the attention rows of heatmap items before and after the kill (items 0 and 3), and of no other item."""
    _, rows, adapter = setup
    spec = spec_of(batch_items=2, readouts=["lens", "attention"])
    heatmap = [rows[0].id, rows[3].id]
    dump_states(adapter, rows, "cloze", tmp_path / "full.zarr", spec, "tiny", heatmap_ids=heatmap)
    real_prefill = adapter.prefill_batch
    calls = {"n": 0}

    def dying_prefill(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # mid-way through the second batch: S done, T not
            raise KeyboardInterrupt
        return real_prefill(*args, **kwargs)

    monkeypatch.setattr(adapter, "prefill_batch", dying_prefill)
    with pytest.raises(KeyboardInterrupt):
        dump_states(adapter, rows, "cloze", tmp_path / "resumed.zarr", spec, "tiny", heatmap_ids=heatmap)
    assert not (tmp_path / "resumed.zarr").exists() and (tmp_path / "resumed.zarr.partial").exists()
    monkeypatch.setattr(adapter, "prefill_batch", real_prefill)
    dump_states(adapter, rows, "cloze", tmp_path / "resumed.zarr", spec, "tiny", heatmap_ids=heatmap)
    a, b = StoreReader(tmp_path / "full.zarr"), StoreReader(tmp_path / "resumed.zarr")
    for i in range(len(rows)):
        for c in ("S", "T"):
            assert torch.equal(a.hidden(c, i), b.hidden(c, i))
            np.testing.assert_array_equal(a.ragged(c, "attn_rows", i), b.ragged(c, "attn_rows", i))
            assert (len(b.ragged(c, "attn_rows", i)) > 0) == (i in (0, 3))
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


def test_store_fingerprint_holds_the_rendered_prompts(setup, tmp_path, monkeypatch):
    """run_shard's config hash moves with the system prompt, instruction and cue, and with the rendered prompt ids
    alone (a chat template or tokenizer change), so a dump never resumes onto items asked another way."""
    from modgap.models.base import SpeechLM
    from modgap.plan import model_run
    from modgap.states.stage import run_shard

    tmp, _, _ = setup
    spec = spec_of(layers=[0], max_items=1)

    def config_hash(name, **prompt):
        run = model_run("tiny", "qwen2_audio", str(tmp / "model"), device="cpu", dtype="float32", **prompt)
        run_shard(run, tmp / "items.parquet", 0, spec, tmp_path / f"{name}.zarr")
        return StoreReader(tmp_path / f"{name}.zarr").manifest["config_hash"]

    bare = config_hash("bare")
    assert config_hash("again") == bare
    changed = [config_hash("system", system="Be brief."), config_hash("cue", cue="The answer is"),
               config_hash("instruction", instruction={"cloze": "\nAnswer in one word."})]
    assert len({bare, *changed}) == 4
    real = SpeechLM.prompt_ids
    monkeypatch.setattr(SpeechLM, "prompt_ids", lambda self, style: {**real(self, style), "T": [0]})
    assert config_hash("template") != bare


def test_heatmap_rows_of_the_first_items_of_shard_0(setup, tmp_path):
    """states.attention_heatmap_items: the first N rows of shard 0 keep their attention rows; other shards none."""
    from modgap.plan import model_run
    from modgap.states.stage import run_shard

    tmp, rows, _ = setup
    spec = spec_of(layers=[0], shard_items=3, readouts=["attention"], attention_heatmap_items=2)
    run = model_run("tiny", "qwen2_audio", str(tmp / "model"), device="cpu", dtype="float32")
    kept = {}
    for shard in (0, 1):
        run_shard(run, tmp / "items.parquet", shard, spec, tmp_path / f"{shard}.zarr")
        r = StoreReader(tmp_path / f"{shard}.zarr")
        kept[shard] = [r.items[i] for i in np.flatnonzero(r.ragged_items("S", "attn_rows"))]
        assert list(r.ragged_items("S", "attn_rows") > 0) == list(r.ragged_items("T", "attn_rows") > 0)
    assert kept == {0: [rows[0].id, rows[1].id], 1: []}


def test_bad_layer_and_empty_shard(setup, tmp_path):
    _, rows, adapter = setup
    with pytest.raises(ValueError, match=r"^states.layers: 9 is out of range for tiny \(layers 0\.\.2\)$"):
        dump_states(adapter, rows, "cloze", tmp_path / "x.zarr", spec_of(layers=[0, 9]), "tiny")
    assert shard_rows(10, 4, None, 2) == slice(8, 10)
    with pytest.raises(ValueError, match="shard 3 is empty"):
        shard_rows(10, 4, None, 3)


def test_accuracy_table_gap_in_points():
    pred = pd.DataFrame({"id": ["a", "a", "b", "b"], "condition": ["S", "T", "S", "T"], "score": [0, 1, 1, 1]})
    row = accuracy_table(pred, 3, model="m").iloc[0]
    assert (row["text_acc"], row["speech_acc"], row["gap"], row["n_items"], row["n_skipped"]) == (1.0, 0.5, 50.0, 2, 3)


def test_accuracy_table_means_scores_of_scored_items():
    """Fractional scores average; an item unscored in either condition is counted apart, not as wrong."""
    pred = pd.DataFrame({"id": list("aabbcc"), "condition": list("STSTST"),
                         "score": [0.25, 0.75, 1.0, 1.0, np.nan, 1.0]})
    row = accuracy_table(pred, model="m").iloc[0]
    assert (row["text_acc"], row["speech_acc"], row["gap"]) == (0.875, 0.625, 25.0)
    assert (row["n_items"], row["n_unscored"]) == (2, 1)


# --- items whose speech input cannot be built ---------------------------------------------------------------------
LETTER_ITEMS = [  # letter style, spoken by espeak at 175 wpm: about 3 s each, and 9 s for "long"
    ("a", "five plus ten", ["fifteen", "five"]),
    ("long", "kate walks from the farm to the forest and then to the island and back to the desert before she "
             "counts the eggs and the beans in her house", ["ten", "twelve"]),
    ("b", "two plus two", ["four", "six"]),
    ("c", "what is one plus one", ["two", "three"]),
    ("d", "what is two plus three", ["five", "six"]),
]


@pytest.fixture(scope="module")
def letter_shard(tmp_path_factory):
    """A user's letter-style JSONL voiced and aligned: one shard whose second item is longer than the tiny model's
    4 s window (long_audio "reject")."""
    tmp = tmp_path_factory.mktemp("letter")
    records = [{"id": i, "subject": "s", "question": q, "choices": c, "answer": 0} for i, q, c in LETTER_ITEMS]
    (tmp / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_split("mine", {"source": "jsonl", "path": "mine.jsonl"}, "test", tmp / "items.jsonl", tmp / "recordings",
                root=tmp)
    synthesize_split(tmp / "items.jsonl", "letter", VoiceSpec("en-us", 175, 50), tmp / "s.parquet", tmp / "audio")
    align_split(tmp / "s.parquet", AlignSpec(), tmp / "items.parquet")
    rows, style = read_shard(tmp / "items.parquet", 0, 256, None)
    assert [r.id for r in rows] == [i for i, *_ in LETTER_ITEMS] and style == "letter"
    return rows, pd.read_parquet(tmp / "items.parquet").set_index("id")["duration_ms"]


def assert_same_store(a: StoreReader, b: StoreReader) -> None:
    assert a.items == b.items
    for i in range(len(a.items)):
        for c in ("S", "T"):
            assert torch.equal(a.hidden(c, i), b.hidden(c, i))
    pd.testing.assert_frame_equal(a.items_table(), b.items_table())


def test_long_item_is_skipped_and_recorded_the_others_dumped(setup, letter_shard, tmp_path):
    """One item per forward, so the long item's step has no row at all; the other items' store equals a dump of
    them alone, and the long one is recorded with the adapter's reason."""
    _, _, adapter = setup
    rows, duration_ms = letter_shard
    spec = spec_of(batch_items=1)
    pred = dump_states(adapter, rows, "letter", tmp_path / "s.zarr", spec, "tiny")
    kept = [r for r in rows if r.id != "long"]
    dump_states(adapter, kept, "letter", tmp_path / "ref.zarr", spec, "tiny")
    store = StoreReader(tmp_path / "s.zarr")
    assert_same_store(store, StoreReader(tmp_path / "ref.zarr"))
    assert sorted(pred["id"].unique()) == ["a", "b", "c", "d"]
    (skipped,) = store.skipped().to_dict("records")
    assert skipped == {"id": "long", "condition": "S", "reason": (
        f"item long: audio is {duration_ms['long'] / 1000:.2f} s, longer than the qwen2_audio window of 4 s "
        "(long_audio='reject'; use 'window' to split it)")}


def test_resume_after_a_skipped_item_equals_uninterrupted(setup, letter_shard, tmp_path, monkeypatch):
    """Killed in item d's T forward, with chunks of 4 positions: a and b are committed around the skipped long item;
    the resumed dump meets the long item again and ends equal to an uninterrupted one, records included."""
    _, _, adapter = setup
    rows, _ = letter_shard
    spec = spec_of(batch_items=1)
    monkeypatch.setattr(stage, "StoreWriter", functools.partial(StoreWriter, positions_per_chunk=4))
    dump_states(adapter, rows, "letter", tmp_path / "full.zarr", spec, "tiny")
    real_prefill, calls = adapter.prefill_batch, {"n": 0}

    def dying_prefill(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # a, b, c: S and T each; then d's S, and its T dies
            raise KeyboardInterrupt
        return real_prefill(*args, **kwargs)

    monkeypatch.setattr(adapter, "prefill_batch", dying_prefill)
    with pytest.raises(KeyboardInterrupt):
        dump_states(adapter, rows, "letter", tmp_path / "resumed.zarr", spec, "tiny")
    assert zarr.open_group(tmp_path / "resumed.zarr.partial", mode="r").attrs["n_done"] == 2  # a and b
    monkeypatch.setattr(adapter, "prefill_batch", real_prefill)
    dump_states(adapter, rows, "letter", tmp_path / "resumed.zarr", spec, "tiny")
    full, resumed = StoreReader(tmp_path / "full.zarr"), StoreReader(tmp_path / "resumed.zarr")
    assert_same_store(full, resumed)
    pd.testing.assert_frame_equal(full.skipped(), resumed.skipped())
    assert full.items == ["a", "b", "c", "d"] and full.skipped()["id"].tolist() == ["long"]


def test_skipped_items_reach_the_model_tables(setup, letter_shard, tmp_path):
    """A shard whose only item is skipped is a store with no item and one record; the model's tables list every
    skipped item by shard and count them next to the accuracy; a model with no item left fails naming it."""
    _, _, adapter = setup
    rows, _ = letter_shard
    spec = spec_of(batch_items=2)
    dump_states(adapter, rows[:3], "letter", tmp_path / "shard0.zarr", spec, "tiny")
    empty = dump_states(adapter, rows[1:2], "letter", tmp_path / "shard1.zarr", spec, "tiny")
    assert empty.empty and StoreReader(tmp_path / "shard1.zarr").manifest["n_items"] == 0
    stores = [str(tmp_path / "shard0.zarr"), str(tmp_path / "shard1.zarr")]
    out = {k: tmp_path / f"{k}.{ext}" for k, ext in [("pred", "parquet"), ("acc", "csv"), ("responses", "parquet"),
                                                      ("skipped", "csv")]}
    acc = write_tables(stores, {"model": "tiny"}, out["pred"], out["acc"], out["responses"], out["skipped"]).iloc[0]
    assert (acc["n_items"], acc["n_skipped"]) == (2, 2)
    skipped = pd.read_csv(out["skipped"])
    assert skipped[["shard", "id", "condition"]].values.tolist() == [["shard0", "long", "S"], ["shard1", "long", "S"]]
    assert skipped["reason"].str.startswith("item long: audio is").all()
    with pytest.raises(ValueError, match=r"^tiny: every item was skipped \(1; first: item long: audio is"):
        write_tables(stores[1:], {"model": "tiny"}, out["pred"], out["acc"], out["responses"], out["skipped"])


# --- prompts built by worker processes -----------------------------------------------------------------------------
def test_dump_with_workers_equals_in_process(setup, letter_shard, tmp_path, monkeypatch):
    """Two forked workers build the prompts: the same store, predictions and skipped records (the long item, with
    its reason) as building them in the main process; the adapter is never pickled (the workers share its memory)."""
    _, _, adapter = setup
    rows, _ = letter_shard

    def unpicklable(self):
        raise AssertionError("the adapter was pickled")

    monkeypatch.setattr(type(adapter), "__getstate__", unpicklable, raising=False)
    preds = {w: dump_states(adapter, rows, "letter", tmp_path / f"w{w}.zarr", spec_of(batch_items=2, num_workers=w),
                            "tiny") for w in (0, 2)}
    pd.testing.assert_frame_equal(preds[0], preds[2])
    here, workers = StoreReader(tmp_path / "w0.zarr"), StoreReader(tmp_path / "w2.zarr")
    assert_same_store(here, workers)
    pd.testing.assert_frame_equal(here.skipped(), workers.skipped())
    assert workers.skipped()["id"].tolist() == ["long"] and workers.skipped()["reason"].str.startswith(
        "item long: audio is").all()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_prompt_that_fails_to_build_stops_the_dump_naming_the_item(setup, tmp_path, monkeypatch, workers):
    """An error other than a bad recording is a bug: it stops the dump, in one line naming the item, from a worker
    as from the main process."""
    _, rows, adapter = setup
    real = adapter.text_inputs

    def broken(item, style):
        if item.id == rows[3].id:
            raise KeyError("no token")
        return real(item, style)

    monkeypatch.setattr(adapter, "text_inputs", broken)
    with pytest.raises(spine.InputError) as e:
        dump_states(adapter, rows, "cloze", tmp_path / "x.zarr", spec_of(batch_items=2, num_workers=workers), "tiny")
    assert str(e.value) == f"item {rows[3].id}: its T prompt failed to build: KeyError: 'no token'"
