"""Scoring a generated response: one module per task, each a pure function `(response, item) -> Verdict`.

`evaluate` dispatches on `item.task`: "mc" (`mc`: deterministic answer extraction), "refusal" (`refusal`: AdvBench
refusal-string rate), "ifeval" (`ifeval`: IFEval strict and loose) and "qa" (`qa`: PEDANT, unavailable offline).
A score lies in [0, 1]; None means the item cannot be scored here, and `reason` says why.
"""
from __future__ import annotations

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
    """Score `response` to `item` with its task's evaluator (`style` matters to multiple choice only)."""
    from modgap.evaluators import ifeval, mc, qa, refusal  # noqa: PLC0415 - ifeval imports a heavy library

    if item.task == "mc":
        return mc.evaluate(response, item, style)
    return {"refusal": refusal.evaluate, "ifeval": ifeval.evaluate, "qa": qa.evaluate}[item.task](response, item)
