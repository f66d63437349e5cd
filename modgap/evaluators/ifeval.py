"""IFEval scored as VoiceBench does: strict and loose instruction following, through `if_verifiable`'s checkers.

`if_verifiable` (a maintained package of Google's IFEval checkers) installs offline. Strict checks the response as
given; loose passes an instruction when any of eight variants passes (the response with its first and/or last line
removed, each also without markdown asterisks). VoiceBench's IFEval score is the mean of four rates: prompt-level
strict and loose (all instructions followed) and instruction-level strict and loose (fraction followed). The item
score is the mean of the same four for one prompt, so its mean over items equals VoiceBench's score up to one
difference: the instruction-level rates are averaged per prompt here, pooled over all instructions there.

Two checkers (`length_constraints:number_sentences`, `change_case:capital_word_frequency`) need nltk's Punkt data,
which cannot be downloaded here: such an item is unscored, with the reason, unless that data is installed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import langdetect
from if_verifiable.common import evaluate_instructions
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

from modgap.corpus.items import Item
from modgap.evaluators import Verdict

langdetect.DetectorFactory.seed = 0  # the language checkers call langdetect, which is random unless seeded


@dataclass(frozen=True)
class Following:
    """Instruction following of one response: prompt level (1 if every instruction is followed, else 0) and
    instruction level (fraction followed), strict and loose."""

    prompt_strict: float
    prompt_loose: float
    instruction_strict: float
    instruction_loose: float

    @property
    def score(self) -> float:
        """VoiceBench's IFEval score for one prompt: the mean of the four."""
        return (self.prompt_strict + self.prompt_loose + self.instruction_strict + self.instruction_loose) / 4


def check(response: str, item: Item) -> Following:
    """Check `response` against the item's instructions (meta `instruction_id_list` and `kwargs`, one dict per
    instruction, as IFEval writes them); ValueError naming the item on an unknown instruction or malformed meta,
    LookupError when a checker needs nltk data that is not installed."""
    ids, kwargs = item.meta.get("instruction_id_list"), item.meta.get("kwargs")
    if not ids or not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise ValueError(f"item {item.id}: meta needs instruction_id_list and one kwargs dict per instruction")
    if unknown := [i for i in ids if i not in INSTRUCTION_DICT]:
        raise ValueError(f"item {item.id}: unknown IFEval instruction(s) {unknown}")
    _, s = evaluate_instructions(response, list(ids), [dict(k or {}) for k in kwargs], item.question, INSTRUCTION_DICT)
    return Following(s.binary_strict, s.binary_loose, s.partial_strict, s.partial_loose)


def evaluate(response: str, item: Item) -> Verdict:
    """The item's IFEval score; None with the reason when it cannot be checked."""
    try:
        return Verdict(check(response, item).score)
    except ValueError as e:
        return Verdict(None, f"unscored: {e}")
    except LookupError as e:  # nltk's message: a banner, then "Resource 'punkt_tab' not found." and advice
        missing = re.search(r"Resource (\S+) not found", str(e))
        return Verdict(None, f"unscored: item {item.id}: an instruction needs nltk data that is not installed "
                             f"({missing.group(1) if missing else 'nltk data'})")
