"""Alignment paths over every layer and item: the batched torch functions against a per-item, per-layer baseline.

Usage: python bench/metrics_paths.py [--items 64] [--layers 33] [--d 256] [--baseline-items 16] [--band B]
                                     [--repeat 3] [--threads 1] [--device cpu]
Synthetic items (Ts 100-250 speech positions, Tt 15-40 text tokens; speech repeats each text vector over a block of
positions, plus noise and a shared offset, so cosines are mostly positive as in real models). Both sides start from
the same per-item cos and L2 similarity matrices `[layers, Ts, Tt]` (`token_similarity`, untimed) and compute every
(item, layer)'s argmax paths (cos and L2) and DTW path (on the cosine matrix):
  ours: `modgap.metrics.item.batched_dtw`, as the metrics stage calls it: the inputs padded into
        `[B * layers, Ts_max, Tt_max]` (one copy per item) and one `dtw_paths` call (padding timed with it);
        `alignment_path` per item on all layers at once (padding these costs more than it saves);
  baseline: a loop over items and layers, numpy argmax / argmin, and DTW as a plain Python dynamic program (same
            tie rule and band). It runs on the first `baseline-items` items only; its times are scaled to all items
            by the ratio of DTW cells (the printout says so).
Times are process CPU seconds on the CPU (wall seconds with --device cuda); ours are the fastest of `repeat` rounds.
Checks that both sides give the same paths.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS on one thread, like torch

import numpy as np  # noqa: E402
import torch  # noqa: E402

from timing import timed

from modgap.metrics import alignment_path, token_similarity
from modgap.metrics.item import batched_dtw

Items = list[tuple[torch.Tensor, torch.Tensor]]  # per item: (speech, text) states, or (cos, L2) matrices


def make_items(n: int, layers: int, d: int, seed: int) -> Items:
    """(hs `[layers, Ts, d]`, ht `[layers, Tt, d]`) per item."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(layers, 1, d, generator=g)
    items = []
    for _ in range(n):
        ts, tt = int(torch.randint(100, 251, (1,), generator=g)), int(torch.randint(15, 41, (1,), generator=g))
        cuts = torch.sort(torch.randperm(ts - 1, generator=g)[: tt - 1] + 1).values
        owner = torch.bucketize(torch.arange(ts), cuts, right=True)  # text token of each speech position
        ht = torch.randn(layers, tt, d, generator=g) + shared
        hs = 0.8 * ht[:, owner] + 0.6 * torch.randn(layers, ts, d, generator=g) + 0.5 * shared
        items.append((hs, ht))
    return items


def similarities(items: Items, device: torch.device) -> Items:
    """Per item, the cos and L2 matrices `[layers, Ts, Tt]` of all layers at once."""
    pairs = [(hs.to(device), ht.to(device)) for hs, ht in items]
    return [(token_similarity(hs, ht, "cos"), token_similarity(hs, ht, "l2")) for hs, ht in pairs]


def torch_argmax(matrices: Items) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per item, the argmax paths (cos, L2) `[layers, Tt]` of all layers at once (padding them costs more)."""
    return [(alignment_path(cos, "cos"), alignment_path(l2, "l2")) for cos, l2 in matrices]


def python_dtw(sim: list[list[float]], band: float | None) -> list[tuple[int, int]]:
    """Plain O(Ts * Tt) dynamic program; ties: diagonal, then (i-1, j), then (i, j-1); the same band rule."""
    ts, tt = len(sim), len(sim[0])
    neg = float("-inf")
    score = [[neg] * tt for _ in range(ts)]
    came = [[0] * tt for _ in range(ts)]
    width = None if band is None else max(2 * band * (min(ts, tt) - 1), ts + tt - 2)
    for i in range(ts):
        row, here, above = sim[i], score[i], score[i - 1] if i else None
        for j in range(tt):
            if width is not None and 2 * abs(i * (tt - 1) - j * (ts - 1)) > width:
                continue
            if i == 0 and j == 0:
                here[0] = row[0]
                continue
            best, step = (above[j - 1] if i and j else neg), 0
            if i and above[j] > best:
                best, step = above[j], 1
            if j and here[j - 1] > best:
                best, step = here[j - 1], 2
            here[j] = row[j] + best
            came[i][j] = step
    i, j = ts - 1, tt - 1
    path = [(i, j)]
    while i or j:
        step = came[i][j]
        i, j = i - (step != 2), j - (step != 1)
        path.append((i, j))
    return path[::-1]


def baseline_argmax(matrices: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per item and layer, numpy argmax / argmin paths."""
    return [c.argmax(0) for A, _ in matrices for c in A], [d.argmin(0) for _, A in matrices for d in A]


