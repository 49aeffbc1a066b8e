"""The feedback store: every query a live pipeline answered, kept for training.

Adapters (``llama_index_rrpo.FeedbackCollector``, ``langchain_rrpo.FeedbackCallbackHandler``)
add one :class:`~rrpo.FeedbackRecord` per query; users rate records later; training reads
them back (``store.iter_records(rated_only=True)`` → ``record.to_example()``).

Two backends behind one class, chosen by what you pass:

* a file path (the default): an embedded SQLite file, :mod:`rrpo.feedback_sqlite` (WAL,
  pooled connections, mode 0600) — one machine, any number of threads and processes;
* a ``postgresql://`` URL: a shared PostgreSQL server, :mod:`rrpo.feedback_postgres`
  (psycopg 3 pool, retries across a server restart, the password kept out of every
  message) — a fleet of replicas on many machines, one store. A rating may arrive at any
  replica: ``rate(record_id)`` finds the record whichever replica wrote it.

What both guarantee, and this module implements once:

* The same schema version (``SCHEMA_VERSION``) and migrations step for step.
* Only parameterised SQL. Candidates and metadata are stored as JSON text.
* Nothing that looks like a credential is stored (:mod:`rrpo.redact`): metadata keys
  that name one (``api_key``, ``token``, ``OPENAI_KEY`` ...) are dropped and values that
  look like one (``sk-...``, ``Bearer ...``, ``AKIA...``, ``password=...``) are replaced by
  ``[REDACTED]``, in the query, passages, answer, comment and metadata, before a record
  is written and again when one is exported.
* NaN and infinite numbers are written as JSON ``null`` (never the non-standard ``NaN``).
* Every ``add`` is one transaction; a record is all there or not there.
* Reads stream: :meth:`FeedbackStore.iter_records` pages through the records in order
  (keyset pagination, a bounded page per round trip), filtered in SQL by time window,
  reranker version and rating, so training and export never load the whole store.
* ``background=True`` moves writes off the request path (:mod:`rrpo.feedback_writer`).
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .feedback_schema import (
    COLUMNS,
    SCHEMA_VERSION,
    FeedbackStoreBusyError,
    FeedbackStoreUnavailableError,
    NotAFeedbackStoreError,
    SchemaVersionError,
    StoreNotFoundError,
    UnknownRecordError,
)
from .feedback_postgres import is_postgres_url
from .feedback_sqlite import create_private
from .redact import redact
from .types import Candidate, FeedbackRecord

__all__ = [
    "SCHEMA_VERSION", "FeedbackStore", "FeedbackStoreBusyError", "FeedbackStoreUnavailableError",
    "NotAFeedbackStoreError", "SchemaVersionError", "StoreNotFoundError", "UnknownRecordError",
    "is_postgres_url", "load_jsonl", "parse_time", "record_from_dict", "record_to_dict",
]  # fmt: skip

# Columns a caller may change after a record was added (see FeedbackStore.update).
_UPDATABLE = ("answer", "latency_ms", "kept_ids", "kept_scores", "k", "reranker", "metadata")
_JSON_COLUMNS = {"kept_ids", "kept_scores", "metadata"}
_N_COLUMNS = len(COLUMNS.split(","))

strip_secrets = redact  # the old name: keys and values are both checked now
_create_private = create_private  # the old private name, for code that imported it


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _to_json(value: Any) -> str:
    # default=str: metadata from frameworks may hold dates, paths or enums; a record
    # must never fail to save because one metadata value is not JSON-native.
    # allow_nan=False after _finite: a stray float subclass fails loudly, never as NaN.
    return json.dumps(_finite(value), ensure_ascii=False, default=str, allow_nan=False)


def _clean_candidate(candidate: Candidate) -> dict[str, Any]:
    data = candidate.to_dict()
    return {**redact(data), "id": data["id"]}  # ids stay as they are: kept_ids name them


def _clean_number(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _check_record(record: Any) -> None:
    """Clear errors for what the database would only call a constraint failure."""
    if not isinstance(record, FeedbackRecord):
        raise TypeError(f"add() takes an rrpo.FeedbackRecord, got {type(record).__name__}")
    if not isinstance(record.query, str):
        raise TypeError(f"feedback record {record.id!r}: query must be a str, got {type(record.query).__name__}")
    for i, candidate in enumerate(record.candidates):
        if not isinstance(candidate, Candidate):
            raise TypeError(
                f"feedback record {record.id!r}: candidate {i} must be an rrpo.Candidate, "
                f"got {type(candidate).__name__}"
            )


def _record_row(record: FeedbackRecord) -> tuple[Any, ...]:
    """The record as the row both backends store (in ``COLUMNS`` order), redacted."""
    return (
        str(record.id),
        float(record.created_at),
        redact(record.query),
        _to_json([_clean_candidate(c) for c in record.candidates]),
        _to_json([str(i) for i in record.kept_ids]),
        _to_json([_clean_number(s) for s in record.kept_scores]),
        record.k,
        redact(record.answer),
        _clean_number(record.latency_ms),
        record.reranker,
        _clean_number(record.rating),
        redact(record.comment),
        _to_json(redact(dict(record.metadata))),
    )


# -- filters -----------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str | float | datetime, now: float | None = None) -> float:
    """A point in time as Unix seconds, from what a person types on a command line:
    ``1767225600`` (Unix seconds), ``2026-12-01`` / ``2026-12-01T08:00`` (ISO 8601, UTC
    unless it names a zone), or ``90m`` / ``24h`` / ``7d`` / ``2w`` (that long ago)."""
    if isinstance(value, datetime):
        return _utc(value).timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    duration = _DURATION.match(text)
    if duration:
        ago = float(duration.group(1)) * _SECONDS[duration.group(2).lower()]
        return (time.time() if now is None else now) - ago
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return _utc(datetime.fromisoformat(text.replace("Z", "+00:00"))).timestamp()
    except ValueError:
        raise ValueError(
            f"not a time: {value!r} (give Unix seconds, an ISO date such as 2026-12-01T08:00, or 24h / 7d ago)"
        ) from None


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _filters(since: Any, until: Any, reranker: str | Sequence[str] | None,
             rated_only: bool) -> tuple[list[str], list[Any]]:
    """WHERE clauses and their parameters. ``reranker``: exact versions, or a prefix
    ending in ``*`` (``minilm-l6@*`` = any weights of that model)."""
    clauses: list[str] = []
    params: list[Any] = []
    if rated_only:
        clauses.append("rating IS NOT NULL")
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(parse_time(since))
    if until is not None:
        clauses.append("created_at < ?")
        params.append(parse_time(until))
    versions = [reranker] if isinstance(reranker, str) else list(reranker or [])
    if versions:
        tests = []
        for version in versions:
            if version.endswith("*"):
                tests.append("reranker LIKE ? ESCAPE '\\'")
                params.append(re.sub(r"([\\%_])", r"\\\1", version[:-1]) + "%")
            else:
                tests.append("reranker = ?")
                params.append(version)
        clauses.append("(" + " OR ".join(tests) + ")")
    return clauses, params


def _where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


class FeedbackStore:
    """Feedback records in an SQLite file (created on first use) or on a PostgreSQL
    server (``postgresql://...``: the tables are created on first use).

    >>> store = FeedbackStore("feedback.db")          # or "postgresql://app@db/rag"
    >>> rid = store.add(record)
    >>> store.rate(rid, 1.0, comment="right answer")  # from any replica
    >>> for record in store.iter_records(since="7d", rated_only=True): ...
    >>> ds = store.export()        # a datasets.Dataset
    """

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        timeout: float = 30.0,
        synchronous: str = "NORMAL",
        max_connections: int = 4,
        retry_timeout: float = 10.0,
        background: bool = False,
        queue_size: int = 10_000,
    ) -> None:
        """``path``: an SQLite file, or a ``postgresql://user@host:port/db`` URL (the
        password is best left to ``PGPASSWORD`` or ``~/.pgpass``).

        ``create=False``: the store must exist (:class:`StoreNotFoundError`, a
        FileNotFoundError, otherwise). ``timeout``: seconds to wait for a lock (SQLite)
        or a free pooled connection (PostgreSQL). ``max_connections``: the connections
        the threads share. ``synchronous``: SQLite's durability pragma. ``retry_timeout``:
        how long PostgreSQL operations are retried across a lost connection.
        ``background=True``: ``add()`` queues and returns; a thread writes (at most
        ``queue_size`` queued), ``close()`` drains."""
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._backend = _open_backend(path, create=create, timeout=timeout, synchronous=synchronous,
                                      max_connections=max_connections, retry_timeout=retry_timeout)
        self.path: Path | None = self._backend.path  # None for a server
        self.location: str = self._backend.location  # the path, or the URL without password
        self._writer = None
        self._read_wait = float(timeout) + float(retry_timeout)
        if background:
            from .feedback_writer import BackgroundWriter

            self._writer = BackgroundWriter(self._backend, _record_row, queue_size=queue_size, timeout=timeout)

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._backend.kind

    def close(self) -> None:
        """Write what is queued (``background=True``), then close the connections (one in
        use closes when its operation ends). The store cannot be used afterwards."""
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            self._backend.close()

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedbackStore({self.location!r})"

    @property
    def schema_version(self) -> int:
        return self._backend.schema_version()

    # -- writing ---------------------------------------------------------------------

    def add(self, record: FeedbackRecord) -> str:
        """Store ``record`` (one transaction) and return its id. With
        ``background=True`` the record is checked now and written shortly after; do
        not change it after ``add``."""
        _check_record(record)
        if self._writer is not None:
            self._writer.add(record)
            return str(record.id)
        if not self._backend.insert(_record_row(record)):
            raise ValueError(f"feedback record id {record.id!r} is already in {self.location}")
        return str(record.id)

    def add_many(self, records: Iterable[FeedbackRecord]) -> list[str]:
        """Add several records; each is still its own transaction (crash-safe per record)."""
        return [self.add(record) for record in records]

    def rate(self, record_id: str, score: float, comment: str | None = None) -> None:
        """Attach a user rating (any finite number; [0, 1] or 1-5 are common) to a record
        (written by this process or by any other replica of the same store)."""
        score = float(score)
        if not math.isfinite(score):
            raise ValueError(f"rating for record {record_id!r} must be finite, got {score}")
        self._written(record_id)
        changed = self._backend.changes(
            self._sql("UPDATE {table} SET rating = ?, comment = ?, rated_at = ? WHERE id = ?"),
            (score, redact(comment), time.time(), str(record_id)),
        )
        if changed == 0:
            raise UnknownRecordError(str(record_id), self.location)

    def update(self, record_id: str, **fields: Any) -> None:
        """Change fields of a stored record, e.g. the answer of a streamed response once
        it has been consumed. Allowed: answer, latency_ms, kept_ids, kept_scores, k,
        reranker, metadata."""
        unknown = sorted(set(fields) - set(_UPDATABLE))
        if unknown:
            raise ValueError(f"cannot update {unknown}; updatable fields: {list(_UPDATABLE)}")
        if not fields:
            return
        names = [name for name in _UPDATABLE if name in fields]  # fixed order, known names
        values = [self._column_value(name, fields[name]) for name in names]
        assignments = ", ".join(f"{name} = ?" for name in names)
        sql = self._sql("UPDATE {table} SET " + assignments + " WHERE id = ?")
        params = (*values, str(record_id))
        if self._writer is not None and self._writer.is_pending(str(record_id)):
            # Queued behind its own add: the update stays off the request path too.
            self._writer.update(str(record_id), sql, params)
            return
        if self._backend.changes(sql, params) == 0:
            raise UnknownRecordError(str(record_id), self.location)

    @staticmethod
    def _column_value(name: str, value: Any) -> Any:
        if name == "metadata":
            return _to_json(redact(dict(value or {})))
        if name in _JSON_COLUMNS:
            return _to_json(list(value))
        if name == "answer":
            return redact(value)
        if name == "latency_ms":
            return _clean_number(value)
        return value

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far is written (``background=True``; a
        no-op otherwise). False if ``timeout`` passed first."""
        return True if self._writer is None else self._writer.wait_for(None, timeout)

    @property
    def write_errors(self) -> int:
        """Records a background writer could not store (logged on ``rrpo.feedback``)."""
        return 0 if self._writer is None else self._writer.errors

    def _written(self, record_id: str | None = None) -> None:
        """Read what we wrote: wait for a queued record (or all) before reading. Bounded:
        with the database away the read goes ahead and fails (or retries) on its own."""
        if self._writer is not None:
            self._writer.wait_for(None if record_id is None else str(record_id), timeout=self._read_wait)

    def _sql(self, template: str) -> str:
        return self._backend.sql(template)

    # -- reading ---------------------------------------------------------------------

    def get(self, record_id: str) -> FeedbackRecord:
        self._written(record_id)
        rows = self._backend.execute(self._sql("SELECT " + COLUMNS + " FROM {table} WHERE id = ?"), (str(record_id),))
        if not rows:
            raise UnknownRecordError(str(record_id), self.location)
        return _row_to_record(rows[0])

    def __contains__(self, record_id: object) -> bool:
        self._written(str(record_id))
        return bool(self._backend.execute(self._sql("SELECT 1 FROM {table} WHERE id = ?"), (str(record_id),)))

    def records(self, limit: int | None = None, rated_only: bool = False, **filters: Any) -> list[FeedbackRecord]:
        """Records, oldest first; ``limit`` keeps the newest ``limit`` of them. Filters
        as :meth:`iter_records`. Prefer ``iter_records`` for a big store."""
        return list(self.iter_records(limit=limit, rated_only=rated_only, **filters))

    def iter_records(
        self,
        *,
        since: Any = None,
        until: Any = None,
        reranker: str | Sequence[str] | None = None,
        rated_only: bool = False,
        limit: int | None = None,
        batch_size: int = 500,
    ) -> Iterator[FeedbackRecord]:
        """Stream records, oldest first, ``batch_size`` per round trip: memory stays at
        one page whatever the size of the store.

        ``since`` / ``until``: a time window, ``since <= created_at < until`` (Unix
        seconds, a datetime, an ISO string, or ``"7d"`` ago: :func:`parse_time`).
        ``reranker``: the version(s) that served the query, exact or a ``prefix*``.
        ``rated_only``: only records with a rating. ``limit``: the newest ``limit``
        matching records (still oldest first). Records added while the iteration runs
        appear if they sort after the current page."""
        if limit is not None and int(limit) < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._written()
        clauses, params = _filters(since, until, reranker, rated_only)
        if limit is not None and int(limit) == 0:
            return
        start = self._newest_start(clauses, params, int(limit)) if limit is not None else None
        left = None if limit is None else int(limit)
        while left is None or left > 0:
            page = self._page(clauses, params, start, batch_size if left is None else min(batch_size, left))
            for row in page:
                yield _row_to_record(row[:_N_COLUMNS])
            if left is not None:
                left -= len(page)
            if len(page) < batch_size:
                return
            start = (page[-1][1], page[-1][_N_COLUMNS], False)

    def _page(self, clauses: list[str], params: list[Any], start: tuple | None, size: int) -> list[tuple]:
        """One page in (created_at, seq) order after ``start`` (keyset pagination: each
        page is an index range scan, however deep into the store it is)."""
        clauses, params = list(clauses), list(params)
        if start is not None:
            created, seq, inclusive = start
            clauses.append("(created_at, {seq}) " + (">=" if inclusive else ">") + " (?, ?)")
            params += [created, seq]
        sql = "SELECT " + COLUMNS + ", {seq} FROM {table}" + _where(clauses) + " ORDER BY created_at, {seq} LIMIT ?"
        return self._backend.execute(self._sql(sql), (*params, size))

    def _newest_start(self, clauses: list[str], params: list[Any], limit: int) -> tuple | None:
        """Where the newest ``limit`` matching records begin (None: fewer than that)."""
        sql = ("SELECT created_at, {seq} FROM {table}" + _where(clauses)
               + " ORDER BY created_at DESC, {seq} DESC LIMIT 1 OFFSET ?")
        rows = self._backend.execute(self._sql(sql), (*params, limit - 1))
        return (rows[0][0], rows[0][1], True) if rows else None

    def count(self, *, since: Any = None, until: Any = None, reranker: str | Sequence[str] | None = None,
              rated_only: bool = False) -> int:
        """How many records match the filters of :meth:`iter_records`."""
        self._written()
        clauses, params = _filters(since, until, reranker, rated_only)
        return int(self._backend.execute(self._sql("SELECT COUNT(*) FROM {table}" + _where(clauses)), params)[0][0])

    def __len__(self) -> int:
        return self.count()

    def stats(self) -> dict[str, Any]:
        """Counts and means over the store (for ``rrpo feedback stats``), computed by the
        database: nothing but the numbers crosses the connection."""
        self._written()
        row = self._backend.execute(self._sql(
            "SELECT COUNT(*), COUNT(rating), AVG(rating), AVG(CAST(k AS DOUBLE PRECISION)), AVG(latency_ms), "
            "MIN(created_at), MAX(created_at), COUNT(answer), "
            "AVG(CAST({n_candidates} AS DOUBLE PRECISION)) FROM {table}"
        ))[0]
        count, rated, mean_rating, mean_k, mean_latency, first, last, answered, mean_candidates = row
        # Per reranker version: how a canary compares with the fleet it would replace.
        rerankers = self._backend.execute(self._sql(
            "SELECT COALESCE(reranker, 'unknown'), COUNT(*), COUNT(rating), AVG(rating), "
            "AVG(CAST(k AS DOUBLE PRECISION)) FROM {table} GROUP BY reranker ORDER BY COUNT(*) DESC"
        ))
        return {
            "path": self.location,
            "backend": self.backend,
            "schema_version": self.schema_version,
            "count": int(count),
            "rated": int(rated),
            "answered": int(answered),
            "mean_rating": mean_rating,
            "mean_k": mean_k,
            "mean_candidates": mean_candidates,
            "mean_latency_ms": mean_latency,
            "rerankers": {name: int(n) for name, n, *_ in rerankers},
            "by_reranker": {
                name: {"count": int(n), "rated": int(n_rated), "mean_rating": rating, "mean_k": k}
                for name, n, n_rated, rating, k in rerankers
            },
            "first_created_at": first,
            "last_created_at": last,
        }

    def integrity_check(self) -> str:
        """``"ok"`` for a healthy store (SQLite's own check; on a server, the schema
        version and unique ids)."""
        self._written()
        return self._backend.integrity_check()

    # -- export (rrpo.feedback_export does the work) ---------------------------------

    def export_jsonl(self, path: str | Path, rated_only: bool = False, **filters: Any) -> int:
        """Write one JSON object per record (the full record, streamed) and return how
        many. A new file is readable by its owner only, like the store."""
        from .feedback_export import export_jsonl

        return export_jsonl(self, path, rated_only=rated_only, **filters)

    def export_parquet(self, path: str | Path, rated_only: bool = False, **filters: Any) -> int:
        """Stream the records into a Parquet file (the columns of :meth:`export`, row
        groups of a few thousand) and return how many."""
        from .feedback_export import export_parquet

        return export_parquet(self, path, rated_only=rated_only, **filters)

    def export(self, jsonl_path: str | Path | None = None, rated_only: bool = False, **filters: Any):
        """The records as a ``datasets.Dataset`` (and, if ``jsonl_path`` is given, JSONL).

        Columns: id, created_at, query, candidates (list of {id, title, text, score,
        metadata}), kept_ids, kept_scores, k, answer, latency_ms, reranker, rating,
        comment, metadata. Free-form metadata is a JSON string so every row has the
        same schema. In memory: for a big store use :meth:`export_parquet` or
        ``rrpo feedback export URL DIR``.
        """
        from .feedback_export import export_dataset

        if jsonl_path is not None:
            self.export_jsonl(jsonl_path, rated_only=rated_only, **filters)
        return export_dataset(self, rated_only=rated_only, **filters)


