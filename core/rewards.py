"""Reward callables: how good was the reader's answer with the passages we gave it?

Every reward has one signature (extra data-set columns arrive as keyword arguments)::

    reward(*, queries, contexts, answers, reader, prompts, **columns) -> list[float | None]

- ``queries[i]``: the question; ``contexts[i]``: the passages given to the reader, in
  order; ``answers[i]``: the gold answers (may be empty); ``prompts[i]``: the reader prompt
  built from them by :func:`rrpo.prompts.build_prompt`; ``reader``: a
  :class:`rrpo.readers.Reader` (wrap it in a ``CachedReader`` to pay once per prompt).
- ``None`` means "not applicable" (no gold answer, no rating, unparseable judge output):
  the trainer skips it and counts it; a reward never crashes on missing data.
- Rewards that need a generated answer call ``reader.generate(prompts)`` unless a
  ``generations`` column (one answer or None per prompt) is passed, e.g. the answer a
  live pipeline already produced.

Tiers: ``exact_match`` / ``token_f1`` / ``contains_answer`` on generated answers (SQuAD
normalisation, best over the gold answers); ``gold_loglik`` from one forward pass;
``llm_judge(...)`` (any reader grades the answer); ``user_rating`` (a ``rating`` column).
``composite({...: weight})`` mixes them; ``context_cost(lam)`` is ``-lam * context words``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import string
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

from .prompts import build_prompt, context_words, format_passages

RewardFn = Callable[..., list]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- metrics

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [g for g in golds if isinstance(g, str)]


def exact_match_score(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0
    (also 0.0 when there is no gold answer: callers check for that first)."""
    pred = normalize_answer(prediction)
    return max((float(pred == normalize_answer(g)) for g in _golds(golds)), default=0.0)


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)  # both empty counts as a match (SQuAD)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD token F1, the best over the gold answers (0.0 with none)."""
    pred = normalize_answer(prediction).split()
    return max((_token_f1(pred, normalize_answer(g).split()) for g in _golds(golds)), default=0.0)


