"""The metrics stage driver on constructed stores whose answers are known: speech positions repeat their text token's
vector (plus noise) for a known stretch of 40 ms positions, so every path, hit rate and CKA diagonal is known."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from modgap.config import validate_config
from modgap.metrics.heatmap import heatmap_data
from modgap.metrics.stage import dtw_configs, run_metrics
from modgap.metrics.options import MetricsOptions
from modgap.states.store import CondBatch, StoreWriter

LAYERS, D, MS = [0, 1, 2, 3], 16, 40.0
ROTATIONS = torch.linalg.qr(torch.randn(len(LAYERS), D, D, generator=torch.Generator().manual_seed(1)))[0]
SECTION = validate_config({"datasets": {"lab": {"source": "lab"}},
                           "metrics": {"dtw": {"base_layer": 1}, "last_layer": "include",  # no post-norm state here
                                       "cka": {"stability": [{"base_layer": 2}, {"metric": "l2"}, {"band": 3}]}}}
                          )["metrics"]


def make_item(i: int, g: torch.Generator) -> dict:
    """Text: 3-7 tokens, each one word. At each layer the tokens are distinct simplex vertices, centred then offset
    a little (pairwise cosine < 0, so no DTW path gains by leaving its block), in a random order per item and layer, rotated per layer.
    Speech: token j repeated k_j (2-5) times plus noise; position p spans [40p, 40p+40) ms, so word j spans its
    block exactly."""
    tt = int(torch.randint(3, 8, (), generator=g))
    reps = torch.randint(2, 6, (tt,), generator=g)
    vertices = torch.nn.functional.pad(torch.eye(tt) - 1 / tt, (0, D - tt)) + 0.03  # offset: a nonzero mean
    ht = torch.stack([vertices[torch.randperm(tt, generator=g)] @ ROTATIONS[k] for k in range(len(LAYERS))])
    hs = ht.repeat_interleave(reps, dim=1) + 0.02 * torch.randn(len(LAYERS), int(reps.sum()), D, generator=g)
    ends = reps.cumsum(0).numpy() * MS
    return {"id": f"q{i}", "hs": hs, "ht": ht, "word_T": np.arange(tt), "word_S": np.repeat(np.arange(tt), reps),
            "spans": np.stack([np.r_[0.0, ends[:-1]], ends], axis=1), "correct": (i % 2, 1)}


def write_store(path, items: list[dict], extra: dict | None = None) -> str:
    with StoreWriter(path, model="m", layers=LAYERS, d=D, n_options=2, dtype="float32", config_hash="h",
                     extra=extra) as w:
        for it in items:
            ts = it["hs"].shape[1]
            times = np.arange(ts) * MS
            w.append([it["id"]], {
                "S": CondBatch(it["hs"], [ts], np.arange(ts), [0], [it["correct"][0]], np.zeros((1, 2)),
                               word=it["word_S"], start_ms=times, end_ms=times + MS),
                "T": CondBatch(it["ht"], [it["ht"].shape[1]], np.arange(it["ht"].shape[1]), [0], [it["correct"][1]],
                               np.zeros((1, 2)), word=it["word_T"]),
            })
    return str(path)


def corpus(items: list[dict], shift_ms: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [it["id"] for it in items], "subject": ["s"] * len(items), "status": ["ok"] * len(items),
        "question": ["q"] * len(items), "choices": [["a", "b"]] * len(items), "answer": [0] * len(items),
        "audio": ["none.flac"] * len(items),
        "start_ms": [list(it["spans"][:, 0] + shift_ms) for it in items],
        "end_ms": [list(it["spans"][:, 1] + shift_ms) for it in items],
    })


def run(tmp_path, items, stores, shift_ms=0.0, options=None, name="out"):
    table = tmp_path / f"{name}.parquet"
    corpus(items, shift_ms).to_parquet(table)
    out = {k: tmp_path / f"{name}_{k}.{ext}" for k, ext in
           [("item_metrics", "parquet"), ("cka", "parquet"), ("readouts", "csv"), ("summary", "json"),
            ("base_layers", "csv")]}
    result = run_metrics(stores, table, MetricsOptions.from_config(options or SECTION), "cpu",
                         {"model": "m", "dataset": "d", "voice": "v"}, out)
    return result, pd.read_parquet(out["item_metrics"]), pd.read_parquet(out["cka"]), pd.read_csv(out["readouts"])


@pytest.fixture(scope="module")
def items():
    g = torch.Generator().manual_seed(0)
    return [make_item(i, g) for i in range(24)]


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory, items):
    tmp = tmp_path_factory.mktemp("one")
    return tmp, run(tmp, items, [write_store(tmp / "s0.zarr", items)])


def test_known_alignment_is_recovered(one_shard, items):
    _, (summary, table, _, _) = one_shard
    assert len(table) == len(items) * len(LAYERS) and summary["n_items"] == len(items)
    assert table["gt_hit_dtw"].min() == 1.0 and table["gt_hit_argmax"].min() == 1.0
    assert table["mono_cos"].min() > 0.9 and table["mono_l2"].min() > 0.9
    assert table["aps_cos"].min() > 0.99 and table["gt_miss_ms_argmax"].isna().all()
    assert summary["speech_acc"] == 0.5 and summary["text_acc"] == 1.0


def test_synchrony_and_base_layers_on_a_planted_alignment(one_shard):
    """Speech repeats its tokens' text states: the DTW and the true-word pairs are the same, their updates agree up
    to the noise, a deranged pairing does not, and every base layer recovers the same path."""
    tmp, (_, table, _, _) = one_shard
    assert table.loc[table["layer"] == 0, ["sync_dtw", "sync_truth", "sync_shuffled"]].isna().all().all()
    rest = table[table["layer"] > 0]
    np.testing.assert_allclose(rest["sync_dtw"], rest["sync_truth"], rtol=1e-5)
    assert rest["sync_dtw"].min() > 0.99 and rest["sync_shuffled"].max() < 0.5
    base = pd.read_csv(tmp / "out_base_layers.csv")
    assert base["base_layer"].tolist() == LAYERS and base["default"].tolist() == [b == 1 for b in LAYERS]
    assert (base["path_agreement"] == 1).all() and (base["best_match_agreement"] == 1).all()


def test_pooled_metrics_match_numpy(one_shard, items):
    _, (_, table, _, _) = one_shard
    for it in items[:5]:
        ms, mt = it["hs"].numpy().mean(1), it["ht"].numpy().mean(1)  # [layers, d]
        rows = table[table["id"] == it["id"]]
        cos = (ms * mt).sum(1) / np.linalg.norm(ms, axis=1) / np.linalg.norm(mt, axis=1)
        np.testing.assert_allclose(rows["cos"], cos, rtol=1e-5)
        np.testing.assert_allclose(rows["l2"], np.linalg.norm(ms - mt, axis=1), rtol=1e-5)
        np.testing.assert_allclose(rows["norm_T"], np.linalg.norm(it["ht"].numpy(), axis=2).mean(1), rtol=1e-5)


def test_cka_diagonal_and_readouts(one_shard):
    _, (summary, _, cka, readouts) = one_shard
    default = cka[(cka["config"] == "base1-cos-bandnone") & (cka["estimator"] == "unbiased")]
    m = default.pivot(index="speech_layer", columns="text_layer", values="cka").to_numpy()
    assert np.diag(m).min() > 0.98 and (m - np.diag(np.diag(m))).max() < 0.5
    r = readouts[(readouts["config"] == "base1-cos-bandnone") & (readouts["estimator"] == "biased")]
    assert r["best_text_layer"].tolist() == LAYERS and (r["band_width"] == 1).all()
    stability = summary["cka_stability_vs_default"]
    assert set(stability) == {f"{c}/{e}" for c in ["base2-cos-bandnone", "base1-l2-bandnone", "base1-cos-band3",
                                                   "truth-pairs"] for e in ["biased", "unbiased"]}
    assert min(v["matrix_correlation"] for v in stability.values()) > 0.99
    assert min(v["best_match_agreement"] for v in stability.values()) == 1.0


def test_metadata_records_every_option(one_shard):
    tmp, _ = one_shard
    meta = pd.read_parquet(tmp / "out_item_metrics.parquet").attrs["modgap"]
    assert meta["options"] == json.loads(json.dumps(SECTION)) and meta["layers"] == LAYERS
    assert [c["label"] for c in meta["dtw_configs"]][0] == "base1-cos-bandnone"
    assert json.loads((tmp / "out_summary.json").read_text())["options"]["include_layer0"] is False


def test_shards_stream_to_the_same_result(tmp_path, items, one_shard):
    _, (_, table1, cka1, _) = one_shard
    stores = [write_store(tmp_path / "a.zarr", items[:10]), write_store(tmp_path / "b.zarr", items[10:])]
    _, table2, cka2, _ = run(tmp_path, items, stores)
    pd.testing.assert_frame_equal(table1, table2, check_exact=False, rtol=1e-5)
    assert np.abs(cka1["cka"].to_numpy() - cka2["cka"].to_numpy()).max() < 1e-6


def test_shifted_truth_misses_by_the_shift(tmp_path, items):
    """Word spans moved 1 s later than the audio: no path point is inside its word, and each misses by the distance
    from its position's centre to the moved span."""
    _, table, _, _ = run(tmp_path, items, [write_store(tmp_path / "s.zarr", items)], shift_ms=10_000.0)
    assert table["gt_hit_dtw"].max() == 0.0 and table["gt_hit_argmax"].max() == 0.0
    assert table["gt_miss_ms_argmax"].between(10_000 - 5 * MS, 10_000).all()


