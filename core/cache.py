"""Response cache: reader outputs keyed by (reader identity, kind, prompt, target).

RRPO asks the reader about many overlapping prefixes (the reference reranker's greedy
prefix, sampled prefixes that agree on their first passages, the same question in the
next epoch). The cache makes each distinct question to the reader cost one call.

Keys are SHA-256 digests of the four parts, so the SQLite file holds neither prompts nor
anything else readable besides the reader identity (which never contains an API key)
and the cached value. Values are JSON: a string for ``generate``, a float for ``loglik``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .readers import Reader

GENERATE = "generate"
LOGLIK = "loglik"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    reader TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at REAL NOT NULL DEFAULT (julianday('now'))
)
"""


def cache_key(identity: str, kind: str, prompt: str, target: str | None = None) -> str:
    """A stable digest of one reader question (JSON-encoded so parts cannot collide)."""
    payload = json.dumps([identity, kind, prompt, target], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    """In-memory dict of responses, optionally backed by a SQLite file.

    Thread-safe. With ``path`` every stored response is written through to SQLite (WAL
    mode) and read back lazily, so a second process or the next run reuses them.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self._memory: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self._db = self._open(self.path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.commit()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"cannot use {path} as a response cache: {exc}") from exc
        return db

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The cached values of those ``keys`` that are present."""
        found: dict[str, Any] = {}
        with self._lock:
            missing = []
            for key in keys:
                if key in self._memory:
                    found[key] = self._memory[key]
                else:
                    missing.append(key)
            if self._db is not None and missing:
                found.update(self._read_db(missing))
        return found

    def _read_db(self, keys: list[str]) -> dict[str, Any]:
        assert self._db is not None
        found: dict[str, Any] = {}
        # SQLite caps the number of bound parameters; query in chunks.
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk
            ).fetchall()
            for key, value in rows:
                found[key] = self._memory[key] = json.loads(value)
        return found

    def put_many(self, identity: str, kind: str, items: dict[str, Any]) -> None:
        """Store ``{key: value}`` responses of one reader and kind."""
        if not items:
            return
        with self._lock:
            self._memory.update(items)
            if self._db is not None:
                self._db.executemany(
                    "INSERT OR REPLACE INTO responses (key, reader, kind, value) VALUES (?, ?, ?, ?)",
                    [(key, identity, kind, json.dumps(value)) for key, value in items.items()],
                )
                self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            if self._db is not None:
                return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
            return len(self._memory)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class CachedReader:
    """Wrap any reader so that each distinct (prompt, target) is asked only once.

    Counters, for training metrics: ``hits`` and ``misses`` count requested items;
    ``calls`` counts the prompts actually sent to the wrapped reader (duplicates inside
    one request are sent once). ``stats()`` returns them as a dict.
    """

    def __init__(self, reader: "Reader", path: str | Path | None = None) -> None:
        self.reader = reader
        self.cache = ResponseCache(path)
        self.hits = 0
        self.misses = 0
        self.calls = 0
        self._counts = threading.Lock()  # counters stay exact when threads share a reader

    @property
    def identity(self) -> str:
        return self.reader.identity

    def generate(self, prompts: list[str]) -> list[str]:
        keys = [cache_key(self.identity, GENERATE, p) for p in prompts]
        return self._cached(GENERATE, keys, list(prompts), lambda items: self.reader.generate(
            [p for p, _ in items]
        ))

    def loglik(self, prompts: list[str], targets: list[str]) -> list[float]:
        if len(prompts) != len(targets):
            raise ValueError(
                f"loglik: got {len(prompts)} prompts but {len(targets)} targets"
            )
        keys = [cache_key(self.identity, LOGLIK, p, t) for p, t in zip(prompts, targets)]
        pairs = list(zip(prompts, targets))
        return self._cached(LOGLIK, keys, pairs, lambda items: self.reader.loglik(
            [p for p, _ in items], [t for _, t in items]
        ))

    def _cached(
        self,
        kind: str,
        keys: list[str],
        items: list[Any],
        ask: Callable[[list[tuple[str, str | None]]], list[Any]],
    ) -> list[Any]:
        found = self.cache.get_many(keys)
        todo: dict[str, tuple[str, str | None]] = {}
        for key, item in zip(keys, items):
            if key not in found and key not in todo:  # a duplicate in one request is asked once
                todo[key] = item if isinstance(item, tuple) else (item, None)
        with self._counts:
            misses = sum(key not in found for key in keys)
            self.hits += len(keys) - misses
            self.misses += misses
        if todo:
            answers = ask(list(todo.values()))
            if len(answers) != len(todo):
                raise RuntimeError(
                    f"reader {self.identity!r} returned {len(answers)} {kind} results "
                    f"for {len(todo)} inputs"
                )
            with self._counts:
                self.calls += len(todo)
            fresh = dict(zip(todo.keys(), answers))
            self.cache.put_many(self.identity, kind, fresh)
            found.update(fresh)
        return [found[key] for key in keys]

    def stats(self) -> dict[str, float]:
        requested = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "calls": self.calls,
            "hit_rate": self.hits / requested if requested else 0.0,
            "entries": len(self.cache),
        }

    def reset_stats(self) -> None:
        self.hits = self.misses = self.calls = 0
