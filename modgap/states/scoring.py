"""Score items in one condition from what the states pass produced: their prefills and, where one was generated,
their answers. Multiple choice is scored by option log-likelihoods (the argmax) or from the generated answer; open tasks
from the generated answer by their task's evaluator (`modgap.evaluators`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from modgap.corpus.items import Item, Style
from modgap.evaluators import evaluate
from modgap.models.base import Prefill, Scores, SpeechLM


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


def outcomes(adapter: SpeechLM, prefills: list[Prefill], items: list[Item], style: Style, norm: str,
             responses: list[str | None]) -> list[Outcome]:
    """Score each item after its prefill (one condition): the option log-likelihoods of every multiple-choice item in
    one batched call (`SpeechLM.score_prefills`), then `outcome` per item."""
    mc = [i for i, it in enumerate(items) if it.task == "mc"]
    scores = dict(zip(mc, adapter.score_prefills([prefills[i] for i in mc], [items[i] for i in mc], style, norm)))
    return [outcome(it, style, scores.get(i), r) for i, (it, r) in enumerate(zip(items, responses))]


def outcome(item: Item, style: Style, scores: Scores | None, response: str | None) -> Outcome:
    """`item` scored from its option `scores` (multiple choice; its prediction when `response` is None) and the
    task's evaluator on `response` when one was generated."""
    logliks = np.zeros(0) if scores is None else scores.logliks
    if scores is not None and response is None:
        return Outcome(scores.pred, float(scores.pred == item.answer), logliks)
    if response is None:
        raise ValueError(f"item {item.id}: an open task ({item.task}) needs a generated answer")
    verdict = evaluate(response, item, style)
    return Outcome(verdict.pred, math.nan if verdict.score is None else verdict.score, logliks, response,
                   verdict.reason)
