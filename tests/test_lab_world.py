"""The lab world: deterministic, balanced, speakable, text-disjoint splits, and solvable from text."""
import random
import re
from collections import Counter
from pathlib import Path

import pocketsphinx
import pytest

from modgap.corpus.items import spoken_text, words_of
from modgap.corpus.lab_world import (
    NUMBER_WORDS,
    SUBJECTS,
    _POOL_SIZES,
    _draw,
    _world,
    generate_lab,
    lab_vocabulary,
)

SEEDS = (0, 1, 7)


@pytest.fixture(scope="module")
def lab() -> dict:
    return generate_lab(seed=0, n_train=3000, n_calib=200, n_test=2000)


def _all(d: dict) -> list:
    return [it for items in d.values() for it in items]


def _dictionary() -> set[str]:
    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    with open(path, encoding="utf-8") as f:
        return {re.sub(r"\(\d+\)$", "", line.split(maxsplit=1)[0]) for line in f if line.strip()}


def test_deterministic_per_seed():
    a = generate_lab(seed=5, n_train=50, n_calib=10, n_test=30)
    assert a == generate_lab(seed=5, n_train=50, n_calib=10, n_test=30)
    assert a["test"] != generate_lab(seed=6, n_train=50, n_calib=10, n_test=30)["test"]
    assert a["test"] == generate_lab(seed=5, n_train=7, n_calib=0, n_test=30)["test"]


def test_split_sizes_ids_and_subject_shares(lab):
    assert {k: len(v) for k, v in lab.items()} == {"train": 3000, "calib": 200, "test": 2000}
    assert lab["test"][17].id == "lab-test-00017"
    assert len({it.id for it in _all(lab)}) == 5200
    for items in lab.values():
        assert set(Counter(it.subject for it in items).values()) == {len(items) // len(SUBJECTS)}
    assert generate_lab(0, 0, 0, 7)["test"] and not generate_lab(0, 0, 0, 7)["train"]


def test_answer_position_uniform(lab):
    counts = Counter(it.answer for it in lab["test"])
    n, k = len(lab["test"]), 4
    chi2 = sum((counts[a] - n / k) ** 2 / (n / k) for a in range(k))
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


@pytest.mark.parametrize("n_choices", [2, 4, 10])
def test_choices_distinct_and_answer_correct(n_choices):
    d = generate_lab(seed=3, n_train=300, n_calib=0, n_test=300, n_choices=n_choices)
    for it in _all(d):
        assert len(it.choices) == n_choices == len(set(it.choices))
        assert it.choices[it.answer] == _solve(it, _world(3))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="n_choices"):
        generate_lab(0, 1, 1, 1, n_choices=11)
    with pytest.raises(ValueError, match="n_test"):
        generate_lab(0, 1, 1, -1)


def test_words_spelled_out_short_and_in_pocketsphinx_dictionary(lab):
    dictionary = _dictionary()
    for seed in SEEDS:
        vocab = lab_vocabulary(seed)
        assert 100 <= len(vocab) <= 250
        assert not set(vocab) - dictionary
        for it in _all(generate_lab(seed, 500, 50, 500, n_choices=10)):
            texts = [it.question, *it.choices, spoken_text(it, "letter")]
            assert not any(re.search(r"\d", t) for t in texts)
            assert {w for t in [it.question, *it.choices] for w in words_of(t)} <= set(vocab)
            assert 3 <= len(words_of(it.question)) <= 10
    assert {it.subject for it in lab["test"]} == set(SUBJECTS)


def test_no_question_text_shared_between_splits(lab):
    texts = {split: {it.question for it in items} for split, items in lab.items()}
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["calib"]
    assert not texts["calib"] & texts["test"]


def test_answer_is_a_function_of_the_question_text(lab):
    answers: dict[str, set[str]] = {}
    for it in _all(lab):
        answers.setdefault(it.question, set()).add(it.choices[it.answer])
    assert all(len(a) == 1 for a in answers.values())


def test_rule_and_lookup_solver_is_perfect(lab):
    """Rules solve arithmetic, comparison, ordering and counting; facts are looked up from train."""
    known = {(it.meta["kind"], it.meta["args"][0]): it.choices[it.answer] for it in lab["train"] if it.subject == "facts"}
    for it in lab["test"]:
        pred = known[it.meta["kind"], _entity(it.question)] if it.subject == "facts" else _solve(it, _world(0))
        assert pred == it.choices[it.answer], it


def test_facts_world_fixed_per_seed_and_shared_by_splits(lab):
    facts = Counter()
    for it in _all(lab):
        if it.subject == "facts":
            facts[(it.meta["kind"], it.meta["args"][0], it.choices[it.answer])] += 1
    assert len(facts) == len(_world(0).facts) == 72
    assert _world(0) == _world(0) and _world(0).facts != _world(1).facts


@pytest.mark.parametrize("subject", ["arithmetic", "comparison", "ordering", "facts"])
def test_contents_repeat_only_after_the_pool_is_exhausted(subject):
    pool = _POOL_SIZES[subject]
    drafts = _draw(subject, _world(0), random.Random(0), pool + 5, 3)
    assert len({(d.kind, d.args) for d in drafts[:pool]}) == pool


def _number(word: str) -> int:
    return NUMBER_WORDS.index(word)


def _entity(question: str) -> str:
    template_words = {"what", "which", "colour", "does", "like", "best", "likes", "where", "live", "lives",
                      "in", "place", "eat", "eats", "food"}
    (entity,) = [w for w in words_of(question) if w not in template_words]
    return entity


def _solve(it, world) -> str:
    """The answer from the question text alone (facts from the seed's world)."""
    words = words_of(it.question)
    numbers = [_number(w) for w in words if w in NUMBER_WORDS]
    if it.subject == "arithmetic":
        return NUMBER_WORDS[numbers[0] + numbers[1] if "plus" in words else numbers[0] - numbers[1]]
    if it.subject == "comparison":
        return NUMBER_WORDS[max(numbers) if {"larger", "bigger"} & set(words) else min(numbers)]
    if it.subject == "ordering":
        return NUMBER_WORDS[numbers[0] + 1 if "after" in words else numbers[0] - 1]
    if it.subject == "counting":
        template_words = {"how", "many", "count", "the", "animals", "colours", "foods"}
        return NUMBER_WORDS[sum(w not in template_words for w in words)]
    return world.facts[_entity(it.question), it.meta["kind"]]
