"""Reward callables on hand-computed cases (a scripted fake reader for the logic; the
real readers' rewards are tested in test_readers_local.py / test_readers_openai.py)."""

import math

import pytest

from rrpo import Candidate
from rrpo.prompts import build_prompt
from rrpo.rewards import (
    REWARDS,
    UserRating,
    composite,
    contains_answer,
    contains_score,
    context_cost,
    exact_match,
    exact_match_score,
    f1_score,
    get_reward,
    gold_loglik,
    llm_judge,
    normalize_answer,
    parse_judge_score,
    token_f1,
    user_rating,
)


class ScriptedReader:
    """Answers from a table, records every call (unit-test stand-in for a Reader)."""

    identity = "scripted"

    def __init__(self, answers=None, logliks=None):
        self.answers = answers or {}
        self.logliks = logliks or {}
        self.generated: list[str] = []
        self.scored: list[tuple[str, str]] = []

    def generate(self, prompts):
        self.generated.extend(prompts)
        return [self.answers[p] for p in prompts]

    def loglik(self, prompts, targets):
        self.scored.extend(zip(prompts, targets))
        return [self.logliks[(p, t)] for p, t in zip(prompts, targets)]


CTX = [[Candidate(id="1", title="A", text="one two three")], [], [Candidate(id="2", text="x y")]]
QUERIES = ["q0?", "q1?", "q2?"]
PROMPTS = [build_prompt(q, c) for q, c in zip(QUERIES, CTX)]


def call(reward, reader, answers, **columns):
    return reward(queries=QUERIES, contexts=CTX, answers=answers, reader=reader, prompts=PROMPTS, **columns)


def test_normalize_answer_follows_squad():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("  ") == ""


def test_metric_helpers_hand_computed():
    assert exact_match_score("the Paris", ["paris", "Lyon"]) == 1.0
    assert exact_match_score("Paris France", ["paris"]) == 0.0
    # pred tokens [new, york, city], gold [new, york]: P=2/3, R=1, F1=0.8
    assert f1_score("New York City", ["new york"]) == pytest.approx(0.8)
    # best over golds: "york" alone gives P=1/3 R=1 F1=0.5 < 0.8
    assert f1_score("New York City", ["york", "New York"]) == pytest.approx(0.8)
    assert f1_score("blue", "red") == 0.0
    assert f1_score("", [""]) == 1.0  # both empty after normalisation: SQuAD counts a match
    assert contains_score("It was in Ohio, USA.", ["ohio"]) == 1.0
    assert contains_score("Ohioan settlers", ["ohio"]) == 0.0  # word boundaries
    assert contains_score("anything", []) == 0.0


def test_answer_rewards_generate_once_per_prompt_and_skip_rows_without_gold():
    reader = ScriptedReader({PROMPTS[0]: "New York City", PROMPTS[2]: "the Paris"})
    golds = [["new york"], [], ["Paris"]]
    assert call(exact_match, reader, golds) == [0.0, None, 1.0]
    assert call(token_f1, reader, golds) == [pytest.approx(0.8), None, 1.0]
    assert call(contains_answer, reader, golds) == [1.0, None, 1.0]
    # The row without gold answers is never sent to the reader.
    assert PROMPTS[1] not in reader.generated
    assert len(reader.generated) == 6


def test_generations_column_replaces_reader_calls():
    reader = ScriptedReader({PROMPTS[2]: "d"})
    scores = call(token_f1, reader, [["x y"], ["c"], ["d"]], generations=["x", "c", None])
    assert scores == [pytest.approx(2 / 3), 1.0, 1.0]
    assert reader.generated == [PROMPTS[2]]


def test_gold_loglik_takes_the_best_gold_answer_in_one_call():
    reader = ScriptedReader(logliks={
        (PROMPTS[0], "NYC"): -2.0, (PROMPTS[0], "New York"): -0.5, (PROMPTS[2], "Paris"): -3.0,
    })
    values = call(gold_loglik, reader, [["NYC", "New York"], [], ["Paris", "  "]])
    assert values == [-0.5, None, -3.0]
    assert len(reader.scored) == 3  # blank gold answers are not scored
    assert call(gold_loglik, ScriptedReader(), [[], [], []]) == [None, None, None]


def test_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="answers has 2 entries for 3 queries"):
        call(token_f1, ScriptedReader(), [["a"], ["b"]])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Score: 4/5", 0.8),
        ("4 out of 5", 0.8),
        ("4", 0.75),  # bare integer on the 1-5 scale: (4-1)/4
        ("5", 1.0),
        ("1", 0.0),
        ('{"score": 0.8}', 0.8),
        ('The grade is {"score": 4, "why": "ok"}', 0.75),
        ('{"rating": "3/5"}', 0.6),
        ("0.25", 0.25),  # a decimal in [0, 1] is a fraction already
        ("85%", 0.85),
        ("Rating = 2. Reasoning: the answer has 3 errors.", 0.25),
        ("I would give it a 5.", 1.0),
        ("", None),
        ("no idea", None),
        ("Score: 7", None),  # off the scale
        ("6/5", None),
        ("-3", None),
        ('{"score": true}', None),
        (None, None),
    ],
)
def test_parse_judge_score(text, expected):
    value = parse_judge_score(text)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


