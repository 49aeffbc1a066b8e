"""Plain dataclasses that cross module boundaries.

Everything rrpo passes between its parts is one of these: a candidate passage, a QA
example, the reranker's selection for one query, and a feedback record from a live
pipeline. They hold no tensors and import nothing heavy, so every module (and both
adapters) can use them freely.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str, what: str) -> str:
    """``text`` unchanged, or a ValueError naming ``what`` when it holds a lone surrogate
    (text decoded with ``errors="surrogateescape"``, or JSON with a stray ``\\ud800``):
    no tokenizer or database can encode it, and the error there names nothing."""
    if not text.isascii():
        bad = _SURROGATE.search(text)
        if bad:
            raise ValueError(
                f"{what} holds a lone surrogate (U+{ord(bad.group()):04X} at character {bad.start()}), "
                "which is not valid Unicode; decode the source with errors='replace'"
            )
    return text


@dataclass
class Candidate:
    """One passage offered to the reranker.

    ``score`` is the first-stage (retrieval) score, if any; the reranker's own score
    lives in :class:`Selection`.
    """

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None

    def __post_init__(self) -> None:
        # Checked once here, so a bad passage fails naming itself, not deep in a tokenizer.
        if isinstance(self.id, int) and not isinstance(self.id, bool):
            self.id = str(self.id)  # ids are compared as strings everywhere (feedback, data files)
        if not isinstance(self.id, str):
            raise TypeError(f"Candidate id must be a str, got {type(self.id).__name__}: {self.id!r:.60}")
        if not isinstance(self.text, str):
            raise TypeError(f"candidate {self.id!r}: text must be a str, got {type(self.text).__name__}")
        if self.title is None:
            self.title = ""
        if not isinstance(self.title, str):
            raise TypeError(f"candidate {self.id!r}: title must be a str, got {type(self.title).__name__}")
        check_text(self.text, f"candidate {self.id!r} text")
        check_text(self.title, f"candidate {self.id!r} title")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        return cls(
            id=str(data["id"]),
            text=data["text"],
            title=data.get("title") or "",
            metadata=dict(data.get("metadata") or {}),
            score=data.get("score"),
        )


def as_candidates(items: Sequence[Candidate | str]) -> list[Candidate]:
    """Accept candidates or bare strings (ids become the list position)."""
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        hint = " (wrap a single passage in a list)" if isinstance(items, (str, bytes)) else ""
        raise TypeError(f"candidates must be a list of str or rrpo.Candidate, got {type(items).__name__}{hint}")
    out: list[Candidate] = []
    for i, item in enumerate(items):
        if isinstance(item, Candidate):
            out.append(item)
        elif isinstance(item, str):
            out.append(Candidate(id=str(i), text=item))
        else:
            raise TypeError(
                f"candidate {i} must be a str or rrpo.Candidate, got {type(item).__name__}"
            )
    return out


@dataclass
class Example:
    """A question with its candidate passages and, when known, gold answers/flags.

    ``gold`` is index-aligned with ``candidates`` (True = a passage the answer needs);
    None when the data set has no such labels.
    """

    id: str
    query: str
    candidates: list[Candidate]
    answers: list[str] = field(default_factory=list)
    gold: list[bool] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gold is not None and len(self.gold) != len(self.candidates):
            raise ValueError(
                f"example {self.id!r}: gold has {len(self.gold)} flags for "
                f"{len(self.candidates)} candidates"
            )


@dataclass
class Selection:
    """What the reranker did with one query's candidates.

    ``order`` is a ranking of candidate indices, best first; the first ``k`` are kept.
    For a greedy rerank it is the full ranking (kept prefix, then the rest by score);
    for a sampled selection the first ``k`` entries are the sampled picks and the rest
    follow by score. ``scores`` is index-aligned with the candidates (not with
    ``order``). ``log_prob`` is the Plackett-Luce-with-stop log-probability of the kept
    prefix and its stop decision under the policy that produced it (None for greedy).
    """

    order: list[int]
    k: int
    scores: list[float]
    log_prob: float | None = None
    stopped: bool = True  # False when k hit top_n / max_k or ran out of candidates

    @property
    def kept(self) -> list[int]:
        """Indices of the kept candidates, best first."""
        return self.order[: self.k]

    def kept_scores(self) -> list[float]:
        return [self.scores[i] for i in self.kept]

    def select(self, candidates: Sequence[Any]) -> list[Any]:
        """The kept items of ``candidates`` (any sequence aligned with the scores)."""
        return [candidates[i] for i in self.kept]


@dataclass
class FeedbackRecord:
    """One query seen by a live pipeline, as the feedback store keeps it."""

    query: str
    candidates: list[Candidate]
    kept_ids: list[str]
    kept_scores: list[float] = field(default_factory=list)
    k: int | None = None
    answer: str | None = None
    latency_ms: float | None = None
    reranker: str | None = None
    rating: float | None = None
    comment: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.k is None:
            self.k = len(self.kept_ids)

    def to_example(self) -> Example:
        """The record as a training example (no gold answers: rewards come from a
        judge or the user's rating, passed through ``metadata``)."""
        meta = dict(self.metadata)
        meta.update(record_id=self.id, rating=self.rating, answer=self.answer, kept_ids=list(self.kept_ids))
        return Example(id=self.id, query=self.query, candidates=list(self.candidates), metadata=meta)
