"""Speed of the all-pairs cross-layer CKA against a per-pair loop, and of the streaming accumulators.

Usage: python bench/metrics_cka.py [--layers 33] [--n 2000] [--d 512] [--pairs 12] [--batch 256] [--repeat 1]
                                   [--threads 1] [--device cpu]
On synthetic aligned pairs xs, ys `[layers, n, d]` (float32, sharing a low-rank latent so CKA is far from 0), for the
biased and the unbiased estimator:
  (v) `cross_layer_cka` for all layers x layers pairs at once, in the form "auto" picks, and in the other form;
  (g) a per-pair loop of `linear_cka(form="gram")`, as common CKA code does it (each pair forms and centres its own
      two Grams), timed on `pairs` random pairs and scaled to all pairs;
  (f) the same loop with each pair in its cheaper form (`linear_cka(form="auto")`; feature space when n > d);
  (m) `MinibatchCKA` fed `batch` pairs at a time (batch_size = batch), then `result`;
  (s) once for both estimators: `CKAAccumulator` fed `batch` pairs at a time, then `result` of each estimator.
Times are CPU seconds of this process on a CPU device (the development machine is shared, so wall time is noise),
wall seconds after a synchronize on a GPU. Prints the fastest of `repeat` runs of (v), the ratios g/v, f/v (goal >= 20x for g/v) and s/v, and the largest
difference of each loop, of the accumulator and of the other form from (v) (<= 1e-5 required; the minibatch
estimator differs by design and is reported, not checked).
"""
from __future__ import annotations

import argparse

import torch

from timing import timed

from modgap.metrics.cka import CKAAccumulator, MinibatchCKA, _auto_form, cross_layer_cka, linear_cka


def data(layers: int, n: int, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """xs, ys `[layers, n, d]`: noise plus a shared rank-16 latent whose weight drifts with depth, plus offsets."""
    g = torch.Generator(device).manual_seed(0)
    z = torch.randn(n, 16, generator=g, device=device)
    w = torch.linspace(0.2, 2.0, layers, device=device)[:, None, None]
    proj = torch.randn(2, layers, 16, d, generator=g, device=device)
    xs = torch.randn(layers, n, d, generator=g, device=device) + w * (z @ proj[0]) + 3
    ys = torch.randn(layers, n, d, generator=g, device=device) + w.flip(0) * (z @ proj[1]) - 1
    return xs, ys


def stream(acc: CKAAccumulator | MinibatchCKA, xs: torch.Tensor, ys: torch.Tensor, batch: int) -> torch.Tensor:
    """Feed `acc` the pairs `batch` at a time; its result."""
    for start in range(0, xs.shape[1], batch):
        acc.update(xs[:, start : start + batch], ys[:, start : start + batch])
    return acc.result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=33)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    L, n, d = args.layers, args.n, args.d
    xs, ys = data(L, n, d, device)
    pairs = torch.randperm(L * L, generator=torch.Generator().manual_seed(1))[: args.pairs].tolist()
    auto = _auto_form(L, L, n, d, d, 4)
    other = "feature" if auto == "gram" else "gram"
    unit = "wall" if device.type == "cuda" else "CPU"
    print(f"{L}x{L} layers, n={n}, d={d}, {device}, {args.threads} thread(s), {unit} seconds; auto form: {auto}")
    one_shot = {}
    for unbiased in (False, True):
        print(f"-- {'unbiased' if unbiased else 'biased'}")
        tv, v = timed(lambda: cross_layer_cka(xs, ys, unbiased), device, args.repeat)
        to, vo = timed(lambda: cross_layer_cka(xs, ys, unbiased, other), device)
        one_shot[unbiased] = tv, v
        print(f"(v) all pairs, {auto:7s} {tv:8.2f} s   [{other}: {to:.2f} s, max diff {(vo - v).abs().max():.1e}]")
        for tag, form in (("g", "gram"), ("f", "auto")):
            t, loop = timed(lambda: torch.tensor([linear_cka(xs[k // L], ys[k % L], unbiased, form) for k in pairs]),
                            device)
            t *= L * L / len(pairs)
            diff = (loop - v.flatten()[pairs].cpu()).abs().max()
            print(f"({tag}) per-pair loop, {form:4s} {t:8.2f} s   {t / tv:6.1f}x slower   max diff {diff:.1e}")
        tm, m = timed(lambda: stream(MinibatchCKA(L, L, unbiased, device, args.batch), xs, ys, args.batch), device)
        print(f"(m) MinibatchCKA     {tm:8.2f} s   {tm / tv:6.1f}x one-shot   max diff {(m - v).abs().max():.1e}"
              f"  (estimator of its own)")
    acc = CKAAccumulator(L, L, d, d, device=device)
    ts, _ = timed(lambda: stream(acc, xs, ys, args.batch), device)
    print(f"(s) CKAAccumulator, both estimators {ts:.2f} s ({CKAAccumulator.nbytes(L, L, d, d) / 2**30:.2f} GiB)")
    for unbiased, (tv, v) in one_shot.items():
        diff = (acc.result(unbiased) - v).abs().max()
        print(f"    {'unbiased' if unbiased else 'biased  '}  {ts / tv:6.1f}x one-shot   max diff {diff:.1e}")

if __name__ == "__main__":
    main()
