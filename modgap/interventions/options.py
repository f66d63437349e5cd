"""Options of the interventions stage (config section `interventions`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modgap.options import StageOptions, check_layer


@dataclass(frozen=True)
class KVMergeOptions:
    """P2's KV token merging (`modgap.interventions.kv_merge`): whether it runs, the decoder blocks [first, last]
    (0-based, inclusive) whose attention merges, the key-cosine threshold and the maximum merge ratio of a span."""

    enabled: bool
    layers: tuple[int, int]
    threshold: float
    max_ratio: float


@dataclass(frozen=True)
class InterventionsOptions(StageOptions):
    """Models to run (None = all); P1 edits: edited layers, ops, token selections ("bottom-k" takes `k`), the
    selection path's metric and layer (None = the edited layer), the controls every edit also runs under and their
    seed; P2: calibration sites, statistics mode and the calib items they are fitted on, text-redundancy factors,
    KV token merging; items per forward."""

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
    kv_merge: KVMergeOptions
    batch_items: int

    def check_layers(self, model: str, n_layers: int) -> None:
        """ValueError naming the key, the model and its range for an integer layer (`layers`, `select_layer`)
        outside `model`'s 0..`n_layers` (named layers always fit), or an enabled `kv_merge.layers` that is not a
        block range inside 0..`n_layers` - 1."""
        named = [("interventions.layers", layer) for layer in self.layers]
        for key, layer in [*named, ("interventions.select_layer", self.select_layer)]:
            if isinstance(layer, int):
                check_layer(key, layer, model, n_layers)
        first, last = self.kv_merge.layers
        if self.kv_merge.enabled and not 0 <= first <= last < n_layers:
            raise ValueError(f"interventions.kv_merge.layers: [{first}, {last}] is not a block range of {model} "
                             f"(first <= last, blocks 0..{n_layers - 1})")

