"""Hidden-state store write speed against the disk's raw sequential write speed, measured in the same run.

Usage: python bench/store_write.py [--items 64] [--layers 33] [--positions 60] [--d 4096] [--batch 8]
                                   [--compute-ms 0] [--repeat 3] [--bitround 7 5 3] [--dir DIR]
                                   [--chunk-positions P]
Data: `items` items with `positions` positions per condition (S and T), float16, Gaussian with log-normal
per-dimension scales (lossless zstd gains almost nothing on them), in batches of `batch` items; the defaults are a
paper shape (33 states x d=4096, 2.1 GB).
Each round times, in a directory under `--dir` (default: the system's temporary directory; pass one on the disk
the stores go to):
  raw    the physical limit: the same bytes written with os.write in 16 MiB blocks into one new file, then
         fsync'ed and closed;
  zstd, none, auto
         StoreWriter with that `compression`, from its creation to `close`, then an fsync of every file it wrote
         (the writer leaves syncing to the system, so both sides end with the bytes on disk).
MB/s counts the float16 bytes of hidden state per wall second. Per mode the fastest and the median over `repeat`
rounds, and writer/raw: the ratio of each round's speeds (raw of the same round), fastest and median.
Then, if `--compute-ms` > 0, the thread's overlap with a stand-in forward pass (a sleep per batch, as while a GPU
computes); and, per `--bitround` bits, the on-disk size of the hidden chunks relative to the raw bytes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from modgap.states.store import CondBatch, StoreWriter, chunk_positions

MODES = {"zstd": {"compression": "zstd"}, "none": {"compression": "none"}, "auto": {"compression": "auto"}}
BLOCK = 16 << 20  # bytes per os.write of the raw write


def batches(args: argparse.Namespace) -> list[tuple[list[str], dict[str, CondBatch]]]:
    g = torch.Generator().manual_seed(0)
    scale = torch.exp(torch.randn(args.d, generator=g))
    out = []
    for b in range(0, args.items, args.batch):
        n = min(args.batch, args.items - b)
        conds = {c: CondBatch((torch.randn(args.layers, n * args.positions, args.d, generator=g) * scale).half(),
                              [args.positions] * n, np.tile(np.arange(args.positions), n), [0] * n, [1] * n)
                 for c in "ST"}
        out.append(([f"q{b + i}" for i in range(n)], conds))
    return out


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (directories: their entries, the renamed chunk files)."""
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def raw_write(path: Path, data: list) -> float:
    """Seconds to write the hidden states of `data` into one new file at `path` in BLOCK-byte writes, and fsync it."""
    views = [memoryview(c.hidden.numpy()).cast("B") for _, conds in data for c in conds.values()]
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for v in views:
        for i in range(0, len(v), BLOCK):
            os.write(fd, v[i:i + BLOCK])
    os.fsync(fd)
    os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def run(path: Path, data: list, args: argparse.Namespace, compute_s: float, keep: bool = False, sync: bool = False,
        **kw) -> float:
    """Seconds to write `data` to a new store at `path` (then fsync it if `sync`), sleeping `compute_s` before each
    batch."""
    t0 = time.perf_counter()
    with StoreWriter(path, model="bench", layers=range(args.layers), d=args.d, n_options=4,
                     positions_per_chunk=getattr(args, "chunk_positions", None), **kw) as w:
        for ids, conds in data:
            time.sleep(compute_s)
            w.append(ids, conds)
    if sync:
        fsync_tree(path)
    seconds = time.perf_counter() - t0
    if not keep:
        shutil.rmtree(path)
    return seconds


def hidden_bytes(path: Path) -> int:
    return sum(f.stat().st_size for c in "ST" for f in (path / c / "hidden").glob("c.*"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--layers", type=int, default=33)
    ap.add_argument("--positions", type=int, default=60)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--compute-ms", type=float, default=0, help="0: skip the overlap section")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (raw and every mode each round)")
    ap.add_argument("--bitround", type=int, nargs="*", default=[], help="mantissa bits for the on-disk sizes")
    ap.add_argument("--dir", default=None, help="where to write (default: the temporary directory)")
    ap.add_argument("--chunk-positions", type=int, default=None, help="positions per chunk (default: the store's)")
    args = ap.parse_args()
    data = batches(args)
    mb = 2 * args.items * args.positions * args.layers * args.d * 2 / 1e6
    print(f"{args.items} items x 2 conditions x {args.positions} positions x {args.layers} layers x d={args.d} "
          f"fp16 = {mb:.1f} MB in {len(data)} batches; {args.repeat} rounds; {os.cpu_count()} cores; "
          f"{args.chunk_positions or chunk_positions(args.d)} positions per chunk")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        seconds: dict[str, list[float]] = {m: [] for m in ("raw", *MODES)}
        disk, chosen = {}, {}
        for r in range(args.repeat):
            seconds["raw"].append(raw_write(Path(tmp) / "raw.bin", data))
            for mode, kw in MODES.items():
                path = Path(tmp) / f"{mode}.zarr"
                seconds[mode].append(run(path, data, args, 0, keep=True, sync=True, **kw))
                disk[mode] = hidden_bytes(path) / (mb * 1e6)
                chosen[mode] = zarr.open_group(path, mode="r").attrs["compressor"]
                shutil.rmtree(path)
            print(f"round {r + 1}: load {os.getloadavg()[0]:.1f}; MB/s " +
                  ", ".join(f"{m} {mb / s[-1]:.0f}" for m, s in seconds.items()), flush=True)
        raw = seconds["raw"]
        print(f"{'':5s} {'fastest MB/s':>12s} {'median MB/s':>11s} {'/raw fastest':>12s} {'/raw median':>11s} "
              f"{'on disk':>8s}  compressor")
        for mode, s in seconds.items():
            ratios = [r_s / w_s for r_s, w_s in zip(raw, s)]
            extra = f"{disk[mode]:8.3f}  {chosen[mode]}" if mode in MODES else ""
            print(f"{mode:5s} {mb / min(s):12.0f} {mb / statistics.median(s):11.0f} {max(ratios):12.2f} "
                  f"{statistics.median(ratios):11.2f} {extra}")
        if args.compute_ms > 0:
            compute = args.compute_ms / 1000
            for name, kw in (("thread   ", {}), ("no thread", {"background": False})):
                loop = min(run(Path(tmp) / "t.zarr", data, args, compute, **kw) for _ in range(args.repeat))
                print(f"{name}: with {args.compute_ms:g} ms compute per batch {loop:5.2f} s "
                      f"(compute alone {len(data) * compute:5.2f} s)")
        for bits in args.bitround:
            path = Path(tmp) / f"r{bits}.zarr"
            run(path, data, args, 0, keep=True, bitround_bits=bits)
            print(f"BitRound {bits} bits: on disk {hidden_bytes(path) / (mb * 1e6):.3f} of raw")
            shutil.rmtree(path)


if __name__ == "__main__":
    main()