def baseline_dtw(matrices: list[tuple[np.ndarray, np.ndarray]], band: float | None) -> list[list[tuple[int, int]]]:
    """Per item and layer, the Python DTW on the cosine matrix."""
    return [python_dtw(cos.tolist(), band) for A, _ in matrices for cos in A]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--layers", type=int, default=33)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--baseline-items", type=int, default=16)
    ap.add_argument("--band", type=float, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, cpu = torch.device(args.device), torch.device("cpu")
    items = make_items(args.items, args.layers, args.d, args.seed)
    n_base = min(args.baseline_items, args.items)
    batched_dtw([cos for cos, _ in similarities(items[:2], device)], args.band)  # warm-up

    matrices = similarities(items, device)
    t_argmax, paths = timed(lambda: torch_argmax(matrices), device, args.repeat)
    t_dtw, dtw = timed(lambda: batched_dtw([cos for cos, _ in matrices], args.band), device, args.repeat)
    matrices_np = [(cos.cpu().numpy(), l2.cpu().numpy()) for cos, l2 in matrices[:n_base]]
    t_base_argmax, (base_cos, base_l2) = timed(lambda: baseline_argmax(matrices_np), cpu)
    t_base_dtw, base_dtw = timed(lambda: baseline_dtw(matrices_np, args.band), cpu)

    path_cos = [p.cpu().numpy() for cos, _ in paths for p in cos]
    path_l2 = [p.cpu().numpy() for _, l2 in paths for p in l2]
    same_argmax = sum(map(np.array_equal, base_cos, path_cos)) + sum(map(np.array_equal, base_l2, path_l2))
    same_dtw = sum(np.array_equal(ours.cpu().numpy(), np.array(theirs)) for ours, theirs in zip(dtw, base_dtw))
    ls = torch.tensor([hs.shape[1] for hs, _ in items])
    lt = torch.tensor([ht.shape[1] for _, ht in items])
    cells = (ls * lt).double()
    scale = float(cells.sum() / cells[:n_base].sum())
    print(f"{args.items} items x {args.layers} layers, d={args.d}, Ts {int(ls.min())}-{int(ls.max())}, "
          f"Tt {int(lt.min())}-{int(lt.max())}, band {args.band}, device {device}, {torch.get_num_threads()} thread(s)")
    print(f"{'wall' if device.type == 'cuda' else 'CPU'} seconds; baseline timed on {n_base} items and scaled by "
          f"DTW cells x{scale:.2f} to all {args.items}; ours: fastest of {args.repeat}")
    rows = [("DTW paths (cos)", t_dtw, t_base_dtw), ("argmax paths (cos + L2)", t_argmax, t_base_argmax),
            ("all paths", t_dtw + t_argmax, t_base_dtw + t_base_argmax)]
    for name, ours, theirs in rows:
        print(f"{name}: ours {ours:.2f} s, baseline {theirs * scale:.2f} s, ratio {theirs * scale / ours:.1f}x")
    print(f"equal paths on the baseline items: argmax {same_argmax}/{2 * n_base * args.layers}, "
          f"DTW {same_dtw}/{n_base * args.layers}")


if __name__ == "__main__":
    main()
