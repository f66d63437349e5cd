"""Text redundancy (P2): condition T with every word of the question repeated r times."""
from __future__ import annotations

from dataclasses import replace

from modgap.corpus.items import Item
from modgap.models.base import word_char_spans


def repeat_words(text: str, r: int) -> str:
    """`text` with each word of `words_of(text)` written r times, separated by one space; punctuation and the
    spacing between words are kept where they were. r = 1 returns `text` unchanged."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"redundancy factor must be an integer >= 1, got {r!r}")
    out, pos = [], 0
    for start, end in word_char_spans(text):
        out += [text[pos:start], " ".join([text[start:end]] * r)]
        pos = end
    return "".join(out) + text[pos:]


def redundant_item(item: Item, r: int) -> Item:
    """`item` whose question repeats each word r times; choices, answer and id unchanged.

    `SpeechLM.text_inputs` reads `spoken_text(item, style)`: in "cloze" that is the question alone, so every word of
    the transcript is repeated; in "letter" the options ("A, <choice>; ...") are spoken too, and only the question's
    words are repeated (the options stay the scoring targets' exact wording). r = 1 gives an equal item, hence the
    baseline T prompt token for token.
    """
    return replace(item, question=repeat_words(item.question, r))
