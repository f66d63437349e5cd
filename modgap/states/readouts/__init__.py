"""Readouts: pure functions of what one forward saw, computed in the states pass and stored per item.

A readout says what it `needs` from the forward ("decision_states": the hook-point state of every layer at the
decision position, the prompt's last; "span_states": `output_hidden_states` over the question span; "attention_rows":
the decision position's attention weights in every block, `modgap.models.attention`), which per-item
`fields` it returns and their shapes, and computes them from a `Seen`; it may also return `ragged_fields`, detail
of variable length per item (e.g. [n, *shape] over the span), kept only for the few `heatmap_ids` items the figures
draw (`states.attention_heatmap_items`). The spine (`modgap.states.spine.run`) runs the model once per condition and
batch and calls every enabled readout; the states stage writes their fields into the store (`{cond}/readouts/{field}`,
ragged ones in `{cond}/ragged/{field}`); the metrics stage turns per-layer fields into item-metric columns
(`{field}_{cond}`), which the stats and plots stages read like any other metric.

To add one: a module here with a `Readout` subclass decorated by `register`, and its import below.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from modgap.corpus.items import Item
from modgap.models.base import Inputs, Prefill, SpeechLM

NEEDS = ("decision_states", "span_states", "attention_rows")


@dataclass
class Seen:
    """What one forward of one condition saw, for B prompts.

    decision: [B, L+1, d] hook-point states at the decision position (None unless a readout needs them); the
    prefills carry span states [L+1, n, d] when the forward kept `output_hidden_states`; attention: per prompt
    [L, heads, T_g] the decision position's attention over its own prompt in blocks 1..L (None unless needed).
    """

    adapter: SpeechLM
    condition: str
    style: str
    items: list[Item]
    inputs: list[Inputs]
    prefills: list[Prefill]
    decision: torch.Tensor | None
    attention: list[torch.Tensor] | None = None

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The model's readout head on hook-point states: [..., d] -> [..., V] float32 logits."""
        return self.adapter.readout(h)


class Readout(ABC):
    """A per-item analysis of one forward; subclasses set `name` and `needs`, and implement `fields` and `__call__`.
    `heatmap_ids`: the items whose ragged fields hold rows (every other item gets none)."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]

    def __init__(self, heatmap_ids: Collection[str] = ()) -> None:
        self.heatmap_ids = frozenset(heatmap_ids)

    @abstractmethod
    def fields(self, adapter: SpeechLM) -> dict[str, tuple[int, ...]]:
        """Field name -> per-item shape, e.g. {"lens_margin": (L+1,)}."""

    def ragged_fields(self, adapter: SpeechLM) -> dict[str, tuple[int, ...]]:
        """Ragged field name -> per-row shape: an item has [rows, *shape] (none by default)."""
        return {}

    @abstractmethod
    def __call__(self, seen: Seen) -> dict[str, np.ndarray | list[np.ndarray]]:
        """Field name -> [B, *shape] values for the B items of `seen`; ragged field name -> B arrays [rows_b, *shape]
        (no rows for an item outside `heatmap_ids`)."""


REGISTRY: dict[str, type[Readout]] = {}


def register(cls: type[Readout]) -> type[Readout]:
    """Class decorator: make a readout available to `states.readouts` in the config under its `name`."""
    if bad := set(cls.needs) - set(NEEDS):
        raise ValueError(f"readout {cls.name}: unknown needs {sorted(bad)} (known: {', '.join(NEEDS)})")
    REGISTRY[cls.name] = cls
    return cls


def enabled(names: list[str] | tuple[str, ...], heatmap_ids: Collection[str] = ()) -> list[Readout]:
    """Instances of the named readouts, keeping ragged rows for `heatmap_ids`; ValueError naming an unknown one."""
    if unknown := [n for n in names if n not in REGISTRY]:
        raise ValueError(f"config key states.readouts: unknown readout(s) {unknown} (known: {', '.join(REGISTRY)})")
    return [REGISTRY[n](heatmap_ids) for n in names]


def field_shapes(readouts: list[Readout], adapter: SpeechLM, ragged: bool = False) -> dict[str, tuple[int, ...]]:
    """Every field of `readouts` with its per-item shape (`ragged`: every ragged field with its per-row shape);
    ValueError if two readouts write one field."""
    shapes: dict[str, tuple[int, ...]] = {}
    for r in readouts:
        for k, v in (r.ragged_fields(adapter) if ragged else r.fields(adapter)).items():
            if k in shapes:
                raise ValueError(f"readout {r.name}: field {k!r} is written by another readout too")
            shapes[k] = v
    return shapes


from modgap.states.readouts import attention, decision, lens, transcript  # noqa: E402,F401  (registration)
