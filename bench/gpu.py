"""One GPU bench (`make bench-gpu`): the states dump at full width, CKA and DTW on the device, the store writer.

Usage: python bench/gpu.py [--quick] [--layers L] [--enc-layers E] [--items N] [--batch B] [--seconds S]
                           [--repeat R] [--parts states metrics store] [--no-readme]
Defaults per device (SIZES): on a GPU 8 decoder and 32 encoder layers, 64 items of 10 s, batch 16, 3 rounds; on the
CPU, and with `--quick` anywhere, 2 and 2 layers, 16 items of 4 s, batch 8, 2 rounds.
On the first CUDA device (else on the CPU at a much smaller size, saying "CPU only: no GPU found"), in order, each
part timed and printed as it goes; a part that fails prints its error and the others still run:
  (i) states: a random Qwen2-Audio model built locally (tests/tiny_models.py) at Qwen2-Audio-7B's widths (decoder
      hidden 4096, MLP 11008, 32 heads, vocabulary 156032; encoder d_model 1280, 20 heads, 30 s windows) with
      `--layers` decoder and `--enc-layers` encoder layers, bf16; `--items` lab questions over `--seconds` of noise
      audio, batches of `--batch`. Times, interleaved over `--repeat` rounds (fastest kept): (a) plain prefill
      forwards of S and T, (c) the whole `dump_states` (every layer, float16 store). Prints items/s, c/a and the
      forward's achieved TFLOP/s (bench/flops.py's count of what ran, padding included).
 (ii) metrics: the device's GEMM roofline (the fastest of a few large bf16 and fp32 matmuls), `cross_layer_cka`
      (float32) on synthetic aligned layers with its matmul FLOPs counted by `torch.utils.flop_counter`, as a
      fraction of the fp32 roofline; `batched_dtw` over all (item, layer) cosine matrices on the device against
      the CPU (both in wall seconds).
(iii) store: bench/store_write.py in a subprocess at the paper's state geometry (33 states x d=4096): its printout;
      its first MB/s figure is the writer's speed.
Then the paper-scale projection (bench/scale.py) with the measured writer speed and, on a GPU, the measured forward
rate, and a dated row in bench/README.md's "GPU bench" table (unless `--no-readme`). Wall seconds on a GPU, process
CPU seconds on the CPU (bench/timing.py).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import scale  # noqa: E402
import tiny_models  # noqa: E402
from flops import QWEN2_AUDIO_7B, Geometry, decoder_flops, encoder_flops  # noqa: E402
from metrics_cka import data as cka_data  # noqa: E402
from metrics_paths import make_items, similarities  # noqa: E402
from states_overhead import build_inputs, prefill_all  # noqa: E402
from timing import load_average, timed  # noqa: E402

from modgap.config import default_section  # noqa: E402
from modgap.corpus.lab_world import generate_lab  # noqa: E402
from modgap.corpus.table import Row  # noqa: E402
from modgap.metrics.cka import cross_layer_cka  # noqa: E402
from modgap.metrics.item import batched_dtw  # noqa: E402
from modgap.models import Inputs, SpeechLM, load_adapter  # noqa: E402
from modgap.states.options import StatesOptions  # noqa: E402
from modgap.states.stage import dump_states  # noqa: E402

README = ROOT / "bench" / "README.md"
SECTION = "## GPU bench (`make bench-gpu`)"
# Per device: model widths (Qwen2-Audio-7B's on a GPU; a small model on the CPU), the states part's run flags, CKA
# [layers, n, d], DTW (items, layers, d), matmul size, store_write.py flags.
QUICK = dict(layers=2, enc_layers=2, items=16, batch=8, seconds=4.0, repeat=2)
SIZES = {
    "cuda": dict(
        text=dict(hidden_size=QWEN2_AUDIO_7B.d, intermediate_size=QWEN2_AUDIO_7B.ffn,
                  num_attention_heads=QWEN2_AUDIO_7B.heads, num_key_value_heads=QWEN2_AUDIO_7B.kv_heads,
                  vocab_size=QWEN2_AUDIO_7B.vocab, rms_norm_eps=1e-5, max_position_embeddings=8192),
        audio=dict(d_model=QWEN2_AUDIO_7B.enc_d, encoder_ffn_dim=QWEN2_AUDIO_7B.enc_ffn, encoder_attention_heads=20),
        window_s=30, run=dict(layers=8, enc_layers=32, items=64, batch=16, seconds=10.0, repeat=3),
        cka=(33, 2048, 4096), dtw=(256, 33, 256), gemm=8192,
        store=["--layers", "33", "--d", "4096", "--positions", "64", "--items", "32", "--repeat", "2"]),
    "cpu": dict(
        text=dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=4,
                  vocab_size=QWEN2_AUDIO_7B.vocab),
        audio=dict(d_model=128, encoder_ffn_dim=512, encoder_attention_heads=4),
        window_s=10, run=QUICK, cka=(9, 1000, 256), dtw=(16, 9, 128), gemm=512,
        store=["--layers", "33", "--d", "4096", "--positions", "64", "--items", "4", "--batch", "2", "--repeat", "1"]),
}
Results = dict[str, float | str]


# --- (i) states dump against a plain forward ----------------------------------------------------------------------

def noise_rows(n: int, seconds: float, folder: Path) -> list[Row]:
    """`n` lab test questions, each over `seconds` of seeded noise written as FLAC in `folder` (no word spans)."""
    rows = []
    for i, item in enumerate(generate_lab(0, 0, 0, n)["test"]):
        path = folder / f"{item.id}.flac"
        sf.write(path, tiny_models.noise(seconds, seed=i), 16000, format="FLAC")
        rows.append(Row(item, str(path), None))
    return rows


def forward_flops(g: Geometry, inputs: list[list[Inputs]], batch: int) -> float:
    """FLOPs of `prefill_all(inputs, batch)`: per batch, the decoder over its rows padded to the longest, and one
    encoder window per S prompt."""
    total = 0.0
    for cond in inputs:
        for start in range(0, len(cond), batch):
            part = cond[start : start + batch]
            total += decoder_flops(g, len(part), max(int(x.model_inputs["input_ids"].shape[1]) for x in part))
            total += encoder_flops(g, len(part)) if part[0].condition == "S" else 0.0
    return total


def build_model(folder: Path, args: argparse.Namespace, device: torch.device) -> tuple[SpeechLM, Geometry]:
    """The random model at this device's widths, built on the device (fast init), saved and loaded as a run is."""
    size = SIZES[device.type]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        path = tiny_models.build_qwen2_audio(
            folder / "model", tiny_models.tiny_tokenizer(), size["window_s"], dtype=dtype,
            text=size["text"] | {"num_hidden_layers": args.layers},
            audio=size["audio"] | {"encoder_layers": args.enc_layers})
    adapter = load_adapter("qwen2_audio", str(path), device=device.type, dtype=str(dtype).removeprefix("torch."))
    return adapter, Geometry.of(adapter.model.config)