def test_layer0_in_averages_only_when_asked(tmp_path, items, one_shard):
    _, (summary, table, _, _) = one_shard
    options = copy.deepcopy(SECTION) | {"include_layer0": True}
    with_0, *_ = run(tmp_path, items, [write_store(tmp_path / "s.zarr", items)], options=options)
    per_item = lambda t: t.groupby("id")["l2"].mean().mean()  # noqa: E731
    assert summary["layer_averaged"]["l2"] == pytest.approx(per_item(table[table["layer"] != 0]))
    assert with_0["layer_averaged"]["l2"] == pytest.approx(per_item(table))


def test_base_layer_out_of_range_or_not_analysed_fails_naming_the_key():
    dtw = {"base_layer": 99, "metric": "cos", "band": None}
    with pytest.raises(ValueError) as e:
        dtw_configs(MetricsOptions.from_config(SECTION | {"dtw": dtw}), [0, 1, 2, 3], "lab-full@step400", 4)
    assert str(e.value) == "metrics.dtw.base_layer: 99 is out of range for lab-full@step400 (layers 0..4)"
    stability = copy.deepcopy(SECTION)
    stability["cka"]["stability"] = [{"metric": "l2"}, {"base_layer": 7}]
    with pytest.raises(ValueError, match=r"^metrics.cka.stability\[1\].base_layer: 7 is out of range for m "):
        dtw_configs(MetricsOptions.from_config(stability), [0, 1, 2, 3], "m", 4)
    with pytest.raises(ValueError, match=r"^metrics.dtw.base_layer: layer 4 of m is not analysed \(analysed: \[0, 1"):
        dtw_configs(MetricsOptions.from_config(SECTION | {"dtw": {**dtw, "base_layer": 4}}), [0, 1, 2, 3], "m", 4)


