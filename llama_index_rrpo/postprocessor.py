"""``RRPORerank``: rrpo's reranker as a LlamaIndex node postprocessor.

    from llama_index_rrpo import RRPORerank
    engine = index.as_query_engine(similarity_top_k=20,
                                   node_postprocessors=[RRPORerank(top_n=5)])

It reorders the retrieved nodes and keeps as many as the query needs (between
``min_k`` and ``top_n``, decided by the reranker's STOP head; ``dynamic_k=False`` keeps
exactly ``top_n``). The caller's nodes are never modified: the returned nodes are
copies carrying the rerank score (``NodeWithScore.score`` and
``metadata["relevance_score"]``), the rank (``rrpo_rank``, 1-based) and the chosen k
(``rrpo_k``). These keys are hidden from the LLM and embedding text, so they do not
leak into the reader's prompt.
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

from llama_index.core.bridge.pydantic import Field, PrivateAttr, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from rrpo import Selection
from rrpo.adapter_support import LazyReranker, check_adapter_limits, injected_model_name

from ._convert import node_to_candidate

dispatcher = get_dispatcher(__name__)

# Metadata our copies carry; kept out of the text the LLM and the embedder see.
RERANK_KEYS = ("relevance_score", "rrpo_rank", "rrpo_k", "retrieval_score")


class RRPORerank(BaseNodePostprocessor):
    """Rerank nodes with an rrpo reranker and keep a query-dependent number of them."""

    model: str = Field(
        default="minilm-l6",
        description="Reranker to load: 'minilm-l6' (offline default), a local directory "
        "saved by rrpo, or a Hugging Face cross-encoder id.",
    )
    top_n: Optional[int] = Field(
        default=5, description="Keep at most this many nodes (None = no cap)."
    )
    min_k: int = Field(default=1, description="Keep at least this many nodes.")
    dynamic_k: bool = Field(
        default=True,
        description="Let the reranker decide k per query; False keeps exactly top_n.",
    )
    keep_retrieval_score: bool = Field(
        default=False,
        description="Copy the retriever's score into metadata['retrieval_score'].",
    )
    device: Optional[str] = Field(
        default=None, description="Torch device; None picks the best available."
    )
    batch_size: int = Field(default=32, description="Query-passage pairs per forward pass.")

    _holder: Any = PrivateAttr(default=None)

    def __init__(self, reranker: Any = None, **data: Any) -> None:
        """``reranker``: an already loaded ``rrpo.Reranker`` (or any object with its
        ``rerank`` interface) to use instead of loading ``model``."""
        if reranker is not None and "model" not in data:
            data["model"] = injected_model_name(reranker)
        super().__init__(**data)
        self._holder = LazyReranker(reranker)

    @model_validator(mode="after")
    def _check_limits(self) -> "RRPORerank":
        check_adapter_limits(self.min_k, self.top_n, self.batch_size)
        return self

    @classmethod
    def class_name(cls) -> str:
        return "RRPORerank"

    @property
    def reranker(self) -> Any:
        """The reranker, loaded on first use (once, even with many threads)."""
        return self._holder.get(self.model, self.device)

    @property
    def reranker_version(self) -> str:
        """What feedback records name as the reranker (never triggers a load)."""
        return self._holder.version(self.model)

    # -- LlamaIndex entry points -------------------------------------------------------

    def _postprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        query = self._start(nodes, query_bundle)
        if not nodes:
            return self._finish_empty()
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._callback_payload(nodes, query)
        ) as event:
            selection = self._select(query, nodes)
            kept = self._kept_nodes(nodes, selection)
            event.on_end(payload={EventPayload.NODES: kept})
        dispatcher.event(ReRankEndEvent(nodes=kept))
        return kept

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        query = self._start(nodes, query_bundle)
        if not nodes:
            return self._finish_empty()
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._callback_payload(nodes, query)
        ) as event:
            # The forward pass is blocking torch work: run it in a worker thread so the
            # event loop keeps serving other queries meanwhile.
            selection = await asyncio.to_thread(self._select, query, nodes)
            kept = self._kept_nodes(nodes, selection)
            event.on_end(payload={EventPayload.NODES: kept})
        dispatcher.event(ReRankEndEvent(nodes=kept))
        return kept

    # -- steps -------------------------------------------------------------------------

    def _start(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle]) -> str:
        if query_bundle is None:
            raise ValueError("RRPORerank needs the query: pass query_bundle or query_str")
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=self.top_n if self.top_n is not None else len(nodes),
                model_name=self.model,
            )
        )
        return query_bundle.query_str

    def _finish_empty(self) -> List[NodeWithScore]:
        dispatcher.event(ReRankEndEvent(nodes=[]))
        return []

    def _callback_payload(self, nodes: List[NodeWithScore], query: str) -> dict:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n if self.top_n is not None else len(nodes),
        }

    def _select(self, query: str, nodes: List[NodeWithScore]) -> Selection:
        candidates = [node_to_candidate(node) for node in nodes]
        return rerank_one(
            self.reranker,
            query,
            candidates,
            top_n=self.top_n,
            min_k=min(self.min_k, len(candidates)),
            dynamic_k=self.dynamic_k,
            batch_size=self.batch_size,
        )

    def _kept_nodes(self, nodes: List[NodeWithScore], selection: Selection) -> List[NodeWithScore]:
        kept = []
        for rank, index in enumerate(selection.kept, start=1):
            extra = {
                "relevance_score": float(selection.scores[index]),
                "rrpo_rank": rank,
                "rrpo_k": int(selection.k),
            }
            if self.keep_retrieval_score:
                extra["retrieval_score"] = nodes[index].score
            kept.append(_copy_with(nodes[index], float(selection.scores[index]), extra))
        return kept


def rerank_one(reranker: Any, query: str, candidates: list, **options: Any) -> Selection:
    """One query through ``rerank_batch`` (which takes a batch size) when the reranker
    has it, else through ``rerank``."""
    batch_size = options.pop("batch_size", None)
    if hasattr(reranker, "rerank_batch"):
        return reranker.rerank_batch([query], [candidates], batch_size=batch_size, **options)[0]
    return reranker.rerank(query, candidates, **options)


def _copy_with(node: NodeWithScore, score: float, extra: dict) -> NodeWithScore:
    """A copy of ``node`` with its own metadata dict (the original stays untouched)."""
    inner = node.node
    hidden = [key for key in extra if key in RERANK_KEYS]
    copy = inner.model_copy(
        update={
            "metadata": {**inner.metadata, **extra},
            "excluded_llm_metadata_keys": _merged(inner.excluded_llm_metadata_keys, hidden),
            "excluded_embed_metadata_keys": _merged(inner.excluded_embed_metadata_keys, hidden),
        }
    )
    return NodeWithScore(node=copy, score=score)


def _merged(keys: list, more: list) -> list:
    return list(keys) + [key for key in more if key not in keys]
