"""``FeedbackCollector``: one feedback record per LlamaIndex query, via instrumentation.

    store = FeedbackStore("feedback.db")
    collector = FeedbackCollector(store)                 # every query engine
    collector = FeedbackCollector(store, query_engine=qe)  # or just this one
    response = qe.query("...")
    collector.rate(collector.record_id_for(response), 1.0)   # or response.rrpo_record_id

It registers a span handler and an event handler on the instrumentation dispatcher
(the root one unless told otherwise). A span tree lets every event find the query it
belongs to, also with many queries at once in threads or asyncio tasks. Per query it
keeps: the query text; the candidates as retrieved (snapshotted when
``RetrievalEndEvent`` fires, before any postprocessor touches them); the nodes the
reranker kept, with scores and k (``ReRankEndEvent``); the answer (``QueryEndEvent``;
a streaming answer is stored once the stream has been consumed); the latency; and the
version of the ``RRPORerank`` reranker that ran (an id of its weights). Nested
queries (a router or sub-question engine calling other engines) count as one query: the
outermost.

A candidate is stored with the node's own text (``MetadataMode.NONE``), not the text
with metadata folded in that the reranker scored, and the store redacts secrets. The
record id is an attribute of the response (``response.rrpo_record_id``), never a key of
``response.metadata``, which LlamaIndex fills with node id -> metadata.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Optional

from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    PydanticResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import Dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.query import QueryEndEvent, QueryStartEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent
from llama_index.core.instrumentation.span.simple import SimpleSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index.core.bridge.pydantic import PrivateAttr

from rrpo import Candidate, FeedbackRecord
from rrpo.feedback import FeedbackStore
from rrpo.offpolicy import PROPENSITY_KEY

from ._convert import node_ids, query_text, record_candidates

RECORD_ID_KEY = "rrpo_record_id"  # the response attribute that holds the record id
_REMEMBERED_RESPONSES = 1024


@dataclass
class _OpenQuery:
    """What we know so far about one query in flight."""

    record_id: str
    query: str
    started: float
    retrieved: list[Candidate] | None = None
    rerank_input: list[Candidate] | None = None
    kept_ids: list[str] | None = None
    kept_scores: list[float] = field(default_factory=list)
    k: int | None = None
    rerankers: list[Any] = field(default_factory=list)  # RRPORerank instances that ran
    propensity: dict | None = None  # how the reranker chose its selection (off-policy training)


@dataclass
class _SpanInfo:
    parent_id: str | None
    instance: Any


class FeedbackCollector:
    """Record every query of one query engine (or all of them) in a FeedbackStore."""

    def __init__(
        self,
        store: FeedbackStore | str | Path,
        *,
        query_engine: Any = None,
        dispatcher: Dispatcher | None = None,
        metadata: dict[str, Any] | None = None,
        attach: bool = True,
    ) -> None:
        """``query_engine``: record only this engine's queries (default: all).
        ``dispatcher``: where to listen (default: the root dispatcher, which sees
        everything). ``metadata``: added to every record (e.g. the app's name)."""
        self.store = store if isinstance(store, FeedbackStore) else FeedbackStore(store)
        self.query_engine = query_engine
        self.metadata = dict(metadata or {})
        self._dispatcher = dispatcher or get_dispatcher()
        self._lock = threading.RLock()
        self._spans: dict[str, _SpanInfo] = {}
        self._open: dict[str, _OpenQuery] = {}  # query span id -> query in flight
        self._responses: OrderedDict[int, tuple[Any, str]] = OrderedDict()
        self.last_record_id: str | None = None
        self._span_handler = _SpanTracker(collector=self)
        self._event_handler = _EventRouter(collector=self)
        self._attached = False
        if attach:
            self.attach()

    # -- public API ------------------------------------------------------------------

    def attach(self) -> "FeedbackCollector":
        if not self._attached:
            self._dispatcher.add_span_handler(self._span_handler)
            self._dispatcher.add_event_handler(self._event_handler)
            self._attached = True
        return self

    def detach(self) -> None:
        """Stop listening (records already written stay in the store)."""
        if self._attached:
            self._dispatcher.span_handlers.remove(self._span_handler)
            self._dispatcher.event_handlers.remove(self._event_handler)
            self._attached = False

    def __enter__(self) -> "FeedbackCollector":
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def record_id_for(self, response: Any) -> str | None:
        """The record id of a response this collector recorded (None if unknown)."""
        record_id = getattr(response, RECORD_ID_KEY, None)
        if isinstance(record_id, str):
            return record_id
        with self._lock:
            entry = self._responses.get(id(response))
        if entry is not None and entry[0]() is response:
            return entry[1]
        return None

    def rate(self, record_id: str, score: float, comment: str | None = None) -> None:
        """Attach a user rating to a record (``UnknownRecordError`` for a bad id)."""
        self.store.rate(record_id, score, comment=comment)

    # -- span tree (called by _SpanTracker) --------------------------------------------

    def _span_enter(self, span_id: str, parent_id: str | None, instance: Any) -> None:
        with self._lock:
            self._spans[span_id] = _SpanInfo(parent_id, instance)
            query = self._query_of(parent_id)
            if query is not None and _is_rrpo_rerank(instance):
                query.rerankers.append(instance)

    def _span_exit(self, span_id: str) -> None:
        with self._lock:
            self._spans.pop(span_id, None)
            # A query whose span ends without QueryEndEvent failed: nothing to record.
            self._open.pop(span_id, None)

    def _query_of(self, span_id: str | None) -> _OpenQuery | None:
        """The open query that ``span_id`` runs inside (walks up the span tree)."""
        seen = 0
        while span_id is not None and seen < 10_000:
            if span_id in self._open:
                return self._open[span_id]
            info = self._spans.get(span_id)
            span_id = info.parent_id if info else None
            seen += 1
        return None

    # -- events (called by _EventRouter) ---------------------------------------------

    def _on_event(self, event: Any) -> None:
        handler = _EVENT_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_query_start(self, event: QueryStartEvent) -> None:
        with self._lock:
            span_id = event.span_id
            if span_id is None or self._query_of(span_id) is not None:
                return  # outside any span, or nested in a query we already follow
            info = self._spans.get(span_id)
            if self.query_engine is not None and (info is None or info.instance is not self.query_engine):
                return
            self._open[span_id] = _OpenQuery(
                record_id=uuid.uuid4().hex, query=query_text(event.query), started=time.perf_counter()
            )

    def _on_retrieval_end(self, event: RetrievalEndEvent) -> None:
        # Convert right away: this is the snapshot "as retrieved".
        candidates = record_candidates(event.nodes)
        with self._lock:
            query = self._query_of(event.span_id)
            if query is not None and query.kept_ids is None:
                query.retrieved = candidates

    def _on_rerank_start(self, event: ReRankStartEvent) -> None:
        candidates = record_candidates(event.nodes)
        with self._lock:
            query = self._query_of(event.span_id)
            if query is not None:
                query.rerank_input = candidates

    def _on_rerank_end(self, event: ReRankEndEvent) -> None:
        with self._lock:
            query = self._query_of(event.span_id)
            if query is None:
                return
            query.kept_ids = node_ids(event.nodes)
            query.kept_scores = [float(node.score or 0.0) for node in event.nodes]
            ks = {node.node.metadata.get("rrpo_k") for node in event.nodes}
            query.k = ks.pop() if len(ks) == 1 and None not in ks else len(event.nodes)
            query.propensity = (event.tags or {}).get(PROPENSITY_KEY)

    def _on_query_end(self, event: QueryEndEvent) -> None:
        with self._lock:
            query = self._open.pop(event.span_id, None) if event.span_id else None
        if query is None:
            return
        latency_ms = (time.perf_counter() - query.started) * 1000.0
        response = event.response
        answer = self._answer_now_or_later(response, query)
        record = self._build_record(query, answer, latency_ms, response)
        self.store.add(record)
        self._remember(response, record.id)

    # -- building the record -------------------------------------------------------------

    def _build_record(self, query: _OpenQuery, answer: str | None, latency_ms: float, response: Any) -> FeedbackRecord:
        candidates = _choose_candidates(query)
        kept_ids = query.kept_ids
        kept_scores = query.kept_scores
        if kept_ids is None:  # no reranker ran: the answer used what the engine returned
            kept_ids = node_ids(getattr(response, "source_nodes", []) or [])
            kept_scores = [float(node.score or 0.0) for node in getattr(response, "source_nodes", []) or []]
        metadata = {**self.metadata, "source": "llama_index"}
        if answer is None and isinstance(response, (StreamingResponse, AsyncStreamingResponse)):
            metadata["streaming"] = True
        if query.propensity is not None and query.kept_ids is not None:
            metadata[PROPENSITY_KEY] = query.propensity
        return FeedbackRecord(
            id=query.record_id,
            query=query.query,
            candidates=candidates,
            kept_ids=list(kept_ids),
            kept_scores=list(kept_scores),
            k=query.k if query.kept_ids is not None else len(kept_ids),
            answer=answer,
            latency_ms=latency_ms,
            reranker=_reranker_version(query.rerankers),
            metadata=metadata,
        )

    def _answer_now_or_later(self, response: Any, query: _OpenQuery) -> str | None:
        """The answer text; for a stream not yet consumed, None now and a store update
        once the caller has read the whole stream."""
        if isinstance(response, Response):
            return response.response
        if isinstance(response, PydanticResponse):
            return str(response.response)
        if isinstance(response, (StreamingResponse, AsyncStreamingResponse)):
            if response.response_txt is not None:
                return response.response_txt
            self._tap_stream(response, query)
            return None
        return None if response is None else str(response)

    def _tap_stream(self, response: Any, query: _OpenQuery) -> None:
        def on_done(text: str) -> None:
            latency_ms = (time.perf_counter() - query.started) * 1000.0
            self.store.update(query.record_id, answer=text, latency_ms=latency_ms)

        if isinstance(response, StreamingResponse) and response.response_gen is not None:
            response.response_gen = _tee(response.response_gen, on_done)
        elif isinstance(response, AsyncStreamingResponse) and response.response_gen is not None:
            response.response_gen = _atee(response.response_gen, on_done)

    def _remember(self, response: Any, record_id: str) -> None:
        self.last_record_id = record_id
        try:  # an attribute of our own: response.metadata belongs to LlamaIndex
            setattr(response, RECORD_ID_KEY, record_id)
        except Exception:  # a frozen or slotted response: the id map below still works
            pass
        try:
            ref = weakref.ref(response)
        except TypeError:
            return
        with self._lock:
            self._responses[id(response)] = (ref, record_id)
            while len(self._responses) > _REMEMBERED_RESPONSES:
                self._responses.popitem(last=False)


def _choose_candidates(query: _OpenQuery) -> list[Candidate]:
    """The retrieved list when it holds every kept node, else what the reranker saw."""
    kept = set(query.kept_ids or [])
    if query.retrieved is not None and kept <= {c.id for c in query.retrieved}:
        return query.retrieved
    return query.rerank_input or query.retrieved or []


def _is_rrpo_rerank(instance: Any) -> bool:
    from .postprocessor import RRPORerank

    return isinstance(instance, RRPORerank)


def _reranker_version(rerankers: list[Any]) -> str | None:
    if not rerankers:
        return None
    return rerankers[-1].reranker_version


def _tee(gen: Iterator[str], on_done: Callable[[str], None]) -> Iterator[str]:
    parts = []
    for text in gen:
        parts.append(text)
        yield text
    on_done("".join(parts))  # only reached when the stream was read to the end


async def _atee(gen: AsyncIterator[str], on_done: Callable[[str], None]) -> AsyncIterator[str]:
    parts = []
    async for text in gen:
        parts.append(text)
        yield text
    on_done("".join(parts))


_EVENT_HANDLERS: dict[type, Callable[[FeedbackCollector, Any], None]] = {
    QueryStartEvent: FeedbackCollector._on_query_start,
    RetrievalEndEvent: FeedbackCollector._on_retrieval_end,
    ReRankStartEvent: FeedbackCollector._on_rerank_start,
    ReRankEndEvent: FeedbackCollector._on_rerank_end,
    QueryEndEvent: FeedbackCollector._on_query_end,
}


class _SpanTracker(BaseSpanHandler[SimpleSpan]):
    """Feeds span starts/ends to the collector; keeps no spans of its own."""

    _collector: Any = PrivateAttr()

    def __init__(self, collector: FeedbackCollector) -> None:
        super().__init__()
        self._collector = collector

    @classmethod
    def class_name(cls) -> str:
        return "RRPOFeedbackSpanTracker"

    def new_span(self, id_: str, bound_args: Any, instance: Optional[Any] = None,
                 parent_span_id: Optional[str] = None, tags: Optional[dict] = None,
                 **kwargs: Any) -> Optional[SimpleSpan]:
        self._collector._span_enter(id_, parent_span_id, instance)
        return None

    def prepare_to_exit_span(self, id_: str, bound_args: Any, instance: Optional[Any] = None,
                             result: Optional[Any] = None, **kwargs: Any) -> Optional[SimpleSpan]:
        self._collector._span_exit(id_)
        return None

    def prepare_to_drop_span(self, id_: str, bound_args: Any, instance: Optional[Any] = None,
                             err: Optional[BaseException] = None, **kwargs: Any) -> Optional[SimpleSpan]:
        self._collector._span_exit(id_)
        return None


class _EventRouter(BaseEventHandler):
    _collector: Any = PrivateAttr()

    def __init__(self, collector: FeedbackCollector) -> None:
        super().__init__()
        self._collector = collector

    @classmethod
    def class_name(cls) -> str:
        return "RRPOFeedbackEventRouter"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self._collector._on_event(event)