def part_states(args: argparse.Namespace, device: torch.device) -> Results:
    """(i): the forward's TFLOP/s and the dump's time over the forward's."""
    with tempfile.TemporaryDirectory(prefix="modgap-gpu-") as tmp:
        t0 = time.perf_counter()
        adapter, g = build_model(Path(tmp), args, device)
        params = sum(p.numel() for p in adapter.model.parameters())
        print(f"model: decoder {g.layers} x d={g.d} (MLP {g.ffn}, {g.heads} heads, vocab {g.vocab}), encoder "
              f"{g.enc_layers} x d={g.enc_d} over {g.enc_positions} positions; {params / 1e9:.2f} B params, "
              f"{next(adapter.model.parameters()).dtype}; built and loaded in {time.perf_counter() - t0:.0f} s")
        rows = noise_rows(args.items, args.seconds, Path(tmp))
        style = "letter"
        inputs = build_inputs(adapter, rows, style)
        spec = StatesOptions.from_config(default_section("states", batch_items=args.batch))  # every layer, float16
        positions = sum(len(x.span) for cond in inputs for x in cond)
        mb = positions * (adapter.n_layers + 1) * adapter.hidden_size * 2 / 1e6
        flop = forward_flops(g, inputs, args.batch)
        store = Path(tmp) / "states.zarr"

        def dump() -> None:
            shutil.rmtree(store, ignore_errors=True)
            dump_states(adapter, rows, style, store, spec, "bench")

        prefill_all(adapter, inputs, args.batch, hidden=False)  # warm-up
        forward_s, dump_s = float("inf"), float("inf")
        for _ in range(args.repeat):
            forward_s = min(forward_s, timed(lambda: prefill_all(adapter, inputs, args.batch, hidden=False), device)[0])
            dump_s = min(dump_s, timed(dump, device)[0])
    tflops = flop / forward_s / 1e12
    print(f"{args.items} items x S, T ({args.seconds:g} s audio, batch {args.batch}): {flop / 1e12:.3g} TFLOP, "
          f"{mb:.3g} MB of float16 states; fastest of {args.repeat}")
    print(f"(a) plain forward {forward_s:.2f} s, {args.items / forward_s:.1f} items/s, {tflops:.3g} TFLOP/s")
    print(f"(c) dump_states   {dump_s:.2f} s, {args.items / dump_s:.1f} items/s, {mb / dump_s:.3g} MB/s of states")
    print(f"dump/forward = {dump_s / forward_s:.2f}")
    return {"model": f"{g.layers}+{g.enc_layers} layers, d={g.d}", "forward_tflops": tflops,
            "dump_ratio": dump_s / forward_s}


