"""Micro-batching: concurrent rerank requests scored together in one ``rerank_batch``.

A server answering many queries at once calls the reranker once per query; each call
pads and runs its own small forward pass. :class:`MicroBatcher` lets the first request
of a batch wait a bounded time (``max_wait_s``) for others, then scores everything that
arrived in one :meth:`rrpo.Reranker.rerank_batch` call (pairs of all queries sorted by
length and cut into full batches). No background thread: the first caller of each batch
leads it, the others wait for their result. Only one batch runs at a time; requests that
arrive meanwhile form the next one.

Opt-in from the adapters (``RRPORerank(batch_wait_ms=5)``); the cost is at most
``max_wait_s`` of extra latency for a lone query.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .types import Candidate, Selection


@dataclass
class _Request:
    query: str
    candidates: list[Candidate]
    key: tuple  # requests with equal keys share one rerank_batch call
    options: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Selection | None = None
    error: BaseException | None = None


class MicroBatcher:
    """Collect concurrent ``rerank`` calls and run them through ``rerank_batch``."""

    def __init__(self, reranker: Any, max_wait_s: float = 0.005, max_queries: int = 16) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        self.reranker = reranker
        self.max_wait_s = float(max_wait_s)
        self.max_queries = int(max_queries)
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._running = threading.Lock()  # one batch at a time: the next one keeps filling
        self.batches = 0  # how many rerank_batch calls ran (for tests and benchmarks)

    def rerank(self, query: str, candidates: Sequence[Candidate], **options: Any) -> Selection:
        """Like ``reranker.rerank_batch([query], [candidates], **options)[0]``, batched
        with whatever other threads ask for at the same time."""
        request = _Request(query, list(candidates), tuple(sorted(options.items())), options)
        with self._cond:
            self._pending.append(request)
            leader = len(self._pending) == 1
            if len(self._pending) >= self.max_queries:
                self._cond.notify_all()  # the leader need not wait any longer
        if leader:
            self._lead()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _lead(self) -> None:
        """Wait for the batch to fill (bounded), then run it."""
        deadline = time.monotonic() + self.max_wait_s
        try:
            with self._cond:
                while len(self._pending) < self.max_queries:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
        finally:  # even when the wait is interrupted: the others are waiting for this batch
            with self._running:
                with self._cond:  # everything that arrived while the previous batch ran
                    batch, self._pending = self._pending, []
                _run_batch(self.reranker, batch, self._count)

    def _count(self) -> None:
        self.batches += 1


def _run_batch(reranker: Any, batch: list[_Request], count: Callable[[], None]) -> None:
    """Score each group of equal options in one call; every request gets its answer."""
    try:
        groups: dict[tuple, list[_Request]] = {}
        for request in batch:
            groups.setdefault(request.key, []).append(request)
        for group in groups.values():
            count()
            _run_group(reranker, group)
    finally:
        for request in batch:  # never leave a waiter hanging, whatever happened
            if request.result is None and request.error is None:
                request.error = RuntimeError("micro-batch ended without a result")
            request.done.set()


def _run_group(reranker: Any, group: list[_Request]) -> None:
    options = group[0].options
    try:
        results = reranker.rerank_batch([r.query for r in group], [r.candidates for r in group], **options)
    except Exception as err:
        if len(group) == 1:
            group[0].error = err
            return
        for request in group:  # one bad query must not fail its neighbours
            _run_group(reranker, [request])
        return
    for request, result in zip(group, results):
        request.result = result
