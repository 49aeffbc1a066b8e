"""``RRPORerank``: rrpo's reranker as a LlamaIndex node postprocessor.

    from llama_index_rrpo import RRPORerank
    engine = index.as_query_engine(similarity_top_k=20,
                                   node_postprocessors=[RRPORerank(top_n=5)])

It reorders the retrieved nodes and keeps as many as the query needs (between
``min_k`` and ``top_n``, decided by the reranker's STOP head; ``dynamic_k=False`` keeps
exactly ``top_n``; ``min_k=0`` lets it keep none: "nothing here is relevant"). The
caller's nodes are never modified: the returned nodes are copies (metadata deep-copied)
carrying the calibrated relevance in [0, 1] (``NodeWithScore.score`` and
``metadata["relevance_score"]``: the sigmoid of the cross-encoder's logit, so a fixed
threshold such as ``SimilarityPostprocessor(similarity_cutoff=0.5)`` after it means the
same for every query), the rank (``rrpo_rank``, 1-based) and the chosen k (``rrpo_k``).
These keys are hidden from the LLM and embedding text, so they do not leak into the
reader's prompt.

Per call: ``postprocess_nodes(nodes, query_str=..., top_n=2)``, or, through a query
engine, ``with rerank.override(top_n=2, min_k=0): engine.query(...)`` (a context
variable: concurrent requests keep their own settings). ``dedupe=True`` drops duplicate
passages before choosing k; ``batch_wait_ms=5`` batches concurrent queries into one
forward pass (opt-in). The adapter pickles as a recipe to reload the same weights (from
``model``) and refuses, with a clear error, when a reranker trained in memory was not saved.
"""

from __future__ import annotations

import asyncio
from typing import Any, ContextManager, Dict, List, Optional, Tuple

from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from rrpo import Selection
from rrpo.offpolicy import PROPENSITY_KEY, Exploration
from rrpo.adapter_support import (
    LazyReranker,
    RerankOptions,
    check_adapter_limits,
    check_batching,
    copy_metadata,
    injected_model_name,
    override_options,
    reject_unknown_options,
    relevance,
    resolve_options,
)

from ._convert import node_to_candidate

dispatcher = get_dispatcher(__name__)

# Metadata our copies carry; kept out of the text the LLM and the embedder see.
RERANK_KEYS = ("relevance_score", "rrpo_rank", "rrpo_k", "retrieval_score")


