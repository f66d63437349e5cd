"""The item format: validation errors name the item, and both styles speak exactly the text that is read."""
import pytest

from modgap.corpus.items import Item, ItemError, item_from_dict, read_jsonl, spoken_text, words_of, write_jsonl

GOOD = {"id": "q1", "subject": "s", "question": "What is two plus two?", "choices": ["three", "four"], "answer": 1}


def test_spoken_text_per_style():
    item = item_from_dict(GOOD)
    assert spoken_text(item, "cloze") == "What is two plus two?"
    assert spoken_text(item, "letter") == "What is two plus two? A, three; B, four."
    assert words_of(spoken_text(item, "letter")) == ["What", "is", "two", "plus", "two", "A", "three", "B", "four"]
    with pytest.raises(ItemError, match="style"):
        spoken_text(item, "essay")


def test_words_of_keeps_contractions_and_numbers():
    assert words_of("Don’t add 12-3, it's fine!") == ["Don’t", "add", "12", "3", "it's", "fine"]


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"answer": 2}, "q1: answer index 2 out of range"),
        ({"answer": -1}, "q1: answer index -1 out of range"),
        ({"answer": "B"}, "q1: answer must be an integer"),
        ({"choices": ["only"]}, "q1: needs 2..10 choices"),
        ({"question": "?! ..."}, "q1: question has no speakable words"),
        ({"choices": ["three", "--"]}, "q1: choice B has no speakable words"),
        ({"colour": "red"}, "q1: unknown field"),
    ],
)
def test_bad_items_name_the_item(patch, message):
    with pytest.raises(ItemError, match=message):
        item_from_dict({**GOOD, **patch})


def test_missing_field():
    d = dict(GOOD)
    del d["answer"]
    with pytest.raises(ItemError, match="q1: missing field"):
        item_from_dict(d)


def test_jsonl_round_trip_and_bad_line(tmp_path):
    items = [item_from_dict(GOOD), Item("q2", "s", "Why", ["a b", "c"], 0, audio="x.flac", meta={"k": 1})]
    write_jsonl(items, tmp_path / "a.jsonl")
    assert read_jsonl(tmp_path / "a.jsonl") == items
    (tmp_path / "b.jsonl").write_text('{"id": "q1"\n')
    with pytest.raises(ItemError, match=r"b.jsonl:1: not valid JSON"):
        read_jsonl(tmp_path / "b.jsonl")
