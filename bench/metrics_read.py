"""The metrics stage against the time to read its stores (goal: m / r <= 1.5), in one run.

Writes synthetic stores (`metrics_scale.write_study`: random states of a realistic shape, speech `--speech-ratio`
times as long as text), then per round times (r) a read-only pass over every array the stage reads, as a fair reader
reads them (the corpus table; per store its manifest, items table, positions, offsets and readouts, and each item's
whole hidden slice of every analysed layer, S and T, once), and (m) the stage `run_metrics` with the schema's default
metrics options. Process CPU seconds, 1 torch thread; fastest and median of the rounds. A last, profiled run of the
stage splits its time into parts (cProfile: cumulative seconds of the functions that do each part).

    .venv/bin/python bench/metrics_read.py --items 200 --layers 13 --d 256 --rounds 3
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from metrics_scale import default_options, stage_outputs, write_study  # noqa: E402
from timing import load_average  # noqa: E402

from modgap.metrics.options import MetricsOptions  # noqa: E402
from modgap.metrics.stage import analysed_layers, layer_readouts, run_metrics  # noqa: E402
from modgap.states.store import StoreReader  # noqa: E402

# part of the stage -> the functions (file, name) whose cumulative time it is; the null's result is inside cka_table
PARTS = {
    "read": [("metrics/stage.py", "stored_items")],
    "DTW paths": [("metrics/item.py", "batched_dtw")],
    "per-item metrics": [("metrics/item.py", "layer_metrics"), ("metrics/item.py", "dtw_layer_truth"),
                         ("metrics/stage.py", "_baselines"), ("metrics/stage.py", "_truth_rows"),
                         ("metrics/synchrony.py", "update_synchrony"), ("metrics/dtw.py", "aligned_pairs")],
    "CKA + moments (configs, truth)": [("metrics/stage.py", "_accumulate"), ("metrics/moments.py", "update")],
    "null": [("metrics/null.py", "update"), ("metrics/null.py", "result")],
    "bootstrap": [("metrics/stage.py", "bootstrap")],
    "base-layer sensitivity": [("metrics/base_layers.py", "update"), ("metrics/base_layers.py", "table")],
    "CKA tables": [("metrics/stage.py", "cka_table")],
    "accumulators made": [("metrics/cka.py", "cka_accumulator")],
}
NESTED = {("CKA tables", "null")}  # the null's result runs inside cka_table: subtract it there


def read_pass(stores: list[str], table: Path, last_layer: str) -> int:
    """Read every array the stage reads, once; returns the hidden-state bytes read."""
    pd.read_parquet(table)
    n_bytes = 0
    for store in stores:
        reader = StoreReader(store)
        layers = analysed_layers(reader, last_layer)
        reader.items_table()
        layer_readouts(reader, layers)
        for cond in ("S", "T"):
            reader.positions(cond)
            reader.offsets(cond)
            for _, h in reader.iter_items(cond, layers):
                n_bytes += h.nbytes
    return n_bytes


def stage_pass(stores: list[str], table: Path, options: MetricsOptions, out: Path) -> None:
    run_metrics(stores, table, options, "cpu", {}, stage_outputs(out))


def cpu_seconds(fn, *args) -> float:
    t0 = time.process_time()
    fn(*args)
    return time.process_time() - t0


def breakdown(stores: list[str], table: Path, options: MetricsOptions, out: Path) -> dict[str, float]:
    """CPU seconds per part of one profiled stage run (PARTS), the rest as "other", the total as "total"."""
    profile = cProfile.Profile(time.process_time)
    profile.runcall(stage_pass, stores, table, options, out)
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)
    cumulative = {}
    for (file, _, name), (_, _, _, cum, _) in stats.items():
        for part, functions in PARTS.items():
            if any(file.endswith(f) and name == n for f, n in functions):
                cumulative[part] = cumulative.get(part, 0.0) + cum
    total = max(cum for (_, _, name), (*_, cum, _) in stats.items() if name == "stage_pass")
    for outer, inner in NESTED:
        null_result = sum(v[3] for (f, _, n), v in stats.items() if f.endswith("metrics/null.py") and n == "result")
        cumulative[outer] = cumulative.get(outer, 0.0) - null_result
    return cumulative | {"other": total - sum(cumulative.values()), "total": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--layers", type=int, default=13, help="stored states (the last, post-norm one is not analysed)")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--speech-ratio", type=int, default=4, help="mean speech positions per text token")
    p.add_argument("--shard-items", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    options = default_options()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stores, table = write_study(root, args.items, args.layers, args.d, args.shard_items,
                                    speech_ratio=args.speech_ratio)
        reads, stages = [], []
        for _ in range(args.rounds):
            reads.append(cpu_seconds(read_pass, stores, table, options.last_layer))
            stages.append(cpu_seconds(stage_pass, stores, table, options, root))
        parts = breakdown(stores, table, options, root)
        n_bytes = read_pass(stores, table, options.last_layer)
    ratios = [m / r for r, m in zip(reads, stages)]
    print(f"metrics stage vs read, {args.items} items, {args.layers} states x d={args.d}, speech {args.speech_ratio}x "
          f"text, {n_bytes / 2**20:.0f} MiB of states read, {args.rounds} rounds, CPU s, load {load_average()}")
    for name, xs in (("(r) read", reads), ("(m) stage", stages), ("m / r", ratios)):
        print(f"  {name:10s} fastest {min(xs):8.2f}  median {statistics.median(xs):8.2f}  all "
              + " ".join(f"{x:.2f}" for x in xs))
    print(f"  m / r of the fastest: {min(stages) / min(reads):.1f}x (goal <= 1.5x)")
    print("  profiled stage, CPU s per part:")
    for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1] if kv[0] != "total" else 1):
        print(f"    {part:32s} {seconds:8.2f}  {100 * seconds / parts['total']:5.1f}%")


if __name__ == "__main__":
    main()
