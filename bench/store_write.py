"""Hidden-state store write speed, with and without the background writer thread, and BitRound's compression.

Usage: python bench/store_write.py [--items 200] [--layers 5] [--positions 60] [--d 256] [--batch 8]
                                   [--compute-ms 20] [--repeat 3]
Writes items with `positions` positions per condition (S and T) as float16 and prints MB/s of hidden state
(uncompressed bytes per second of wall time) for: the write alone, and a loop that also spends `compute-ms` per
batch on a stand-in forward pass (a sleep, as while a GPU computes), where the thread can overlap the two; each the fastest of `repeat` runs;
also without zstd (checksums only).
Then prints the on-disk size of the hidden chunks relative to the raw bytes for lossless zstd and BitRound keeping 7, 5, 3 bits.
The data are Gaussian with log-normal per-dimension scales: lossless zstd gains almost nothing on them.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modgap.states.store import CondBatch, StoreWriter


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


def run(path: Path, data: list, args: argparse.Namespace, compute_s: float, keep: bool = False, **kw) -> float:
    """Seconds to write `data` to a new store at `path`, sleeping `compute_s` before each batch."""
    t0 = time.perf_counter()
    with StoreWriter(path, model="bench", layers=range(args.layers), d=args.d, n_options=4, **kw) as w:
        for ids, conds in data:
            time.sleep(compute_s)
            w.append(ids, conds)
    seconds = time.perf_counter() - t0
    if not keep:
        shutil.rmtree(path)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--positions", type=int, default=60)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--compute-ms", type=float, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="report the fastest of this many runs")
    args = ap.parse_args()
    data = batches(args)
    mb = 2 * args.items * args.positions * args.layers * args.d * 2 / 1e6
    compute = args.compute_ms / 1000
    n_batches = len(data)
    print(f"{args.items} items x 2 conditions x {args.positions} positions x {args.layers} layers x d={args.d} "
          f"fp16 = {mb:.1f} MB in {n_batches} batches")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in (("thread         ", {}), ("no thread      ", {"background": False}),
                         ("thread, no zstd", {"zstd_level": None})):
            alone = min(run(Path(tmp) / "t.zarr", data, args, 0, **kw) for _ in range(args.repeat))
            loop = min(run(Path(tmp) / "t.zarr", data, args, compute, **kw) for _ in range(args.repeat))
            print(f"{name}: write alone {mb / alone:6.1f} MB/s ({alone:5.2f} s); with {args.compute_ms:g} ms "
                  f"compute per batch {loop:5.2f} s (compute alone {n_batches * compute:5.2f} s)")
        for bits in (None, 7, 5, 3):
            path = Path(tmp) / f"r{bits}.zarr"
            run(path, data, args, 0, keep=True, bitround_bits=bits)
            disk = sum(f.stat().st_size for c in "ST" for f in (path / c / "hidden").glob("c.*"))
            label = "lossless (zstd)" if bits is None else f"BitRound {bits} bits"
            print(f"{label:15s}: on disk {disk / (mb * 1e6):.3f} of raw, ratio {mb * 1e6 / disk:.2f}x")
            shutil.rmtree(path)


if __name__ == "__main__":
    main()
