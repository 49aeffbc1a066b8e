"""``RRPORerank``: rrpo's reranker as a LangChain document compressor.

    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_rrpo import RRPORerank
    retriever = ContextualCompressionRetriever(
        base_compressor=RRPORerank(top_n=5), base_retriever=vectorstore.as_retriever(k=20))

The documents it returns are copies (the inputs are never modified; metadata is
deep-copied) with all their metadata plus ``relevance_score`` (the calibrated relevance
in [0, 1]: the sigmoid of the cross-encoder's logit, one threshold for every query),
``rrpo_rank`` (1-based) and ``rrpo_k`` (how many were kept; ``min_k=0`` lets it keep
none: "nothing here is relevant"). Inside a run it dispatches a custom event
``"rrpo_rerank"`` with the candidate ids, kept ids, scores, k and reranker version (an
id of the weights), which ``FeedbackCallbackHandler`` (and any tracer) can pick up.

Per call: ``compress_documents(docs, query, top_n=2)``, or around a retriever or chain
``with rerank.override(top_n=2, min_k=0): chain.invoke(q)`` (a context variable:
concurrent requests keep their own settings). ``dedupe=True`` drops duplicate passages
before choosing k; ``batch_wait_ms=5`` batches concurrent queries into one forward pass
(opt-in). It pickles as a recipe to reload the same weights (from ``model``) and refuses,
with a clear error, when a reranker trained in memory was not saved.
"""

from __future__ import annotations

import asyncio
from typing import Any, ContextManager, Optional, Sequence

