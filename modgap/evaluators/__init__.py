"""Scoring a generated response: one module per task, each a pure function `(response, item) -> Verdict`.

`evaluate` dispatches on `item.task` to the module of that name: "mc" (deterministic answer extraction), "refusal"
(AdvBench refusal-string rate), "ifeval" (IFEval strict and loose) and "qa" (PEDANT, unavailable offline).
A score lies in [0, 1]; None means the item cannot be scored here, and `reason` says why.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from modgap.corpus.items import Item, Style


@dataclass(frozen=True)
class Verdict:
    """The score of one response in [0, 1] (None: not scorable, `reason` says why), the chosen option of a
    multiple-choice answer (-1: unparsed, or an open task), and a note (empty when there is nothing to say)."""

    score: float | None
    reason: str = ""
    pred: int = -1


def evaluate(response: str, item: Item, style: Style) -> Verdict:
    """Score `response` to `item` with its task's evaluator, the module named after the task, imported on first use
    (ifeval's checkers take seconds to import); `style` matters to multiple choice only."""
    module = importlib.import_module(f"{__name__}.{item.task}")
    return module.evaluate(response, item, style) if item.task == "mc" else module.evaluate(response, item)
