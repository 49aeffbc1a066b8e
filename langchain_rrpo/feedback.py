"""``FeedbackCallbackHandler``: one feedback record per retrieval of a LangChain run.

    handler = FeedbackCallbackHandler("feedback.db")
    answer = chain.invoke(question, config={"callbacks": [handler]})
    handler.rate(handler.last_record_id, 1.0)

Runs are grouped by their root run (the outermost run this handler saw), so many
chains may run at once in threads or tasks. Each retrieval in a root run (an outermost
retriever, e.g. a ``ContextualCompressionRetriever``, with whatever it calls) is its own
record, with its own query; the candidates as the base retriever returned them (the
innermost retrievers' ``on_retriever_end``); the kept documents with scores and k (from
``RRPORerank``'s ``"rrpo_rerank"`` custom event, else the outer retriever's result); the
answer (the root chain's output); the latency; the reranker version. Records of one
root run are linked by ``metadata["root_run_id"]`` (and ``metadata["retrieval"]``, 1,
2, ...). The first record's id is the root run id as a string, so a caller who sets
``config={"run_id": ...}`` knows it in advance (``record_id_for(run_id)``); later
ones are ``"<run id>:2"``, ``":3"`` (``record_ids_for(run_id)`` lists them).

State is kept only while a root run is open: LLM, chat-model and tool runs close on
their end or error callbacks, at most ``_MAX_OPEN_ROOTS`` roots stay open (the oldest
are dropped), and the ids of the last ``_REMEMBERED_RUNS`` recorded runs are kept (older
ones are looked up in the store).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage

from rrpo import Candidate, FeedbackRecord
from rrpo.feedback import FeedbackStore
from rrpo.offpolicy import PROPENSITY_KEY

from ._convert import document_ids, documents_to_candidates
from .compressor import RERANK_EVENT

_ANSWER_KEYS = ("answer", "output", "result", "text", "response", "content")
_MAX_OPEN_ROOTS = 10_000  # roots that never end (an abandoned stream) must not pile up
_REMEMBERED_RUNS = 1024


@dataclass
class _Retrieval:
    """One retrieval (and its rerank) inside a root run: one record."""

    query: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    kept_ids: list[str] | None = None
    kept_scores: list[float] = field(default_factory=list)
    k: int | None = None
    reranker: str | None = None
    propensity: dict | None = None  # how the reranker chose its selection (off-policy training)
    outer_docs: list[Document] | None = None  # the outermost retriever's result


@dataclass
class _OpenRun:
    """What we know so far about one root run in flight."""

    started: float
    retrievals: list[_Retrieval] = field(default_factory=list)
    runs: set[UUID] = field(default_factory=set)


def _record_id(root: UUID | str, index: int) -> str:
    return str(root) if index == 1 else f"{root}:{index}"


class FeedbackCallbackHandler(BaseCallbackHandler):
    """Record each retrieval of a root run (query → candidates → kept → answer)."""

    # Run in the caller's thread, in order: a root's end must follow its children's.
    run_inline = True

    def __init__(self, store: FeedbackStore | str | Path, *, metadata: dict[str, Any] | None = None) -> None:
        self.store = store if isinstance(store, FeedbackStore) else FeedbackStore(store)
        self.metadata = dict(metadata or {})
        self._lock = threading.RLock()
        self._parent: dict[UUID, UUID | None] = {}
        self._retrievers: set[UUID] = set()
        self._outer_retrievers: set[UUID] = set()
        self._retrieval_of: dict[UUID, _Retrieval] = {}  # retriever run -> its record
        self._open: OrderedDict[UUID, _OpenRun] = OrderedDict()
        self._recorded: OrderedDict[str, list[str]] = OrderedDict()  # root -> record ids
        self.last_record_id: str | None = None

    # -- public API ------------------------------------------------------------------

    def record_id_for(self, run_id: UUID | str) -> str | None:
        """The (first) record id of a root run this handler recorded (None if unknown)."""
        ids = self.record_ids_for(run_id)
        return ids[0] if ids else None

    def record_ids_for(self, run_id: UUID | str) -> list[str]:
        """Every record of a root run, one per retrieval, in order."""
        with self._lock:
            ids = self._recorded.get(str(run_id))
        if ids is not None:
            return list(ids)
        found = []  # an older run: ask the store
        while _record_id(run_id, len(found) + 1) in self.store:
            found.append(_record_id(run_id, len(found) + 1))
        return found

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
                while len(self._open) > _MAX_OPEN_ROOTS:
                    self._forget(self._open.popitem(last=False)[1])
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

    def _retrieval_around(self, run_id: UUID | None) -> _Retrieval | None:
        """The retrieval that ``run_id`` (or its nearest ancestor) belongs to."""
        while run_id is not None:
            if run_id in self._retrieval_of:
                return self._retrieval_of[run_id]
            run_id = self._parent.get(run_id)
        return None

    def _end(self, run_id: UUID, outputs: Any, *, is_chain: bool) -> None:
        """Finish the records when the root run ends."""
        with self._lock:
            if run_id not in self._parent or self._parent[run_id] is not None:
                return
            state = self._open.pop(run_id, None)
            self._forget(state)
        if state is None or not state.retrievals:
            return  # a root run without retrieval (an LLM or tool call): nothing to learn from
        answer = _answer_text(outputs) if is_chain else None
        latency_ms = (time.perf_counter() - state.started) * 1000.0
        records = [
            self._build_record(run_id, i, retrieval, answer, latency_ms)
            for i, retrieval in enumerate(state.retrievals, start=1)
        ]
        for record in records:
            self.store.add(record)
        with self._lock:
            self._recorded[str(run_id)] = [r.id for r in records]
            while len(self._recorded) > _REMEMBERED_RUNS:
                self._recorded.popitem(last=False)
            self.last_record_id = records[0].id

    def _forget(self, state: _OpenRun | None) -> None:
        if state is None:
            return
        for run in state.runs:
            self._parent.pop(run, None)
            self._retrievers.discard(run)
            self._outer_retrievers.discard(run)
            self._retrieval_of.pop(run, None)

    def _error(self, run_id: UUID) -> None:
        with self._lock:
            if self._parent.get(run_id, 0) is None:  # a failed root: drop its records
                self._forget(self._open.pop(run_id, None))

    def _build_record(self, root: UUID, index: int, state: _Retrieval, answer: str | None,
                      latency_ms: float) -> FeedbackRecord:
        kept_ids, kept_scores, k = state.kept_ids, state.kept_scores, state.k
        if kept_ids is None:
            docs = state.outer_docs if state.outer_docs is not None else []
            if state.outer_docs is None:  # no reranker, no compression: all were used
                kept_ids = [c.id for c in state.candidates]
            else:
                kept_ids = document_ids(docs)
                kept_scores = [float(doc.metadata.get("relevance_score", 0.0)) for doc in docs]
            k = len(kept_ids)
        return FeedbackRecord(
            id=_record_id(root, index),
            query=state.query or "",
            candidates=list(state.candidates),
            kept_ids=list(kept_ids),
            kept_scores=list(kept_scores),
            k=k,
            answer=answer,
            latency_ms=latency_ms,
            reranker=state.reranker,
            metadata={**self.metadata, "source": "langchain", "root_run_id": str(root), "retrieval": index,
                      **({PROPENSITY_KEY: state.propensity} if state.propensity and state.kept_ids is not None else {})},
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

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, None, is_chain=False)  # closes a root LLM / chat-model call

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._error(run_id)

    def on_tool_start(self, serialized: Any, input_str: Any, *, run_id: UUID,
                      parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._start(run_id, parent_run_id)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, None, is_chain=False)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._error(run_id)

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
            retrieval = self._retrieval_around(self._parent.get(run_id))
            if retrieval is None:  # an outermost retriever: a retrieval of its own
                retrieval = _Retrieval(query=query)
                state.retrievals.append(retrieval)
            self._retrieval_of[run_id] = retrieval

    def on_retriever_end(self, documents: Sequence[Document], *, run_id: UUID,
                         parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        with self._lock:
            retrieval = self._retrieval_of.get(run_id)
            if retrieval is not None:
                if run_id in self._outer_retrievers:
                    if self._retrieval_around(self._parent.get(run_id)) is None:  # the outermost
                        retrieval.outer_docs = list(documents)
                else:  # a base retriever: these are the candidates, as retrieved
                    seen = {c.id for c in retrieval.candidates}
                    for candidate in documents_to_candidates(documents):
                        if candidate.id not in seen:  # the same document from two retrievers
                            retrieval.candidates.append(candidate)
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
            retrieval = self._retrieval_around(run_id) or _unranked(state, data)
            retrieval.kept_ids = [str(i) for i in data.get("kept_ids", [])]
            retrieval.kept_scores = [float(s) for s in data.get("kept_scores", [])]
            retrieval.k = int(data.get("k", len(retrieval.kept_ids)))
            retrieval.reranker = data.get("reranker") or data.get("model")
            retrieval.propensity = data.get(PROPENSITY_KEY)
            if retrieval.query is None:
                retrieval.query = data.get("query")


def _unranked(state: _OpenRun, data: dict) -> _Retrieval:
    """A rerank outside any retriever: it ranks the latest retrieval not yet ranked
    (e.g. a compressor called in a chain step after a retriever), else its own."""
    for retrieval in reversed(state.retrievals):
        if retrieval.kept_ids is None:
            return retrieval
    retrieval = _Retrieval(query=data.get("query"))
    state.retrievals.append(retrieval)
    return retrieval


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
