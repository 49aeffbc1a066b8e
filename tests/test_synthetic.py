"""The demo's generated world: deterministic, one gold passage, relevant != useful."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict

import pytest

from rrpo.types import Example
from rrpo.synthetic import ATTRIBUTES, generate_examples, generate_world, relevance_labels

STOPWORDS = {"in", "what", "was", "is", "the", "of", "which", "does", "who", "where", "for"}


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return generate_examples(120, seed=0)


def _as_plain(examples: list[Example]) -> list[dict]:
    return [asdict(e) for e in examples]


def test_same_seed_gives_identical_output_and_other_seed_differs():
    assert _as_plain(generate_examples(30, seed=3)) == _as_plain(generate_examples(30, seed=3))
    assert asdict(generate_world(3)) == asdict(generate_world(3))
    assert _as_plain(generate_examples(30, seed=3)) != _as_plain(generate_examples(30, seed=4))


def test_examples_have_short_answers_and_exactly_one_gold(examples):
    assert len(examples) == 120
    assert len({e.id for e in examples}) == 120
    assert len({e.query for e in examples}) == 120, "questions must be distinct"
    for e in examples:
        assert e.query.endswith("?")
        assert e.answers and all(1 <= len(a.split()) <= 3 for a in e.answers)
        assert sum(e.gold) == 1
        (gold,) = [c for c, g in zip(e.candidates, e.gold) if g]
        assert any(a.lower() in gold.text.lower() for a in e.answers)
        for c, g in zip(e.candidates, e.gold):
            if not g:  # no other passage may state the answer
                assert not any(a.lower() in c.text.lower() for a in e.answers), c.text


def test_candidate_mix_and_lengths(examples):
    for e in examples:
        assert 8 <= len(e.candidates) <= 12
        assert len({c.id for c in e.candidates}) == len(e.candidates)
        kinds = Counter(c.metadata["kind"] for c in e.candidates)
        assert kinds["gold"] == 1
        assert kinds["on_topic"] >= 2 and kinds["namesake"] >= 2 and kinds["unrelated"] >= 1
        for c in e.candidates:
            assert 30 <= len(c.text.split()) <= 80, c.text
            assert c.metadata["on_topic"] == (c.metadata["kind"] == "on_topic")
            if c.metadata["kind"] == "on_topic":
                assert e.metadata["entity"] in c.text
            if c.metadata["kind"] == "namesake":  # close but not the same name
                assert c.title != e.metadata["entity"] and c.title[:3] == e.metadata["entity"][:3]
    # Shuffled: the gold passage is not always in the same slot.
    assert len({e.gold.index(True) for e in examples}) > 4
    assert set(e.metadata["attribute"] for e in examples) == set(ATTRIBUTES)


def test_candidate_count_range_is_respected():
    for e in generate_examples(20, seed=1, candidates=(10, 10)):
        assert len(e.candidates) == 10


def _overlap(query: str, text: str) -> int:
    """How many times the question's content words (entity name included) occur."""
    words = [w for w in re.findall(r"[a-z]+", query.lower()) if w not in STOPWORDS]
    tokens = re.findall(r"[a-z]+", text.lower())
    return sum(tokens.count(w) for w in words)


def test_gold_passage_looks_less_on_topic_than_the_distractors(examples):
    """The point of the world: lexical relevance and usefulness part ways."""
    for e in examples:
        gold = _overlap(e.query, e.candidates[e.gold.index(True)].text)
        on_topic = [_overlap(e.query, c.text) for c in e.candidates if c.metadata["on_topic"]]
        assert gold < min(on_topic), (e.query, gold, on_topic)


def test_relevance_labels_mark_on_topic_and_gold_only(examples):
    e = examples[0]
    labels = relevance_labels(e)
    assert len(labels) == len(e.candidates)
    for c, g, label in zip(e.candidates, e.gold, labels):
        assert label == (g or c.metadata["kind"] == "on_topic")
    assert sum(labels) >= 3  # gold plus at least two on-topic distractors


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="candidates"):
        generate_examples(2, candidates=(12, 8))
    with pytest.raises(ValueError, match="candidates"):
        generate_examples(2, candidates=(6, 8))
    with pytest.raises(ValueError, match="unknown attributes"):
        generate_examples(2, attributes=["shoe_size"])
    with pytest.raises(ValueError, match="pairs"):
        generate_examples(100, world=generate_world(0, n_entities=12))
    with pytest.raises(ValueError, match="n_entities"):
        generate_world(0, n_entities=3)
