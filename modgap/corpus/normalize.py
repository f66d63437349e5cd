"""Text tokens -> the lower-case dictionary words a speaker says for them."""
from __future__ import annotations

import re

from num2words import num2words

_PART = re.compile(r"(\d+)(st|nd|rd|th)?|([a-z']+)")


def _number_words(n: int, ordinal: bool) -> list[str]:
    """21 -> ['twenty', 'one']; 3, ordinal -> ['third']. No 'and', as espeak en-us says them."""
    text = num2words(n, to="ordinal" if ordinal else "cardinal")
    return [w for w in re.split(r"[\s,-]+", text) if w and w != "and"]


def spoken_words(token: str) -> list[str]:
    """The words spoken for one `words_of` token: "12" -> ["twelve"], "Don’t" -> ["don't"].

    Digit runs become number words (an ordinal when followed by st/nd/rd/th); letter runs are
    lower-cased and kept; curly apostrophes become straight ones.
    """
    words: list[str] = []
    for digits, suffix, letters in _PART.findall(token.replace("’", "'").lower()):
        words.extend(_number_words(int(digits), bool(suffix)) if digits else [letters])
    return words
