"""The built-in `lab` benchmark: a small procedurally generated multiple-choice world.

A tiny speech LLM with a word-level tokenizer can learn this world from text in minutes, and is then
asked the same questions as speech. Items are written for `cloze` scoring (the question alone is
spoken; each choice is a few words scored as the continuation) and work in `letter` style too.

Subjects (the `subject` field) and their `meta["kind"]`:

- arithmetic (plus, minus): "what is three plus four" -> "seven"; operands and results in 0..20.
- comparison (larger, smaller): "which is bigger twelve or nine" -> "twelve"; two distinct numbers 0..20.
- ordering (after, before): "what number comes after seven" -> "eight"; results in 0..20.
- counting (animals, colours, foods): "how many animals cat dog fox" -> "three"; lists of 1..6 words.
- facts (colour, home, food): "where does anna live" -> "farm". The world has 24 people drawn from a
  fixed name list; each person's colour, home and food is fixed by the seed (values spread evenly),
  and the same world is shared by all splits.

`meta` holds `kind`, `template` (0..2) and `args` (the operands, n, the counted words or the person).

Every word is lower case, spelled out (no digits), free of punctuation and in the pocketsphinx en-us
dictionary; the whole vocabulary (`lab_vocabulary`) is 120 words. Questions are 4..9 words long.

Splits. Each question content (subject, kind, args), e.g. (arithmetic, plus, 3, 4), has three
phrasings (templates). A seeded per-content permutation gives one phrasing to train, one to calib
and one to test, so no question text is shared between splits, while every content can occur in
every split: test asks known facts and sums in a phrasing not seen for that content in training
(the templates themselves all occur in training). This is the choice for all subjects, facts
included, because facts must be seen in training to be known. Within a split, contents are drawn
without repetition until a subject's pool is exhausted, then again. Splits are generated
independently: the test items of a seed do not depend on `n_train` or `n_calib`.

Overlap, seed 0 (question texts shared between splits; distinct test contents that occur in train):

- 1200 / 100 / 200 items (the config defaults): texts train-test 0, train-calib 0, calib-test 0;
  test contents in train: arithmetic 20/40, comparison 9/40, ordering 40/40, counting 12/40,
  facts 40/40.
- 30000 / 200 / 2000 items: texts 0, 0, 0; test contents in train: arithmetic 400/400,
  comparison 400/400, ordering 40/40, counting 153/400, facts 72/72.

Facts need their content in train (they are unknowable otherwise): with at least 72 facts items in
train (n_train >= 360) every fact is drawn there. Arithmetic, comparison, ordering and counting
follow rules, so unseen contents are solvable in principle, but a tiny LM learns them best when
n_train covers their pools (462, 840, 40 contents; counting has 403560).

Answers are a deterministic function of the question text; the answer position is uniform.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Callable

from modgap.corpus.items import LETTERS, Item, validate_item, words_of

SPLITS = ("train", "calib", "test")
SUBJECTS = ("arithmetic", "comparison", "ordering", "counting", "facts")
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)
MAX_NUMBER = 20
MAX_COUNT = 6
COUNT_CHOICES = range(1, 11)
NAMES = (
    "alice", "amy", "anna", "ben", "bob", "carl", "dan", "dave", "ella", "emma", "frank", "fred",
    "harry", "helen", "jack", "james", "jane", "john", "kate", "laura", "leo", "lily", "lucy", "mary",
    "mike", "nick", "nina", "oscar", "paul", "peter", "ruth", "sam", "sarah", "steve", "susan", "tom",
    "tony", "victor", "walter", "zoe",
)
N_ENTITIES = 24
ATTRIBUTES = {
    "colour": ("red", "blue", "green", "yellow", "black", "white", "pink", "brown", "purple", "orange"),
    "home": ("city", "town", "farm", "forest", "beach", "island", "village", "castle", "river", "desert"),
    "food": ("bread", "rice", "soup", "cake", "apples", "cheese", "eggs", "corn", "beans", "pie"),
}
COUNTED = {
    "animals": ("cat", "dog", "fox", "cow", "pig", "owl", "duck", "bear"),
    "colours": ATTRIBUTES["colour"],
    "foods": ATTRIBUTES["food"],
}
_COUNT_TEMPLATES = ("how many {cat} {items}", "count the {cat} {items}", "{items} how many {cat}")
TEMPLATES: dict[str, dict[str, tuple[str, str, str]]] = {
    "arithmetic": {
        "plus": ("what is {a} plus {b}", "how much is {a} plus {b}", "{a} plus {b} equals what"),
        "minus": ("what is {a} minus {b}", "how much is {a} minus {b}", "{a} minus {b} equals what"),
    },
    "comparison": {
        "larger": ("which is larger {a} or {b}", "which is bigger {a} or {b}", "which number is larger {a} or {b}"),
        "smaller": ("which is smaller {a} or {b}", "which is less {a} or {b}", "which number is smaller {a} or {b}"),
    },
    "ordering": {
        "after": ("what comes after {n}", "what number comes after {n}", "which number is just after {n}"),
        "before": ("what comes before {n}", "what number comes before {n}", "which number is just before {n}"),
    },
    "counting": {cat: _COUNT_TEMPLATES for cat in COUNTED},
    "facts": {
        "colour": ("what colour does {e} like", "which colour does {e} like best", "{e} likes what colour"),
        "home": ("where does {e} live", "in which place does {e} live", "{e} lives where"),
        "food": ("what does {e} eat", "what food does {e} eat", "{e} eats what food"),
    },
}
# Distinct contents per subject: plus and minus have 231 operand pairs each; comparison 21 * 20 ordered
# pairs per kind; ordering 20 per kind; counting every ordered list; facts every (person, attribute).
_POOL_SIZES = {
    "arithmetic": (MAX_NUMBER + 1) * (MAX_NUMBER + 2),
    "comparison": 2 * (MAX_NUMBER + 1) * MAX_NUMBER,
    "ordering": 2 * MAX_NUMBER,
    "counting": sum(math.perm(len(w), c) for w in COUNTED.values() for c in range(1, MAX_COUNT + 1)),
    "facts": len(ATTRIBUTES) * N_ENTITIES,
}


@dataclass(frozen=True)
class _World:
    """The seed's fixed facts: (person, attribute) -> value."""

    entities: tuple[str, ...]
    facts: dict[tuple[str, str], str]


