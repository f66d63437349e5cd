"""Options of the states stage (config section `states`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from modgap.options import StageOptions, check_layer


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

    def stored_layers(self, n_layers: int, model: str) -> list[int]:
        """The layers dumped for `model`, which has `n_layers` decoder blocks; ValueError naming the key, the model
        and its range for a layer outside it."""
        if self.layers == "all":
            return list(range(n_layers + 1))
        return [check_layer("states.layers", l, model, n_layers) for l in self.layers]