def contains_score(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if any non-empty normalised gold answer occurs in the normalised prediction
    (on word boundaries, so "ohio" is not found in "ohioan")."""
    pred = f" {normalize_answer(prediction)} "
    for gold in _golds(golds):
        norm = normalize_answer(gold)
        if norm and f" {norm} " in pred:
            return 1.0
    return 0.0


# --------------------------------------------------------------------------- helpers


def _check_lengths(queries: Sequence, **lists: Sequence | None) -> int:
    n = len(queries)
    for name, values in lists.items():
        if values is not None and len(values) != n:
            raise ValueError(f"reward: {name} has {len(values)} entries for {n} queries")
    return n


def _gold_lists(answers: Sequence[Any] | None, n: int) -> list[list[str]]:
    if answers is None:
        return [[] for _ in range(n)]
    out = []
    for golds in answers:
        if golds is None:
            out.append([])
        else:
            out.append([g for g in _golds(golds) if g.strip()])
    return out


def _predictions(
    prompts: Sequence[str], reader: Any, wanted: list[bool], generations: Sequence[str | None] | None
) -> list[str | None]:
    """Answers for the wanted rows: from the ``generations`` column where given, else
    one batched ``reader.generate`` call for the rest."""
    preds: list[str | None] = [None] * len(prompts)
    missing = []
    for i, want in enumerate(wanted):
        if not want:
            continue
        if generations is not None and generations[i] is not None:
            preds[i] = str(generations[i])
        else:
            missing.append(i)
    if missing:
        if reader is None:
            raise ValueError("reward needs a reader (or a 'generations' column) to get answers")
        for i, text in zip(missing, reader.generate([prompts[i] for i in missing])):
            preds[i] = text
    return preds


def _answer_metric(metric: Callable[[str, list[str]], float], name: str) -> RewardFn:
    def reward(
        *, queries, contexts=None, answers=None, reader=None, prompts=None, generations=None, **columns
    ) -> list[float | None]:
        n = _check_lengths(queries, contexts=contexts, answers=answers, prompts=prompts, generations=generations)
        prompts = _prompts_or_build(queries, contexts, prompts)
        golds = _gold_lists(answers, n)
        preds = _predictions(prompts, reader, [bool(g) for g in golds], generations)
        return [metric(p, g) if g and p is not None else None for p, g in zip(preds, golds)]

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = f"{metric.__name__} of the reader's generated answer (None without gold answers)."
    return reward


def _prompts_or_build(queries, contexts, prompts) -> list[str]:
    if prompts is not None:
        return list(prompts)
    if contexts is None:
        raise ValueError("reward needs prompts or contexts to build them from")
    return [build_prompt(q, c) for q, c in zip(queries, contexts)]


exact_match = _answer_metric(exact_match_score, "exact_match")
token_f1 = _answer_metric(f1_score, "token_f1")
contains_answer = _answer_metric(contains_score, "contains_answer")


def gold_loglik(
    *, queries, contexts=None, answers=None, reader=None, prompts=None, **columns
) -> list[float | None]:
    """The reader's mean per-token log-likelihood of the gold answer, best over the gold
    answers; one batched ``reader.loglik`` call, no generation (R3, arXiv 2510.24652)."""
    n = _check_lengths(queries, contexts=contexts, answers=answers, prompts=prompts)
    prompts = _prompts_or_build(queries, contexts, prompts)
    golds = _gold_lists(answers, n)
    owners = [i for i, g in enumerate(golds) for _ in g]
    if not owners:
        return [None] * n
    if reader is None:
        raise ValueError("gold_loglik needs a reader")
    values = reader.loglik([prompts[i] for i in owners], [a for g in golds for a in g])
    best: list[float | None] = [None] * n
    for i, value in zip(owners, values):
        best[i] = value if best[i] is None else max(best[i], value)
    return best


# --------------------------------------------------------------------------- judge

DEFAULT_RUBRIC = (
    "You grade answers to questions. Judge whether the answer is correct and supported "
    "by the passages (and matches the reference answer, when one is given). "
    "Score 5 = fully correct, 3 = partly correct, 1 = wrong, unsupported or no answer. "
    'Reply with only "Score: N" where N is 1 to 5.'
)

# A number, its exponent included: "1e400" must read as one (infinite) value, not as 1.
_NUMBER = r"(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)
_FRACTION = re.compile(_NUMBER + r"\s*(?:/|out of)\s*" + _NUMBER, re.IGNORECASE)
_PERCENT = re.compile(_NUMBER + r"\s*%")
# The gap after the keyword may not swallow a minus sign ("score: -1" is -1, not 1).
_KEYWORD = re.compile(r"(?:score|rating|grade)[^\w-]{0,3}" + _NUMBER, re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


def _on_scale(literal: str | float, scale: tuple[float, float]) -> float | None:
    """Map a bare score to [0, 1]: a decimal in [0, 1] is already a fraction; otherwise
    a value on the rubric's scale (1-5 by default) is rescaled; anything else is None."""
    low, high = scale
    value = float(literal)
    if not math.isfinite(value):
        return None
    is_decimal = isinstance(literal, float) or (isinstance(literal, str) and "." in literal)
    if is_decimal and 0.0 <= value <= 1.0:
        return value
    if low <= value <= high:
        return (value - low) / (high - low)
    if 0.0 <= value <= 1.0:  # "0" on a 1-5 scale: the bottom
        return value
    return None


def _from_json(text: str, scale: tuple[float, float]) -> float | None:
    for match in _JSON_OBJECT.finditer(text):
        try:
            data = json.loads(match.group(0))
        except ValueError:
            continue
        for key, value in data.items() if isinstance(data, dict) else []:
            if str(key).lower() in {"score", "rating", "grade"}:
                if isinstance(value, bool):
                    return None
                if isinstance(value, (int, float)):
                    return _on_scale(value if isinstance(value, float) else str(value), scale)
                if isinstance(value, str):
                    return parse_judge_score(value, scale)
    return None


def parse_judge_score(text: str | None, scale: tuple[float, float] = (1.0, 5.0)) -> float | None:
    """Read a judge's grade and map it to [0, 1]; None when there is no usable grade.

    Accepts ``{"score": 0.8}``, ``Score: 4/5``, ``4 out of 5``, ``80%``, ``Rating = 4``,
    a bare ``4`` (on ``scale``), or a bare decimal ``0.75`` (a fraction already).
    """
    if not text or not text.strip():
        return None
    if "{" in text:
        value = _from_json(text, scale)
        if value is not None:
            return value
    fraction = _FRACTION.search(text)
    if fraction:
        top, bottom = float(fraction.group(1)), float(fraction.group(2))
        return top / bottom if math.isfinite(bottom) and bottom > 0 and 0 <= top <= bottom else None
    percent = _PERCENT.search(text)
    if percent:
        value = float(percent.group(1))
        return value / 100 if 0 <= value <= 100 else None
    keyword = _KEYWORD.search(text) or _ANY_NUMBER.search(text)
    return _on_scale(keyword.group(1), scale) if keyword else None


def judge_prompt(
    query: str, passages: Sequence[Any], answer: str, golds: Sequence[str] = (),
    rubric: str = DEFAULT_RUBRIC, max_words: int = 120,
) -> str:
    """The grading request the judge reads: rubric, passages, question, answer."""
    blocks = format_passages(passages, max_words=max_words)
    context = f"Passages:\n{blocks}\n\n" if blocks else ""
    reference = f"\nReference answer: {' | '.join(golds)}" if golds else ""
    question = " ".join(str(query).split())
    return f"{rubric}\n\n{context}Question: {question}{reference}\nAnswer to grade: {answer}"


def llm_judge(
    judge: Any | None = None,
    rubric: str = DEFAULT_RUBRIC,
    scale: tuple[float, float] = (1.0, 5.0),
    max_words: int = 120,
) -> RewardFn:
    """A reward where ``judge`` (any reader; default: the reward's own reader) grades the
    reader's answer against the query and the passages. Malformed grades -> None; an
    empty answer scores 0 without asking the judge. A judge that cannot be reached
    (a :class:`~rrpo.readers.ReaderError`) gives None for the batch, with one warning,
    so training skips those samples instead of stopping."""
    warned = False

    def reward(
        *, queries, contexts=None, answers=None, reader=None, prompts=None, generations=None, **columns
    ) -> list[float | None]:
        n = _check_lengths(queries, contexts=contexts, answers=answers, prompts=prompts, generations=generations)
        prompts = _prompts_or_build(queries, contexts, prompts)
        contexts = contexts if contexts is not None else [[] for _ in range(n)]
        preds = _predictions(prompts, reader, [True] * n, generations)
        golds = _gold_lists(answers, n)
        asks = [i for i, p in enumerate(preds) if p and p.strip()]
        grader = judge if judge is not None else reader
        if asks and grader is None:
            raise ValueError("llm_judge needs a judge reader (or the reward's reader)")
        requests = [judge_prompt(queries[i], contexts[i], preds[i], golds[i], rubric, max_words) for i in asks]
        grades = ask_judge(grader, requests) if asks else []
        scores: list[float | None] = [0.0] * n
        for i, grade in zip(asks, grades):
            scores[i] = parse_judge_score(grade, scale)
        return scores

    def ask_judge(grader: Any, requests: list[str]) -> list[str | None]:
        from .readers import ReaderError

        nonlocal warned
        try:
            return grader.generate(requests)
        except ReaderError as err:  # endpoint down, retries spent: no grade, not a crash
            if not warned:
                logger.warning("llm_judge: the judge did not answer (%s); those samples get None", err)
                warned = True
            return [None] * len(requests)

    reward.__name__ = reward.__qualname__ = "llm_judge"
    return reward


# --------------------------------------------------------------------------- user rating


class UserRating:
    """A user's rating (``rating`` column, or ``metadata[i]["rating"]`` as feedback records
    carry it) mapped from [low, high] to [0, 1]; None where unrated. A rating outside
    the scale is a configuration error and raises."""

    __name__ = "user_rating"

    def __init__(self, low: float = 0.0, high: float = 1.0) -> None:
        if not high > low:
            raise ValueError(f"user rating scale needs low < high, got ({low}, {high})")
        self.low, self.high = float(low), float(high)

    def __call__(
        self, *, queries, contexts=None, answers=None, reader=None, prompts=None,
        rating=None, metadata=None, **columns,
    ) -> list[float | None]:
        n = _check_lengths(queries, rating=rating, metadata=metadata)
        raw = list(rating) if rating is not None else [None] * n
        for i, meta in enumerate(metadata or []):
            if raw[i] is None and isinstance(meta, Mapping):
                raw[i] = meta.get("rating")
        return [self._scale(value, i) for i, value in enumerate(raw)]

    def _scale(self, value: Any, index: int) -> float | None:
        if value is None:
            return None
        value = float(value)
        if not self.low <= value <= self.high:
            raise ValueError(
                f"rating {value} of row {index} is outside the scale [{self.low}, {self.high}]; "
                f"use UserRating(low, high) with the scale your users rate on"
            )
        return (value - self.low) / (self.high - self.low)


user_rating = UserRating()


# --------------------------------------------------------------------------- mixing


def context_cost(lam: float, max_words: int = 120) -> RewardFn:
    """``-lam * context words`` (title + truncated text words the reader sees), never None."""

    def cost(*, queries, contexts, **columns) -> list[float | None]:
        _check_lengths(queries, contexts=contexts)
        return [-lam * context_words(ctx, max_words=max_words) for ctx in contexts]

    cost.__name__ = cost.__qualname__ = "context_cost"
    cost.is_cost = True  # type: ignore[attr-defined]
    return cost


def composite(weights: Mapping[str | RewardFn, float]) -> RewardFn:
    """Weighted sum of rewards. A component's None is left out of the sum; the result
    is None only when every non-cost component is None (a cost alone is no reward)."""
    if not weights:
        raise ValueError("composite needs at least one reward")
    parts = [(get_reward(name), float(w)) for name, w in weights.items()]

    def reward(**kwargs: Any) -> list[float | None]:
        n = len(kwargs["queries"])
        totals = [0.0] * n
        informative = [False] * n
        for fn, weight in parts:
            for i, value in enumerate(fn(**kwargs)):
                if value is None:
                    continue
                totals[i] += weight * value
                informative[i] = informative[i] or not getattr(fn, "is_cost", False)
        return [t if ok else None for t, ok in zip(totals, informative)]

    reward.__name__ = reward.__qualname__ = "composite"
    reward.parts = parts  # type: ignore[attr-defined]
    return reward


REWARDS: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "contains_answer": contains_answer,
    "gold_loglik": gold_loglik,
    "llm_judge": llm_judge(),
    "user_rating": user_rating,
}