@dataclass(frozen=True)
class _Draft:
    """One question content with its answer and distractors, before phrasing."""

    kind: str
    args: tuple
    slots: dict[str, str]
    answer: str
    distractors: list[str]


def _world(seed: int) -> _World:
    """The seed's 24 people and their colour, home and food, each value used about equally often."""
    rng = random.Random(f"lab:{seed}:world")
    entities = tuple(sorted(rng.sample(NAMES, N_ENTITIES)))
    facts = {}
    for attr, values in ATTRIBUTES.items():
        spread = [values[i % len(values)] for i in range(N_ENTITIES)]
        rng.shuffle(spread)
        facts.update({(e, attr): v for e, v in zip(entities, spread)})
    return _World(entities, facts)


def _near(answer: int, values: range, k: int, rng: random.Random, exclude: tuple[int, ...] = ()) -> list[int]:
    """k numbers from `values` close to `answer` (a random k of the nearest 2k), never in `exclude`."""
    pool = [v for v in values if v != answer and v not in exclude]
    pool.sort(key=lambda v: (abs(v - answer), rng.random()))
    return rng.sample(pool[: 2 * k], k)


def _words(numbers: list[int]) -> list[str]:
    return [NUMBER_WORDS[v] for v in numbers]


def _arithmetic(world: _World, rng: random.Random, k: int) -> _Draft:
    kind = rng.choice(("plus", "minus"))
    while True:  # uniform over the operand pairs of `kind`
        a, b = rng.randint(0, MAX_NUMBER), rng.randint(0, MAX_NUMBER)
        result = a + b if kind == "plus" else a - b
        if 0 <= result <= MAX_NUMBER:
            break
    distractors = _words(_near(result, range(MAX_NUMBER + 1), k, rng))
    slots = {"a": NUMBER_WORDS[a], "b": NUMBER_WORDS[b]}
    return _Draft(kind, (a, b), slots, NUMBER_WORDS[result], distractors)


def _comparison(world: _World, rng: random.Random, k: int) -> _Draft:
    kind = rng.choice(("larger", "smaller"))
    a, b = rng.sample(range(MAX_NUMBER + 1), 2)
    answer, other = (max(a, b), min(a, b)) if kind == "larger" else (min(a, b), max(a, b))
    distractors = [other, *_near(answer, range(MAX_NUMBER + 1), k - 1, rng, exclude=(other,))]
    slots = {"a": NUMBER_WORDS[a], "b": NUMBER_WORDS[b]}
    return _Draft(kind, (a, b), slots, NUMBER_WORDS[answer], _words(distractors))


def _ordering(world: _World, rng: random.Random, k: int) -> _Draft:
    kind = rng.choice(("after", "before"))
    n = rng.randint(0, MAX_NUMBER - 1) if kind == "after" else rng.randint(1, MAX_NUMBER)
    answer = n + 1 if kind == "after" else n - 1
    distractors = _words(_near(answer, range(MAX_NUMBER + 1), k, rng))
    return _Draft(kind, (n,), {"n": NUMBER_WORDS[n]}, NUMBER_WORDS[answer], distractors)


