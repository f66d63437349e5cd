"""How the cost of the per-shard jobs grows with items and with parallel jobs, and what a paper-scale study needs.

Usage: python bench/scale.py [--items 50] [--model DIR] [--table PARQUET] [--bitround 7] [--paper-only]
                             [--gpu-tflops 250] [--host-ms 30] [--write-mb-s 125] [--load-s 60] [--shard-items 256]
                             [--paper-items 3000] [--paper-layers 33] [--paper-d 4096]

1. Growth: one job over N, then 4N items (`--items` N, default 50; the lab test split has 200). Each job is a fresh
   process, as under Snakemake: wall time (process start and imports included), the stage's own time (model load
   and dump), items/s of the stage, peak resident memory (the child's ru_maxrss, from os.wait4), and the store's
   bytes on disk.
2. Parallel jobs: two shards of N items each, one after the other (one job slot) and at once (two slots, as
   `--cores 2` or two SLURM jobs): wall time, speedup, and peak memory per job and summed.
3. Paper scale, computed (no model is run): bytes on disk of the hidden states of a `--paper-items` item study of
   a `--paper-layers` state x `--paper-d` model (default Qwen2-Audio-7B: 32 decoder layers + embeddings, d=4096),
   both conditions, float16, with and without BitRound (`--bitround` mantissa bits kept), for cloze and letter
   span lengths (modgap.plan.ASSUMED_SPANS); then projected GPU hours of its states stage from stated
   assumptions: FLOPs per item of a 7B speech LLM at an effective GPU throughput (`--gpu-tflops`), host work per
   item (`--host-ms`), the store's write speed (`--write-mb-s`; 0 measures StoreWriter on this machine) and a model
   load per shard job (`--load-s`). FLOPs are counted by bench/flops.py on Qwen2-Audio-7B's geometry, the
   convention bench/gpu.py measures a forward rate in. The throughput and write speed given by flags are printed
   as ASSUMED unless the caller says where they were measured (bench/gpu.py passes its own measurements).

Stages are functions: `STAGES` maps a stage name to the function a child process runs for (items, shard, workdir,
model, items table) and returns {"stage_s", "bytes"}: `states` dumps a shard, `metrics` runs the metrics engine on
the store `states` left (bytes: its output tables).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flops import QWEN2_AUDIO_7B, decoder_flops, encoder_flops
from timing import load_average

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
ITEMS = "results/corpus/lab/test/en-us+f3/items.parquet"
MODELS = ("results/lab/full/step400", "lab/checkpoints/full/step400")

# Paper-scale prompt: ~40 tokens around the span; option scoring ~4 options x 5 tokens per condition.
PROMPT_TOKENS, OPTION_TOKENS = 40, 20


def store_path(work: Path, n_items: int, shard: int) -> Path:
    return work / f"states-{n_items}-{shard}.zarr"


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- stages, run in a child process -------------------------------------------------------------------------------

def stage_states(n_items: int, shard: int, work: Path, model: str, table: str) -> dict:
    """One states_dump job: shard `shard` of `n_items` items of `table`, every layer, float16, 1 torch thread."""
    import torch

    from modgap.config import default_section
    from modgap.plan import model_run
    from modgap.states.options import StatesOptions
    from modgap.states.stage import run_shard

    torch.set_num_threads(1)
    run = model_run("bench", "qwen2_audio", model, device="cpu", dtype="float32")
    states = StatesOptions.from_config(default_section("states", shard_items=n_items))
    out = store_path(work, n_items, shard)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    run_shard(run, table, shard, states, out)
    return {"stage_s": time.perf_counter() - t0, "bytes": disk_bytes(out)}


def stage_metrics(n_items: int, shard: int, work: Path, model: str, table: str) -> dict:
    """One metrics job over the store `stage_states` wrote for (n_items, shard): default options, CPU, 1 thread."""
    import torch
    import yaml
    from metrics_scale import stage_outputs

    from modgap.config import validate_config
    from modgap.metrics.options import MetricsOptions
    from modgap.metrics.stage import run_metrics

    torch.set_num_threads(1)
    # the default study's metrics options: they fit the lab model's depth (the schema's base layer 5 does not)
    options = MetricsOptions.from_config(validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))["metrics"])
    out = work / f"metrics_n{n_items}_s{shard}"
    out.mkdir(exist_ok=True)
    outs = stage_outputs(out)
    t0 = time.perf_counter()
    run_metrics([str(store_path(work, n_items, shard))], table, options, "cpu", {}, outs)
    return {"stage_s": time.perf_counter() - t0, "bytes": sum(p.stat().st_size for p in outs.values())}


STAGES: dict[str, Callable[..., dict]] = {"states": stage_states, "metrics": stage_metrics}  # run in this order


# --- the harness ----------------------------------------------------------------------------------------------------

def launch(stage: str, n_items: int, shard: int, work: Path, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", stage, "--items", str(n_items), "--shard", str(shard),
           "--work", str(work), "--model", args.model, "--table", args.table]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def finish(proc: subprocess.Popen) -> dict:
    """Wait for one child: its JSON result plus its peak resident memory in MB (ru_maxrss of that child alone)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"child {proc.args[3:7]} failed ({proc.returncode}):\n{out[-2000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "rss_mb": usage.ru_maxrss / 1024}


