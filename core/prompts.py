"""The one reader prompt, shared by training and evaluation.

A reward is only meaningful if the reader sees the same prompt when the reranker is
trained as when it is evaluated, so every part of rrpo builds it here: the query, the
kept passages in the reranker's order (numbered ``[1] Title: text``), each cut to
``max_words`` words, and a request for a short answer.

``context_words`` is the context cost used everywhere (training reward, evaluation
tables): the number of passage words the reader actually sees, i.e. title words plus
text words *after* truncation to ``max_words``. Words, not tokens, so the cost does not
depend on which reader's tokenizer is in use.
"""

from __future__ import annotations

from typing import Sequence

from .types import Candidate, as_candidates

INSTRUCTION = (
    "Answer the question using the numbered passages. "
    "Reply with a short answer only (a few words), no explanation."
)
NO_CONTEXT_INSTRUCTION = (
    "Answer the question. Reply with a short answer only (a few words), no explanation."
)


def truncate_words(text: str, n: int) -> str:
    """The first ``n`` whitespace-separated words of ``text`` (whitespace collapsed)."""
    if n < 0:
        raise ValueError(f"truncate_words: n must be >= 0, got {n}")
    return " ".join(text.split()[:n])


def _passage_block(index: int, passage: Candidate, max_words: int) -> str:
    text = truncate_words(passage.text, max_words)
    title = " ".join(passage.title.split())
    return f"[{index}] {title}: {text}" if title else f"[{index}] {text}"


def build_prompt(query: str, passages: Sequence[Candidate | str], max_words: int = 120) -> str:
    """The user message for the reader: numbered passages, then the question.

    Passages appear in the given order (the reranker's order). With no passages the
    reader is asked to answer from its own knowledge, so an empty selection is still a
    valid (closed-book) context.
    """
    if not isinstance(query, str):
        raise TypeError(f"build_prompt: query must be a str, got {type(query).__name__}")
    question = " ".join(query.split())
    blocks = format_passages(passages, max_words)
    if not blocks:
        return f"{NO_CONTEXT_INSTRUCTION}\n\nQuestion: {question}\nAnswer:"
    return f"{INSTRUCTION}\n\n{blocks}\n\nQuestion: {question}\nAnswer:"


def format_passages(passages: Sequence[Candidate | str], max_words: int = 120) -> str:
    """The numbered passage blocks (``[1] Title: text``), blank-line separated; "" for none."""
    return "\n\n".join(
        _passage_block(i, passage, max_words)
        for i, passage in enumerate(as_candidates(passages), start=1)
    )


def context_words(passages: Sequence[Candidate | str], max_words: int = 120) -> int:
    """Passage words the reader sees: title words + text words after truncation."""
    total = 0
    for passage in as_candidates(passages):
        total += len(passage.title.split()) + min(len(passage.text.split()), max_words)
    return total
