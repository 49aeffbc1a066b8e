"""Conversions between LangChain documents and rrpo candidates."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from langchain_core.documents import Document

from rrpo import Candidate


def document_id(doc: Document) -> str:
    """A stable id for a document: ``doc.id``, else ``metadata['id']``, else a hash
    of its text (so the retriever's copy and the compressor's copy agree)."""
    if doc.id:
        return str(doc.id)
    for key in ("id", "doc_id", "document_id"):
        if doc.metadata.get(key) is not None:
            return str(doc.metadata[key])
    return "sha1:" + hashlib.sha1(doc.page_content.encode("utf-8")).hexdigest()[:16]


def document_to_candidate(doc: Document) -> Candidate:
    """The candidate the reranker scores: the page content, titled when the metadata
    has a title (the reranker decides whether to use it)."""
    try:
        metadata = copy.deepcopy(dict(doc.metadata))
    except Exception:  # an uncopyable value: a shallow snapshot is the best we can do
        metadata = dict(doc.metadata)
    title = metadata.get("title")
    return Candidate(
        id=document_id(doc),
        text=doc.page_content,
        title=title if isinstance(title, str) else "",
        metadata=metadata,
        score=_float_or_none(metadata.get("score", metadata.get("relevance_score"))),
    )


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