def jobs(stage: str, specs: list[tuple[int, int]], work: Path, args: argparse.Namespace, parallel: int) -> tuple:
    """Run the jobs `specs` [(items, shard)] with `parallel` at a time; (wall seconds, [result per job])."""
    t0, results, pending = time.perf_counter(), [], list(specs)
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < parallel:
            running.append(launch(stage, *pending.pop(0), work, args))
        results.append(finish(running.pop(0)))
    return time.perf_counter() - t0, results


def measured(args: argparse.Namespace) -> None:
    n = args.items
    with tempfile.TemporaryDirectory(prefix="modgap-scale-") as tmp:
        work = Path(tmp)
        for stage in STAGES:
            print(f"\n== {stage}: growth, one job (N={n}); load average {load_average()}")
            print(f"{'items':>6} {'wall s':>8} {'stage s':>8} {'items/s':>8} {'peak MB':>8} {'disk MB':>8}")
            rows = {}
            for items in (n, 4 * n):
                wall, (r,) = jobs(stage, [(items, 0)], work, args, parallel=1)
                rows[items] = (wall, r)
                print(f"{items:6d} {wall:8.1f} {r['stage_s']:8.1f} {items / r['stage_s']:8.1f} {r['rss_mb']:8.0f} "
                      f"{r['bytes'] / 1e6:8.2f}")
            (w1, r1), (w4, r4) = rows[n], rows[4 * n]
            print(f"4N/N: wall {w4 / w1:.2f}x, stage {r4['stage_s'] / r1['stage_s']:.2f}x, "
                  f"peak memory {r4['rss_mb'] / r1['rss_mb']:.2f}x, disk {r4['bytes'] / r1['bytes']:.2f}x")

            print(f"\n== {stage}: two shards of {n} items, 1 vs 2 parallel jobs; load average {load_average()}")
            walls = {}
            for parallel in (1, 2):
                walls[parallel], rs = jobs(stage, [(n, 0), (n, 1)], work, args, parallel=parallel)
                per_job = " and ".join(f"{r['stage_s']:.1f}" for r in rs)
                print(f"{parallel} at a time: wall {walls[parallel]:6.1f} s, {2 * n / walls[parallel]:5.1f} items/s, "
                      f"stage s per job {per_job}, "
                      f"peak MB per job {max(r['rss_mb'] for r in rs):.0f}, "
                      f"at once {sum(r['rss_mb'] for r in rs) if parallel == 2 else max(r['rss_mb'] for r in rs):.0f}")
            print(f"speedup with 2 jobs: {walls[1] / walls[2]:.2f}x on {os.cpu_count()} cores")


def write_speed_mb_s(layers: int, d: int) -> float:
    """MB/s (float16 bytes of hidden state per wall second) of StoreWriter: 32 items of 64 positions per condition,
    written in batches of 8 (bench/store_write.py's data and loop)."""
    from store_write import batches, run

    spec = argparse.Namespace(items=32, batch=8, positions=64, layers=layers, d=d)
    with tempfile.TemporaryDirectory() as tmp:
        seconds = run(Path(tmp) / "w.zarr", batches(spec), spec, compute_s=0)
    return 2 * spec.items * spec.positions * layers * d * 2 / 1e6 / seconds


def item_tflop(pos_s: float, pos_t: float) -> float:
    """TFLOP per item of Qwen2-Audio-7B, both conditions: the encoder over one 30 s window, the prefill of prompt and
    span in S (`pos_s` audio positions) and T (`pos_t` tokens), option scoring from each cached prefix."""
    g, total = QWEN2_AUDIO_7B, encoder_flops(QWEN2_AUDIO_7B, 1)
    for span in (round(pos_s), round(pos_t)):
        prefix = PROMPT_TOKENS + span
        total += decoder_flops(g, 1, prefix)
        total += decoder_flops(g, 1, OPTION_TOKENS, prefix + OPTION_TOKENS, logits=OPTION_TOKENS)
    return total / 1e12


