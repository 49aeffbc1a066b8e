"""Conversions between LlamaIndex objects and rrpo's plain dataclasses."""

from __future__ import annotations

from typing import Any

from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from rrpo import Candidate
from rrpo.adapter_support import copy_metadata, unique_ids


def query_text(query: Any) -> str:
    """The query string of a ``QueryType`` (a str or a QueryBundle)."""
    if isinstance(query, QueryBundle):
        return query.query_str
    if isinstance(query, str):
        return query
    raise TypeError(f"expected a str or QueryBundle query, got {type(query).__name__}")


def node_to_candidate(node: NodeWithScore) -> Candidate:
    """The candidate as the reranker scores it: ``get_content(MetadataMode.EMBED)``, the
    node's text with the metadata the index embeds (LlamaIndex's convention)."""
    return Candidate(
        id=node.node.node_id,
        text=node.node.get_content(metadata_mode=MetadataMode.EMBED),
        metadata=copy_metadata(node.node.metadata),
        score=None if node.score is None else float(node.score),
    )


def node_to_record_candidate(node: NodeWithScore, node_id: str | None = None) -> Candidate:
    """The candidate as a feedback record keeps it: the text the user wrote, never the
    metadata folded into it (which may hold credentials), titled when the metadata has a
    title (the reranker puts it before the text, as the embed text does)."""
    metadata = copy_metadata(node.node.metadata)
    title = metadata.get("title")
    return Candidate(
        id=node_id or node.node.node_id,
        text=node.node.get_content(metadata_mode=MetadataMode.NONE),
        title=title if isinstance(title, str) else "",
        metadata=metadata,
        score=None if node.score is None else float(node.score),
    )


def record_candidates(nodes: list[NodeWithScore]) -> list[Candidate]:
    """Record candidates with ids unique within the list (a node retrieved twice)."""
    ids = unique_ids([node.node.node_id for node in nodes])
    return [node_to_record_candidate(node, node_id) for node, node_id in zip(nodes, ids)]


def node_ids(nodes: list[NodeWithScore]) -> list[str]:
    return unique_ids([node.node.node_id for node in nodes])
