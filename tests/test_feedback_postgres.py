"""The feedback store on a real PostgreSQL server: what only a server can do to it.

A restart in the middle of a run (writes retried, nothing half-written or doubled), a
server gone for longer than the store retries (a clear error; a background writer hands
its records back), an exhausted pool (a bounded wait, then a clear error), replicas
starting at once, schema steps, and the URL's password kept out of every message, log
and row. The store's general suite runs on both backends in test_feedback.py.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback

import pytest

from rrpo import Candidate, FeedbackRecord
from rrpo.feedback import (
    SCHEMA_VERSION,
    FeedbackStore,
    FeedbackStoreBusyError,
    FeedbackStoreUnavailableError,
    NotAFeedbackStoreError,
    StoreNotFoundError,
)
from tests.pg_server import pg_database, pg_server, start_private_postgres, wait_until  # noqa: F401


def record(query: str, **kw) -> FeedbackRecord:
    candidates = [Candidate(id=f"p{i}", text=f"passage {i} " * 20) for i in range(3)]
    return FeedbackRecord(query=query, candidates=candidates, kept_ids=["p1", "p0"], **kw)


@pytest.fixture()
def own_server():
    """A server of this test's own, to restart and stop without touching the others."""
    server = start_private_postgres()
    yield server
    server.stop()


def _all_ids(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [rid for (rid,) in conn.execute("SELECT id FROM rrpo_feedback")]


def test_a_server_restart_mid_run_loses_and_doubles_nothing(own_server):
    url = own_server.create_database()
    store = FeedbackStore(url, retry_timeout=30, max_connections=4)
    acknowledged: list[str] = []
    rated: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(t: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                rid = store.add(record(f"t{t}-{i}"))
                if i % 4 == 0:
                    store.rate(rid, 1.0)  # an UPDATE across the restart, too
                    with lock:
                        rated.append(rid)
                with lock:
                    acknowledged.append(rid)
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)
                return
            i += 1

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(acknowledged) >= 40)
    own_server.restart("fast")  # terminates every session of the store's pool
    before = len(acknowledged)
    assert wait_until(lambda: len(acknowledged) >= before + 40, timeout=40), "writes did not resume"
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors[:1]
    pool = store._backend._pool.get_stats()  # psycopg_pool's public counters
    assert pool.get("returns_bad", 0) + pool.get("connections_lost", 0) > 0  # the restart did hit in-flight work
    stored = _all_ids(url)
    assert len(stored) == len(set(stored)) == len(acknowledged)  # exactly once each
    assert set(stored) == set(acknowledged)
    assert all(len(r.candidates) == 3 for r in store.iter_records())  # no half-written row
    assert {r.id for r in store.iter_records(rated_only=True)} == set(rated)
    store.close()


def test_a_server_gone_too_long_is_a_clear_error_and_a_background_writer_hands_back(own_server, caplog):
    url = own_server.create_database()
    store = FeedbackStore(url, retry_timeout=1.0, timeout=2.0)
    kept = store.add(record("before the crash"))
    queued = FeedbackStore(url, background=True, retry_timeout=0.5, timeout=2.0)
    own_server.stop_server("immediate")  # a crash: no clean shutdown
    started = time.monotonic()
    with pytest.raises(FeedbackStoreUnavailableError, match="lost the feedback store") as info:
        store.add(record("while the server is down"))
    assert time.monotonic() - started < 15  # bounded by retry_timeout, not a hang
    assert own_server.password not in str(info.value)
    late = [record(f"queued {i}") for i in range(3)]
    for item in late:
        queued.add(item)  # returns at once: the writer keeps them until it can write
    with pytest.raises(FeedbackStoreUnavailableError, match="could not be written") as closing:
        queued.close()
    assert [r.id for r in closing.value.unwritten] == [r.id for r in late]  # nothing dropped
    own_server.start_server()
    assert _all_ids(url) == [kept]  # the failed write left nothing behind
    with FeedbackStore(url) as again:
        again.add_many(closing.value.unwritten)  # the caller's retry
        assert len(again) == 4
    store.close()
    assert own_server.password not in caplog.text


def test_an_exhausted_pool_waits_a_bounded_time_then_says_so(pg_database):
    import psycopg

    url = pg_database()
    store = FeedbackStore(url, max_connections=2, timeout=0.5)
    store.add(record("warm"))
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE rrpo_feedback IN ACCESS EXCLUSIVE MODE")  # held until commit
    stuck = [threading.Thread(target=store.add, args=(record(f"stuck {i}"),)) for i in range(2)]
    for thread in stuck:
        thread.start()  # both pooled connections now wait on the lock
    assert wait_until(lambda: _lock_waiters(url) == 2)
    started = time.monotonic()
    with pytest.raises(FeedbackStoreBusyError, match="max_connections") as info:
        store.add(record("no connection left"))
    waited = time.monotonic() - started
    assert 0.4 < waited < 5 and isinstance(info.value, TimeoutError)
    background = FeedbackStore(url, max_connections=1, timeout=0.5, background=True, queue_size=3)
    background.add(record("taken by the writer"))  # in flight (still counted) and blocked on the lock
    assert wait_until(lambda: _lock_waiters(url) == 3)
    background.add(record("queued 1"))
    background.add(record("queued 2"))
    with pytest.raises(FeedbackStoreBusyError, match="queued"):
        background.add(record("the queue is full"))  # bounded, never unbounded memory
    blocker.commit()
    blocker.close()
    for thread in stuck:
        thread.join()
    background.close()
    assert len(store) == 6
    store.close()