# --- (ii) CKA against the GEMM roofline, DTW against the CPU --------------------------------------------------------

def gemm_tflops(n: int, dtype: torch.dtype, device: torch.device) -> float:
    """TFLOP/s of [n, n] x [n, n] matmuls in `dtype`: the fastest of 5 runs of 10 back to back (after a warm-up)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    seconds, _ = timed(lambda: [a @ b for _ in range(10)], device, repeat=5)
    return 10 * 2 * n**3 / seconds / 1e12


def part_metrics(args: argparse.Namespace, device: torch.device) -> Results:
    """(ii): the GEMM roofline, CKA's fraction of it, DTW's CPU time over its device time."""
    size = SIZES[device.type]
    roof = {dt: gemm_tflops(size["gemm"], dt, device) for dt in (torch.bfloat16, torch.float32)}
    print(f"GEMM roofline ({size['gemm']}^3): bf16 {roof[torch.bfloat16]:.3g}, fp32 {roof[torch.float32]:.3g} "
          f"TFLOP/s (fp32 matmuls {'may' if torch.backends.cuda.matmul.allow_tf32 else 'do not'} use TF32)")
    layers, n, d = size["cka"]
    xs, ys = cka_data(layers, n, d, device)
    cross_layer_cka(xs, ys)  # warm-up
    with FlopCounterMode(display=False) as counter:
        cross_layer_cka(xs, ys)
    seconds, _ = timed(lambda: cross_layer_cka(xs, ys), device, repeat=3)
    cka = counter.get_total_flops() / seconds / 1e12
    print(f"CKA {layers}x{layers} layers, n={n}, d={d}, float32: {seconds:.3f} s, {cka:.3g} TFLOP/s = "
          f"{cka / roof[torch.float32]:.2f} of the fp32 roofline")
    n_items, dtw_layers, dtw_d = size["dtw"]
    cuda = device.type == "cuda"  # then both sides in wall seconds: CPU seconds would count every thread
    items = make_items(n_items, dtw_layers, dtw_d, seed=0)
    cpu = torch.device("cpu")
    dtw_s = {}
    for where in dict.fromkeys([device, cpu]):
        cos = [c for c, _ in similarities(items, where)]
        batched_dtw(cos[:2], None)  # warm-up
        dtw_s[where.type] = timed(lambda: batched_dtw(cos, None), where, repeat=3, wall=cuda)[0]
    ratio = dtw_s["cpu"] / dtw_s[device.type]
    print(f"DTW {n_items} items x {dtw_layers} layers: " + ", ".join(f"{k} {v:.3f} s" for k, v in dtw_s.items())
          + (f", cpu/{device.type} = {ratio:.1f}x" if device.type != "cpu" else " (no GPU to compare)"))
    return {"gemm": f"{roof[torch.bfloat16]:.3g} / {roof[torch.float32]:.3g}", "cka_roof": cka / roof[torch.float32],
            "dtw": ratio if device.type != "cpu" else "-"}


# --- (iii) the store writer against the disk ------------------------------------------------------------------------

def part_store(args: argparse.Namespace, device: torch.device) -> Results:
    """(iii): bench/store_write.py's printout; its first MB/s figure (the writer alone) as the writer's speed."""
    cmd = [sys.executable, str(ROOT / "bench" / "store_write.py"), *SIZES[device.type]["store"]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    print(out.rstrip())
    return {"write_mb_s": float(re.search(r"([\d.]+) MB/s", out).group(1))}


PARTS: dict[str, Callable[[argparse.Namespace, torch.device], Results]] = {
    "states": part_states, "metrics": part_metrics, "store": part_store}
FIELDS = {"states": ("model", "forward_tflops", "dump_ratio"), "metrics": ("gemm", "cka_roof", "dtw"),
          "store": ("write_mb_s",)}  # the results each part returns


# --- the row and the projection -------------------------------------------------------------------------------------

def cell(results: Results, key: str, fmt: str) -> str:
    """A table cell: the value formatted, or "-" when its part did not run."""
    value = results.get(key, "-")
    return format(value, fmt) if isinstance(value, float) else str(value)


def table_row(date: str, machine: str, results: Results) -> str:
    return "| " + " | ".join([
        date, machine, cell(results, "model", ""), cell(results, "forward_tflops", ".3g"),
        cell(results, "dump_ratio", ".2f"), cell(results, "gemm", ""), cell(results, "cka_roof", ".2f"),
        cell(results, "dtw", ".1f"), cell(results, "write_mb_s", ".0f")]) + " |"


SECTION_HEAD = f"""{SECTION}

