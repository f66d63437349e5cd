"""Options of the states stage (config section `states`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from modgap.options import StageOptions


@dataclass(frozen=True)
class StatesOptions(StageOptions):
    """datasets (None = all), layers ("all" or layer indices, 0 = input embeddings), store dtype, optional BitRound
    bits, option-score normalisation, items per shard and per forward, an item cap, and the readouts to run."""

    section: ClassVar[str] = "states"

    datasets: tuple[str, ...] | None
    layers: Literal["all"] | tuple[int, ...]
    dtype: str
    bitround_bits: int | None
    norm: str
    shard_items: int
    batch_items: int
    max_items: int | None
    readouts: tuple[str, ...]


    def stored_layers(self, n_layers: int) -> list[int]:
        """The layers dumped for a model with `n_layers` decoder blocks; ValueError naming the key otherwise."""
        layers = list(range(n_layers + 1)) if self.layers == "all" else list(self.layers)
        if bad := [l for l in layers if not 0 <= l <= n_layers]:
            raise ValueError(f"config key states.layers: {bad} out of range: the model has layers 0..{n_layers}")
        return layers
