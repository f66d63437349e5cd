"""Options of the stats stage (config section `stats`)."""
from __future__ import annotations

from dataclasses import dataclass

from modgap.options import build


@dataclass(frozen=True)
class StatsOptions:
    """Layer-averaged metrics of the per-checkpoint fits, metrics of the per-item and per-subject tests, bootstrap
    resamples over items, permutations, and the seed of both."""

    metrics: tuple[str, ...]
    item_metrics: tuple[str, ...]
    n_boot: int
    n_perm: int
    seed: int

    @classmethod
    def from_config(cls, section: dict) -> StatsOptions:
        return build(cls, section, "stats")
