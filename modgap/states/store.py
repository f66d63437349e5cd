"""Hidden-state store: one zarr v3 group per (model, dataset, shard), ragged over items, written in the background.

Layout (cond: each condition the writer is given, S and T by default; shapes in brackets):
  ids                                       [items] str
  {cond}/hidden                             [layers, positions, d] float16 | float32 | uint16 bits of bfloat16
                                            (then the array attribute `dtype_bits: bfloat16`)
  {cond}/offsets                            [items+1] int64: item i owns positions offsets[i]:offsets[i+1]
  {cond}/item, seq, word, start_ms, end_ms  [positions] int32: item index, index in the model's full input
                                            sequence, word index, time span in ms; -1 where none
  {cond}/pred [items] int16 (-1 unparsed), {cond}/correct [items] int8 (1: full credit, 0: not, -1: unscored),
  {cond}/score [items] float32 in [0, 1] (the correct option for multiple choice, a task's evaluator for an open
  task; NaN: unscored), {cond}/loglik [items, n_options] float32
  {cond}/response, reason                   [items] str: the generated answer and why the item is unscored or
                                            unparsed ("" where none)
  {cond}/readouts/{field}                   [items, *shape] float32: each readout field of `modgap.states.readouts`
                                            (the manifest's `readouts` maps field -> per-item shape); NaN where none
  {cond}/ragged/{field}/values              [rows, *shape] float32: each ragged readout field (the manifest's
                                            `ragged` maps field -> per-row shape), kept for a few items only, e.g.
                                            the attention readout's `attn_rows` [n, L+1, heads] of the heatmap items
  {cond}/ragged/{field}/offsets             [items+1] int64: item i owns rows offsets[i]:offsets[i+1] (none: equal)
Group attributes: the manifest, `n_done` (items committed) and `complete`; a complete store's `skipped` lists the
items left out, each {id, condition, reason} (`StoreWriter.skip`); `compressor` (zstd or none: what the hidden
arrays use, `compression` asked for it) and `compression_saving` (the fraction of the probed bytes zstd saved;
null when nothing was probed). Every chunk ends in a crc32c.
One job must own the whole group: zarr has no locks, and two writers in one chunk silently lose data.
"""
from __future__ import annotations

import contextlib
import queue
import shutil
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pandas as pd
import torch
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.codecs.numcodecs import BitRound
from zarr.errors import ZarrUserWarning

POS_FIELDS = ("item", "seq", "word", "start_ms", "end_ms")
ITEM_FIELDS = ("pred", "correct", "score", "loglik", "response", "reason")
TEXT_FIELDS = ("response", "reason")  # per-item strings
DTYPES = {"float16": (np.float16, torch.float16), "float32": (np.float32, torch.float32),
          "bfloat16": (np.uint16, torch.bfloat16)}
CHUNK_BYTES = 8 << 20  # target size of one hidden chunk (`chunk_positions`)
MAX_CHUNK_POSITIONS = 2048  # at most this many positions per hidden chunk (`chunk_positions`)
ITEM_CHUNK, POS_CHUNK = 4096, 65536  # chunk lengths of the small per-item and per-position arrays
_EXP_BITS = {"float16": 5, "float32": 8}
ZSTD_LEVEL = 1
MIN_SAVING = 0.10  # compression "auto" keeps zstd only when it saves at least this fraction of the probed bytes
WRITE_CONFIG = {"write_empty_chunks": True}  # no all-fill scan of every chunk written (a runtime setting: not stored)
PROBE_POSITIONS = 64  # positions of every layer that compression "auto" compresses to decide


class CorruptStoreError(OSError):
    """A chunk failed its crc32c check (or failed to decode); the message names the store and the array."""