def _open_backend(path: str | Path, *, create: bool, timeout: float, synchronous: str,
                  max_connections: int, retry_timeout: float) -> Any:
    if is_postgres_url(path):
        from .feedback_postgres import PostgresBackend

        return PostgresBackend(str(path), create=create, timeout=timeout, max_connections=max_connections,
                               retry_timeout=retry_timeout)
    from .feedback_sqlite import SQLiteBackend

    return SQLiteBackend(path, create=create, timeout=timeout, synchronous=synchronous,
                         max_connections=max_connections)


def record_to_dict(record: FeedbackRecord) -> dict[str, Any]:
    """A JSON-ready dict of the whole record (the JSONL export format): redacted again
    (a store written by an older rrpo may hold what this one strips), NaN as None."""
    return _finite({
        "id": record.id,
        "created_at": record.created_at,
        "query": redact(record.query),
        "candidates": [_clean_candidate(c) for c in record.candidates],
        "kept_ids": list(record.kept_ids),
        "kept_scores": list(record.kept_scores),
        "k": record.k,
        "answer": redact(record.answer),
        "latency_ms": record.latency_ms,
        "reranker": record.reranker,
        "rating": record.rating,
        "comment": redact(record.comment),
        "metadata": redact(dict(record.metadata)),
    })  # fmt: skip