def test_parse_judge_score_custom_scale():
    assert parse_judge_score("7", scale=(0, 10)) == pytest.approx(0.7)


def test_llm_judge_grades_with_passages_and_returns_none_on_malformed_output():
    reader = ScriptedReader({PROMPTS[0]: "Paris", PROMPTS[1]: "", PROMPTS[2]: "Rome"})

    class Judge(ScriptedReader):
        def generate(self, prompts):
            self.generated.extend(prompts)
            return ["Score: 5" if "Paris" in p.split("Answer to grade:")[1] else "hmm, hard to say" for p in prompts]

    judge = Judge()
    reward = llm_judge(judge)
    assert reward.__name__ == "llm_judge"
    scores = call(reward, reader, [["Paris"], [], []])
    assert scores == [1.0, 0.0, None]  # graded, empty answer (not asked), malformed
    assert len(judge.generated) == 2
    graded = judge.generated[0]
    assert "[1] A: one two three" in graded and "Question: q0?" in graded
    assert "Reference answer: Paris" in graded and "Answer to grade: Paris" in graded


def test_llm_judge_defaults_to_the_rewards_reader():
    reader = ScriptedReader({PROMPTS[0]: "a", PROMPTS[1]: "b", PROMPTS[2]: "c"})
    original = reader.generate

    def generate(prompts):
        if prompts and prompts[0].startswith("You grade"):
            reader.generated.extend(prompts)
            return ['{"score": 0.5}'] * len(prompts)
        return original(prompts)

    reader.generate = generate
    assert call(REWARDS["llm_judge"], reader, [[], [], []]) == [0.5, 0.5, 0.5]


def test_user_rating_scales_and_reads_feedback_metadata():
    assert user_rating(queries=QUERIES, rating=[1.0, None, 0.25]) == [1.0, None, 0.25]
    five = UserRating(1, 5)
    metadata = [{"rating": 5}, {}, {"rating": None}]
    assert five(queries=QUERIES, rating=[2, None, None], metadata=metadata) == [0.25, None, None]
    assert five(queries=QUERIES, metadata=metadata) == [1.0, None, None]
    assert user_rating(queries=QUERIES) == [None, None, None]
    with pytest.raises(ValueError, match=r"rating 4.0 of row 0 is outside the scale \[0.0, 1.0\]"):
        user_rating(queries=QUERIES, rating=[4, None, None])
    with pytest.raises(ValueError, match="low < high"):
        UserRating(5, 1)


def test_context_cost_counts_words_the_reader_sees():
    cost = context_cost(0.01, max_words=2)
    # row 0: title "A" (1) + "one two" (2 of 3 words) = 3 ; row 1: 0 ; row 2: "x y" = 2
    assert cost(queries=QUERIES, contexts=CTX) == [pytest.approx(-0.03), 0.0, pytest.approx(-0.02)]


def test_composite_weights_and_none_handling():
    reader = ScriptedReader(
        {PROMPTS[0]: "New York City", PROMPTS[2]: "Paris"},
        {(PROMPTS[0], "new york"): -1.0, (PROMPTS[2], "Paris"): -2.0},
    )
    mixed = composite({"token_f1": 1.0, "gold_loglik": 0.5, context_cost(0.1): 1.0})
    values = call(mixed, reader, [["new york"], [], ["Paris"]])
    # row 0: 0.8 + 0.5*-1 - 0.1*4 ; row 1: only the cost -> None ; row 2: 1 + 0.5*-2 - 0.1*2
    assert values[0] == pytest.approx(0.8 - 0.5 - 0.4)
    assert values[1] is None
    assert values[2] == pytest.approx(1.0 - 1.0 - 0.2)
    with pytest.raises(ValueError, match="at least one"):
        composite({})


def test_get_reward_registry_and_spec_strings():
    assert get_reward("token_f1") is token_f1
    assert get_reward(exact_match) is exact_match
    assert set(REWARDS) >= {"exact_match", "token_f1", "contains_answer", "gold_loglik", "llm_judge", "user_rating"}
    with pytest.raises(KeyError, match="known rewards: contains_answer, exact_match, gold_loglik"):
        get_reward("bleu")
    summed = get_reward("gold_loglik + 0.5*token_f1")
    reader = ScriptedReader({PROMPTS[0]: "x"}, {(PROMPTS[0], "x"): -1.0})
    out = summed(queries=QUERIES[:1], contexts=CTX[:1], answers=[["x"]], reader=reader, prompts=PROMPTS[:1])
    assert out == [pytest.approx(-1.0 + 0.5)]
    with pytest.raises(KeyError, match="cannot read reward term 'bleu'"):
        get_reward("token_f1+bleu")


def test_rewards_build_prompts_from_contexts_when_none_are_given():
    reader = ScriptedReader({PROMPTS[0]: "x"})
    out = exact_match(queries=QUERIES[:1], contexts=CTX[:1], answers=[["x"]], reader=reader)
    assert out == [1.0] and reader.generated == [PROMPTS[0]]
    assert all(math.isfinite(v) for v in out)
