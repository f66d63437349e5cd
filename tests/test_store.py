"""modgap.states.store: exact round trips, ragged layout, resume after a kill or crash, corruption, BitRound, lazy reads."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from zarr.storage import LocalStore

from modgap.states.store import (MIN_SAVING, CondBatch, CorruptStoreError, StoreReader, StoreWriter, chunk_positions,
                                 compression_saving, disk_factor, estimate_bytes, predictions_table, responses_table)

LAYERS, D, P = [0, 3, 5], 8, 16  # P positions per chunk: small, so that items straddle chunks
ROW_SHAPE, ROW_ITEMS = (2, 3), 3  # a ragged field: [positions, 2, 3] rows for the first 3 items only
SETUP = dict(model="tiny", layers=LAYERS, d=D, n_options=4, config_hash="abc", extra={"shard": 0},
             positions_per_chunk=P)


def make_items(n: int, seed: int = 0, dtype: torch.dtype = torch.float32, d: int = D) -> list[dict]:
    """Random items: S has 5-24 positions with time spans and words, T 1-9 tokens with words; the first ROW_ITEMS
    items have ragged rows [positions, *ROW_SHAPE], the others none."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        it = {"id": f"q{i}", "pred": i % 3, "correct": i % 2, "loglik": np.arange(2 + i % 3, dtype=np.float32)}
        for c, (lo, hi) in {"S": (5, 25), "T": (1, 10)}.items():
            t = int(torch.randint(lo, hi, (), generator=g))
            it[c] = {"h": (torch.randn(len(LAYERS), t, d, generator=g) * 3).to(dtype), "seq": np.arange(t) + 7,
                     "word": np.arange(t) // 2, "start_ms": np.arange(t) * 40 if c == "S" else None,
                     "end_ms": np.arange(t) * 40 + 40 if c == "S" else None,
                     # a generator of their own: the items' shapes stay those of the tests written before rows
                     "rows": np.random.default_rng([seed, i]).random((t if i < ROW_ITEMS else 0, *ROW_SHAPE),
                                                                    np.float32)}
        items.append(it)
    return items


def cat(parts: list) -> np.ndarray | None:
    return None if parts[0] is None else np.concatenate(parts)


def append(w: StoreWriter, items: list[dict], batch: int = 3) -> None:
    for b in range(0, len(items), batch):
        its = items[b: b + batch]
        conds = {c: CondBatch(torch.cat([x[c]["h"] for x in its], 1), [x[c]["h"].shape[1] for x in its],
                              cat([x[c]["seq"] for x in its]), [x["pred"] for x in its],
                              [x["correct"] for x in its], np.stack([np.pad(x["loglik"], (0, 4 - len(x["loglik"])),
                                                                            constant_values=np.nan) for x in its]),
                              word=cat([x[c]["word"] for x in its]), start_ms=cat([x[c]["start_ms"] for x in its]),
                              end_ms=cat([x[c]["end_ms"] for x in its]),
                              ragged={f: [x[c]["rows"] for x in its] for f in w.setup["ragged"]}) for c in "ST"}
        w.append([x["id"] for x in its], conds)


def write(path: Path, items: list[dict], **kw) -> StoreReader:
    with StoreWriter(path, **{**SETUP, **kw}) as w:
        append(w, items)
    return StoreReader(path)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_round_trip_exact(tmp_path, dtype):
    tdt = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    items = make_items(7, dtype=tdt)
    r = write(tmp_path / "s.zarr", items, dtype=dtype, compression="none" if dtype == "float32" else "zstd")
    assert r.items == [x["id"] for x in items] and r.manifest["n_items"] == 7 and r.manifest["extra"] == {"shard": 0}
    for c in "ST":
        for i, h in r.iter_items(c):
            assert h.dtype == tdt and torch.equal(h, items[i][c]["h"])
    h = zarr.open_array(tmp_path / "s.zarr" / "S" / "hidden", mode="r")
    assert h.dtype == (np.uint16 if dtype == "bfloat16" else np.dtype(dtype))
    assert (h.attrs.get("dtype_bits") == "bfloat16") == (dtype == "bfloat16")