def record_from_dict(data: dict[str, Any]) -> FeedbackRecord:
    """Inverse of :func:`record_to_dict` (reads the JSONL export back)."""
    return FeedbackRecord(
        id=str(data["id"]),
        created_at=float(data["created_at"]),
        query=data["query"],
        candidates=[Candidate.from_dict(c) for c in data.get("candidates") or []],
        kept_ids=[str(i) for i in data.get("kept_ids") or []],
        kept_scores=[None if s is None else float(s) for s in data.get("kept_scores") or []],
        k=data.get("k"),
        answer=data.get("answer"),
        latency_ms=data.get("latency_ms"),
        reranker=data.get("reranker"),
        rating=data.get("rating"),
        comment=data.get("comment"),
        metadata=dict(data.get("metadata") or {}),
    )


def load_jsonl(path: str | Path) -> list[FeedbackRecord]:
    """Records from a file written by :meth:`FeedbackStore.export_jsonl`."""
    with Path(path).expanduser().open(encoding="utf-8") as handle:
        return [record_from_dict(json.loads(line)) for line in handle if line.strip()]


def _row_to_record(row: Sequence[Any]) -> FeedbackRecord:
    (rid, created, query, candidates, kept_ids, kept_scores, k, answer,
     latency, reranker, rating, comment, metadata) = row
    return FeedbackRecord(
        id=rid,
        created_at=created,
        query=query,
        candidates=[Candidate.from_dict(c) for c in json.loads(candidates)],
        kept_ids=json.loads(kept_ids),
        kept_scores=json.loads(kept_scores),
        k=k,
        answer=answer,
        latency_ms=latency,
        reranker=reranker,
        rating=rating,
        comment=comment,
        metadata=json.loads(metadata),
    )
