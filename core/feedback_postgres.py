"""The shared backend of :class:`rrpo.feedback.FeedbackStore`: a PostgreSQL server.

``FeedbackStore("postgresql://user@db-host/app")`` gives every replica of a service the
same store: a record written by one replica can be rated through any other, and
training reads one place. Built on psycopg 3 and its connection pool (``pip install
'rrpo[postgres]'``); docs/architecture.md says why not SQLAlchemy.

How it stays safe:

* Tables ``rrpo_feedback`` (the records, the same columns as the SQLite file plus a
  ``seq`` identity for a stable order) and ``rrpo_feedback_schema`` (one row: the schema
  version) in the connection's schema (``search_path``; pick one with
  ``?options=-csearch_path%3Dmyschema``). Migrations run in one transaction under an
  advisory lock, so replicas that start together upgrade the schema once.
* Autocommit: every ``add`` / ``rate`` / ``update`` is one statement, one transaction;
  a write is all there or not at all.
* A lost connection (a server restart, a failover, a network blip) is retried for
  ``retry_timeout`` seconds on a fresh connection, then fails with
  :class:`FeedbackStoreUnavailableError`. Writes are safe to retry: an INSERT that
  committed just before the connection dropped is recognised by its id and content
  on the retry, never stored twice; a rating or update is idempotent.
* The pool holds at most ``max_connections``; a caller waits at most ``timeout`` for
  one, then gets :class:`FeedbackStoreBusyError` (a bounded wait, never a hang).
* The URL's password never leaves the connection: ``repr``, ``stats()``, every error
  message and psycopg's own log records show the URL without it. Better still, keep it
  out of the URL (``PGPASSWORD``, ``~/.pgpass``, a service file): libpq reads those.
* Only parameterised SQL; the table names are constants of this module.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import threading
import time
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from .feedback_schema import (
    COLUMNS,
    SCHEMA_VERSION,
    FeedbackStoreBusyError,
    FeedbackStoreUnavailableError,
    NotAFeedbackStoreError,
    SchemaVersionError,
    StoreNotFoundError,
)

T = TypeVar("T")

TABLE = "rrpo_feedback"
SCHEMA_TABLE = "rrpo_feedback_schema"
_LOCK_KEY = 0x7272706F_66656564  # "rrpofeed": the advisory lock migrations run under
_URL = re.compile(r"^postgres(?:ql)?(?:\+[a-z0-9_]+)?://", re.IGNORECASE)


def is_postgres_url(location: object) -> bool:
    """Whether ``location`` names a PostgreSQL server (``postgresql://`` or
    ``postgres://``; a SQLAlchemy driver suffix such as ``+psycopg`` is accepted)."""
    return isinstance(location, str) and bool(_URL.match(location.strip()))


def _libpq_url(url: str) -> str:
    """libpq does not know SQLAlchemy's driver suffix (``postgresql+psycopg://``)."""
    return re.sub(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", r"\1://", url.strip(), flags=re.IGNORECASE)


# -- keeping the password out of everything --------------------------------------------


def _passwords(url: str) -> list[str]:
    """Every spelling of the URL's password(s): percent-encoded and decoded."""
    parts = urlsplit(url)
    found = []
    userinfo = parts.netloc.rpartition("@")[0]
    if ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    found += [value for key, value in parse_qsl(parts.query, keep_blank_values=True) if key == "password"]
    spellings = {s for p in found for s in (p, unquote(p), quote(unquote(p), safe="")) if s}
    return sorted(spellings, key=len, reverse=True)  # longest first: no partial leftovers


def safe_url(url: str) -> str:
    """The URL without its password (``postgresql://app:***@host/db``): for messages."""
    try:
        parts = urlsplit(url)
        user, at, hosts = parts.netloc.rpartition("@")
        if at and ":" in user:
            user = user.split(":", 1)[0] + ":***"
        query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        return urlunsplit((parts.scheme, f"{user}{at}{hosts}", parts.path, urlencode(query, safe="*"), ""))
    except ValueError:  # unparseable: say nothing of what it holds
        return "postgresql://(unparseable URL)"


_SECRETS: set[str] = set()  # passwords of the stores opened in this process
_SECRETS_LOCK = threading.Lock()


def scrub(text: str) -> str:
    """``text`` with every known password replaced by ``***``."""
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class _ScrubPasswords(logging.Filter):
    """psycopg and its pool log connection errors; make sure no password rides along."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = _ScrubPasswords()


def _remember_secrets(url: str) -> None:
    with _SECRETS_LOCK:
        _SECRETS.update(_passwords(url))
    for name in ("psycopg", "psycopg.pool"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


# -- schema ------------------------------------------------------------------------------


def _create_v1(conn: Any) -> None:
    conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            seq BIGINT GENERATED ALWAYS AS IDENTITY,
            id TEXT PRIMARY KEY,
            created_at DOUBLE PRECISION NOT NULL,
            query TEXT NOT NULL,
            candidates TEXT NOT NULL,
            kept_ids TEXT NOT NULL,
            kept_scores TEXT NOT NULL,
            k INTEGER,
            answer TEXT,
            latency_ms DOUBLE PRECISION,
            reranker TEXT,
            rating DOUBLE PRECISION,
            comment TEXT,
            rated_at DOUBLE PRECISION,
            metadata TEXT NOT NULL
        )"""
    )
    conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_created ON {TABLE} (created_at, seq)")


def _create_v2(conn: Any) -> None:
    # The same step as SQLite's v2: training streams by reranker version and by rating.
    conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_reranker ON {TABLE} (reranker, created_at, seq)")
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS {TABLE}_rated ON {TABLE} (created_at, seq) WHERE rating IS NOT NULL"
    )