def _lock_waiters(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()[0]


def test_the_password_stays_out_of_repr_errors_logs_and_rows(pg_server, pg_database, caplog, capsys):
    from rrpo.cli import main

    caplog.set_level(logging.DEBUG)
    password = pg_server.password
    url = pg_database()
    store = FeedbackStore(url)
    store.add(record(f"a question about {url}"))  # even a URL in the text is redacted
    seen = [repr(store), store.location, str(store.stats()), store._backend.execute("SELECT t::text FROM rrpo_feedback t")[0][0]]
    assert store.location == url.replace(f":{password}@", ":***@")
    store.close()
    wrong_port = url.replace(f":{pg_server.port}/", ":1/")
    bad = [
        (FeedbackStoreUnavailableError, wrong_port),  # nobody listening
        (FeedbackStoreUnavailableError, url.replace(password, password + "x")),  # wrong password
        (StoreNotFoundError, url.rsplit("/", 1)[0] + "/no_such_db"),
        (ValueError, url + "?nonsense=1"),  # libpq's own message would echo the URL
    ]
    for kind, location in bad:
        with pytest.raises(kind) as info:
            FeedbackStore(location, retry_timeout=0.2, timeout=1)
        seen.append("".join(traceback.format_exception(info.value)))
        if location != wrong_port:  # the CLI would wait out its retries there: same message
            assert main(["feedback", "stats", location]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == len(bad) - 1 and "Traceback" not in err
    seen += [err, caplog.text]
    leaks = [text for text in seen if password in text]
    assert not leaks, leaks[0][:500]


def test_replicas_opening_a_new_database_at_once_create_the_schema_once(pg_database):
    url = pg_database()
    stores, errors = [], []
    barrier = threading.Barrier(6)

    def open_store() -> None:
        try:
            barrier.wait()
            stores.append(FeedbackStore(url))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(stores) == 6
    rid = stores[0].add(record("served by replica 0"))
    stores[5].rate(rid, 0.5)  # the rating arrives at another replica
    assert stores[3].get(rid).rating == 0.5
    assert stores[1]._backend.execute("SELECT COUNT(*) FROM rrpo_feedback_schema")[0][0] == 1
    for store in stores:
        store.close()


def test_an_older_schema_is_upgraded_and_a_foreign_table_refused(pg_database):
    import psycopg

    url = pg_database()
    FeedbackStore(url).close()
    with psycopg.connect(url, autocommit=True) as conn:  # back to what schema v1 had
        conn.execute("DROP INDEX rrpo_feedback_reranker")
        conn.execute("DROP INDEX rrpo_feedback_rated")
        conn.execute("UPDATE rrpo_feedback_schema SET version = 1")
    with FeedbackStore(url) as store:
        assert store.schema_version == SCHEMA_VERSION
    with psycopg.connect(url, autocommit=True) as conn:
        indexes = {name for (name,) in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'rrpo_feedback'")}
    assert {"rrpo_feedback_reranker", "rrpo_feedback_rated"} <= indexes
    other = pg_database()
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE rrpo_feedback (name TEXT)")  # someone else's table
    with pytest.raises(NotAFeedbackStoreError, match="did not create"):
        FeedbackStore(other)
    with pytest.raises(StoreNotFoundError, match="no table"):
        FeedbackStore(pg_database(), create=False)


def test_text_postgresql_cannot_hold_is_a_clear_error_and_writes_nothing(pg_database):
    with FeedbackStore(pg_database()) as store:
        with pytest.raises(ValueError, match="NUL"):
            store.add(record("a query with a \x00 in it"))
        assert len(store) == 0
        store.add(record("fine", metadata={"nul": "\x00 is fine inside JSON"}))
        assert store.records()[0].metadata == {"nul": "\x00 is fine inside JSON"}


def test_the_benchmark_runs_on_both_backends_and_writes_no_password(pg_server, pg_database, shared_data_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    results = tmp_path / "RESULTS.md"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "feedback_store.py"
    command = [sys.executable, str(script), "--postgres", pg_database(), "--records", "12", "--writers", "1,3",
               "--queries", "3", "--data", str(shared_data_dir / "hotpotqa-distractor.dev.jsonl.gz"),
               "--results", str(results), "--notes", "tiny test run"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = results.read_text()
    assert "## Feedback store: throughput and collector latency" in text and "tiny test run" in text
    for row in ("| sqlite | sync | 3 |", "| postgresql | background | 1 |", "| postgresql, background store |"):
        assert row in text
    assert pg_server.password not in text + done.stdout + done.stderr


def test_collectors_take_the_url(pg_database):
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from langchain_rrpo import FeedbackCallbackHandler

    class Two(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager=None):
            return [Document(page_content="Paris is in France.", id="d1"), Document(page_content="Lyon too.", id="d2")]

    url = pg_database()
    handler = FeedbackCallbackHandler(url)  # the same argument as a file path
    assert handler.store.backend == "postgresql"
    Two().invoke("where is Paris?", config={"callbacks": [handler]})
    with FeedbackStore(url) as replica:  # another replica rates it
        replica.rate(handler.last_record_id, 1.0)
        assert [c.id for c in replica.get(handler.last_record_id).candidates] == ["d1", "d2"]
    assert handler.store.get(handler.last_record_id).rating == 1.0
    handler.store.close()
