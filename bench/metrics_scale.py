"""Wall time and peak memory of the metrics stage at N and 4N items (goal: peak memory grows <= 1.2x).

Writes synthetic stores (random states of a realistic shape: speech ~4x as long as text), then runs the stage
driver `modgap.metrics.stage.run_metrics` in a fresh process per size and reads that process's peak RSS.

    .venv/bin/python bench/metrics_scale.py --items 100 --layers 13 --d 256 [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modgap.config import default_section
from modgap.metrics.options import MetricsOptions
from modgap.states.store import CondBatch, StoreWriter

MS = 40.0


def write_study(root: Path, n_items: int, layers: int, d: int, shard_items: int, seed: int = 0,
                speech_ratio: int = 4) -> tuple[list, Path]:
    """Synthetic shard stores and the matching corpus table (one word per text token, word spans from the speech
    positions the text token repeats over: `speech_ratio` on average, so speech is that many times longer)."""
    g = torch.Generator().manual_seed(seed)
    stores, rows = [], []
    for shard, start in enumerate(range(0, n_items, shard_items)):
        path = root / f"shard{shard}.zarr"
        with StoreWriter(path, model="bench", layers=list(range(layers)), d=d, n_options=4) as w:
            for i in range(start, min(start + shard_items, n_items)):
                tt = int(torch.randint(8, 20, (), generator=g))
                reps = torch.randint(max(1, speech_ratio - 2), speech_ratio + 3, (tt,), generator=g)
                ht = torch.randn(layers, tt, d, generator=g)
                hs = ht.repeat_interleave(reps, 1) + torch.randn(layers, int(reps.sum()), d, generator=g)
                ts, times = hs.shape[1], np.arange(hs.shape[1]) * MS
                w.append([f"q{i}"], {
                    "S": CondBatch(hs.half(), [ts], np.arange(ts), [0], [i % 2], np.zeros((1, 4)),
                                   word=np.repeat(np.arange(tt), reps.numpy()), start_ms=times, end_ms=times + MS),
                    "T": CondBatch(ht.half(), [tt], np.arange(tt), [0], [1], np.zeros((1, 4)), word=np.arange(tt)),
                })
                ends = reps.cumsum(0).numpy() * MS
                rows.append({"id": f"q{i}", "subject": "s", "status": "ok", "question": "q", "choices": ["a", "b"],
                             "answer": 0, "audio": "none.flac",
                             "start_ms": list(np.r_[0.0, ends[:-1]]), "end_ms": list(ends)})
        stores.append(str(path))
    table = root / "corpus.parquet"
    pd.DataFrame(rows).to_parquet(table)
    return stores, table


def default_options() -> MetricsOptions:
    """The metrics options with every schema default, as the stage reads them."""
    return MetricsOptions.from_config(default_section("metrics"))


def stage_outputs(folder: Path) -> dict[str, Path]:
    """The output paths `run_metrics` writes, in `folder`."""
    return {k: folder / f"{k}.{e}" for k, e in [("item_metrics", "parquet"), ("cka", "parquet"), ("readouts", "csv"),
                                                ("base_layers", "csv"), ("summary", "json")]}


def child(stores: list[str], table: str, device: str, out: str) -> None:
    """Run the stage once in this process; print wall seconds and peak RSS (MiB) as JSON."""
    from modgap.metrics.stage import run_metrics

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    run_metrics(stores, table, default_options(), device, {}, stage_outputs(Path(out)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mib": peak}))


def measure(n: int, args: argparse.Namespace, root: Path) -> dict:
    folder = root / f"n{n}"
    folder.mkdir()
    stores, table = write_study(folder, n, args.layers, args.d, args.shard_items)
    cmd = [sys.executable, __file__, "--child", json.dumps([stores, str(table), args.device, str(folder)])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100, help="N (the second run has 4N)")
    p.add_argument("--layers", type=int, default=13)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--shard-items", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*json.loads(args.child))
        return
    with tempfile.TemporaryDirectory() as tmp:
        small, large = (measure(n, args, Path(tmp)) for n in (args.items, 4 * args.items))
    print(f"metrics stage, {args.layers} layers, d={args.d}, device {args.device}")
    for n, r in ((args.items, small), (4 * args.items, large)):
        print(f"  {n:5d} items: {r['seconds']:7.1f} s, peak RSS {r['peak_mib']:7.1f} MiB")
    print(f"  4N / N: time {large['seconds'] / small['seconds']:.2f}x, "
          f"peak memory {large['peak_mib'] / small['peak_mib']:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