# MIGRATIONS[v] upgrades version v - 1 to v, as feedback_sqlite.MIGRATIONS does.
MIGRATIONS: dict[int, Callable[[Any], None]] = {1: _create_v1, 2: _create_v2}

_INSERT = (
    f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
_SAME_RECORD = f"SELECT created_at, query FROM {TABLE} WHERE id = %s"


def _import_psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as err:
        raise ImportError(
            "a PostgreSQL feedback store needs psycopg 3 and its pool: pip install 'rrpo[postgres]'"
        ) from err
    return psycopg, psycopg_pool


class PostgresBackend:
    """A pool of psycopg connections to one database, and the store's SQL dialect."""

    kind = "postgresql"
    table = TABLE
    seq = "seq"
    n_candidates = "json_array_length(candidates::json)"
    path = None

    def __init__(self, url: str, *, create: bool, timeout: float, max_connections: int,
                 retry_timeout: float) -> None:
        self._psycopg, pool_module = _import_psycopg()
        self._PoolTimeout = pool_module.PoolTimeout
        url = _libpq_url(url)
        _remember_secrets(url)
        self.location = safe_url(url)
        self._timeout = float(timeout)
        self._retry_timeout = float(retry_timeout)
        self._kwargs = {"autocommit": True, "application_name": "rrpo-feedback"}
        self._conninfo = self._checked(url)
        self._closed = False
        self._pool = None
        with self._first_connection() as conn:
            self._migrate(conn, create)
        # min_size=1: one warm connection; more open on demand, up to max_connections.
        self._pool = pool_module.ConnectionPool(
            self._conninfo, min_size=1, max_size=max_connections, timeout=self._timeout,
            kwargs=self._kwargs, name="rrpo-feedback", open=False,
        )
        self._pool.open()

    def _checked(self, url: str) -> str:
        """The URL, validated before any connection (libpq's parse errors echo it)."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(url)
        except self._psycopg.Error as err:
            raise ValueError(f"not a valid PostgreSQL URL ({self.location}): {scrub(str(err)).strip()}") from None
        return url

    # -- connections -----------------------------------------------------------------

    def _first_connection(self) -> Any:
        """A direct connection for the schema check: its errors say what is wrong
        (wrong password, no such database), where a pool would only time out. A server
        that is starting or restarting is waited for, up to ``retry_timeout``."""
        deadline = time.monotonic() + self._retry_timeout
        for attempt in itertools.count():
            try:
                return self._psycopg.connect(
                    self._conninfo, connect_timeout=max(1, round(self._timeout)), **self._kwargs
                )
            except self._psycopg.OperationalError as err:
                message = scrub(str(err)).strip().replace("\n", " ")
                if "does not exist" in message and "database" in message:
                    raise StoreNotFoundError(f"feedback store not found: {self.location}: {message}") from None
                if not _server_not_ready(message) or time.monotonic() > deadline:
                    raise FeedbackStoreUnavailableError(
                        f"cannot connect to the feedback store {self.location}: {message}"
                    ) from None
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # itertools.count() never ends

    def _run(self, work: Callable[[Any, bool], T]) -> T:
        """``work(conn, retried)`` on a pooled connection; a lost connection is retried
        on a fresh one until ``retry_timeout`` has passed."""
        if self._closed:
            raise RuntimeError(f"feedback store {self.location} is closed")
        deadline = time.monotonic() + self._retry_timeout
        retried, lost, cause = False, False, None
        for attempt in itertools.count():
            wait = self._timeout if not lost else max(0.05, min(self._timeout, deadline - time.monotonic()))
            try:
                with self._pool.connection(timeout=wait) as conn:
                    return work(conn, retried)
            except self._PoolTimeout as err:
                if not lost and self._pool_full():  # no trouble seen, every connection busy
                    raise FeedbackStoreBusyError(
                        f"all {self._pool.max_size} connections to the feedback store {self.location} "
                        f"stayed in use for {wait:.1f} s; raise max_connections or timeout"
                    ) from None
                lost, cause = True, cause or err  # the pool cannot connect: the server is away
            except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as err:
                if self._closed:
                    raise RuntimeError(f"feedback store {self.location} is closed") from None
                if not _connection_lost(err):
                    raise
                if not lost:
                    self._drop_dead_connections()
                lost, cause = True, err
            retried = True
            if time.monotonic() > deadline:
                raise FeedbackStoreUnavailableError(
                    f"lost the feedback store {self.location} for more than {self._retry_timeout:g} s "
                    f"(retried {attempt + 1} times): {scrub(str(cause)).strip()}"
                ) from None
            time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # itertools.count() never ends

    def _pool_full(self) -> bool:
        """Whether the pool holds all the connections it may: then a timeout means they
        are all busy; with fewer, it could not open more (the server is not answering)."""
        return self._pool.get_stats().get("pool_size", 0) >= self._pool.max_size

    def _drop_dead_connections(self) -> None:
        """After a restart every idle connection is dead: test and drop them at once
        rather than failing on each in turn."""
        try:
            self._pool.check()
        except Exception:  # best effort: the retry loop handles what is left
            pass

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.close()

    # -- statements ------------------------------------------------------------------

    def sql(self, template: str) -> str:
        """A statement of the store in this dialect: psycopg's ``%s`` placeholders."""
        text = template.format(table=self.table, seq=self.seq, n_candidates=self.n_candidates)
        return text.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run(lambda conn, retried: conn.execute(sql, tuple(params)).fetchall())

    def changes(self, sql: str, params: Sequence[Any]) -> int:
        # Ratings and updates set fixed values: running one twice changes nothing more.
        return self._run(lambda conn, retried: conn.execute(sql, tuple(params)).rowcount)

    def insert(self, row: Sequence[Any]) -> bool:
        """Insert one record row; False when its id is already stored (by someone else:
        a retry that finds its own committed row counts as inserted)."""
        return self._run(lambda conn, retried: self._insert(conn, row, retried))

    def insert_many(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """Insert rows in one transaction (all or none); per row, False = id present."""

        def work(conn: Any, retried: bool) -> list[bool]:
            with conn.transaction():
                return [self._insert(conn, row, retried) for row in rows]

        return self._run(work)

    def _insert(self, conn: Any, row: Sequence[Any], retried: bool) -> bool:
        try:
            if conn.execute(_INSERT, tuple(row)).fetchone() is not None:
                return True
        except (self._psycopg.DataError, self._psycopg.IntegrityError) as err:
            # NUL characters in text, a constraint: the caller's data, not the server.
            raise ValueError(f"feedback record {row[0]!r} was not stored in {self.location}: {err}") from None
        if not retried:
            return False
        # The id is there and this is a retry: our own INSERT may have committed just
        # before the connection dropped. The same timestamp and query say it did.
        stored = conn.execute(_SAME_RECORD, (row[0],)).fetchone()
        return stored is not None and (stored[0], stored[1]) == (row[1], row[2])

    # -- schema ----------------------------------------------------------------------

    def _migrate(self, conn: Any, create: bool) -> None:
        """Bring the database to SCHEMA_VERSION (under an advisory lock: many replicas
        may start at once), or refuse a newer schema, a foreign table, a missing store."""
        if _read_version(conn) == SCHEMA_VERSION:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            version = _read_version(conn)
            if version is None:
                version = self._start_schema(conn, create)
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.location} has feedback schema version {version}; this rrpo reads "
                    f"up to {SCHEMA_VERSION}. Upgrade rrpo."
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[target](conn)
                conn.execute(f"UPDATE {SCHEMA_TABLE} SET version = %s", (target,))

    def _start_schema(self, conn: Any, create: bool) -> int:
        if _exists(conn, TABLE):
            raise NotAFeedbackStoreError(
                f"{self.location} is not a feedback store: it has a table {TABLE} that rrpo did "
                f"not create (no {SCHEMA_TABLE}); use another database or search_path"
            )
        if not create:
            raise StoreNotFoundError(f"feedback store not found: {self.location} has no table {TABLE}")
        conn.execute(f"CREATE TABLE {SCHEMA_TABLE} (version INTEGER NOT NULL)")
        conn.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (0)")
        return 0

    def schema_version(self) -> int:
        return int(self._run(lambda conn, retried: _read_version(conn)) or 0)

    def integrity_check(self) -> str:
        """``"ok"`` when the server answers at this schema version and every id is
        unique (the primary key guarantees it; this checks the index is in use).
        PostgreSQL keeps its own pages consistent (WAL, checksums where enabled)."""
        version = self.schema_version()
        if version != SCHEMA_VERSION:
            return f"schema version {version}, expected {SCHEMA_VERSION}"
        dupes = self.execute(f"SELECT COUNT(*) - COUNT(DISTINCT id) FROM {TABLE}")[0][0]
        return "ok" if dupes == 0 else f"{dupes} duplicate ids"


def _read_version(conn: Any) -> int | None:
    if not _exists(conn, SCHEMA_TABLE):
        return None
    row = conn.execute(f"SELECT version FROM {SCHEMA_TABLE}").fetchone()
    return int(row[0]) if row else 0


def _exists(conn: Any, table: str) -> bool:
    """Whether ``table`` is on the search path. A catalog query, not ``to_regclass``:
    that one may answer from a cache that still says "no" after another replica
    created the table while we waited for the migration lock."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relname = %s AND n.nspname = ANY (current_schemas(false)))",
        (table,),
    ).fetchone()[0]


def _server_not_ready(message: str) -> bool:
    """A connect failure worth waiting out: nobody listening yet, or a server that is
    starting, stopping or recovering. A wrong password or user is not."""
    return "FATAL" not in message or "the database system is" in message


def _connection_lost(err: Exception) -> bool:
    """Whether an error means the connection (not the statement) failed: then the same
    statement on a fresh connection may well succeed."""
    state = getattr(err, "sqlstate", None)
    if state is None:  # raised by libpq itself: socket closed, server gone
        return True
    # 08: connection exception; 57P01-03: admin / crash shutdown, cannot connect now;
    # 40001 / 40P01: serialization failure and deadlock, which ask for a retry too.
    return state.startswith(("08", "57P")) or state in {"40001", "40P01"}


def _backoff(attempt: int) -> float:
    return min(1.0, 0.05 * 2**attempt) * random.uniform(0.8, 1.2)
