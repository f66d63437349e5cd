"""Score one item in one condition from what the states pass produced: its prefill and, when one was generated,
its answer. Multiple choice is scored by option log-likelihoods (the argmax) or from the generated answer; open tasks
from the generated answer by their task's evaluator (`modgap.evaluators`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from modgap.corpus.items import Item, Style
from modgap.evaluators import evaluate
from modgap.models.base import Prefill, SpeechLM


@dataclass(frozen=True)
class Outcome:
    """One item in one condition: the chosen option (-1: unparsed, or an open task), the score in [0, 1] (NaN:
    unscored), the option log-likelihoods [k] (k = 0 for an open task), the generated answer ("" when none) and why
    the item is unscored or unparsed ("" otherwise)."""

    pred: int
    score: float
    logliks: np.ndarray
    response: str = ""
    reason: str = ""

    @property
    def correct(self) -> int:
        """1 for full credit, 0 otherwise, -1 when unscored."""
        return -1 if math.isnan(self.score) else int(self.score == 1.0)


def outcome(adapter: SpeechLM, prefill: Prefill, item: Item, style: Style, norm: str, response: str | None
            ) -> Outcome:
    """Score `item` after `prefill`: option log-likelihoods for multiple choice (its prediction when `response` is
    None), and the task's evaluator on `response` when one was generated."""
    logliks = np.zeros(0)
    if item.task == "mc":
        scores = adapter.score_prefill(prefill, item, style, norm)
        logliks = scores.logliks
        if response is None:
            return Outcome(scores.pred, float(scores.pred == item.answer), logliks)
    if response is None:
        raise ValueError(f"item {item.id}: an open task ({item.task}) needs a generated answer")
    verdict = evaluate(response, item, style)
    return Outcome(verdict.pred, math.nan if verdict.score is None else verdict.score, logliks, response,
                   verdict.reason)