def _counting(world: _World, rng: random.Random, k: int) -> _Draft:
    kind = rng.choice(tuple(COUNTED))
    items = tuple(rng.sample(COUNTED[kind], rng.randint(1, MAX_COUNT)))
    distractors = _words(_near(len(items), COUNT_CHOICES, k, rng))
    slots = {"cat": kind, "items": " ".join(items)}
    return _Draft(kind, items, slots, NUMBER_WORDS[len(items)], distractors)


def _facts(world: _World, rng: random.Random, k: int) -> _Draft:
    kind = rng.choice(tuple(ATTRIBUTES))
    entity = rng.choice(world.entities)
    answer = world.facts[entity, kind]
    distractors = rng.sample([v for v in ATTRIBUTES[kind] if v != answer], k)
    return _Draft(kind, (entity,), {"e": entity}, answer, distractors)


_SAMPLERS: dict[str, Callable[[_World, random.Random, int], _Draft]] = {
    "arithmetic": _arithmetic,
    "comparison": _comparison,
    "ordering": _ordering,
    "counting": _counting,
    "facts": _facts,
}


def _template(seed: int, subject: str, draft: _Draft, split: str) -> int:
    """This content's phrasing in `split`: a seeded permutation of its three templates."""
    order = [0, 1, 2]
    random.Random(f"lab:{seed}:{subject}:{draft.kind}:{draft.args}").shuffle(order)
    return order[SPLITS.index(split)]


def _draw(subject: str, world: _World, rng: random.Random, n: int, k: int) -> list[_Draft]:
    """n drafts of `subject`; no content repeats until the subject's whole pool has been drawn."""
    drafts: list[_Draft] = []
    seen: set[tuple] = set()
    while len(drafts) < n:
        if len(seen) == _POOL_SIZES[subject]:
            seen.clear()
        draft = _SAMPLERS[subject](world, rng, k)
        while (draft.kind, draft.args) in seen:
            draft = _SAMPLERS[subject](world, rng, k)
        seen.add((draft.kind, draft.args))
        drafts.append(draft)
    return drafts


def _split(seed: int, world: _World, split: str, n: int, n_choices: int) -> list[Item]:
    rng = random.Random(f"lab:{seed}:{split}")
    drafts = []
    for s, subject in enumerate(SUBJECTS):
        count = n // len(SUBJECTS) + (s < n % len(SUBJECTS))
        drafts += [(subject, d) for d in _draw(subject, world, rng, count, n_choices - 1)]
    rng.shuffle(drafts)
    items = []
    for i, (subject, d) in enumerate(drafts):
        t = _template(seed, subject, d, split)
        choices = list(d.distractors)
        rng.shuffle(choices)
        answer = rng.randrange(n_choices)
        choices.insert(answer, d.answer)
        item = Item(
            id=f"lab-{split}-{i:05d}",
            subject=subject,
            question=TEMPLATES[subject][d.kind][t].format(**d.slots),
            choices=choices,
            answer=answer,
            meta={"kind": d.kind, "template": t, "args": list(d.args)},
        )
        validate_item(item)
        items.append(item)
    return items


def generate_lab(seed: int, n_train: int, n_calib: int, n_test: int, n_choices: int = 4) -> dict[str, list[Item]]:
    """The lab benchmark's train/calib/test items; subjects get equal shares of each split.

    Deterministic in `seed`; each split depends only on `seed`, its own size and `n_choices`.
    """
    if not 2 <= n_choices <= len(LETTERS):
        raise ValueError(f"lab: n_choices must be 2..{len(LETTERS)}, got {n_choices}")
    sizes = {"train": n_train, "calib": n_calib, "test": n_test}
    for split, n in sizes.items():
        if n < 0:
            raise ValueError(f"lab: n_{split} must be >= 0, got {n}")
    world = _world(seed)
    return {split: _split(seed, world, split, n, n_choices) for split, n in sizes.items()}


def lab_vocabulary(seed: int) -> list[str]:
    """Every word any lab question or choice of this seed can contain, sorted."""
    world = _world(seed)
    words = set(NUMBER_WORDS) | set(world.entities) | set(COUNTED)
    words |= {w for values in (*ATTRIBUTES.values(), *COUNTED.values()) for w in values}
    for kinds in TEMPLATES.values():
        for templates in kinds.values():
            for t in templates:
                words |= set(words_of(re.sub(r"\{\w+\}", " ", t)))
    return sorted(words)
