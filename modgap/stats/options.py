"""Options of the stats stage (config section `stats`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modgap.options import StageOptions


@dataclass(frozen=True)
class StatsOptions(StageOptions):
    """Layer-averaged metrics of the per-checkpoint fits, metrics of the per-item and per-subject tests, bootstrap
    resamples, permutations and the seed of both; the cluster unit and fixed effects of the item-level logistic
    models, and whether checkpoint-level fits also pool the training strategies."""

    section: ClassVar[str] = "stats"

    metrics: tuple[str, ...]
    item_metrics: tuple[str, ...]
    n_boot: int
    n_perm: int
    seed: int
    cluster: str
    checkpoint_effects: bool
    subject_effects: bool
    pool_strategies: bool