def test_ragged_metadata_and_layer_subset(tmp_path):
    items = make_items(8)
    r = write(tmp_path / "s.zarr", items)
    assert r.layers == LAYERS
    for c in "ST":
        assert list(np.diff(r.offsets(c))) == [x[c]["h"].shape[1] for x in items]
        for i, it in enumerate(items):
            pos = r.positions(c, i)
            assert (pos["item"] == i).all() and list(pos["seq"]) == list(it[c]["seq"])
            assert list(pos["word"]) == list(it[c]["word"])
            assert list(pos["start_ms"]) == (list(it[c]["start_ms"]) if c == "S" else [-1] * len(pos))
            assert torch.equal(r.hidden(c, i, layers=[5, 0]), it[c]["h"][[2, 0]].half())
        assert len(r.positions(c)) == r.offsets(c)[-1]
    np.testing.assert_array_equal(r.loglik("T")[2], [0, 1, 2, 3])
    assert np.isnan(r.loglik("T")[0, 2:]).all()
    p = predictions_table(r)
    assert len(p) == 16 and list(p.columns) == ["item", "id", "condition", "prediction", "correct", "score"]
    assert (p["score"] == p["correct"]).all()  # multiple choice: the score is the correctness
    assert list(p[p.condition == "T"].prediction) == [x["pred"] for x in items]
    with pytest.raises(ValueError, match="layers \\[1\\] not stored"):
        r.hidden("S", 0, layers=[1])


def test_scores_responses_and_reasons(tmp_path):
    """Open-task items: fractional and missing scores, generated answers and reasons survive the store."""
    items = make_items(4)
    score, response = [1.0, 0.25, np.nan, 0.0], ["I'm sorry.", "ok, sure", "Canberra", ""]
    reason = ["", "", "unscored: no PEDANT", "unparsed: the answer names no choice"]
    with StoreWriter(tmp_path / "s.zarr", **SETUP) as w:
        conds = {c: CondBatch(torch.cat([x[c]["h"] for x in items], 1), [x[c]["h"].shape[1] for x in items],
                              cat([x[c]["seq"] for x in items]), [-1, -1, -1, -1], [1, 0, -1, 0],
                              score=score, response=[f"{c}: {t}" for t in response], reason=reason) for c in "ST"}
        w.append([x["id"] for x in items], conds)
    r = StoreReader(tmp_path / "s.zarr")
    t = responses_table(r)
    assert list(t.columns) == ["id", "condition", "response", "score", "prediction", "reason"] and len(t) == 8
    s = t[t.condition == "S"]
    assert list(s.response) == [f"S: {x}" for x in response] and list(s.reason) == reason
    np.testing.assert_array_equal(s.score, np.array(score, np.float32))
    assert list(r.items_table()["correct_T"]) == [1, 0, -1, 0]
    w = StoreWriter(tmp_path / "bad.zarr", **SETUP)
    bad = CondBatch(items[0]["S"]["h"], [items[0]["S"]["h"].shape[1]], items[0]["S"]["seq"], [0], [1], score=[1.5])
    with pytest.raises(ValueError, match=r"S.score: values outside \[0, 1\]"):
        w.append(["x"], {"S": bad, "T": bad})


def test_chunk_size_realistic(tmp_path):
    for d in (256, 896, 1280, 2048, 3584, 4096, 5120, 8192):
        for dtype, size in (("float16", 2), ("bfloat16", 2), ("float32", 4)):
            assert 1 << 20 <= chunk_positions(d, dtype) * d * size <= 8 << 20
    p = chunk_positions(3584)  # Qwen2-Audio's LLM: 1170 positions, 8.0 MiB
    assert math.ceil(750 / p) + 1 <= 2  # one layer of 30 s of audio (750 positions) touches <= 2 chunks
    w = StoreWriter(tmp_path / "big.zarr", **{**SETUP, "layers": range(33), "d": 3584, "positions_per_chunk": None}, compression="none",
                    background=False)  # creates the arrays; writes no data
    assert zarr.open_array(w.partial / "S" / "hidden", mode="r").chunks == (1, p, 3584)
    assert not (tmp_path / "big.zarr").exists()


RESUME_KW = {"bitround_bits": 7,  # re-encoding the reloaded head chunk must be idempotent too
             "ragged": {"rows": ROW_SHAPE}}  # rows of the first items, committed with their items


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list[dict], Path]:
    items, path = make_items(14, seed=1), tmp_path_factory.mktemp("ref") / "ref.zarr"
    write(path, items, **RESUME_KW)
    return items, path


