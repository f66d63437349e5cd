"""Every metric of one item, or one batch of items, from its span states: tensors in, per-layer tensors out.

No file I/O: the metrics stage driver (`modgap.metrics.stage`) reads the stores and writes the tables.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .dtw import dtw_paths
from .geometry import METRICS, pooled_similarity, token_norms, token_similarity
from .alignment import alignment_path, path_consistency, path_monotonicity, path_values
from .truth import argmax_path_truth, dtw_path_truth


@dataclass
class ItemStates:
    """One item on one device. hs `[layers, Ts, d]`, ht `[layers, Tt, d]` (the same stored layers); speech_ms
    `[Ts, 2]` time span of each speech position; text_words `[Tt]` word index of each text token (-1: none);
    word_spans_ms `[W, 2]` the words' true time spans."""

    hs: Tensor
    ht: Tensor
    speech_ms: Tensor
    text_words: Tensor
    word_spans_ms: Tensor

    def matrices(self) -> dict[str, Tensor]:
        """Token similarity matrices `[layers, Ts, Tt]` under cosine and L2 distance."""
        return {m: token_similarity(self.hs, self.ht, m) for m in METRICS}


@dataclass(frozen=True)
class DTWConfig:
    """One P2 alignment: the DTW path over `metric`'s matrix at layer index `base` (into the stored layers), in an
    optional Sakoe-Chiba band; `base_layer` is the model layer it names."""

    base_layer: int
    base: int
    metric: str = "cos"
    band: int | None = None

    @property
    def label(self) -> str:
        return f"base{self.base_layer}-{self.metric}-band{'none' if self.band is None else self.band}"


def dtw_score(matrices: dict[str, Tensor], metric: str) -> Tensor:
    """The matrix a DTW path maximises: cosine similarity, or negative L2 distance. `[layers, Ts, Tt]`"""
    return matrices["cos"] if metric == "cos" else -matrices["l2"]


def layer_metrics(x: ItemStates, matrices: dict[str, Tensor]) -> dict[str, Tensor]:
    """P1's metrics per layer (each `[layers]`): pooled cos and l2, APS terms, path monotonicity and consistency,
    mean token norms, and the ground-truth hit rate and median miss (ms) of the cosine argmax path."""
    cos, l2 = pooled_similarity(x.hs, x.ht)
    paths = {m: alignment_path(a, m) for m, a in matrices.items()}
    hit, miss = argmax_path_truth(paths["cos"], x.speech_ms, x.text_words, x.word_spans_ms)
    return {
        "cos": cos, "l2": l2,
        "aps_cos": path_values(matrices["cos"], paths["cos"]).mean(-1),
        "aps_l2": path_values(matrices["l2"], paths["l2"]).mean(-1),
        "mono_cos": path_monotonicity(paths["cos"]), "mono_l2": path_monotonicity(paths["l2"]),
        "consistency": path_consistency(paths["cos"], paths["l2"]),
        "norm_S": token_norms(x.hs), "norm_T": token_norms(x.ht),
        "gt_hit_argmax": torch.as_tensor(hit, dtype=torch.float32), "gt_miss_ms_argmax": torch.as_tensor(miss),
    }


def batched_dtw(scores: list[Tensor], band: int | None) -> list[Tensor]:
    """DTW paths (`[K, 2]` each) of several score matrices `[Ts, Tt]` or stacks of them `[n, Ts, Tt]` (one path per
    matrix, in order), padded into one batched wavefront: one copy per stack, padding left unset (`dtw_paths` never
    reads it)."""
    stacks = [s.reshape(-1, *s.shape[-2:]) for s in scores]
    ls = torch.tensor([s.shape[1] for s in stacks for _ in range(len(s))])
    lt = torch.tensor([s.shape[2] for s in stacks for _ in range(len(s))])
    padded = stacks[0].new_empty((len(ls), int(ls.max()), int(lt.max())))
    row = 0
    for s in stacks:
        padded[row : row + len(s), : s.shape[1], : s.shape[2]] = s
        row += len(s)
    return dtw_paths(padded, ls, lt, band)


def layer_paths(scores: list[Tensor], band: int | None) -> list[list[Tensor]]:
    """Per item, the DTW path `[K, 2]` of every layer's matrix (`scores[k]`: item k's `[layers, Ts, Tt]`)."""
    paths = batched_dtw(scores, band)
    n = [s.shape[0] for s in scores]
    starts = [sum(n[:k]) for k in range(len(n))]
    return [paths[start : start + count] for start, count in zip(starts, n)]


def dtw_layer_truth(items: list[ItemStates], paths: list[list[Tensor]]) -> list[dict[str, Tensor]]:
    """Per item, the DTW path of every layer (`layer_paths`) checked against the true word spans: gt_hit_dtw and
    gt_miss_ms_dtw, each `[layers]`."""
    out = []
    for x, item_paths in zip(items, paths):
        truth = [dtw_path_truth(p, x.speech_ms, x.text_words, x.word_spans_ms) for p in item_paths]
        out.append({"gt_hit_dtw": torch.tensor([h for h, _ in truth], dtype=torch.float32),
                    "gt_miss_ms_dtw": torch.tensor([m for _, m in truth], dtype=torch.float32)})
    return out


def base_paths(scores: list[Tensor], config: DTWConfig) -> list[Tensor]:
    """One DTW path per item at `config`'s base layer (P2 reuses it for every layer pair). `scores[k]`: item k's
    `[layers, Ts, Tt]` matrix of `config.metric`."""
    return batched_dtw([s[config.base] for s in scores], config.band)

