"""Options of the metrics stage (config section `metrics`): every open choice of METHODS.md."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modgap.options import StageOptions


@dataclass(frozen=True)
class DTWOptions:
    """P2's alignment: the layer whose similarity matrix is aligned, the similarity maximised, a Sakoe-Chiba band."""

    base_layer: int
    metric: str
    band: int | None


@dataclass(frozen=True)
class CKAOptions:
    """Band-width threshold, estimator mode and memory cap, permutations of the null, item resamples of the readout
    bootstrap, and the DTW overrides whose CKA is compared."""

    tau: float
    mode: str
    max_bytes: int
    n_perm: int
    n_boot: int
    stability: tuple[dict, ...]


@dataclass(frozen=True)
class MetricsOptions(StageOptions):
    """Where metrics run, layer 0 in averages, the word timings taken as truth, items per batched DTW, the post-norm
    last state, the seed of every random control, the transcript-emergence level, the DTW and CKA choices, and the
    base-layer sensitivity's CKA."""

    section: ClassVar[str] = "metrics"

    device: str
    include_layer0: bool
    truth: str
    batch_items: int
    last_layer: str
    seed: int
    transcript_level: float
    dtw: DTWOptions
    pairs: str
    cka: CKAOptions
    base_layer_cka_batch: int

