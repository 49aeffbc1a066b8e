"""The embedded backend of :class:`rrpo.feedback.FeedbackStore`: one SQLite file.

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
* ``PRAGMA user_version`` holds the schema version; ``MIGRATIONS`` upgrades old files.
* A new file is created readable by its owner only (mode 0600; SQLite gives its
  ``-wal``/``-shm`` files the same mode).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .feedback_schema import COLUMNS, SCHEMA_VERSION, NotAFeedbackStoreError, SchemaVersionError, StoreNotFoundError


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


def _create_v2(conn: sqlite3.Connection) -> None:
    # Training streams "records of reranker X" and "rated records" by time: index both.
    conn.execute("CREATE INDEX IF NOT EXISTS records_reranker ON records (reranker, created_at)")
    conn.execute("CREATE INDEX IF NOT EXISTS records_rated ON records (created_at) WHERE rating IS NOT NULL")


# MIGRATIONS[v] upgrades a database at version v - 1 to version v. Add the next schema
# change as MIGRATIONS[3] (and the same step in feedback_postgres.MIGRATIONS), then bump
# SCHEMA_VERSION; old files upgrade on open.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _create_v1, 2: _create_v2}


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite then gives its
    journal files the same mode). O_EXCL: never change someone else's file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SQLiteBackend:
    """Pooled connections to one SQLite file, and the SQL dialect of the store."""

    kind = "sqlite"
    table = "records"
    seq = "rowid"  # insertion order breaks created_at ties
    n_candidates = "json_array_length(candidates)"

    def __init__(self, path: str | Path, *, create: bool, timeout: float, synchronous: str,
                 max_connections: int) -> None:
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        if not create and not self.path.is_file():
            raise StoreNotFoundError(f"feedback store not found: {self.path}")
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        create_private(self.path)
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
        with self._connections_lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()
            self._closed = True

    # -- statements ------------------------------------------------------------------

    def sql(self, template: str) -> str:
        """A statement of the store, in this dialect (``?`` placeholders are SQLite's)."""
        return template.format(table=self.table, seq=self.seq, n_candidates=self.n_candidates)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            return conn.execute(sql, tuple(params)).fetchall()

    def changes(self, sql: str, params: Sequence[Any]) -> int:
        with self._conn() as conn:
            return conn.execute(sql, tuple(params)).rowcount

    def insert(self, row: Sequence[Any]) -> bool:
        """Insert one record row; False when its id is already stored."""
        with self._conn() as conn:
            return self._insert(conn, row)

    def insert_many(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """Insert rows in one transaction (all or none); per row, False = id present."""
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                inserted = [self._insert(conn, row) for row in rows]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return inserted

    def _insert(self, conn: sqlite3.Connection, row: Sequence[Any]) -> bool:
        try:
            return conn.execute(_INSERT, tuple(row)).rowcount == 1
        except sqlite3.IntegrityError as err:  # a constraint other than the id's
            raise ValueError(f"feedback record {row[0]!r} was not stored in {self.path}: {err}") from err

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
                MIGRATIONS[target](conn)
                # PRAGMA takes no parameters; target is an int from our own table.
                conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        return int(self.execute("PRAGMA user_version")[0][0])

    def integrity_check(self) -> str:
        """SQLite's own consistency check: ``"ok"`` for a healthy file."""
        return str(self.execute("PRAGMA integrity_check")[0][0])


_INSERT = (
    f"INSERT INTO records ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (id) DO NOTHING"
)


def _foreign_tables(conn: sqlite3.Connection) -> bool:
    """Whether an unversioned file already has tables (another app's database)."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return bool(rows) and "records" not in {name for (name,) in rows}
