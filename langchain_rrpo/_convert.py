"""Conversions between LangChain documents and rrpo candidates."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from langchain_core.documents import Document

from rrpo import Candidate
from rrpo.adapter_support import copy_metadata, unique_ids


def document_id(doc: Document) -> str:
    """A stable id for a document: ``doc.id``, else ``metadata['id']``, else a hash
    of its text (so the retriever's copy and the compressor's copy agree)."""
    if doc.id:
        return str(doc.id)
    for key in ("id", "doc_id", "document_id"):
        if doc.metadata.get(key) is not None:
            return str(doc.metadata[key])
    return "sha1:" + hashlib.sha1(doc.page_content.encode("utf-8")).hexdigest()[:16]


def document_ids(docs: Sequence[Document]) -> list[str]:
    """The ids of a list of documents, unique within it: two copies of one text without
    ids get ``sha1:...`` and ``sha1:...#2``, so a record never merges them."""
    return unique_ids([document_id(doc) for doc in docs])


def documents_to_candidates(docs: Sequence[Document]) -> list[Candidate]:
    return [document_to_candidate(doc, i) for doc, i in zip(docs, document_ids(docs))]


def document_to_candidate(doc: Document, candidate_id: str | None = None) -> Candidate:
    """The candidate the reranker scores: the page content, titled when the metadata
    has a title (the reranker decides whether to use it)."""
    metadata = copy_metadata(doc.metadata)
    title = metadata.get("title")
    return Candidate(
        id=candidate_id or document_id(doc),
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
