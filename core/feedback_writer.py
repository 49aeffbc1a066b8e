"""Writes off the request path: ``FeedbackStore(..., background=True)``.

A collector that writes its record synchronously adds one database round trip (and
the redaction of every passage) to each query it records. With ``background=True``
``add()`` only checks the record and queues it; one thread per store writes the queue in
batches (one transaction per batch), in order, so an ``update()`` of a queued record
lands after it.

Nothing is lost on the way:

* the queue is bounded (``queue_size``): when the database cannot keep up for ``timeout``
  seconds ``add()`` raises :class:`FeedbackStoreBusyError` instead of growing without end;
* a batch that fails because the database is away is retried until it is back;
* ``close()`` (and interpreter exit) waits for the queue to drain; records that still
  could not be written are handed back in :class:`FeedbackStoreUnavailableError`'s
  ``unwritten`` rather than dropped;
* reads, ``rate()`` and ``get()`` of a queued record first wait for it to be written, so
  a caller always reads what it wrote.

A record the database refuses (a duplicate id, a NUL character PostgreSQL cannot store)
is logged on the ``rrpo.feedback`` logger and counted in ``errors``, as ``add()`` would
have raised it.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .feedback_schema import FeedbackStoreBusyError, FeedbackStoreUnavailableError

log = logging.getLogger("rrpo.feedback")

# How long a queued record may wait for company before the writer wakes for it. The
# writer is not woken by each add(): waking a thread costs the request a GIL hand-over,
# and on a busy machine a scheduler time slice (measured: ~9 ms added per query on a
# loaded 2-core box, against ~0.1 ms without the wake-up). Reads, rate() and close() of
# queued records wake it at once; a full batch does too.
FLUSH_INTERVAL_S = 0.05


@dataclass
class _Op:
    record_id: str
    record: Any = None  # an add: the FeedbackRecord
    sql: str | None = None  # an update: the statement and its parameters
    params: Sequence[Any] = ()
    queued_at: float = field(default_factory=time.monotonic)


class BackgroundWriter:
    """One daemon thread that writes queued records (and their updates) in order."""

    def __init__(self, backend: Any, build_row: Callable[[Any], tuple], *, queue_size: int,
                 timeout: float, batch_size: int = 256) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self._backend = backend
        self._build_row = build_row
        self._queue_size = queue_size
        self._timeout = timeout
        self._batch_size = batch_size
        self._ops: collections.deque[_Op] = collections.deque()
        self._pending: collections.Counter[str] = collections.Counter()
        self._cond = threading.Condition()
        self._stopping = False
        self._urgent = False  # someone waits to read what is queued: write now
        self._give_up_at = float("inf")
        self._last_error: Exception | None = None
        self.errors = 0  # records the database refused (logged)
        self.written = 0
        self._written_through = 0  # ops finished so far (flush waits on this count)
        self._thread = threading.Thread(target=self._loop, name="rrpo-feedback-writer", daemon=True)
        self._thread.start()
        _writers.add(self)

    # -- the caller's side -----------------------------------------------------------

    def add(self, record: Any) -> None:
        """Queue a record; waits at most ``timeout`` for room in a full queue."""
        self._submit(_Op(str(record.id), record=record))

    def update(self, record_id: str, sql: str, params: Sequence[Any]) -> None:
        """Queue an update of a queued record: it runs after the record is written."""
        self._submit(_Op(str(record_id), sql=sql, params=params))

    def _submit(self, op: _Op) -> None:
        deadline = time.monotonic() + self._timeout
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"feedback store {self._backend.location} is closed")
            while len(self._ops) >= self._queue_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FeedbackStoreBusyError(
                        f"the background writer of {self._backend.location} has {len(self._ops)} "
                        f"records queued for {self._timeout:g} s: the store is not keeping up "
                        f"({self._last_error or 'slow writes'})"
                    )
                self._cond.wait(left)
            self._ops.append(op)
            self._pending[op.record_id] += 1
            if len(self._ops) >= self._batch_size:  # else the writer's timer picks it up
                self._cond.notify_all()

    def is_pending(self, record_id: str) -> bool:
        with self._cond:
            return self._pending[record_id] > 0

    def wait_for(self, record_id: str | None = None, timeout: float | None = None) -> bool:
        """Wait until ``record_id`` is written (None: everything queued by now); False
        on timeout or when the writer has stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._written_through + len(self._ops)
            if self._ops:
                self._urgent = True
                self._cond.notify_all()

            def done() -> bool:
                if record_id is not None:
                    return self._pending[record_id] <= 0
                return self._written_through >= target

            while not done():
                left = None if deadline is None else deadline - time.monotonic()
                if not self._thread.is_alive() or (left is not None and left <= 0):
                    return False
                self._cond.wait(0.5 if left is None else min(left, 0.5))
        return True

    def close(self, timeout: float | None = None) -> None:
        """Drain the queue (up to ``timeout`` once the database is unreachable) and stop."""
        with self._cond:
            if self._stopping and not self._thread.is_alive():
                return
            self._stopping = True
            self._give_up_at = time.monotonic() + (self._timeout if timeout is None else timeout)
            self._cond.notify_all()
        self._thread.join()
        _writers.discard(self)
        with self._cond:
            unwritten = [op.record for op in self._ops if op.record is not None]
            dropped_updates = sum(1 for op in self._ops if op.record is None)
            self._ops.clear()
            self._pending.clear()
        if unwritten or dropped_updates:
            raise FeedbackStoreUnavailableError(
                f"{len(unwritten)} feedback records (and {dropped_updates} updates) could not be written "
                f"to {self._backend.location}: {self._last_error}; they are in this error's .unwritten",
                unwritten=unwritten,
            )

    # -- the writer thread -----------------------------------------------------------

    def _loop(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                while not self._due():
                    if self._stopping and not self._ops:
                        return
                    self._cond.wait(FLUSH_INTERVAL_S)
                batch = [self._ops[i] for i in range(min(self._batch_size, len(self._ops)))]
            try:
                self._write(batch)
            except Exception as err:  # the database is away: keep the batch, try again
                self._last_error = err
                if time.monotonic() >= self._give_up_at:
                    return  # closing and out of time: close() hands the rest back
                log.warning("feedback writer: %s; retrying", err)
                time.sleep(min(1.0, 0.05 * 2**attempt))
                attempt += 1
                continue
            attempt = 0
            self._done(len(batch))

    def _due(self) -> bool:
        """Whether to write now (called holding the lock)."""
        if not self._ops:
            return False
        if self._stopping or self._urgent or len(self._ops) >= self._batch_size:
            return True
        return time.monotonic() - self._ops[0].queued_at >= FLUSH_INTERVAL_S

    def _done(self, count: int) -> None:
        with self._cond:
            for _ in range(count):
                op = self._ops.popleft()
                self._pending[op.record_id] -= 1
                if self._pending[op.record_id] <= 0:
                    del self._pending[op.record_id]
            self._written_through += count
            if not self._ops:
                self._urgent = False
            self._cond.notify_all()

    def _write(self, batch: list[_Op]) -> None:
        """Write the batch in order: runs of adds as one transaction, updates alone."""
        start = 0
        while start < len(batch):
            end = start
            while end < len(batch) and batch[end].record is not None:
                end += 1
            if end > start:
                self._add_run(batch[start:end])
                start = end
            else:
                self._update(batch[start])
                start += 1

    def _add_run(self, ops: list[_Op]) -> None:
        rows = [row for row in map(self._row_or_none, ops) if row is not None]
        if not rows:
            return
        try:
            inserted = self._backend.insert_many(rows)
        except ValueError:  # one bad record spoils the transaction: find it alone
            inserted = [self._insert_alone(row) for row in rows]
        for row, ok in zip(rows, inserted):
            if ok:
                self.written += 1
            elif ok is False:
                self._refused(f"feedback record id {row[0]!r} is already in {self._backend.location}")

    def _row_or_none(self, op: _Op) -> tuple | None:
        """The record's row; a record that cannot be turned into one is refused here,
        not retried forever with the batch (add() checked its types already)."""
        try:
            return self._build_row(op.record)
        except Exception as err:
            self._refused(f"feedback record {op.record_id!r}: {err}")
            return None

    def _insert_alone(self, row: tuple) -> bool | None:
        try:
            return self._backend.insert(row)
        except ValueError as err:
            self._refused(str(err))
            return None

    def _update(self, op: _Op) -> None:
        if self._backend.changes(op.sql, op.params) == 0:
            self._refused(f"update of feedback record {op.record_id!r}: not in {self._backend.location}")

    def _refused(self, message: str) -> None:
        self.errors += 1
        log.error("feedback writer: %s; not written", message)


_writers: "weakref.WeakSet[BackgroundWriter]" = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    """A process that exits without closing its store still writes what it queued."""
    for writer in list(_writers):
        try:
            writer.close()
        except Exception as err:  # nothing to raise to at exit: say it
            log.error("feedback writer at exit: %s", err)
