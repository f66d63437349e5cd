"""The metrics stage against the time to read its stores (goal: m / r <= 1.5), in one run.

Writes synthetic stores (`metrics_scale.write_study`: random states of a realistic shape, speech `--speech-ratio`
times as long as text), then per round times (r) a read-only pass over every array the stage reads, as a fair reader
reads them (the corpus table; per store its manifest, items table, positions, offsets and readouts, and each item's
whole hidden slice of every analysed layer, S and T, once), and (m) the stage `run_metrics` with the schema's default
metrics options. Process CPU seconds (wall seconds with `--device cuda`), 1 torch thread; fastest and median of the
rounds. A last, profiled run of the
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

# part of the stage -> the functions (file, name) whose cumulative time it is
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
# functions that run inside another part, subtracted there: (part, functions, only their calls from this file)
NESTED = [("CKA tables", [("metrics/null.py", "result")], None),
          ("null", PARTS["accumulators made"], "metrics/null.py")]
def read_pass(stores: list[str], table: Path, last_layer: str, device: str) -> int:
    """Read every array the stage reads, once, the states onto `device`; returns the hidden-state bytes read."""
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
                n_bytes += h.to(device).nbytes
    return n_bytes


def stage_pass(stores: list[str], table: Path, options: MetricsOptions, device: str, out: Path) -> None:
    run_metrics(stores, table, options, device, {}, stage_outputs(out))
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds(clock, fn, *args) -> float:
    t0 = clock()
    fn(*args)
    return clock() - t0


def breakdown(stores: list[str], table: Path, options: MetricsOptions, device: str, out: Path, clock
              ) -> dict[str, float]:
    """Seconds per part of one profiled stage run (PARTS), the rest as "other", the total as "total"."""
    profile = cProfile.Profile(clock)
    profile.runcall(stage_pass, stores, table, options, device, out)
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)

    def cumulative(functions: list[tuple[str, str]], caller_file: str | None = None) -> float:
        """Cumulative seconds of `functions` (only their calls from `caller_file`, if given)."""
        total = 0.0
        for (file, _, name), (_, _, _, cum, callers) in stats.items():
            if any(file.endswith(f) and name == n for f, n in functions):
                total += cum if caller_file is None else sum(c[3] for k, c in callers.items()
                                                             if k[0].endswith(caller_file))
        return total

    parts = {part: cumulative(functions) for part, functions in PARTS.items()}
    for outer, inner, caller_file in NESTED:
        parts[outer] -= cumulative(inner, caller_file)
    total = max(v[3] for (_, _, name), v in stats.items() if name == "stage_pass")
    return parts | {"other": total - sum(parts.values()), "total": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--layers", type=int, default=13, help="stored states (the last, post-norm one is not analysed)")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--speech-ratio", type=int, default=4, help="mean speech positions per text token")
    p.add_argument("--shard-items", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu", help="the stage's (process CPU seconds on cpu, wall seconds on cuda)")
    args = p.parse_args()
    torch.set_num_threads(1)
    options = default_options()
    clock = time.perf_counter if args.device.startswith("cuda") else time.process_time
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stores, table = write_study(root, args.items, args.layers, args.d, args.shard_items,
                                    speech_ratio=args.speech_ratio)
        reads, stages = [], []
        for _ in range(args.rounds):
            reads.append(seconds(clock, read_pass, stores, table, options.last_layer, args.device))
            stages.append(seconds(clock, stage_pass, stores, table, options, args.device, root))
        parts = breakdown(stores, table, options, args.device, root, clock)
        n_bytes = read_pass(stores, table, options.last_layer, "cpu")
    ratios = [m / r for r, m in zip(reads, stages)]
    print(f"metrics stage vs read, {args.items} items, {args.layers} states x d={args.d}, speech {args.speech_ratio}x "
          f"text, {n_bytes / 2**20:.0f} MiB of states read, {args.rounds} rounds, {args.device}, "
          f"{'wall' if args.device.startswith('cuda') else 'CPU'} s, load {load_average()}")
    for name, xs in (("(r) read", reads), ("(m) stage", stages), ("m / r", ratios)):
        print(f"  {name:10s} fastest {min(xs):8.2f}  median {statistics.median(xs):8.2f}  all "
              + " ".join(f"{x:.2f}" for x in xs))
    print(f"  m / r of the fastest: {min(stages) / min(reads):.1f}x (goal <= 1.5x)")
    print("  profiled stage, s per part:")
    for part, spent in sorted(parts.items(), key=lambda kv: -kv[1] if kv[0] != "total" else 1):
        print(f"    {part:32s} {spent:8.2f}  {100 * spent / parts['total']:5.1f}%")


if __name__ == "__main__":
    main()
