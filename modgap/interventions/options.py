"""Options of the interventions stage (config section `interventions`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modgap.options import StageOptions


@dataclass(frozen=True)
class InterventionsOptions(StageOptions):
    """Models to run (None = all); P1 edits: edited layers, ops, token selections ("bottom-k" takes `k`), the
    selection path's metric and layer (None = the edited layer), the controls every edit also runs under and their
    seed; P2: calibration sites, statistics mode and the calib items they are fitted on, text-redundancy factors;
    items per forward."""

    section: ClassVar[str] = "interventions"

    models: tuple[str, ...] | None
    layers: tuple[int | str, ...]
    ops: tuple[str, ...]
    select: tuple[str, ...]
    k: int
    metric: str
    select_layer: int | str | None
    controls: tuple[str, ...]
    seed: int
    calibration: tuple[str, ...]
    stats_mode: str
    calib_items: int
    redundancy: tuple[int, ...]
    batch_items: int