class RRPORerank(BaseNodePostprocessor):
    """Rerank nodes with an rrpo reranker and keep a query-dependent number of them."""

    # A misspelled option (top_k=2) must fail, not be ignored.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str = Field(
        default="minilm-l6",
        description="Reranker to load: 'minilm-l6' (offline default), a local directory "
        "saved by rrpo, or a Hugging Face cross-encoder id.",
    )
    top_n: Optional[int] = Field(
        default=5, description="Keep at most this many nodes (None = no cap)."
    )
    min_k: int = Field(
        default=1, description="Keep at least this many nodes; 0 lets the reranker keep none."
    )
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
    dedupe: bool = Field(
        default=False, description="Drop duplicate passages (same text) before choosing k."
    )
    batch_wait_ms: Optional[float] = Field(
        default=None,
        description="Opt-in micro-batching: wait up to this long for concurrent queries "
        "and rerank them in one forward pass (None = off).",
    )
    max_batch_queries: int = Field(
        default=16, description="A micro-batch starts at once when this many queries wait."
    )
    log_propensity: bool = Field(
        default=True,
        description="Tell the feedback collector how each selection was chosen (its "
        "log-probability and the reranker's version), for off-policy training.",
    )
    explore_epsilon: float = Field(
        default=0.0,
        description="Opt-in exploration: the chance of serving a sample of the reranker's "
        "policy instead of its greedy selection (0 = always greedy).",
    )
    explore_temperature: float = Field(
        default=1.0, description="Temperature of the exploring samples (>1 flatter)."
    )
    explore_seed: Optional[int] = Field(
        default=None, description="Seed of the exploration (None = fresh randomness)."
    )

    _holder: Any = PrivateAttr(default=None)

    def __init__(self, reranker: Any = None, **data: Any) -> None:
        """``reranker``: an already loaded ``rrpo.Reranker`` (or any object with its
        ``rerank`` interface) to use instead of loading ``model``; give ``model`` too
        (the directory it was saved to) to make a reranker trained in memory picklable."""
        if reranker is not None and "model" not in data:
            data["model"] = injected_model_name(reranker)
        super().__init__(**data)
        self._holder = LazyReranker(reranker, source=self.model)

    @model_validator(mode="before")
    @classmethod
    def _known_options(cls, data: Any) -> Any:
        reject_unknown_options(cls.__name__, data, cls.model_fields)
        return data

    @model_validator(mode="after")
    def _check_limits(self) -> "RRPORerank":
        check_adapter_limits(self.min_k, self.top_n, self.batch_size)
        check_batching(self.batch_wait_ms, self.max_batch_queries)
        self.exploration  # noqa: B018 - bad exploration settings fail when built
        return self

    @property
    def exploration(self) -> Exploration:
        return Exploration(self.explore_epsilon, self.explore_temperature, self.explore_seed)

    @classmethod
    def class_name(cls) -> str:
        return "RRPORerank"

    @property
    def reranker(self) -> Any:
        """The reranker, loaded on first use (once, even with many threads)."""
        return self._holder.get(self.model, self.device)

    @property
    def reranker_version(self) -> str:
        """What feedback records name as the reranker: an id of the weights that rank
        (never triggers a load)."""
        return self._holder.version(self.model)

    def override(self, **options: Any) -> ContextManager[None]:
        """``with rerank.override(top_n=2, min_k=0): engine.query(q)``: these options for
        the reranks inside the block (this thread or task only)."""
        return override_options(self._holder, **options)

    # -- LlamaIndex entry points -------------------------------------------------------

    def postprocess_nodes(
        self,
        nodes: List[NodeWithScore],
        query_bundle: Optional[QueryBundle] = None,
        query_str: Optional[str] = None,
        **options: Any,
    ) -> List[NodeWithScore]:
        """LlamaIndex's entry point, plus per-call ``top_n`` / ``min_k`` / ``dynamic_k``."""
        with self.override(**options):
            return super().postprocess_nodes(nodes, query_bundle, query_str)

    async def apostprocess_nodes(
        self,
        nodes: List[NodeWithScore],
        query_bundle: Optional[QueryBundle] = None,
        query_str: Optional[str] = None,
        **options: Any,
    ) -> List[NodeWithScore]:
        with self.override(**options):
            return await super().apostprocess_nodes(nodes, query_bundle, query_str)

    def _postprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        options = self._options()
        if nodes:
            self.reranker  # noqa: B018 - load first: events name the weights that rank
        query = self._start(nodes, query_bundle, options)
        if not nodes:
            return self._finish_empty()
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._callback_payload(nodes, query, options)
        ) as event:
            selection, propensity = self._select(query, nodes, options)
            kept = self._kept_nodes(nodes, selection)
            event.on_end(payload={EventPayload.NODES: kept})
        dispatcher.event(ReRankEndEvent(nodes=kept, tags=_tags(propensity)))
        return kept

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        options = self._options()
        if nodes:  # loading is blocking work too: keep it off the event loop
            await asyncio.to_thread(lambda: self.reranker)
        query = self._start(nodes, query_bundle, options)
        if not nodes:
            return self._finish_empty()
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._callback_payload(nodes, query, options)
        ) as event:
            # The forward pass is blocking torch work: run it in a worker thread so the
            # event loop keeps serving other queries meanwhile.
            selection, propensity = await asyncio.to_thread(self._select, query, nodes, options)
            kept = self._kept_nodes(nodes, selection)
            event.on_end(payload={EventPayload.NODES: kept})
        dispatcher.event(ReRankEndEvent(nodes=kept, tags=_tags(propensity)))
        return kept

    # -- steps -------------------------------------------------------------------------

    def _options(self) -> RerankOptions:
        return resolve_options(self._holder, RerankOptions.of(self))

    def _start(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle],
               options: RerankOptions) -> str:
        if query_bundle is None:
            raise ValueError("RRPORerank needs the query: pass query_bundle or query_str")
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=options.top_n if options.top_n is not None else len(nodes),
                model_name=self.reranker_version,
            )
        )
        return query_bundle.query_str

    def _finish_empty(self) -> List[NodeWithScore]:
        dispatcher.event(ReRankEndEvent(nodes=[]))
        return []

    def _callback_payload(self, nodes: List[NodeWithScore], query: str, options: RerankOptions) -> dict:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.reranker_version,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: options.top_n if options.top_n is not None else len(nodes),
        }

    def _select(self, query: str, nodes: List[NodeWithScore], options: RerankOptions) -> Tuple[Selection, Any]:
        """The selection, and how it was chosen (None when not logged)."""
        candidates = [node_to_candidate(node) for node in nodes]
        exploration = self.exploration
        if not (self.log_propensity or exploration.active):
            selection = self._holder.select(
                self.reranker, query, candidates, options, self.batch_wait_ms, self.max_batch_queries
            )
            return selection, None
        return self._holder.select_logged(
            self.reranker, query, candidates, options, exploration, self.batch_wait_ms, self.max_batch_queries
        )

    def _kept_nodes(self, nodes: List[NodeWithScore], selection: Selection) -> List[NodeWithScore]:
        kept = []
        for rank, index in enumerate(selection.kept, start=1):
            score = relevance(selection.scores[index])
            extra = {"relevance_score": score, "rrpo_rank": rank, "rrpo_k": int(selection.k)}
            if self.keep_retrieval_score:
                extra["retrieval_score"] = nodes[index].score
            kept.append(_copy_with(nodes[index], score, extra))
        return kept

    # -- pickling ------------------------------------------------------------------------

    def __getstate__(self) -> Dict[str, Any]:
        # LlamaIndex drops private attributes that fail to pickle and rebuilds the
        # component from its fields, which would silently load other weights: check
        # first, and let the error out.
        if self._holder is not None:
            self._holder.__getstate__()
        return super().__getstate__()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # re-runs __init__ from the fields
        holder = (state.get("__pydantic_private__") or {}).get("_holder")
        if holder is not None:
            self._holder = holder


def _tags(propensity: Any) -> dict:
    """Event tags the feedback collector reads: the selection's propensity."""
    return {} if propensity is None else {PROPENSITY_KEY: propensity.to_dict()}


def _copy_with(node: NodeWithScore, score: float, extra: dict) -> NodeWithScore:
    """A copy of ``node`` with its own (deep-copied) metadata: editing a nested value of
    the result never changes the caller's node."""
    inner = node.node
    hidden = [key for key in extra if key in RERANK_KEYS]
    copy = inner.model_copy(
        update={
            "metadata": {**copy_metadata(inner.metadata), **extra},
            "excluded_llm_metadata_keys": _merged(inner.excluded_llm_metadata_keys, hidden),
            "excluded_embed_metadata_keys": _merged(inner.excluded_embed_metadata_keys, hidden),
        }
    )
    return NodeWithScore(node=copy, score=score)


def _merged(keys: list, more: list) -> list:
    return list(keys) + [key for key in more if key not in keys]