`make bench-gpu` (`python bench/gpu.py`, module docstring) on whatever device it finds; "CPU only" rows ran its CPU
parts at a small size (the model columns then describe a small model, not Qwen2-Audio-7B's widths). Model: decoder +
encoder layers at width d. Forward: plain prefill TFLOP/s (bench/flops.py's count). Dump/forward: the whole
`dump_states` over a plain forward. GEMM: bf16 / fp32 matmul TFLOP/s. CKA: `cross_layer_cka`'s TFLOP/s over the
fp32 GEMM. DTW: `batched_dtw`'s wall seconds on the CPU over those on the GPU. Writer: bench/store_write.py's
writer MB/s. A part that was not run reads "-", one that failed "failed".

| date | machine | model | forward TFLOP/s | dump/forward | GEMM TFLOP/s | CKA / GEMM | DTW cpu/gpu | writer MB/s |
|---|---|---|---|---|---|---|---|---|
"""


def with_row(readme: str, row: str) -> str:
    """`readme` with `row` appended to the GPU bench table (the section and its header are added at the end first
    when missing)."""
    if SECTION not in readme:
        readme = readme.rstrip("\n") + "\n\n" + SECTION_HEAD
    lines = readme.split("\n")
    at = lines.index(SECTION) + 1
    while not lines[at].startswith("|"):
        at += 1
    while at < len(lines) and lines[at].startswith("|"):
        at += 1
    return "\n".join(lines[:at] + [row] + lines[at:])


def projection(results: Results, device: torch.device, date: str, machine: str) -> None:
    """bench/scale.py's paper-scale table with this run's writer speed and, on a GPU, its forward rate."""
    flags, measured = ["--paper-only"], {}
    if isinstance(results.get("write_mb_s"), float):
        flags += ["--write-mb-s", str(results["write_mb_s"])]
        measured["write_mb_s"] = f"measured {date} on {machine}, bench/gpu.py"
    if device.type == "cuda" and isinstance(results.get("forward_tflops"), float):
        flags += ["--gpu-tflops", str(results["forward_tflops"])]
        measured["gpu_tflops"] = f"measured {date} on {machine}, bench/gpu.py, {results['model']}"
    scale.paper_scale(scale.parser().parse_args(flags), measured)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the CPU's small run of the states part (QUICK)")
    ap.add_argument("--layers", type=int, help="decoder layers (Qwen2-Audio-7B has 32)")
    ap.add_argument("--enc-layers", type=int, help="encoder layers (Qwen2-Audio-7B has 32)")
    ap.add_argument("--items", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seconds", type=float, help="audio per item")
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--no-readme", action="store_true", help="do not append the row to bench/README.md")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    for key, value in (QUICK if args.quick else SIZES[device.type]["run"]).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    load = os.getloadavg()[0]
    machine = torch.cuda.get_device_name() if cuda else f"CPU only ({os.cpu_count()} cores, load {load:.0f})"
    date = datetime.date.today().isoformat()
    print(f"{machine}" + ("" if cuda else ": no GPU found, running the CPU parts at a small size")
          + f"; torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load_average()}")
    results: Results = {}
    start = time.perf_counter()
    for name in args.parts:
        t0 = time.perf_counter()
        print(f"\n== {name}")
        try:
            results |= PARTS[name](args, device)
        except Exception:  # one part's failure must not lose the others' figures
            traceback.print_exc()
            results |= dict.fromkeys(FIELDS[name], "failed")
            print(f"{name}: FAILED, going on")
        print(f"-- {name}: {time.perf_counter() - t0:.0f} s (total {time.perf_counter() - start:.0f} s)")
    projection(results, device, date, machine)
    row = table_row(date, machine, results)
    print(f"\n{row}")
    if not args.no_readme:
        README.write_text(with_row(README.read_text(), row))
        print(f"appended to {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