from langchain_core.callbacks import (
    AsyncCallbackManager,
    BaseCallbackManager,
    CallbackManager,
    Callbacks,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from rrpo import Selection
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
from rrpo.offpolicy import PROPENSITY_KEY, Exploration

from ._convert import document_ids, documents_to_candidates

RERANK_EVENT = "rrpo_rerank"


class RRPORerank(BaseDocumentCompressor):
    """Rerank documents with an rrpo reranker and keep a query-dependent number of them."""

    # extra="forbid": a misspelled option (top_k=2) must fail, not be ignored.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str = Field(
        default="minilm-l6",
        description="Reranker to load: 'minilm-l6' (offline default), a local directory "
        "saved by rrpo, or a Hugging Face cross-encoder id.",
    )
    top_n: Optional[int] = Field(default=5, description="Keep at most this many (None = no cap).")
    min_k: int = Field(default=1, description="Keep at least this many; 0 lets the reranker keep none.")
    dynamic_k: bool = Field(
        default=True, description="Let the reranker decide k per query; False keeps exactly top_n."
    )
    keep_retrieval_score: bool = Field(
        default=False,
        description="Copy an existing metadata['relevance_score'] to metadata['retrieval_score'].",
    )
    device: Optional[str] = Field(default=None, description="Torch device; None picks the best.")
    batch_size: int = Field(default=32, description="Query-passage pairs per forward pass.")
    dedupe: bool = Field(default=False, description="Drop duplicate passages (same text) before choosing k.")
    batch_wait_ms: Optional[float] = Field(
        default=None,
        description="Opt-in micro-batching: wait up to this long for concurrent queries "
        "and rerank them in one forward pass (None = off).",
    )
    max_batch_queries: int = Field(default=16, description="A micro-batch starts at once when this many wait.")
    log_propensity: bool = Field(
        default=True,
        description="Put how each selection was chosen (its log-probability, the reranker's "
        "version) in the rerank event, for off-policy training from feedback.",
    )
    explore_epsilon: float = Field(
        default=0.0,
        description="Opt-in exploration: the chance of serving a sample of the reranker's policy "
        "instead of its greedy selection (0 = always greedy).",
    )
    explore_temperature: float = Field(default=1.0, description="Temperature of the exploring samples.")
    explore_seed: Optional[int] = Field(default=None, description="Seed of the exploration (None = fresh).")

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

    @property
    def reranker(self) -> Any:
        """The reranker, loaded on first use (once, even with many threads)."""
        return self._holder.get(self.model, self.device)

    @property
    def reranker_version(self) -> str:
        """An id of the weights that rank (what events and records name; never loads)."""
        return self._holder.version(self.model)

    def override(self, **options: Any) -> ContextManager[None]:
        """``with rerank.override(top_n=2, min_k=0): chain.invoke(q)``: these options for
        the reranks inside the block (this thread or task only)."""
        return override_options(self._holder, **options)

    # -- LangChain entry points ----------------------------------------------------------

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None, **options: Any
    ) -> Sequence[Document]:
        """LangChain's entry point, plus per-call ``top_n`` / ``min_k`` / ``dynamic_k``."""
        with self.override(**options):
            resolved = self._options()
        if not documents:
            return []
        selection, propensity = self._select(query, documents, resolved)
        kept = self._kept_documents(documents, selection)
        _dispatch(self._event_data(query, documents, selection, propensity), callbacks)
        return kept

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None, **options: Any
    ) -> Sequence[Document]:
        with self.override(**options):
            resolved = self._options()
        if not documents:
            return []
        # The forward pass is blocking torch work: a worker thread keeps the loop free.
        selection, propensity = await asyncio.to_thread(self._select, query, documents, resolved)
        kept = self._kept_documents(documents, selection)
        await _adispatch(self._event_data(query, documents, selection, propensity), callbacks)
        return kept

    # -- steps -----------------------------------------------------------------------------

    def _options(self) -> RerankOptions:
        return resolve_options(self._holder, RerankOptions.of(self))

    def _select(self, query: str, documents: Sequence[Document], options: RerankOptions) -> tuple[Selection, Any]:
        """The selection, and how it was chosen (None when not logged)."""
        candidates = documents_to_candidates(documents)
        exploration = self.exploration
        if not (self.log_propensity or exploration.active):
            selection = self._holder.select(
                self.reranker, query, candidates, options, self.batch_wait_ms, self.max_batch_queries
            )
            return selection, None
        return self._holder.select_logged(
            self.reranker, query, candidates, options, exploration, self.batch_wait_ms, self.max_batch_queries
        )

    def _kept_documents(self, documents: Sequence[Document], selection: Selection) -> list[Document]:
        kept = []
        for rank, index in enumerate(selection.kept, start=1):
            doc = documents[index]
            metadata = copy_metadata(doc.metadata)  # nested values too: never the store's copy
            if self.keep_retrieval_score and "relevance_score" in metadata:
                metadata["retrieval_score"] = metadata["relevance_score"]
            metadata.update(relevance_score=relevance(selection.scores[index]), rrpo_rank=rank, rrpo_k=int(selection.k))
            kept.append(Document(page_content=doc.page_content, metadata=metadata, id=doc.id))
        return kept

    def _event_data(self, query: str, documents: Sequence[Document], selection: Selection,
                    propensity: Any = None) -> dict[str, Any]:
        ids = document_ids(documents)
        return {
            PROPENSITY_KEY: None if propensity is None else propensity.to_dict(),
            "query": query,
            "candidate_ids": ids,
            "kept_ids": [ids[i] for i in selection.kept],
            "kept_scores": [relevance(selection.scores[i]) for i in selection.kept],
            "k": int(selection.k),
            "model": self.model,
            "reranker": self.reranker_version,
        }


def _dispatch(data: dict[str, Any], callbacks: Callbacks | None) -> None:
    """Send the rerank event to the enclosing run: the one ``callbacks`` belongs to
    (ContextualCompressionRetriever passes its child manager), else the run in context."""
    if isinstance(callbacks, CallbackManager):
        if callbacks.parent_run_id is not None:
            callbacks.on_custom_event(RERANK_EVENT, data, run_id=callbacks.parent_run_id)
        return
    try:
        dispatch_custom_event(RERANK_EVENT, data)
    except RuntimeError:
        pass  # not inside a run: nobody to tell


async def _adispatch(data: dict[str, Any], callbacks: Callbacks | None) -> None:
    if isinstance(callbacks, AsyncCallbackManager):
        if callbacks.parent_run_id is not None:
            await callbacks.on_custom_event(RERANK_EVENT, data, run_id=callbacks.parent_run_id)
        return
    if isinstance(callbacks, BaseCallbackManager):
        _dispatch(data, callbacks)
        return
    try:
        await adispatch_custom_event(RERANK_EVENT, data)
    except RuntimeError:
        pass