_TERM = re.compile(r"^\s*(?:(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*\*\s*)?([a-z_][a-z0-9_]*)\s*$", re.IGNORECASE)


def get_reward(name_or_callable: str | RewardFn) -> RewardFn:
    """A reward by name (see ``REWARDS``), a callable as is, or a weighted sum spelled
    ``"gold_loglik+0.5*token_f1"``."""
    if callable(name_or_callable):
        return name_or_callable
    if not isinstance(name_or_callable, str):
        raise TypeError(f"reward must be a name or a callable, got {type(name_or_callable).__name__}")
    name = name_or_callable.strip()
    if name in REWARDS:
        return REWARDS[name]
    if "+" in name or "*" in name:
        return composite(_parse_sum(name))
    raise KeyError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}")


def _parse_sum(spec: str) -> dict[str | RewardFn, float]:
    weights: dict[str | RewardFn, float] = {}
    for term in spec.split("+"):
        match = _TERM.match(term)
        if not match or match.group(2) not in REWARDS:
            raise KeyError(
                f"cannot read reward term {term.strip()!r} in {spec!r}; write WEIGHT*NAME "
                f"with NAME one of {', '.join(sorted(REWARDS))}"
            )
        weights[match.group(2)] = weights.get(match.group(2), 0.0) + float(match.group(1) or 1.0)
    return weights
