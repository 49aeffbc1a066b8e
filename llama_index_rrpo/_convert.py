"""Conversions between LlamaIndex objects and rrpo's plain dataclasses."""

from __future__ import annotations

import copy
from typing import Any

from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from rrpo import Candidate


def query_text(query: Any) -> str:
    """The query string of a ``QueryType`` (a str or a QueryBundle)."""
    if isinstance(query, QueryBundle):
        return query.query_str
    if isinstance(query, str):
        return query
    raise TypeError(f"expected a str or QueryBundle query, got {type(query).__name__}")


def snapshot_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A deep copy when possible: later postprocessors must not change what we saw."""
    try:
        return copy.deepcopy(dict(metadata))
    except Exception:  # an uncopyable value (a lock, a client): keep a shallow copy
        return dict(metadata)


def node_to_candidate(node: NodeWithScore) -> Candidate:
    """The candidate exactly as the reranker sees it.

    The text is ``get_content(MetadataMode.EMBED)`` (the node's text plus the metadata
    the index embeds), and the title stays empty so that training on a stored record
    scores the very same string the live reranker scored.
    """
    return Candidate(
        id=node.node.node_id,
        text=node.node.get_content(metadata_mode=MetadataMode.EMBED),
        metadata=snapshot_metadata(node.node.metadata),
        score=None if node.score is None else float(node.score),
    )
