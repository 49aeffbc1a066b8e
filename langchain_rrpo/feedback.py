"""``FeedbackCallbackHandler``: one feedback record per LangChain root run.

    handler = FeedbackCallbackHandler("feedback.db")
    answer = chain.invoke(question, config={"callbacks": [handler]})
    handler.rate(handler.last_record_id, 1.0)

Runs are grouped by their root run (the outermost run this handler saw), so many
chains may run at once in threads or tasks. Per root run it keeps: the query (the first
retriever's query); the candidates as the base retriever returned them (the innermost
retrievers' ``on_retriever_end``); the kept documents with scores and k (from
``RRPORerank``'s ``"rrpo_rerank"`` custom event, else the outer compression retriever's
result); the answer (the root chain's output); the latency; the reranker version. The
record id is the root run id as a string, so a caller who sets
``config={"run_id": ...}`` knows it in advance (``record_id_for(run_id)``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage

from rrpo import Candidate, FeedbackRecord
from rrpo.feedback import FeedbackStore

from ._convert import document_id, document_to_candidate
from .compressor import RERANK_EVENT

_ANSWER_KEYS = ("answer", "output", "result", "text", "response", "content")


@dataclass
class _OpenRun:
    """What we know so far about one root run in flight."""

    started: float
    query: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    kept_ids: list[str] | None = None
    kept_scores: list[float] = field(default_factory=list)
    k: int | None = None
    reranker: str | None = None
    outer_docs: list[Document] | None = None  # an enclosing retriever's result
    runs: set[UUID] = field(default_factory=set)


class FeedbackCallbackHandler(BaseCallbackHandler):
    """Record each root run (query → candidates → kept → answer) in a FeedbackStore."""

    # Run in the caller's thread, in order: a root's end must follow its children's.
    run_inline = True

    def __init__(self, store: FeedbackStore | str | Path, *, metadata: dict[str, Any] | None = None) -> None:
        self.store = store if isinstance(store, FeedbackStore) else FeedbackStore(store)
        self.metadata = dict(metadata or {})
        self._lock = threading.RLock()
        self._parent: dict[UUID, UUID | None] = {}
        self._retrievers: set[UUID] = set()
        self._outer_retrievers: set[UUID] = set()
        self._open: dict[UUID, _OpenRun] = {}
        self._recorded: set[str] = set()
        self.last_record_id: str | None = None

    # -- public API ------------------------------------------------------------------

    def record_id_for(self, run_id: UUID | str) -> str | None:
        """The record id of a root run this handler recorded (None if unknown)."""
        record_id = str(run_id)
        with self._lock:
            return record_id if record_id in self._recorded else None

    def rate(self, record_id: str, score: float, comment: str | None = None) -> None:
        """Attach a user rating to a record (``UnknownRecordError`` for a bad id)."""
        self.store.rate(record_id, score, comment=comment)

    # -- run tree --------------------------------------------------------------------

    def _start(self, run_id: UUID, parent_run_id: UUID | None) -> _OpenRun:
        with self._lock:
            known_parent = parent_run_id if parent_run_id in self._parent else None
            self._parent[run_id] = known_parent
            root = self._root(run_id)
            if root not in self._open:
                self._open[root] = _OpenRun(started=time.perf_counter())
            self._open[root].runs.add(run_id)
            return self._open[root]

    def _root(self, run_id: UUID) -> UUID:
        while self._parent.get(run_id) is not None:
            run_id = self._parent[run_id]  # type: ignore[assignment]
        return run_id

    def _run_of(self, run_id: UUID) -> _OpenRun | None:
        if run_id not in self._parent:
            return None
        return self._open.get(self._root(run_id))

    def _end(self, run_id: UUID, outputs: Any, *, is_chain: bool) -> None:
        """Finish the record when the root run ends."""
        with self._lock:
            if run_id not in self._parent or self._parent[run_id] is not None:
                return
            state = self._open.pop(run_id, None)
            self._forget(state)
        if state is None or state.query is None:
            return  # a root run without retrieval: nothing to learn from
        answer = _answer_text(outputs) if is_chain else None
        record = self._build_record(run_id, state, answer)
        self.store.add(record)
        with self._lock:
            self._recorded.add(record.id)
            self.last_record_id = record.id

    def _forget(self, state: _OpenRun | None) -> None:
        if state is None:
            return
        for run in state.runs:
            self._parent.pop(run, None)
            self._retrievers.discard(run)
            self._outer_retrievers.discard(run)

    def _error(self, run_id: UUID) -> None:
        with self._lock:
            if self._parent.get(run_id, 0) is None:  # a failed root: drop its record
                self._forget(self._open.pop(run_id, None))

    def _build_record(self, run_id: UUID, state: _OpenRun, answer: str | None) -> FeedbackRecord:
        kept_ids, kept_scores, k = state.kept_ids, state.kept_scores, state.k
        if kept_ids is None:
            docs = state.outer_docs if state.outer_docs is not None else []
            if state.outer_docs is None:  # no reranker, no compression: all were used
                kept_ids = [c.id for c in state.candidates]
            else:
                kept_ids = [document_id(doc) for doc in docs]
                kept_scores = [float(doc.metadata.get("relevance_score", 0.0)) for doc in docs]
            k = len(kept_ids)
        return FeedbackRecord(
            id=str(run_id),
            query=state.query or "",
            candidates=list(state.candidates),
            kept_ids=list(kept_ids),
            kept_scores=list(kept_scores),
            k=k,
            answer=answer,
            latency_ms=(time.perf_counter() - state.started) * 1000.0,
            reranker=state.reranker,
            metadata={**self.metadata, "source": "langchain"},
        )

    # -- LangChain callbacks -----------------------------------------------------------

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._start(run_id, parent_run_id)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                     **kwargs: Any) -> None:
        self._end(run_id, outputs, is_chain=True)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._error(run_id)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID,
                     parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._start(run_id, parent_run_id)

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._start(run_id, parent_run_id)

    def on_tool_start(self, serialized: Any, input_str: Any, *, run_id: UUID,
                      parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._start(run_id, parent_run_id)

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID,
                           parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        state = self._start(run_id, parent_run_id)
        with self._lock:
            self._retrievers.add(run_id)
            ancestor = self._parent.get(run_id)
            while ancestor is not None:  # enclosing retrievers compress, not retrieve
                if ancestor in self._retrievers:
                    self._outer_retrievers.add(ancestor)
                ancestor = self._parent.get(ancestor)
            if state.query is None:
                state.query = query

    def on_retriever_end(self, documents: Sequence[Document], *, run_id: UUID,
                         parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        with self._lock:
            state = self._run_of(run_id)
            if state is not None:
                if run_id in self._outer_retrievers:
                    state.outer_docs = list(documents)
                else:  # a base retriever: these are the candidates, as retrieved
                    seen = {c.id for c in state.candidates}
                    for doc in documents:
                        candidate = document_to_candidate(doc)
                        if candidate.id not in seen:
                            state.candidates.append(candidate)
                            seen.add(candidate.id)
        self._end(run_id, documents, is_chain=False)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._error(run_id)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name != RERANK_EVENT or not isinstance(data, dict):
            return
        with self._lock:
            state = self._run_of(run_id)
            if state is None:
                return
            state.kept_ids = [str(i) for i in data.get("kept_ids", [])]
            state.kept_scores = [float(s) for s in data.get("kept_scores", [])]
            state.k = int(data.get("k", len(state.kept_ids)))
            state.reranker = data.get("reranker") or data.get("model")
            if state.query is None:
                state.query = data.get("query")


def _answer_text(outputs: Any) -> str | None:
    """The answer in a chain's output: a string, a message, or a dict holding one."""
    if outputs is None:
        return None
    if isinstance(outputs, str):
        return outputs
    if isinstance(outputs, BaseMessage):
        return outputs.text if isinstance(outputs.text, str) else str(outputs.content)
    if isinstance(outputs, dict):
        for key in _ANSWER_KEYS:
            if key in outputs:
                return _answer_text(outputs[key])
        if len(outputs) == 1:
            return _answer_text(next(iter(outputs.values())))
    return str(outputs)
