"""Cost of dumping every layer's span hidden states, relative to a plain prefill forward, on the lab model.

Usage: python bench/states_overhead.py [--model DIR] [--items 200] [--batch 16] [--repeat 5] [--threads 1]
                                       [--workers N] [--device cpu]
Takes the first `items` lab test items (cloze, voice en-us+f3) and times, interleaved over `repeat` rounds, each over
S and T of every item in batches of `batch`:
  (p) building the inputs alone (read audio, log-mel features, tokenize);
  (a) plain prefill forwards (`spine.forward(hidden=False)`: no hidden states, no scoring) on prebuilt inputs;
  (b) prefill forwards with the span hidden states of every layer (capture only) on prebuilt inputs;
  (c) the whole `dump_states` of every layer into a new store (inputs + capture + option scoring + write), its
      inputs built by `--workers` DataLoader worker processes while the forwards run (default: the config's
      `states.num_workers`; 0: in the main process, between forwards).
Prints per mode the fastest and median round, items/s, and for (c) the MB/s of hidden state written (float16 bytes
before compression) and the store's size on disk; then b/a, c/a and (c - p)/a (dump_states builds its own inputs,
the forwards of (a) and (b) do not) from the fastest rounds. The model defaults to
results/lab/full/step400, else lab/checkpoints/full/step400. `--threads 1` (default) keeps torch from oversubscribing
cores shared with other jobs, which makes small forwards both slow and erratic.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import torch
from timing import load_average

from modgap.config import default_section
from modgap.corpus.table import Row, read_rows
from modgap.models import Inputs, SpeechLM, load_adapter
from modgap.states.options import StatesOptions
from modgap.states.spine import condition_inputs, forward
from modgap.states.stage import dump_states

ITEMS = "results/corpus/lab/test/en-us+f3/items.parquet"
MODELS = ("results/lab/full/step400", "lab/checkpoints/full/step400")


def build_inputs(adapter: SpeechLM, rows: list[Row], style: str) -> list[list[Inputs]]:
    """S and T inputs of every row, as two lists (conditions) of per-item inputs."""
    return [condition_inputs(adapter, rows, style, c) for c in ("S", "T")]


def prefill_all(adapter: SpeechLM, inputs: list[list[Inputs]], batch: int, hidden: bool) -> None:
    """The spine's forward over both conditions of every item, `batch` items per forward (no readouts)."""
    for cond in inputs:
        for start in range(0, len(cond), batch):
            forward(adapter, cond[start : start + batch], hidden=hidden)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of `fn()`, waiting for the GPU if there is one."""
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=next((m for m in MODELS if Path(m).exists()), MODELS[0]))
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--workers", type=int, default=None, help="states.num_workers of (c) (default: the config's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = pd.read_parquet(ITEMS)
    style, rows = table["style"].iloc[0], read_rows(table)[: args.items]
    adapter = load_adapter("qwen2_audio", args.model, device=args.device)
    workers = {} if args.workers is None else {"num_workers": args.workers}
    spec = StatesOptions.from_config(default_section("states", batch_items=args.batch, **workers))  # all layers, fp16
    inputs = build_inputs(adapter, rows, style)
    positions = sum(len(x.span) for cond in inputs for x in cond)
    raw_mb = positions * (adapter.n_layers + 1) * adapter.hidden_size * 2 / 1e6
    print(f"{args.model}: {adapter.n_layers + 1} states x d={adapter.hidden_size}; {len(rows)} items x S, T = "
          f"{positions} span positions = {raw_mb:.1f} MB float16; batch {args.batch}, {torch.get_num_threads()} "
          f"threads on {adapter.device}, {spec.num_workers} input workers; {os.cpu_count()} CPUs, load average "
          f"{load_average()}")

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "states.zarr"
        modes = {
            "(p) inputs only": lambda: build_inputs(adapter, rows, style),
            "(a) plain prefill": lambda: prefill_all(adapter, inputs, args.batch, hidden=False),
            "(b) + hidden states": lambda: prefill_all(adapter, inputs, args.batch, hidden=True),
            "(c) dump_states": lambda: dump_states(adapter, rows, style, store, spec, "bench"),
        }
        prefill_all(adapter, inputs, args.batch, hidden=True)  # warm-up
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for name, fn in modes.items():
                seconds[name].append(timed(fn, adapter.device))
            disk_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e6
            shutil.rmtree(store)

    best = {m: min(s) for m, s in seconds.items()}
    for name, s in seconds.items():
        line = (f"{name:20s}: fastest {best[name]:6.3f} s, median {statistics.median(s):6.3f} s, "
                f"{len(rows) / best[name]:7.1f} items/s")
        if name.startswith("(c)"):
            line += f", {raw_mb / best[name]:6.1f} MB/s written ({disk_mb:.1f} MB on disk)"
        print(line)
    p, a, b, c = best.values()
    print(f"b/a = {b / a:.3f}, c/a = {c / a:.3f}, (c - p)/a = {(c - p) / a:.3f}; load average {load_average()}")


if __name__ == "__main__":
    main()