def paper_scale(args: argparse.Namespace, measured: dict[str, str] | None = None) -> None:
    """Print the paper-scale table. `measured` says where `gpu_tflops` or `write_mb_s` was measured ({"gpu_tflops":
    "measured 2026-12-03, NVIDIA H200, bench/gpu.py"}); an input not in it is printed as ASSUMED."""
    from modgap.plan import ASSUMED_SPANS
    from modgap.states.store import estimate_bytes

    measured = dict(measured or {})
    n, L, d = args.paper_items, args.paper_layers, args.paper_d
    write = args.write_mb_s
    if not write:
        write = write_speed_mb_s(L, d)
        measured["write_mb_s"] = "measured here: StoreWriter, default compression + crc32c, one writer thread"
    print(f"\n== paper scale: {n:,} items x {L} states x d={d}, S and T, float16 (Qwen2-Audio-7B geometry)")
    print(f"{'style':>7} {'S pos':>6} {'T tok':>6} {'fp16 GB':>8} {f'BitRound{args.bitround} GB':>12} "
          f"{'GPU h':>6}   {'= compute':>9} {'+ host':>7} {'| write':>7} {'+ loads':>7}")
    for style, (pos_s, pos_t) in ASSUMED_SPANS.items():
        raw = estimate_bytes(n, pos_s, pos_t, L, d, "float16", None)
        rounded = estimate_bytes(n, pos_s, pos_t, L, d, "float16", args.bitround)
        compute_h = n * item_tflop(pos_s, pos_t) / args.gpu_tflops / 3600
        host_h = n * args.host_ms / 1e3 / 3600
        write_h = n * (pos_s + pos_t) * L * d * 2 / 1e6 / write / 3600
        load_h = -(-n // args.shard_items) * args.load_s / 3600
        # the writer thread overlaps the next batch's inputs and forward: the slower of the two sets the pace
        total = max(compute_h + host_h, write_h) + load_h
        print(f"{style:>7} {pos_s:6.0f} {pos_t:6.0f} {raw / 1e9:8.1f} {rounded / 1e9:12.1f} {total:6.2f}   "
              f"{compute_h:9.2f} {host_h:7.2f} {write_h:7.2f} {load_h:7.2f}")
    tflops_source = measured.get("gpu_tflops", "ASSUMED: about 25% of an H100's dense bf16 peak")
    write_source = measured.get("write_mb_s", "given: the median bench/store_write.py measured at this shape on the "
                                              "shared 2-core machine, 2026-12-03")
    print(f"GPU h = max(compute + host, write) + loads, per model and dataset. Compute: "
          f"{item_tflop(*ASSUMED_SPANS['letter']):.1f} TFLOP per letter item (bench/flops.py: Whisper encoder over "
          f"30 s, the decoder over prompt ({PROMPT_TOKENS} tokens) and span, {OPTION_TOKENS} option tokens per "
          f"condition) at {args.gpu_tflops:g} TFLOP/s ({tflops_source}); {args.host_ms:g} ms of host work per item "
          f"(ASSUMED: FLAC, 30 s log-mel, tokenizing); store writes at {write:.0f} MB/s ({write_source}); "
          f"{args.load_s:g} s to load the model per shard job of {args.shard_items} items (ASSUMED: ~17 GB of bf16 "
          f"weights). Spans: modgap.plan.ASSUMED_SPANS (25 audio positions per second). BitRound: "
          f"modgap.states.store.disk_factor (0.80 of fp16 at 7 bits, measured).")
    print("Multiply by the number of models (each lab or real checkpoint) and datasets of the study.")


def parser() -> argparse.ArgumentParser:
    """The command line; bench/gpu.py parses the paper-scale flags with it too."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--model", default=next((m for m in MODELS if (ROOT / m).exists()), MODELS[-1]))
    ap.add_argument("--table", default=ITEMS)
    ap.add_argument("--bitround", type=int, default=7)
    ap.add_argument("--gpu-tflops", type=float, default=250.0, help="forward TFLOP/s (flops.py's count); assumed")
    ap.add_argument("--write-mb-s", type=float, default=125.0,
                    help="store writes MB/s (the median bench/store_write.py measured at the paper shape on the shared "
                         "2-core machine, 2026-12-03); 0: measure StoreWriter on this machine")
    ap.add_argument("--host-ms", type=float, default=30.0)
    ap.add_argument("--load-s", type=float, default=60.0)
    ap.add_argument("--shard-items", type=int, default=256)
    ap.add_argument("--paper-items", type=int, default=3000)
    ap.add_argument("--paper-layers", type=int, default=33)
    ap.add_argument("--paper-d", type=int, default=4096)
    ap.add_argument("--paper-only", action="store_true", help="skip the measured sections 1 and 2")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    return ap


def main() -> None:
    args = parser().parse_args()
    os.chdir(ROOT)
    if args.child:
        print(json.dumps(STAGES[args.child](args.items, args.shard, Path(args.work), args.model, args.table)))
        return
    if not args.paper_only:
        if not Path(args.table).is_file():
            raise SystemExit(f"{args.table} not found: build the corpus first (make study, or snakemake {args.table})")
        print(f"model {args.model}, items from {args.table}; 1 torch thread per job; {os.cpu_count()} cores")
        measured(args)
    paper_scale(args)


if __name__ == "__main__":
    main()
