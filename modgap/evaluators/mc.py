"""Multiple choice scored from a generated answer: the choice named in it, extracted deterministically."""
from __future__ import annotations

from modgap.corpus.items import Item, Style
from modgap.evaluators import Verdict
from modgap.models.base import extract_answer


def evaluate(response: str, item: Item, style: Style) -> Verdict:
    """1 if the extracted choice is the answer, else 0; an answer naming no choice is unparsed (pred -1, score 0),
    never guessed."""
    pred = extract_answer(response, item, style)
    return Verdict(float(pred == item.answer), "" if pred >= 0 else "unparsed: the answer names no choice", pred)
