"""``RRPORerank``: rrpo's reranker as a LangChain document compressor.

    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_rrpo import RRPORerank
    retriever = ContextualCompressionRetriever(
        base_compressor=RRPORerank(top_n=5), base_retriever=vectorstore.as_retriever(k=20))

The documents it returns are copies (the inputs are never modified) with all their
metadata plus ``relevance_score``, ``rrpo_rank`` (1-based) and ``rrpo_k`` (how many were
kept). Inside a run it dispatches a custom event ``"rrpo_rerank"`` with the candidate
ids, kept ids, scores, k and reranker version, which ``FeedbackCallbackHandler`` (and
any tracer) can pick up.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional, Sequence

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
from rrpo.adapter_support import LazyReranker, check_adapter_limits, injected_model_name

from ._convert import document_id, document_to_candidate

RERANK_EVENT = "rrpo_rerank"


class RRPORerank(BaseDocumentCompressor):
    """Rerank documents with an rrpo reranker and keep a query-dependent number of them."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = Field(
        default="minilm-l6",
        description="Reranker to load: 'minilm-l6' (offline default), a local directory "
        "saved by rrpo, or a Hugging Face cross-encoder id.",
    )
    top_n: Optional[int] = Field(default=5, description="Keep at most this many (None = no cap).")
    min_k: int = Field(default=1, description="Keep at least this many documents.")
    dynamic_k: bool = Field(
        default=True, description="Let the reranker decide k per query; False keeps exactly top_n."
    )
    keep_retrieval_score: bool = Field(
        default=False,
        description="Copy an existing metadata['relevance_score'] to metadata['retrieval_score'].",
    )
    device: Optional[str] = Field(default=None, description="Torch device; None picks the best.")
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

    @property
    def reranker(self) -> Any:
        """The reranker, loaded on first use (once, even with many threads)."""
        return self._holder.get(self.model, self.device)

    # -- LangChain entry points ----------------------------------------------------------

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        selection = self._select(query, documents)
        kept = self._kept_documents(documents, selection)
        _dispatch(self._event_data(query, documents, kept, selection), callbacks)
        return kept

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        # The forward pass is blocking torch work: a worker thread keeps the loop free.
        selection = await asyncio.to_thread(self._select, query, documents)
        kept = self._kept_documents(documents, selection)
        await _adispatch(self._event_data(query, documents, kept, selection), callbacks)
        return kept

    # -- steps -----------------------------------------------------------------------------

    def _select(self, query: str, documents: Sequence[Document]) -> Selection:
        candidates = [document_to_candidate(doc) for doc in documents]
        return rerank_one(
            self.reranker,
            query,
            candidates,
            top_n=self.top_n,
            min_k=min(self.min_k, len(candidates)),
            dynamic_k=self.dynamic_k,
            batch_size=self.batch_size,
        )

    def _kept_documents(self, documents: Sequence[Document], selection: Selection) -> list[Document]:
        kept = []
        for rank, index in enumerate(selection.kept, start=1):
            doc = documents[index]
            metadata = dict(doc.metadata)
            if self.keep_retrieval_score and "relevance_score" in metadata:
                metadata["retrieval_score"] = metadata["relevance_score"]
            metadata.update(
                relevance_score=float(selection.scores[index]), rrpo_rank=rank, rrpo_k=int(selection.k)
            )
            kept.append(Document(page_content=doc.page_content, metadata=metadata, id=doc.id))
        return kept

    def _event_data(self, query: str, documents: Sequence[Document], kept: list[Document],
                    selection: Selection) -> dict[str, Any]:
        ids = [document_id(doc) for doc in documents]
        return {
            "query": query,
            "candidate_ids": ids,
            "kept_ids": [ids[i] for i in selection.kept],
            "kept_scores": [float(selection.scores[i]) for i in selection.kept],
            "k": int(selection.k),
            "model": self.model,
            "reranker": str(getattr(self.reranker, "version", None) or self.model),
        }


def rerank_one(reranker: Any, query: str, candidates: list, **options: Any) -> Selection:
    """One query through ``rerank_batch`` (which takes a batch size) when the reranker
    has it, else through ``rerank``."""
    batch_size = options.pop("batch_size", None)
    if hasattr(reranker, "rerank_batch"):
        return reranker.rerank_batch([query], [candidates], batch_size=batch_size, **options)[0]
    return reranker.rerank(query, candidates, **options)


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
