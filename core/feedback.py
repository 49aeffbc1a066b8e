"""The feedback store: every query a live pipeline answered, kept in a local SQLite file.

Adapters (``llama_index_rrpo.FeedbackCollector``, ``langchain_rrpo.FeedbackCallbackHandler``)
add one :class:`~rrpo.FeedbackRecord` per query; users rate records later; training reads
them back (``store.records(rated_only=True)`` → ``record.to_example()``).

Why SQLite, and how it stays safe:

* WAL journal: readers never block the writer, and a process killed mid-write leaves
  the database at its last committed transaction (the half-written one is discarded on
  the next open). Every ``add`` is one INSERT, i.e. one transaction, so a crash loses at
  most the record being written.
* ``synchronous=NORMAL`` (the WAL default recommendation): a committed record survives
  any process crash; only a power cut may roll back the last few commits, and never
  corrupts the file. Pass ``synchronous="FULL"`` to also survive power loss.
* A small pool of connections (``max_connections``, default 4) that every thread
  borrows from for one operation and gives back, and a ``busy_timeout``: many threads
  and several processes can write at once (SQLite serialises the writers), and a server
  with a thread per request holds a bounded number of file descriptors, not two per
  thread that ever wrote.
* ``PRAGMA user_version`` holds the schema version; ``_MIGRATIONS`` upgrades old files.
* Only parameterised SQL. Candidates and metadata are stored as JSON text.
* Nothing that looks like a credential is stored (:mod:`rrpo.redact`): metadata keys
  that name one (``api_key``, ``token``, ``OPENAI_KEY`` ...) are dropped and values that
  look like one (``sk-...``, ``Bearer ...``, ``AKIA...``, ``password=...``) are replaced by
  ``[REDACTED]``, in the query, passages, answer, comment and metadata, before a record
  is written and again when one is exported. A new file is created readable by its
  owner only (mode 0600; SQLite gives its ``-wal``/``-shm`` files the same mode).
* NaN and infinite numbers are written as JSON ``null`` (never the non-standard ``NaN``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .redact import redact
from .types import Candidate, FeedbackRecord

SCHEMA_VERSION = 1

# Columns a caller may change after a record was added (see FeedbackStore.update).
_UPDATABLE = ("answer", "latency_ms", "kept_ids", "kept_scores", "k", "reranker", "metadata")
_JSON_COLUMNS = {"kept_ids", "kept_scores", "metadata"}

_COLUMNS = (
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
    """The file was written by a newer rrpo whose schema this version cannot read."""


class NotAFeedbackStoreError(ValueError):
    """The file exists but is not an rrpo feedback store (not SQLite, or another app's)."""


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS records (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            query TEXT NOT NULL,
            candidates TEXT NOT NULL,
            kept_ids TEXT NOT NULL,
            kept_scores TEXT NOT NULL,
            k INTEGER,
            answer TEXT,
            latency_ms REAL,
            reranker TEXT,
            rating REAL,
            comment TEXT,
            rated_at REAL,
            metadata TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS records_created ON records (created_at)")


# _MIGRATIONS[v] upgrades a database at version v - 1 to version v. Add the next
# schema change as _MIGRATIONS[2] and bump SCHEMA_VERSION; old files upgrade on open.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _create_v1}


strip_secrets = redact  # the old name: keys and values are both checked now


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


def _check_record(record: FeedbackRecord) -> None:
    """Clear errors for what SQLite would only call a constraint failure."""
    if not isinstance(record.query, str):
        raise TypeError(f"feedback record {record.id!r}: query must be a str, got {type(record.query).__name__}")
    for i, candidate in enumerate(record.candidates):
        if not isinstance(candidate, Candidate):
            raise TypeError(
                f"feedback record {record.id!r}: candidate {i} must be an rrpo.Candidate, "
                f"got {type(candidate).__name__}"
            )


def _integrity_error(record: FeedbackRecord, err: sqlite3.IntegrityError, path: Path) -> ValueError:
    """Say which constraint failed: a duplicate id is only one of them."""
    message = str(err)
    if "UNIQUE" in message and "records.id" in message:
        return ValueError(f"feedback record id {record.id!r} is already in {path}")
    return ValueError(f"feedback record {record.id!r} was not stored in {path}: {message}")


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite then gives its
    journal files the same mode). O_EXCL: never change someone else's file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class FeedbackStore:
    """Feedback records in one SQLite file (created on first use).

    >>> store = FeedbackStore("feedback.db")
    >>> rid = store.add(record)
    >>> store.rate(rid, 1.0, comment="right answer")
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
    ) -> None:
        """``create=False``: the file must exist (``FileNotFoundError`` otherwise).
        ``max_connections``: how many SQLite connections the threads share."""
        self.path = Path(path).expanduser()
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"feedback store not found: {self.path}")
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(self.path)
        self._timeout = float(timeout)
        self._synchronous = synchronous.upper()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._idle: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        try:
            with self._conn() as conn:
                self._migrate(conn)
        except sqlite3.DatabaseError as err:  # "file is not a database", a torn header...
            self.close()
            raise NotAFeedbackStoreError(f"{self.path} is not a feedback store: {err}") from err
        except BaseException:
            self.close()
            raise

    # -- connections -----------------------------------------------------------------

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection for one operation. At most ``max_connections`` exist at
        once (threads wait for a free one); idle ones are kept for the next caller, so a
        thread that ends leaves nothing open behind."""
        if self._closed:
            raise RuntimeError(f"feedback store {self.path} is closed")
        self._slots.acquire()
        try:
            with self._connections_lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                with self._connections_lock:
                    if self._closed:
                        conn.close()
                    else:
                        self._idle.append(conn)
        finally:
            self._slots.release()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on a borrowed connection and return its rows."""
        with self._conn() as conn:
            return conn.execute(sql, params).fetchall()

    def _changes(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one write and return how many rows it changed."""
        with self._conn() as conn:
            return conn.execute(sql, params).rowcount

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, so a lone INSERT/UPDATE is its own
        # transaction and multi-statement work uses an explicit BEGIN IMMEDIATE.
        # check_same_thread=False: a pooled connection serves one thread at a time,
        # but not always the same thread.
        conn = sqlite3.connect(
            str(self.path), timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def close(self) -> None:
        """Close the connections (one in use closes when its operation ends). The store
        cannot be used afterwards."""
        with self._connections_lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()
            self._closed = True

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedbackStore({str(self.path)!r})"

    # -- schema ----------------------------------------------------------------------

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the file to SCHEMA_VERSION. Runs under a write lock so two processes
        opening a new file at once do not both create the schema."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version == 0 and _foreign_tables(conn):
            raise NotAFeedbackStoreError(
                f"{self.path} is not a feedback store: an SQLite database of another "
                "application (tables but no rrpo schema); give a new file or an rrpo store"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path} has feedback schema version {version}; this rrpo reads "
                    f"up to {SCHEMA_VERSION}. Upgrade rrpo."
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[target](conn)
                # PRAGMA takes no parameters; target is an int from our own table.
                conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return int(self._execute("PRAGMA user_version")[0][0])

    # -- writing ---------------------------------------------------------------------

    def add(self, record: FeedbackRecord) -> str:
        """Store ``record`` (one transaction) and return its id."""
        if not isinstance(record, FeedbackRecord):
            raise TypeError(f"add() takes an rrpo.FeedbackRecord, got {type(record).__name__}")
        _check_record(record)
        row = (
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
        try:
            with self._conn() as conn:
                conn.execute(f"INSERT INTO records ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
        except sqlite3.IntegrityError as err:
            raise _integrity_error(record, err, self.path) from err
        return str(record.id)

    def add_many(self, records: Iterable[FeedbackRecord]) -> list[str]:
        """Add several records; each is still its own transaction (crash-safe per record)."""
        return [self.add(record) for record in records]

    def rate(self, record_id: str, score: float, comment: str | None = None) -> None:
        """Attach a user rating (any finite number; [0, 1] or 1-5 are common) to a record."""
        score = float(score)
        if not math.isfinite(score):
            raise ValueError(f"rating for record {record_id!r} must be finite, got {score}")
        changed = self._changes(
            "UPDATE records SET rating = ?, comment = ?, rated_at = ? WHERE id = ?",
            (score, redact(comment), time.time(), str(record_id)),
        )
        if changed == 0:
            raise UnknownRecordError(str(record_id), self.path)

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
        changed = self._changes(f"UPDATE records SET {assignments} WHERE id = ?", (*values, str(record_id)))
        if changed == 0:
            raise UnknownRecordError(str(record_id), self.path)

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

    # -- reading ---------------------------------------------------------------------

    def get(self, record_id: str) -> FeedbackRecord:
        rows = self._execute(f"SELECT {_COLUMNS} FROM records WHERE id = ?", (str(record_id),))
        if not rows:
            raise UnknownRecordError(str(record_id), self.path)
        return _row_to_record(rows[0])

    def __contains__(self, record_id: object) -> bool:
        return bool(self._execute("SELECT 1 FROM records WHERE id = ?", (str(record_id),)))

    def records(self, limit: int | None = None, rated_only: bool = False) -> list[FeedbackRecord]:
        """Records, oldest first; ``limit`` keeps the newest ``limit`` of them."""
        where = "WHERE rating IS NOT NULL" if rated_only else ""
        sql = f"SELECT {_COLUMNS} FROM records {where} ORDER BY created_at, rowid"
        params: tuple[Any, ...] = ()
        if limit is not None:
            if int(limit) < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
            sql = (
                f"SELECT * FROM (SELECT {_COLUMNS}, rowid AS r FROM records {where} "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?) ORDER BY created_at, r"
            )
            params = (int(limit),)
        return [_row_to_record(row[:13]) for row in self._execute(sql, params)]

    def __len__(self) -> int:
        return int(self._execute("SELECT COUNT(*) FROM records")[0][0])

    def stats(self) -> dict[str, Any]:
        """Counts and means over the store (for ``rrpo feedback stats``)."""
        count, rated, mean_rating, mean_k, mean_latency, first, last = self._execute(
            "SELECT COUNT(*), COUNT(rating), AVG(rating), AVG(k), AVG(latency_ms), "
            "MIN(created_at), MAX(created_at) FROM records"
        )[0]
        n_candidates = [
            len(json.loads(text)) for (text,) in self._execute("SELECT candidates FROM records")
        ]
        rerankers = dict(
            self._execute(
                "SELECT COALESCE(reranker, 'unknown'), COUNT(*) FROM records GROUP BY reranker "
                "ORDER BY COUNT(*) DESC"
            )
        )
        return {
            "path": str(self.path),
            "schema_version": self.schema_version,
            "count": count,
            "rated": rated,
            "answered": self._execute("SELECT COUNT(*) FROM records WHERE answer IS NOT NULL")[0][0],
            "mean_rating": mean_rating,
            "mean_k": mean_k,
            "mean_candidates": _mean([float(n) for n in n_candidates]),
            "mean_latency_ms": mean_latency,
            "rerankers": rerankers,
            "first_created_at": first,
            "last_created_at": last,
        }

    def integrity_check(self) -> str:
        """SQLite's own consistency check: ``"ok"`` for a healthy file."""
        return str(self._execute("PRAGMA integrity_check")[0][0])

    # -- export ----------------------------------------------------------------------

    def export_jsonl(self, path: str | Path, rated_only: bool = False) -> int:
        """Write one JSON object per record (the full record) and return how many. A new
        file is readable by its owner only, like the store."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        records = self.records(rated_only=rated_only)
        _create_private(path)
        with path.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(_to_json(record_to_dict(record)) + "\n")
        return len(records)

    def export(self, jsonl_path: str | Path | None = None, rated_only: bool = False):
        """The records as a ``datasets.Dataset`` (and, if ``jsonl_path`` is given, JSONL).

        Columns: id, created_at, query, candidates (list of {id, title, text, score,
        metadata}), kept_ids, kept_scores, k, answer, latency_ms, reranker, rating,
        comment, metadata. Free-form metadata is a JSON string so every row has the
        same schema.
        """
        try:
            import datasets
        except ImportError as err:
            raise ImportError(
                "FeedbackStore.export() needs the 'datasets' package: pip install 'rrpo[train]'"
            ) from err
        records = self.records(rated_only=rated_only)
        if jsonl_path is not None:
            self.export_jsonl(jsonl_path, rated_only=rated_only)
        columns = {name: [] for name in _dataset_features(datasets)}
        for record in records:
            for name, value in _record_to_row(record).items():
                columns[name].append(value)
        return datasets.Dataset.from_dict(columns, features=_dataset_features(datasets))


def record_to_dict(record: FeedbackRecord) -> dict[str, Any]:
    """A JSON-ready dict of the whole record (the JSONL export format): redacted again
    (a file written by an older rrpo may hold what this one strips), NaN as None."""
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


def _row_to_record(row: tuple[Any, ...]) -> FeedbackRecord:
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


def _record_to_row(record: FeedbackRecord) -> dict[str, Any]:
    row = record_to_dict(record)
    row["candidates"] = [
        {
            "id": c["id"],
            "title": c["title"],
            "text": c["text"],
            "score": c["score"],
            "metadata": _to_json(c["metadata"]),
        }
        for c in row["candidates"]
    ]
    row["metadata"] = _to_json(row["metadata"])
    return row


def _foreign_tables(conn: sqlite3.Connection) -> bool:
    """Whether an unversioned file already has tables (another app's database)."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return bool(rows) and "records" not in {name for (name,) in rows}


def _dataset_features(datasets: Any) -> Any:
    # datasets >= 4 spells a list feature ``List``; older versions ``Sequence``.
    list_of = getattr(datasets, "List", None) or datasets.Sequence
    value = datasets.Value
    candidate = {
        "id": value("string"),
        "title": value("string"),
        "text": value("string"),
        "score": value("float64"),
        "metadata": value("string"),
    }
    return datasets.Features(
        {
            "id": value("string"),
            "created_at": value("float64"),
            "query": value("string"),
            "candidates": list_of(candidate),
            "kept_ids": list_of(value("string")),
            "kept_scores": list_of(value("float64")),
            "k": value("int64"),
            "answer": value("string"),
            "latency_ms": value("float64"),
            "reranker": value("string"),
            "rating": value("float64"),
            "comment": value("string"),
            "metadata": value("string"),
        }
    )
