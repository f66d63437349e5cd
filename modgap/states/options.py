"""Options of the states stage (config section `states`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from modgap.corpus.items import OPEN_TASKS, Item
from modgap.options import StageOptions, check_layer


@dataclass(frozen=True)
class Decoding:
    """How answers are generated (config `states.decoding`): the keyword arguments of `SpeechLM.generate`."""

    greedy: bool
    max_new_tokens: int
    repetition_penalty: float


@dataclass(frozen=True)
class StatesOptions(StageOptions):
    """datasets (None = all), layers ("all" or layer indices, 0 = input embeddings), store dtype, optional BitRound
    bits, hidden-state compression, option-score normalisation, items per shard and per forward, the processes
    building the next forwards' prompts, an item cap, the readouts to run (and for how many of the first items the
    attention readout keeps its rows), how multiple choice is scored and how answers are generated."""

    section: ClassVar[str] = "states"

    datasets: tuple[str, ...] | None
    layers: Literal["all"] | tuple[int, ...]
    dtype: str
    bitround_bits: int | None
    compression: Literal["auto", "zstd", "none"]
    norm: str
    shard_items: int
    batch_items: int
    num_workers: int
    max_items: int | None
    readouts: tuple[str, ...]
    attention_heatmap_items: int
    scoring: Literal["loglik", "generate"]
    decoding: Decoding

    def generates(self, item: Item) -> bool:
        """Whether `item` is scored from a generated answer: every open task, multiple choice under `generate`."""
        return item.task in OPEN_TASKS or self.scoring == "generate"

    def stored_layers(self, n_layers: int, model: str) -> list[int]:
        """The layers dumped for `model`, which has `n_layers` decoder blocks; ValueError naming the key, the model
        and its range for a layer outside it."""
        if self.layers == "all":
            return list(range(n_layers + 1))
        return [check_layer("states.layers", l, model, n_layers) for l in self.layers]