@pytest.mark.parametrize("failure", ["kill_between_batches", "crash_before_commit", "crash_mid_batch"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, uninterrupted, failure):
    (items, ref), kw = uninterrupted, RESUME_KW
    path = tmp_path / "s.zarr"
    w = StoreWriter(path, **SETUP, **kw)
    if failure == "kill_between_batches":
        append(w, items[:9])
        w.flush()  # then the process dies: no close
    else:  # the writer thread fails after writing part of a commit (its rows), or all of it but the n_done record
        calls, fail_at = [0], {"crash_before_commit": 3, "crash_mid_batch": 75}[failure]
        target = zarr.Group if failure == "crash_before_commit" else zarr.Array
        method = "update_attributes" if failure == "crash_before_commit" else "__setitem__"
        orig = getattr(target, method)

        def flaky(self, *a, **k):
            calls[0] += 1
            if calls[0] == fail_at:
                raise OSError("disk gone")
            return orig(self, *a, **k)

        monkeypatch.setattr(target, method, flaky)
        with pytest.raises(RuntimeError, match="writer thread failed"):
            append(w, items)
            w.close()
        monkeypatch.undo()
    assert w.partial.exists() and not path.exists()
    n_done = zarr.open_group(w.partial, mode="r").attrs["n_done"]
    assert zarr.open_array(w.partial / "ids", mode="r")[n_done] != ""  # uncommitted items are on disk too
    (w.partial / "S" / "hidden" / "c.0.0.1234abcd.partial").write_bytes(b"torn")  # zarr temp file
    w2 = StoreWriter(path, **SETUP, **kw)
    assert 0 < w2.n_done == n_done < 14 and w2.done_ids == [x["id"] for x in items[:n_done]]
    append(w2, items[w2.n_done:])
    assert not path.exists()
    w2.close()
    assert not w2.partial.exists()
    assert files(path) == files(ref)  # byte for byte, hence array by array


def test_ragged_fields_of_a_few_items(tmp_path):
    """A ragged field holds each item's own rows (none beyond the first ROW_ITEMS) and refuses a wrong row shape."""
    items = make_items(8)
    r = write(tmp_path / "s.zarr", items, ragged={"rows": ROW_SHAPE})
    assert r.ragged_fields == {"rows": ROW_SHAPE}
    for c in "ST":
        assert list(r.ragged_items(c, "rows")) == [x[c]["h"].shape[1] if i < ROW_ITEMS else 0
                                                  for i, x in enumerate(items)]
        for i, it in enumerate(items):
            np.testing.assert_array_equal(r.ragged(c, "rows", i), it[c]["rows"])
    assert write(tmp_path / "none.zarr", items).ragged_fields == {}
    with pytest.raises(KeyError, match="no ragged field 'other'"):
        r.ragged("S", "other", 0)
    w = StoreWriter(tmp_path / "bad.zarr", **SETUP, ragged={"rows": ROW_SHAPE}, background=False)
    items[0]["S"]["rows"] = np.zeros((4, 3, 2), np.float32)
    with pytest.raises(ValueError, match="S.ragged.rows: shapes"):
        append(w, items[:1])


def test_store_of_skipped_items_only(tmp_path):
    """Every item left out: a complete store with no item, whose manifest lists each skip once (the last record)."""
    with StoreWriter(tmp_path / "s.zarr", **SETUP) as w:
        w.skip("a", "S", "item a: first")
        w.skip("b", "S", "item b: unreadable")
        w.skip("a", "S", "item a: audio is 40.00 s")
    r = StoreReader(tmp_path / "s.zarr")
    assert r.items == [] and r.manifest["n_items"] == 0 and r.positions("S").empty
    assert r.skipped().values.tolist() == [["a", "S", "item a: audio is 40.00 s"], ["b", "S", "item b: unreadable"]]
    assert list(r.iter_items("T")) == [] and r.items_table().empty


def test_corrupt_chunk_detected(tmp_path):
    path = tmp_path / "s.zarr"
    write(path, make_items(4))
    chunk = path / "S" / "hidden" / "c.1.0.0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = StoreReader(path)
    r.hidden("S", 0, layers=[0])  # other chunks still read
    with pytest.raises(CorruptStoreError, match=f"store {path}: array 'S/hidden'.*checksum"):
        r.hidden("S", 0)


def structured(n: int, seed: int, d: int = 64) -> list[dict]:
    """Items whose S and T share an item direction, plus a common offset, position noise and a few large dims."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(d)
    scale[:3] = 40  # massive-activation dimensions
    common = torch.randn(d, generator=g)
    items = make_items(n, seed, d=d)
    for it in items:
        topic = torch.randn(d, generator=g)
        for c in "ST":
            t = it[c]["h"].shape[1]
            it[c]["h"] = (common + topic + 0.7 * torch.randn(len(LAYERS), t, d, generator=g)) * scale
    return items


def test_bitround_effect_on_metrics(tmp_path):
    """BitRound keeping 7 of fp16's 10 mantissa bits moves each value by <= 2^-8 of itself, so a mean-pooled span
    m moves by e with |e| <= 2^-8 |mean |h||. That bounds the P1 metrics: |d l2| <= |e_S| + |e_T| and
    |d cos| <= asin(|e_S|/|m_S|) + asin(|e_T|/|m_T|). Measured here: |d cos| max 1.1e-3, median 5e-5 (fp16 vs
    fp32 alone: max 1.5e-4); relative |d l2| max 1.4%, median 0.1%, largest where m_S and m_T are nearly parallel
    (shared large dimensions), as in deep layers. On disk the hidden chunks take at most what
    `disk_factor` (13/16 of fp16) predicts; here 0.78 of the raw bytes, lossless zstd 0.93."""
    items = structured(24, seed=3)
    kw = {"d": 64, "positions_per_chunk": 256, "compression": "zstd"}
    exact, lossy = write(tmp_path / "a.zarr", items, **kw), write(tmp_path / "b.zarr", items, bitround_bits=7, **kw)
    dcos = []
    for i in range(len(items)):
        (a_s, a_t), (b_s, b_t) = ((r.hidden(c, i).float() for c in "ST") for r in (exact, lossy))
        # half a unit in the 7th kept bit; fp16 subnormals (< 2^-14) have a fixed quantum, 2^-22 after rounding
        assert ((b_s - a_s).abs() <= a_s.abs() * 2 ** -8 + 2 ** -22).all()
        (ma_s, ma_t), (mb_s, mb_t) = (a_s.mean(1), a_t.mean(1)), (b_s.mean(1), b_t.mean(1))
        e_s, e_t = ((x.abs().mean(1) * 2 ** -8 + 2 ** -22).norm(dim=-1) for x in (a_s, a_t))
        d_l2 = ((ma_s - ma_t).norm(dim=-1) - (mb_s - mb_t).norm(dim=-1)).abs()
        assert (d_l2 <= (e_s + e_t) * 1.001).all()
        d_cos = (torch.cosine_similarity(ma_s, ma_t, -1) - torch.cosine_similarity(mb_s, mb_t, -1)).abs()
        bound = torch.asin((e_s / ma_s.norm(dim=-1)).clamp(max=1)) + torch.asin((e_t / ma_t.norm(dim=-1)).clamp(max=1))
        assert (d_cos <= bound + 1e-6).all()
        dcos.append(d_cos)
    assert torch.cat(dcos).max() < 2e-3 and torch.cat(dcos).median() < 2e-4
    size = {k: sum(len(v) for f, v in files(tmp_path / f"{k}.zarr").items() if f.startswith("S/hidden/c."))
            for k in "ab"}
    raw = exact.offsets("S")[-1] * len(LAYERS) * 64 * 2
    assert size["a"] <= raw and size["b"] <= raw * disk_factor("float16", 7) * 1.02
    for reader, bits in ((exact, None), (lossy, 7)):  # the dry run's estimate against the whole store on disk
        n = len(reader.items)
        on_disk = sum(len(v) for v in files(reader.path).values())
        estimate = estimate_bytes(n, reader.offsets("S")[-1] / n, reader.offsets("T")[-1] / n, LAYERS, 64,
                                  bitround_bits=bits)
        assert abs(estimate - on_disk) < 0.15 * on_disk


def test_reader_reads_only_needed_chunks(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    write(path, make_items(12))
    r = StoreReader(path)
    keys: list[str] = []
    orig = LocalStore.get

    async def get(self, key, *a, **k):
        keys.append(key)
        return await orig(self, key, *a, **k)

    monkeypatch.setattr(LocalStore, "get", get)
    s, e = r.offsets("S")[5:7]
    r.hidden("S", 5, layers=[3])
    assert sorted(keys) == [f"S/hidden/c.1.{k}.0" for k in range(s // P, (e - 1) // P + 1)]
    keys.clear()
    list(r.iter_items("S", layers=[0]))
    n_chunks = math.ceil(r.offsets("S")[-1] / P)
    assert set(keys) == {f"S/hidden/c.0.{k}.0" for k in range(n_chunks)} and len(keys) < 2 * n_chunks


def test_writer_checks_and_estimate(tmp_path):
    w = StoreWriter(tmp_path / "s.zarr", **SETUP)
    bad = CondBatch(torch.zeros(2, 4, D), [4], np.arange(4), [0], [1])
    with pytest.raises(ValueError, match="expected \\[layers, N, d\\]"):
        w.append(["x"], {"S": bad, "T": bad})
    big = CondBatch(torch.full((3, 4, D), 1e5), [4], np.arange(4), [0], [1])
    with pytest.raises(ValueError, match="float16 range"):
        w.append(["x"], {"S": big, "T": big})
    with pytest.raises(ValueError, match="BitRound needs"):
        StoreWriter(tmp_path / "u.zarr", **SETUP, dtype="bfloat16", bitround_bits=7)
    with pytest.raises(ValueError, match="BitRound needs"):
        StoreWriter(tmp_path / "u.zarr", **SETUP, bitround_bits=7, compression="none")
    append(w, make_items(9))
    w.flush()
    assert StoreWriter(tmp_path / "s.zarr", **SETUP, background=False).n_done > 0  # same setup: resumed
    assert StoreWriter(tmp_path / "s.zarr", **{**SETUP, "config_hash": "new"}, background=False).n_done == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StoreReader(write(tmp_path / "t.zarr", make_items(2), bitround_bits=5).path)  # no zarr warning leaks
    with pytest.raises(FileExistsError):
        StoreWriter(tmp_path / "t.zarr", **SETUP)
    # 2 bytes a value in fp16: 100 items x (250 + 40) positions x 33 layers x 3584
    assert estimate_bytes(100, 250, 40, 33, 3584) == 100 * 290 * (33 * 3584 * 2 + 20) + 6400
    assert estimate_bytes(100, 250, 40, range(33), 3584, bitround_bits=7) < 0.82 * estimate_bytes(100, 250, 40, 33, 3584)


def hidden_chunk_bytes(path: Path) -> int:
    return sum(len(v) for f, v in files(path).items() if f.split("/")[1:2] == ["hidden"] and "/c." in f)


def test_compression_saving_known_cases():
    rng = np.random.default_rng(0)
    assert compression_saving(np.zeros(1 << 16, np.float16)) > 0.99
    assert compression_saving(rng.integers(0, 256, 1 << 16, dtype=np.uint8)) < 0.01  # random bytes: incompressible


@pytest.mark.parametrize("data", ["gaussian", "half_zero"])
def test_auto_compression(tmp_path, data):
    """auto keeps zstd only when it saves >= 10%: not on Gaussian fp16 states (random low bytes: ~3%), yes when half
    of every state is exact zeros; either way the states come back exactly."""
    d = 64
    items = make_items(10, seed=4, dtype=torch.float16, d=d)
    if data == "half_zero":
        for it in items:
            for c in "ST":
                it[c]["h"][..., d // 2:] = 0
    r = write(tmp_path / "s.zarr", items, d=d)
    zstd = data == "half_zero"
    assert r.manifest["compression"] == "auto" and r.manifest["compressor"] == ("zstd" if zstd else "none")
    assert (r.manifest["compression_saving"] >= MIN_SAVING) == zstd
    chunks = sum(math.ceil(r.offsets(c)[-1] / P) * len(LAYERS) for c in "ST")
    raw = chunks * (P * d * 2 + 4)  # an uncompressed chunk: P x d fp16 values and its crc32c
    assert hidden_chunk_bytes(r.path) < (1 - MIN_SAVING) * raw if zstd else hidden_chunk_bytes(r.path) == raw
    for c in "ST":
        for i, h in r.iter_items(c):
            assert torch.equal(h, items[i][c]["h"])


def test_auto_compression_resumed(tmp_path):
    """A store killed after auto decided (rows written) resumes with the same choice, byte for byte; one killed
    before the first row is written resumes undecided."""
    items = make_items(10, seed=5, dtype=torch.float16)
    kw = {**SETUP, "positions_per_chunk": 32}  # more than an item's positions
    ref = write(tmp_path / "ref.zarr", items, positions_per_chunk=32)
    path = tmp_path / "s.zarr"
    w = StoreWriter(path, **kw, background=False)
    append(w, items[:1], batch=1)  # fewer than P positions per condition: no row written, nothing decided
    assert not (w.partial / "S" / "hidden").exists() and "compressor" not in zarr.open_group(w.partial).attrs
    w = StoreWriter(path, **kw, background=False)
    assert w.n_done == 0
    append(w, items[:6])
    w = StoreWriter(path, **kw, background=False)  # the first process died without close
    assert 0 < w.n_done < 10
    append(w, items[w.n_done:])
    w.close()
    assert files(path) == files(ref.path)