def test_metrics_job_fails_on_a_base_layer_past_the_stored_model(tmp_path, items):
    """The model's depth comes from the store's manifest: base layer 9 of a 3-block model, once, before any item."""
    store = write_store(tmp_path / "s.zarr", items[:2], extra={"n_layers": 3})
    options = copy.deepcopy(SECTION) | {"dtw": {"base_layer": 9, "metric": "cos", "band": None}}
    with pytest.raises(ValueError, match=r"^metrics.dtw.base_layer: 9 is out of range for m \(layers 0\.\.3\)$"):
        run(tmp_path, items[:2], [store], options=options)


def test_path_baselines_on_a_planted_alignment(one_shard, items):
    """Speech = each text token repeated over its word: the learned paths beat the proportional one (lift > 0 on
    average, never below 0 here since they are perfect), and the random path's mean hit rate is its expectation,
    the mean fraction of the span each word covers."""
    _, (_, table, _, _) = one_shard
    first = table.groupby("id").first()
    assert (table["gt_lift_argmax"] >= 0).all() and table["gt_lift_argmax"].mean() > 0.05
    np.testing.assert_allclose(table["gt_lift_dtw"], table["gt_hit_dtw"] - table["gt_hit_proportional"])
    for it in items[:5]:
        reps = np.bincount(it["word_S"])
        assert first.loc[it["id"], "gt_hit_random_expected"] == pytest.approx((reps / reps.sum()).mean())
    assert first["gt_hit_random"].mean() == pytest.approx(first["gt_hit_random_expected"].mean(), abs=0.1)
    assert table["gt_hit_dtw_mincost"].between(0, 1).all()
    assert table.groupby("id")["gt_hit_proportional"].nunique().eq(1).all()  # reads no states: one value per item