def chunk_positions(d: int, dtype: str = "float16", target: int = CHUNK_BYTES) -> int:
    """Positions P per hidden chunk. A chunk is `[1, P, d]`: one layer, P consecutive positions, ~`target` bytes.

    One layer per chunk, because the analyses read (item, layer) slices: with all L layers in one chunk, P would
    be ~16 positions at L=33, d=3584, and one layer of one item would decode 33x the bytes it needs. With
    `[1, P, d]` an item of T positions touches ceil(T/P)+1 chunks per layer (P=1170 at d=3584 fp16: <= 2 chunks
    for 30 s of audio), and all layers of an item touch L times that, wasting only the edges.
    Why 8 MiB (P=1024 at d=4096 fp16): the writer pays a fixed cost per chunk (a file, a round trip through zarr's
    event loop); bench/store_write.py at 33 x 4096 fp16 on 2 busy cores (bench/README.md) wrote a median 70-81 MB/s
    (compression none, auto) with 2 MiB chunks, 90-98 MB/s with 4 MiB and 118-125 MB/s with 8 MiB. The metrics
    stage streams items (`StoreReader.iter_items`) and decodes each chunk once whatever P is, holding one row of
    chunks: L x P x d (277 MB at 33 x 1024 x 4096 fp16) per condition; a single-item read (`StoreReader.hidden`,
    heatmaps) of a 60 position item decodes 1-2 chunks per layer, up to 34x the bytes it needs (2 MiB: 8.5x).
    At most MAX_CHUNK_POSITIONS: zarr writes a store's last, short row of chunks whole, and without zstd its padding
    stays on disk, so small d (lab models, tests) must not get chunks of tens of thousands of positions.
    """
    return max(1, min(MAX_CHUNK_POSITIONS, target // (d * np.dtype(DTYPES[dtype][0]).itemsize)))


def disk_factor(dtype: str = "float16", bitround_bits: int | None = None) -> float:
    """Bytes on disk per byte of hidden state. Lossless zstd gains only 1.06-1.26x on activations: plan 1.0.
    BitRound keeping k mantissa bits leaves about (1 + exponent bits + k) of the word's bits, as measured by
    bench/store_write.py and tests/test_store.py: fp16 at k=7, 0.80 of the raw bytes (13/16 predicted), k=3, 0.57."""
    if bitround_bits is None:
        return 1.0
    return (1 + _EXP_BITS[dtype] + bitround_bits) / (8 * np.dtype(DTYPES[dtype][0]).itemsize)


def readout_chunk(shape: Sequence[int]) -> int:
    """Items per chunk of a float32 readout field of per-item `shape`: ITEM_CHUNK, fewer when that would exceed
    CHUNK_BYTES (a [L+1, d] decision state is 0.5 MB per item: 4 items per chunk, not 2 GB of 4096)."""
    return int(max(1, min(ITEM_CHUNK, CHUNK_BYTES // (4 * int(np.prod(shape))))))


def estimate_bytes(n_items: int, mean_positions_s: float, mean_positions_t: float, layers: int | Sequence[int],
                   d: int, dtype: str = "float16", bitround_bits: int | None = None) -> int:
    """Bytes on disk of one store: hidden states of S and T plus 20 bytes of metadata per position."""
    n_layers = layers if isinstance(layers, int) else len(layers)
    per_value = np.dtype(DTYPES[dtype][0]).itemsize * disk_factor(dtype, bitround_bits)
    positions = n_items * (mean_positions_s + mean_positions_t)
    return int(positions * (n_layers * d * per_value + 4 * len(POS_FIELDS)) + 64 * n_items)


@dataclass
class CondBatch:
    """One condition of a batch of B items, positions packed item after item: N = sum(lengths)."""

    hidden: torch.Tensor  # [layers, N, d], any device, any float dtype
    lengths: Sequence[int]  # [B]
    seq: Any  # [N] index in the model's full input sequence
    pred: Any  # [B] predicted option, -1 unparsed
    correct: Any  # [B] 0/1
    loglik: Any = None  # [B, k <= n_options] option log-likelihoods
    word: Any = None  # [N] word index, -1 none
    start_ms: Any = None  # [N]
    end_ms: Any = None  # [N]
    readouts: dict[str, Any] | None = None  # field -> [B, *shape] per-item readout values
    score: Any = None  # [B] in [0, 1], NaN unscored; None: `correct` (multiple choice)
    response: Sequence[str] | None = None  # [B] generated answers, "" where none; None: none at all
    reason: Sequence[str] | None = None  # [B] why unscored or unparsed, "" where nothing to say
    ragged: dict[str, Sequence[Any]] | None = None  # field -> B arrays [rows_b, *shape] (rows_b may be 0)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence zarr's warning that numcodecs codecs (BitRound) are outside the v3 spec."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Numcodecs codecs", ZarrUserWarning)
        yield


def _arrays(g: zarr.Group) -> dict[str, zarr.Array]:
    with _quiet():
        return {k: v for k, v in g.members(max_depth=None) if isinstance(v, zarr.Array)}


def _np(x: Any, n: int, dtype: type, name: str) -> np.ndarray:
    """`x` (array-like or tensor; None means all -1) as a numpy array of length `n`."""
    if x is None:
        return np.full(n, -1, dtype)
    a = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(dtype)
    if len(a) != n:
        raise ValueError(f"{name}: length {len(a)}, expected {n}")
    return a


def _score(b: CondBatch, n: int, cond: str) -> np.ndarray:
    """[n] float32 scores of a batch (its correctness when none are given); ValueError outside [0, 1]."""
    score = _np(b.correct, n, np.float32, f"{cond}.correct") if b.score is None else _np(b.score, n, np.float32,
                                                                                        f"{cond}.score")
    if ((score < 0) | (score > 1)).any():
        raise ValueError(f"{cond}.score: values outside [0, 1]: {sorted(set(score[(score < 0) | (score > 1)]))}")
    return score


def _texts(x: Sequence[str] | None, n: int, name: str) -> np.ndarray:
    """[n] object array of strings ("" for all when None)."""
    a = np.array([""] * n if x is None else [str(v) for v in x], dtype=object)
    if len(a) != n:
        raise ValueError(f"{name}: length {len(a)}, expected {n}")
    return a


def _resize(arr: zarr.Array, axis: int, n: int) -> None:
    """Set the length along `axis` to `n`; shrinking deletes the chunks that fall outside."""
    if arr.shape[axis] != n:
        arr.resize(arr.shape[:axis] + (n,) + arr.shape[axis + 1:])


def compression_saving(sample: np.ndarray) -> float:
    """Fraction of the bytes of `sample` (any array) that zstd at `ZSTD_LEVEL` saves."""
    return 1 - len(numcodecs.Zstd(level=ZSTD_LEVEL).encode(np.ascontiguousarray(sample))) / max(1, sample.nbytes)


def _put(arr: zarr.Array, start: int, values: np.ndarray, axis: int = 0) -> None:
    """Write `values` at `start` along `axis`, growing the array a chunk at a time (`_truncate` sets exact sizes)."""
    end, step = start + values.shape[axis], arr.chunks[axis]
    if arr.shape[axis] < end:
        _resize(arr, axis, -(-end // step) * step)
    arr[(slice(None),) * axis + (slice(start, end),)] = values


class StoreWriter:
    """Write a store at `path` through `<path>.partial/`, renamed to `path` by `close()`.

    A partial store of the same setup (model, config hash, layers, dtype, ...) is resumed, one of another setup
    is discarded. Resumed, its first `n_done` items (`done_ids`) are committed, the caller appends the items after
    them, and anything written after the last commit is dropped. Items the caller leaves out are recorded with
    `skip`; the records are kept in memory until `close`, so a resumed caller meets its skipped items again.
    Hidden states are gathered into one row of chunks per condition (`[layers, P, d]`) and the writer thread writes
    whole chunks, each once, straight from that row or from the batch (no copy when a batch covers whole chunks);
    an item is committed once its positions are in written chunks in every condition. `append` moves tensors to
    CPU and hands them to the writer thread (a queue of 2 batches); the thread's errors are raised by the next
    `append`, `flush` or `close`.
    `compression`: "zstd" (level `ZSTD_LEVEL`), "none" (still checksummed), or "auto": zstd only if it saves at
    least `MIN_SAVING` of the first `PROBE_POSITIONS` positions of every layer of the first row of chunks written
    (BitRound always takes zstd). zstd saves 6-21% of fp16 activations and, on 2 busy cores, costs about a third
    of the write speed (bench/README.md).
    """

    def __init__(self, path: str | Path, *, model: str, layers: Sequence[int], d: int, n_options: int,
                 conds: Sequence[str] = ("S", "T"), dtype: str = "float16", bitround_bits: int | None = None,
                 compression: str = "auto", config_hash: str = "", extra: dict | None = None,
                 positions_per_chunk: int | None = None, background: bool = True,
                 readouts: dict[str, Sequence[int]] | None = None, ragged: dict[str, Sequence[int]] | None = None
                 ) -> None:
        if compression not in ("auto", "zstd", "none"):
            raise ValueError(f"compression {compression!r}: expected auto, zstd or none")
        if dtype not in DTYPES or (bitround_bits is not None and (dtype == "bfloat16" or compression == "none")):
            raise ValueError(f"dtype {dtype!r}, bitround_bits {bitround_bits}, compression {compression}: BitRound "
                             "needs float16 or float32, and zstd to gain anything")
        self.path, self.partial = Path(path), Path(f"{path}.partial")
        if self.path.exists():
            raise FileExistsError(f"{self.path}: a complete store is already there")
        self.dtype, self.extra, self.conds = dtype, extra or {}, list(conds)
        self.setup = {"format": "modgap.store/1", "model": model, "config_hash": config_hash,
                      "layers": [int(x) for x in layers], "d": d, "n_options": n_options, "conds": self.conds,
                      "dtype": dtype, "bitround_bits": bitround_bits, "compression": compression,
                      "chunk_positions": positions_per_chunk or chunk_positions(d, dtype),
                      "readouts": {k: [int(x) for x in v] for k, v in (readouts or {}).items()},
                      "ragged": {k: [int(x) for x in v] for k, v in (ragged or {}).items()}}
        self.item_fields = ITEM_FIELDS + tuple(f"readouts/{k}" for k in self.setup["readouts"])
        self._row: dict[str, np.ndarray] = {}  # [layers, P, d] row of chunks being filled, per condition
        self._fill = dict.fromkeys(conds, 0)  # positions in the row
        self._base = dict.fromkeys(conds, 0)  # hidden positions written, a multiple of P until `close`
        self._offsets = {c: np.zeros(1, np.int64) for c in conds}  # of every item appended
        self._ragged_offsets = {f"{c}/ragged/{f}": np.zeros(1, np.int64) for c in conds for f in self.setup["ragged"]}
        self._rows: list[tuple[list[str], dict[str, dict[str, np.ndarray]]]] = []  # metadata not yet written
        self._n_rows = 0  # items whose metadata is written
        self._skipped: dict[str, dict[str, str]] = {}  # item id -> {id, condition, reason}
        self._error: BaseException | None = None
        try:
            with _quiet():
                attrs = dict(zarr.open_group(self.partial, mode="r").attrs)
        except Exception:  # noqa: BLE001 - nothing there, or a wreck: start over
            attrs = {}
        self.n_done = self._resume() if {k: attrs.get(k) for k in self.setup} == self.setup else self._create()
        self.done_ids: list[str] = [str(i) for i in self._arrays["ids"][: self.n_done]]
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"store {path}") if background else None
        if self._thread:
            self._thread.start()

    def _create(self) -> int:
        shutil.rmtree(self.partial, ignore_errors=True)
        L, d, P, k = (self.setup[x] for x in ("layers", "d", "chunk_positions", "n_options"))
        specs: dict[str, tuple] = {"ids": ((0,), (ITEM_CHUNK,), str, "")}  # name: shape, chunks, dtype, fill
        for c in self.conds:
            specs |= {f"{c}/offsets": ((1,), (ITEM_CHUNK,), np.int64, 0),
                      **{f"{c}/{f}": ((0,), (POS_CHUNK,), np.int32, -1) for f in POS_FIELDS},
                      f"{c}/pred": ((0,), (ITEM_CHUNK,), np.int16, -1),
                      f"{c}/correct": ((0,), (ITEM_CHUNK,), np.int8, -1),
                      f"{c}/score": ((0,), (ITEM_CHUNK,), np.float32, np.nan),
                      **{f"{c}/{f}": ((0,), (ITEM_CHUNK,), str, "") for f in TEXT_FIELDS},
                      f"{c}/loglik": ((0, k), (ITEM_CHUNK, k), np.float32, np.nan),
                      **{f"{c}/readouts/{f}": ((0, *shape), (readout_chunk(shape), *shape), np.float32, np.nan)
                         for f, shape in self.setup["readouts"].items()}}
            for f, shape in self.setup["ragged"].items():
                specs |= {f"{c}/ragged/{f}/values": ((0, *shape), (readout_chunk(shape), *shape), np.float32, np.nan),
                          f"{c}/ragged/{f}/offsets": ((1,), (ITEM_CHUNK,), np.int64, 0)}
        self._group = zarr.open_group(self.partial, mode="w", attributes={**self.setup, "n_done": 0, "complete": False})
        self._arrays = {}
        self._add_arrays(specs, zstd=True)
        if self.setup["compression"] != "auto" or self.setup["bitround_bits"] is not None:
            self._create_hidden(None)
        return 0

    def _add_arrays(self, specs: dict[str, tuple], zstd: bool) -> None:
        """Create the arrays `specs` (name: shape, chunks, dtype, fill value), zstd-compressed if `zstd`, every chunk
        checksummed; the hidden ones with BitRound when asked."""
        bits, bf16 = self.setup["bitround_bits"], self.dtype == "bfloat16"
        with _quiet():
            for name, (shape, chunks, dtype, fill) in specs.items():
                hidden = name.endswith("/hidden")
                self._arrays[name] = self._group.create_array(
                    name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                    filters=[BitRound(keepbits=bits)] if hidden and bits is not None else [],
                    compressors=([ZstdCodec(level=ZSTD_LEVEL)] if zstd else []) + [Crc32cCodec()],
                    attributes={"dtype_bits": "bfloat16"} if hidden and bf16 else {},
                    # flat chunk files (c.0.1.0), not a directory per chunk row
                    chunk_key_encoding={"name": "default", "separator": "."}, config=WRITE_CONFIG)

    def _create_hidden(self, sample: np.ndarray | None) -> None:
        """Create every condition's hidden array, compressed as `compression` asks; "auto" decides on `sample`
        (None: nothing to probe, no zstd). The choice goes to the manifest (`compressor`, `compression_saving`)."""
        asked, bits = self.setup["compression"], self.setup["bitround_bits"]
        saving = None if sample is None or asked != "auto" or bits is not None else compression_saving(sample)
        zstd = asked == "zstd" or bits is not None or (saving is not None and saving >= MIN_SAVING)
        L, d, P = len(self.setup["layers"]), self.setup["d"], self.setup["chunk_positions"]
        self._add_arrays({f"{c}/hidden": ((L, 0, d), (1, P, d), DTYPES[self.dtype][0], 0) for c in self.conds}, zstd)
        self._group.update_attributes({"compressor": "zstd" if zstd else "none", "compression_saving": saving})

    def _resume(self) -> int:
        """Drop what follows the committed items; reload the head of the last, partly filled row of hidden chunks
        (none before the first row is written: "auto" compression is then still undecided)."""
        for stray in self.partial.rglob("*.partial"):  # zarr's atomic-write temp files, left by a kill
            stray.unlink()
        self._group = zarr.open_group(self.partial, mode="r+")
        self._arrays = {k: a.with_config(WRITE_CONFIG) for k, a in _arrays(self._group).items()}
        P = self.setup["chunk_positions"]
        n = self._n_rows = int(self._group.attrs["n_done"])
        for c in self.conds:
            self._offsets[c] = self._arrays[f"{c}/offsets"][: n + 1]
            end = int(self._offsets[c][-1])
            self._base[c] = end // P * P
            if end > self._base[c]:
                self._take(c, self._arrays[f"{c}/hidden"][:, self._base[c]:end])
        for name in self._ragged_offsets:
            self._ragged_offsets[name] = self._arrays[f"{name}/offsets"][: n + 1]
        self._truncate(n)
        return n

    def _truncate(self, n: int) -> None:
        """Size every array exactly for `n` items, the hidden states for their written positions."""
        a = self._arrays
        _resize(a["ids"], 0, n)
        for c in self.conds:
            if f"{c}/hidden" in a:
                _resize(a[f"{c}/hidden"], 1, self._base[c])
            _resize(a[f"{c}/offsets"], 0, n + 1)
            for f in POS_FIELDS:
                _resize(a[f"{c}/{f}"], 0, int(self._offsets[c][n]))
            for f in self.item_fields:
                _resize(a[f"{c}/{f}"], 0, n)
        for name, offsets in self._ragged_offsets.items():
            _resize(a[f"{name}/offsets"], 0, n + 1)
            _resize(a[f"{name}/values"], 0, int(offsets[n]))

    def _n(self) -> int:
        return len(self._offsets[self.conds[0]]) - 1

    def append(self, ids: Sequence[str], batches: dict[str, CondBatch]) -> None:
        """Queue B items, one `CondBatch` per condition; raises an earlier error of the writer thread."""
        self._check()
        job = ([str(i) for i in ids], {c: self._prepare(c, batches[c], len(ids)) for c in self.conds})
        if self._thread is None:
            self._write(*job)
        else:
            self._queue.put(job)

    def skip(self, item_id: str, condition: str, reason: str) -> None:
        """Record an item left out of the store: the condition whose input failed and why (the manifest's
        `skipped`, written by `close`; recording an item again replaces its record)."""
        self._skipped[str(item_id)] = {"id": str(item_id), "condition": condition, "reason": reason}

    def _prepare(self, cond: str, b: CondBatch, B: int) -> dict[str, np.ndarray]:
        """Validate; move the hidden states to CPU in one block, in the store dtype."""
        lengths = _np(b.lengths, B, np.int64, f"{cond}.lengths")
        N, L, d = int(lengths.sum()), len(self.setup["layers"]), self.setup["d"]
        h = b.hidden.detach()
        if tuple(h.shape) != (L, N, d):
            raise ValueError(f"{cond}.hidden: shape {tuple(h.shape)}, expected [layers, N, d] = {(L, N, d)}")
        if self.dtype == "float16" and h.dtype != torch.float16 and N:
            lo, hi = torch.aminmax(h)  # one pass, no temporary as large as h
            if max(-float(lo), float(hi)) > 65504:
                raise ValueError(f"{cond}.hidden: values beyond the float16 range; store as bfloat16 or float32")
        h = h.to(DTYPES[self.dtype][1]).to("cpu", copy=True)  # one device->host copy per batch and condition
        loglik = np.full((B, self.setup["n_options"]), np.nan, np.float32)
        if b.loglik is not None:
            ll = _np(b.loglik, B, np.float32, f"{cond}.loglik")
            loglik[:, : ll.shape[1]] = ll
        fields = self.setup["readouts"]
        given = b.readouts or {}
        if sorted(given) != sorted(fields):
            raise ValueError(f"{cond}.readouts: fields {sorted(given)}, expected {sorted(fields)}")
        readouts = {f"readouts/{f}": np.asarray(given[f], np.float32) for f in fields}
        for f, shape in fields.items():
            if readouts[f"readouts/{f}"].shape != (B, *shape):
                raise ValueError(f"{cond}.readouts.{f}: shape {readouts[f'readouts/{f}'].shape}, expected {(B, *shape)}")
        return {"hidden": h.view(torch.int16).numpy().view(np.uint16) if self.dtype == "bfloat16" else h.numpy(),
                **readouts, **self._ragged(cond, b.ragged or {}, B),
                "lengths": lengths, "loglik": loglik, "pred": _np(b.pred, B, np.int16, f"{cond}.pred"),
                "correct": _np(b.correct, B, np.int8, f"{cond}.correct"),
                "score": _score(b, B, cond),
                **{f: _texts(getattr(b, f), B, f"{cond}.{f}") for f in TEXT_FIELDS},
                **{f: _np(getattr(b, f), N, np.int32, f"{cond}.{f}") for f in POS_FIELDS[1:]}}

    def _ragged(self, cond: str, given: dict[str, Sequence[Any]], B: int) -> dict[str, np.ndarray]:
        """Validate the ragged fields of a batch: per field its rows packed item after item ([rows, *shape]) and
        the rows per item ([B])."""
        fields = self.setup["ragged"]
        if sorted(given) != sorted(fields):
            raise ValueError(f"{cond}.ragged: fields {sorted(given)}, expected {sorted(fields)}")
        out = {}
        for f, shape in fields.items():
            rows = [np.asarray(r, np.float32) for r in given[f]]
            if len(rows) != B or any(r.shape[1:] != tuple(shape) for r in rows):
                raise ValueError(f"{cond}.ragged.{f}: shapes {[r.shape for r in rows]}, expected {B} x "
                                 f"[rows, *{shape}]")
            out |= {f"ragged/{f}/values": np.concatenate(rows).reshape(-1, *shape),
                    f"ragged/{f}/lengths": np.array([len(r) for r in rows], np.int64)}
        return out

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:  # after an error, keep draining so that `append` never blocks
                try:
                    self._write(*job)
                except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
                    self._error = e
            self._queue.task_done()
        self._queue.task_done()

    def _write(self, ids: list[str], batches: dict[str, dict[str, np.ndarray]]) -> None:
        """Take a batch, write the rows of hidden chunks it completes, and commit when it completed some."""
        n0, flushed = self._n(), False
        for c, b in batches.items():
            b["item"] = (n0 + np.repeat(np.arange(len(ids)), b["lengths"])).astype(np.int32)
            self._offsets[c] = np.concatenate([self._offsets[c], self._offsets[c][-1] + np.cumsum(b["lengths"])])
            for f in self.setup["ragged"]:
                o = self._ragged_offsets[name := f"{c}/ragged/{f}"]
                self._ragged_offsets[name] = np.concatenate([o, o[-1] + np.cumsum(b[f"ragged/{f}/lengths"])])
            flushed |= self._take(c, b.pop("hidden"))
        self._rows.append((ids, batches))
        if flushed:
            self._commit()

    def _take(self, cond: str, h: np.ndarray) -> bool:
        """Add `h` [layers, n, d] to the condition's row of chunks, writing each row it completes (straight from `h`,
        without a copy, when the row is empty and `h` covers it); True if a row was written."""
        P, i, wrote = self.setup["chunk_positions"], 0, False
        while i < h.shape[1]:
            fill = self._fill[cond]
            k = min(P - fill, h.shape[1] - i)
            if k == P:
                self._write_row(cond, h[:, i:i + P])
            else:
                row = self._row.setdefault(cond, np.empty((h.shape[0], P, h.shape[2]), h.dtype))
                row[:, fill:fill + k] = h[:, i:i + k]
                self._fill[cond] += k
                if self._fill[cond] == P:
                    self._write_row(cond, row)
            i += k
            wrote = wrote or fill + k == P
        return wrote

    def _write_row(self, cond: str, row: np.ndarray) -> None:
        """Write `row` [layers, n <= P, d] as the next chunk of every layer; a whole row one chunk-shaped block at a
        time (which zarr encodes without copying), a short one (the store's last) through a slice."""
        if f"{cond}/hidden" not in self._arrays:
            self._create_hidden(row[:, :PROBE_POSITIONS])
        arr, P, start = self._arrays[f"{cond}/hidden"], self.setup["chunk_positions"], self._base[cond]
        if row.shape[1] == P:
            _resize(arr, 1, start + P)
            for layer in range(row.shape[0]):
                arr.set_block_selection((layer, start // P, 0), row[layer:layer + 1])
        else:
            _put(arr, start, row, axis=1)
        self._base[cond] += row.shape[1]
        self._fill[cond] = 0

    def _commit(self) -> None:
        """Write the buffered metadata rows (a few writes, however many batches), then record as committed the
        items whose hidden states all lie in flushed chunks, in every condition."""
        a, n0 = self._arrays, self._n_rows
        if self._rows:
            _put(a["ids"], n0, np.array([i for ids, _ in self._rows for i in ids], dtype=object))
            for c in self.conds:
                rows = {f: np.concatenate([b[c][f] for _, b in self._rows]) for f in POS_FIELDS + self.item_fields}
                _put(a[f"{c}/offsets"], n0 + 1, self._offsets[c][n0 + 1:])
                for f in POS_FIELDS:
                    _put(a[f"{c}/{f}"], int(self._offsets[c][n0]), rows[f])
                for f in self.item_fields:
                    _put(a[f"{c}/{f}"], n0, rows[f])
                for f in self.setup["ragged"]:
                    offsets = self._ragged_offsets[name := f"{c}/ragged/{f}"]
                    _put(a[f"{name}/offsets"], n0 + 1, offsets[n0 + 1:])
                    _put(a[f"{name}/values"], int(offsets[n0]),
                         np.concatenate([b[c][f"ragged/{f}/values"] for _, b in self._rows]))
            self._rows, self._n_rows = [], self._n()
        done = min(int(np.searchsorted(o, self._base[c], side="right")) - 1 for c, o in self._offsets.items())
        self._group.update_attributes({"n_done": done})

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"store {self.partial}: the writer thread failed") from self._error

    def flush(self) -> None:
        """Wait until every queued batch is written (committed as far as whole chunks allow)."""
        if self._thread is not None:
            self._queue.join()
        self._check()

    def _stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> Path:
        """Write the tails and the manifest, mark complete, rename `<path>.partial` to `path`; returns `path`."""
        self._stop()
        self._check()
        for c in self.conds:
            if self._fill[c]:
                self._write_row(c, self._row[c][:, :self._fill[c]])
        if f"{self.conds[0]}/hidden" not in self._arrays:
            self._create_hidden(None)
        self._commit()
        self._truncate(n := self._n())
        self._group.update_attributes({**self.setup, "n_items": n, "n_done": n, "extra": self.extra,
                                       "skipped": list(self._skipped.values()), "complete": True})
        self.partial.rename(self.path)
        return self.path

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # leave the partial store, committed as far as it got, for a resumed run
            self._stop()


class StoreReader:
    """Read a complete store lazily: each call decodes only the chunks it needs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        g = zarr.open_group(self.path, mode="r")
        self.manifest: dict[str, Any] = dict(g.attrs)
        if not self.manifest.get("complete"):
            raise ValueError(f"{self.path}: not a complete modgap store")
        self._arrays = _arrays(g)
        self.layers: list[int] = self.manifest["layers"]
        self.conds: list[str] = self.manifest["conds"]
        self.items: list[str] = [str(s) for s in self._read("ids", ())]
        self._offsets = {c: self._read(f"{c}/offsets", ()) for c in self.conds}

    def _read(self, name: str, sel: tuple) -> np.ndarray:
        try:
            return self._arrays[name].get_orthogonal_selection(sel or slice(None))
        except (ValueError, RuntimeError) as e:
            raise CorruptStoreError(f"store {self.path}: array {name!r} cannot be read ({e})") from e

    def offsets(self, cond: str) -> np.ndarray:
        """`[items+1]`: item i owns positions offsets[i]:offsets[i+1] of condition `cond`."""
        return self._offsets[cond]

    def _layer_sel(self, layers: Sequence[int] | None) -> slice | np.ndarray:
        if layers is None:
            return slice(None)
        if missing := sorted(set(layers) - set(self.layers)):
            raise ValueError(f"{self.path}: layers {missing} not stored (stored: {self.layers})")
        return np.array([self.layers.index(x) for x in layers])

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        if self.manifest["dtype"] == "bfloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    def _span(self, cond: str, item: int) -> slice:
        if not 0 <= item < len(self.items):
            raise IndexError(f"{self.path}: item {item} out of range 0..{len(self.items) - 1}")
        return slice(int(self._offsets[cond][item]), int(self._offsets[cond][item + 1]))

    def hidden(self, cond: str, item: int, layers: Sequence[int] | None = None) -> torch.Tensor:
        """`[layers, T, d]` hidden states of one item; `layers` are model layer numbers (default: all stored)."""
        return self._tensor(self._read(f"{cond}/hidden", (self._layer_sel(layers), self._span(cond, item), slice(None))))

    def iter_items(self, cond: str, layers: Sequence[int] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield `(item, [layers, T, d])` in order, decoding each chunk about once: one row of chunks is held."""
        P, off, lsel = self.manifest["chunk_positions"], self._offsets[cond], self._layer_sel(layers)
        lo = hi = 0
        window = np.empty(0)
        for i in range(len(off) - 1):
            s, e = int(off[i]), int(off[i + 1])
            if e > hi:
                lo, hi = s // P * P, min(-(-e // P) * P, int(off[-1]))
                window = self._read(f"{cond}/hidden", (lsel, slice(lo, hi), slice(None)))
            yield i, self._tensor(window[:, s - lo: e - lo])

    def positions(self, cond: str, item: int | None = None) -> pd.DataFrame:
        """Per-position metadata (columns item, seq, word, start_ms, end_ms) of one item, or of all."""
        sel = () if item is None else (self._span(cond, item),)
        return pd.DataFrame({f: self._read(f"{cond}/{f}", sel) for f in POS_FIELDS})

    def skipped(self) -> pd.DataFrame:
        """The items left out of the store (columns id, condition, reason; none in stores written before skipping)."""
        return pd.DataFrame(self.manifest.get("skipped", []), columns=["id", "condition", "reason"])

    def _shapes(self, key: str) -> dict[str, tuple[int, ...]]:
        """Field -> shape from the manifest's `key` (readouts or ragged; none in stores written before them)."""
        return {k: tuple(v) for k, v in self.manifest.get(key, {}).items()}

    def _field(self, key: str, field: str) -> None:
        """KeyError naming the store and the stored fields when `field` is not among the manifest's `key`."""
        if field not in (known := self._shapes(key)):
            raise KeyError(f"{self.path}: no {key.removesuffix('s')} field {field!r} (stored: {sorted(known)})")

    @property
    def readout_fields(self) -> dict[str, tuple[int, ...]]:
        """Readout field -> per-item shape."""
        return self._shapes("readouts")

    def readout(self, cond: str, field: str) -> np.ndarray:
        """`[items, *shape]` float32 values of one readout field."""
        self._field("readouts", field)
        return self._read(f"{cond}/readouts/{field}", ())

    @property
    def ragged_fields(self) -> dict[str, tuple[int, ...]]:
        """Ragged readout field -> per-row shape."""
        return self._shapes("ragged")

    def _ragged_offsets(self, cond: str, field: str) -> np.ndarray:
        self._field("ragged", field)
        return self._read(f"{cond}/ragged/{field}/offsets", ())

    def ragged_items(self, cond: str, field: str) -> np.ndarray:
        """`[items]` rows each item holds of a ragged field (0: none)."""
        return np.diff(self._ragged_offsets(cond, field))

    def ragged(self, cond: str, field: str, item: int) -> np.ndarray:
        """`[rows, *shape]` float32 rows of one item in a ragged field (no rows for an item that kept none)."""
        self._span(cond, item)  # IndexError naming the item when out of range
        offsets = self._ragged_offsets(cond, field)
        return self._read(f"{cond}/ragged/{field}/values", (slice(int(offsets[item]), int(offsets[item + 1])),))

    def loglik(self, cond: str) -> np.ndarray:
        """`[items, n_options]` option log-likelihoods, NaN where an item has fewer options."""
        return self._read(f"{cond}/loglik", ())

    def items_table(self) -> pd.DataFrame:
        """One row per item: id, and per condition pred_{cond}, correct_{cond}, score_{cond}, positions_{cond}
        (stores written before scores existed: score = correct)."""
        cols: dict[str, Any] = {"id": self.items}
        for c in self.conds:
            correct = self._read(f"{c}/correct", ())
            score = self._read(f"{c}/score", ()) if f"{c}/score" in self._arrays else correct.astype(np.float32)
            cols |= {f"pred_{c}": self._read(f"{c}/pred", ()), f"correct_{c}": correct, f"score_{c}": score,
                     f"positions_{c}": np.diff(self._offsets[c])}
        return pd.DataFrame(cols)

    def responses(self, cond: str) -> pd.DataFrame:
        """One row per item of `cond`: id, response, reason ("" throughout for stores written before responses)."""
        texts = {f: self._read(f"{cond}/{f}", ()) if f"{cond}/{f}" in self._arrays else [""] * len(self.items)
                 for f in TEXT_FIELDS}
        return pd.DataFrame({"id": self.items, **{f: [str(v) for v in texts[f]] for f in TEXT_FIELDS}})


def predictions_table(reader: StoreReader) -> pd.DataFrame:
    """Long table (item, id, condition, prediction, correct, score) of a store, as the driver writes it to Parquet."""
    t = reader.items_table()
    return pd.concat([pd.DataFrame({"item": t.index, "id": t["id"], "condition": c, "prediction": t[f"pred_{c}"],
                                    "correct": t[f"correct_{c}"], "score": t[f"score_{c}"]})
                      for c in reader.conds], ignore_index=True)


def responses_table(reader: StoreReader) -> pd.DataFrame:
    """Long table (id, condition, response, score, prediction, reason) of a store's items."""
    pred = predictions_table(reader)
    texts = pd.concat([reader.responses(c).assign(condition=c) for c in reader.conds], ignore_index=True)
    return pred.merge(texts, on=["id", "condition"], validate="one_to_one")[
        ["id", "condition", "response", "score", "prediction", "reason"]]
