"""What every feedback backend shares: the schema version, the columns, the errors.

Its own module so that :mod:`rrpo.feedback` (the store) and the backends
(:mod:`rrpo.feedback_sqlite`, :mod:`rrpo.feedback_postgres`) import it without a cycle.
"""

from __future__ import annotations

from pathlib import Path

# Both backends keep the same version number: a schema change is one new step in each
# backend's MIGRATIONS, and SCHEMA_VERSION moves once.
SCHEMA_VERSION = 2

# The record's columns, in the order of a row tuple (see feedback._record_row).
COLUMNS = (
    "id, created_at, query, candidates, kept_ids, kept_scores, k, answer, "
    "latency_ms, reranker, rating, comment, metadata"
)


class UnknownRecordError(KeyError):
    """A record id that is not in the store."""

    def __init__(self, record_id: str, path: str | Path | None = None) -> None:
        where = f" in {path}" if path is not None else ""
        super().__init__(f"no feedback record with id {record_id!r}{where}")
        self.record_id = record_id

    def __str__(self) -> str:  # KeyError's default str() would repr() the message
        return str(self.args[0])


class SchemaVersionError(RuntimeError):
    """The store was written by a newer rrpo whose schema this version cannot read."""


class NotAFeedbackStoreError(ValueError):
    """The file or table exists but is not an rrpo feedback store (another app's)."""


class StoreNotFoundError(FileNotFoundError):
    """``create=False`` and there is no store there (no file; no table in the database;
    no such database). A FileNotFoundError, so callers that caught that still do."""


class FeedbackStoreUnavailableError(ConnectionError):
    """The database server could not be reached (or was lost) for longer than the
    store retries. The message names the server without its password.

    ``unwritten``: records a background writer could not write (given back on close so
    the caller can keep them), else empty."""

    def __init__(self, message: str, unwritten: list | None = None) -> None:
        super().__init__(message)
        self.unwritten = list(unwritten or [])


class FeedbackStoreBusyError(TimeoutError):
    """Every pooled connection stayed in use for the whole wait (``timeout``): the pool
    is too small for the load (raise ``max_connections``) or the server is stalled."""