def test_cka_null_and_truth_pairing(one_shard):
    """Shuffled items give CKA near 0 and the matched layers stand far above their null; true-word pairs are a
    configuration of their own; the default readouts come with bootstrap agreement."""
    _, (summary, table, cka, readouts) = one_shard
    default = cka[(cka["config"] == "base1-cos-bandnone") & (cka["estimator"] == "biased")]
    assert default["null_mean"].abs().max() < 0.25
    diagonal = default[default["speech_layer"] == default["text_layer"]]
    assert (diagonal["cka_z"] > 5).all()
    np.testing.assert_allclose(default["cka_excess"], default["cka"] - default["null_mean"])
    truth = cka[(cka["config"] == "truth-pairs") & (cka["estimator"] == "biased")]
    assert len(truth) == len(default) and truth["metric"].eq("truth").all()
    row = readouts[(readouts["config"] == "base1-cos-bandnone") & (readouts["estimator"] == "biased")]
    assert row["best_agreement"].between(0, 1).all() and (row["n_boot"] == SECTION["cka"]["n_boot"]).all()
    assert table["std_l2_truth"].notna().all()
    stability = summary["cka_stability_vs_default"]["base2-cos-bandnone/biased"]
    assert set(stability) == {"best_match_agreement", "band_jaccard", "matrix_correlation"}


def test_post_norm_last_layer_is_excluded_by_default(tmp_path, items):
    """A store that records the model's depth (4 blocks: layer 3 here is the post-norm state) loses that layer
    from every metric under the default, and the metadata says so."""
    store = write_store(tmp_path / "s.zarr", items[:6], extra={"n_layers": 3})
    summary, table, cka, _ = run(tmp_path, items[:6], [store], options=SECTION | {"last_layer": "exclude"})
    assert sorted(table["layer"].unique()) == [0, 1, 2] and cka["speech_layer"].max() == 2
    assert summary["last_layer"].startswith("excluded")


def test_stores_whose_every_item_was_skipped_fail_naming_the_model(tmp_path, items):
    with StoreWriter(tmp_path / "e.zarr", model="m", layers=LAYERS, d=D, n_options=2, dtype="float32") as w:
        w.skip("q0", "S", "item q0: audio is 40.00 s, longer than the window")
    with pytest.raises(ValueError, match=r"^m: no item in its stores \S+e\.zarr \(1 skipped by the states stage\)$"):
        run(tmp_path, items[:1], [str(tmp_path / "e.zarr")])


def test_heatmaps_pick_the_first_items_the_states_stage_did_not_skip(tmp_path, items):
    """q0 was skipped (its shard holds no item): the first two usable items drawn are q1 and q2."""
    with StoreWriter(tmp_path / "skipped.zarr", model="m", layers=LAYERS, d=D, n_options=2, dtype="float32") as w:
        w.skip("q0", "S", "item q0: audio is 40.00 s, longer than the window")
    stores = [str(tmp_path / "skipped.zarr"), write_store(tmp_path / "s.zarr", items[1:4])]
    table = corpus(items[:4]).assign(words=[[f"w{j}" for j in range(len(it["word_T"]))] for it in items[:4]])
    table.to_parquet(tmp_path / "c.parquet")
    assert heatmap_data(stores, tmp_path / "c.parquet", 2, [1], "corpus", None, tmp_path / "h.npz") == ["q1", "q2"]
    assert list(np.load(tmp_path / "h.npz")["ids"]) == ["q1", "q2"]
