"""The feedback store on both backends: a real SQLite file and a real PostgreSQL server
(a private one, tests/pg_server.py), threads, a killed writer process, streaming reads
with filters, the CLI. PostgreSQL-only faults (a server restart, an exhausted pool,
many processes) are in test_feedback_postgres.py."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from rrpo import Candidate, FeedbackRecord
from rrpo.commands import feedback as feedback_cmd
from rrpo.feedback import (
    SCHEMA_VERSION,
    FeedbackStore,
    SchemaVersionError,
    StoreNotFoundError,
    UnknownRecordError,
    load_jsonl,
)
from tests.pg_server import pg_database, pg_server  # noqa: F401

BACKENDS = ["sqlite", "postgresql"]


def make_record(query: str = "who wrote hamlet?", n: int = 3, **kw) -> FeedbackRecord:
    candidates = [
        Candidate(id=f"p{i}", text=f"passage {i} about {query}", title=f"T{i}", score=1.0 - i / 10)
        for i in range(n)
    ]
    kw.setdefault("kept_ids", ["p1", "p0"][: min(2, n)])
    kw.setdefault("kept_scores", [0.9, 0.4][: min(2, n)])
    return FeedbackRecord(query=query, candidates=candidates, **kw)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture()
def new_location(backend, tmp_path, request):
    """Fresh store locations on the backend under test: a new file, or a new database."""
    names = iter(range(1000))

    def make() -> str:
        if backend == "sqlite":
            return str(tmp_path / f"fb{next(names)}.db")
        return request.getfixturevalue("pg_database")()

    return make


@pytest.fixture()
def location(new_location):
    return new_location()


@pytest.fixture()
def store(location):
    with FeedbackStore(location) as s:
        yield s


def stored_text(store: FeedbackStore) -> bytes:
    """Everything the store holds, as bytes: the files (SQLite) or every row (server)."""
    if store.backend == "sqlite":
        return b"".join(p.read_bytes() for p in store.path.parent.glob(store.path.name + "*"))
    rows = store._backend.execute("SELECT t::text FROM rrpo_feedback t")
    return "\n".join(text for (text,) in rows).encode()


def test_roundtrip_keeps_every_field(store):
    record = make_record(answer="Shakespeare", latency_ms=12.5, reranker="minilm-l6", metadata={"app": "x"})
    rid = store.add(record)
    got = store.get(rid)
    assert got == record  # dataclass equality: every field survived SQLite + JSON
    assert len(store) == 1 and rid in store and "nope" not in store


def test_sqlite_file_is_wal_versioned_and_parameterised(tmp_path):
    path = tmp_path / "fb.db"
    store = FeedbackStore(path)
    nasty = "q'); DROP TABLE records; --"
    store.add(make_record(query=nasty))
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT query FROM records").fetchone()[0] == nasty
    conn.close()


def test_rate_and_rated_only(store):
    ids = [store.add(make_record(query=f"q{i}")) for i in range(3)]
    store.rate(ids[1], 0.75, comment="close")
    rated = store.records(rated_only=True)
    assert [r.id for r in rated] == [ids[1]]
    assert rated[0].rating == 0.75 and rated[0].comment == "close"
    assert store.stats()["rated"] == 1 and store.stats()["mean_rating"] == 0.75


def test_rating_unknown_record_is_a_clear_error(store):
    store.add(make_record())
    with pytest.raises(UnknownRecordError, match="no-such-id") as info:
        store.rate("no-such-id", 1.0)
    assert isinstance(info.value, KeyError)
    assert "no feedback record with id 'no-such-id'" in str(info.value)
    with pytest.raises(UnknownRecordError):
        store.get("no-such-id")
    with pytest.raises(ValueError, match="finite"):
        store.rate(store.records()[0].id, float("nan"))


def test_duplicate_id_is_rejected_and_update_changes_answer(store):
    record = make_record()
    store.add(record)
    with pytest.raises(ValueError, match=record.id):
        store.add(record)
    store.update(record.id, answer="streamed answer", latency_ms=99.0)
    assert store.get(record.id).answer == "streamed answer"
    with pytest.raises(ValueError, match="rating"):
        store.update(record.id, rating=1.0)  # ratings go through rate()
    with pytest.raises(UnknownRecordError):
        store.update("missing", answer="x")


def test_secrets_are_never_written(store):
    record = make_record(metadata={"api_key": "sk-SECRET1", "Authorization": "Bearer SECRET2",
                                   "nested": {"OPENAI_API_KEY": "SECRET3", "keep": 1}, "app": "demo"})
    record.candidates[0].metadata = {"x-api-key": "SECRET4", "source": "wiki"}
    store.add(record)
    got = store.get(record.id)
    assert got.metadata == {"nested": {"keep": 1}, "app": "demo"}
    assert got.candidates[0].metadata == {"source": "wiki"}
    assert b"SECRET" not in stored_text(store)


def test_records_limit_keeps_newest_in_order(store):
    for i in range(5):
        store.add(make_record(query=f"q{i}", created_at=1000.0 + i))
    assert [r.query for r in store.records(limit=2)] == ["q3", "q4"]
    assert [r.query for r in store.records()] == [f"q{i}" for i in range(5)]


def test_eight_threads_times_25_records(store):
    errors = []

    def worker(t: int) -> None:
        try:
            for i in range(25):
                rid = store.add(make_record(query=f"t{t}-q{i}"))
                if i % 5 == 0:
                    store.rate(rid, 1.0)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    records = store.records()
    assert len(records) == 200 == len(store)
    assert {r.query for r in records} == {f"t{t}-q{i}" for t in range(8) for i in range(25)}
    assert all(len(r.candidates) == 3 and r.kept_ids == ["p1", "p0"] for r in records)
    assert len(store.records(rated_only=True)) == 40
    assert store.integrity_check() == "ok"


WRITER = textwrap.dedent(
    """
    import sys
    from rrpo import Candidate, FeedbackRecord
    from rrpo.feedback import FeedbackStore
    store = FeedbackStore(sys.argv[1])
    big = "lorem ipsum " * 2000  # large rows: the kill lands mid-write more often
    for i in range(100000):
        rid = store.add(FeedbackRecord(query=f"q{i}", kept_ids=["a"],
                        candidates=[Candidate(id="a", text=big), Candidate(id="b", text=big)]))
        print(rid, flush=True)
    """
)


def test_writer_killed_mid_stream_keeps_every_committed_record(location):
    path = location
    FeedbackStore(path).close()
    # A second process writes at the same time as the killed one: several writers at once.
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = []
    try:
        while len(committed) < 40:
            line = child.stdout.readline()
            assert line, "writer exited early"
            committed.append(line.strip())
        with FeedbackStore(path) as other:  # concurrent writer in this process
            other.add(make_record(query="from the parent"))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    committed += [line.strip() for line in child.stdout.read().splitlines() if line.strip()]
    assert child.returncode == -signal.SIGKILL
    store = FeedbackStore(path)
    assert store.integrity_check() == "ok"
    ids = {r.id for r in store.records()}
    assert set(committed) <= ids
    assert len(ids) - len(committed) <= 2  # the parent's record + at most one uncommitted print
    assert all(len(store.get(rid).candidates) == 2 for rid in committed[:5])


def test_newer_schema_is_refused(location, backend):
    store = FeedbackStore(location)
    if backend == "sqlite":
        store._backend.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:
        store._backend.changes("UPDATE rrpo_feedback_schema SET version = %s", (SCHEMA_VERSION + 1,))
    store.close()
    with pytest.raises(SchemaVersionError, match="Upgrade rrpo"):
        FeedbackStore(location)


def test_export_dataset_and_jsonl(store, tmp_path, new_location):
    ids = [store.add(make_record(query=f"q{i}", answer=f"a{i}")) for i in range(3)]
    store.rate(ids[0], 1.0)
    dataset = store.export(jsonl_path=tmp_path / "out.jsonl")
    assert dataset.num_rows == 3
    assert dataset[0]["query"] == "q0" and dataset[0]["candidates"][1]["id"] == "p1"
    assert dataset[0]["kept_ids"] == ["p1", "p0"] and dataset[0]["rating"] == 1.0
    back = load_jsonl(tmp_path / "out.jsonl")
    assert back == store.records()
    assert store.export(rated_only=True).num_rows == 1
    with FeedbackStore(new_location()) as other:
        empty = other.export()
    assert empty.num_rows == 0 and "candidates" in empty.column_names


def test_to_example_for_training(store):
    rid = store.add(make_record(answer="Shakespeare"))
    store.rate(rid, 0.5)
    example = store.records(rated_only=True)[0].to_example()
    assert example.query == "who wrote hamlet?" and len(example.candidates) == 3
    assert example.metadata["rating"] == 0.5 and example.metadata["record_id"] == rid


def _cli(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="rrpo feedback")
    feedback_cmd.add_arguments(parser)
    return feedback_cmd.run(parser.parse_args(argv))


def test_cli_stats_export_rate(tmp_path, capsys, location, backend):
    path = location
    with FeedbackStore(path) as store:
        rid = store.add(make_record(latency_ms=10.0, reranker="minilm-l6"))
        store.add(make_record(query="other"))
    assert feedback_cmd.NAME == "feedback" and feedback_cmd.HELP
    assert _cli(["rate", str(path), rid, "4", "--comment", "good"]) == 0
    assert _cli(["stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert stats["count"] == 2 and stats["rated"] == 1 and stats["mean_rating"] == 4.0
    assert stats["by_reranker"]["minilm-l6"] == {"count": 1, "rated": 1, "mean_rating": 4.0, "mean_k": 2.0}
    assert stats["backend"] == backend and stats["schema_version"] == SCHEMA_VERSION
    assert _cli(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "records          2" in out and "minilm-l6: 1 records, 1 rated (mean rating 4)" in out
    assert _cli(["export", str(path), str(tmp_path / "x.jsonl"), "--rated-only"]) == 0
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 1
    assert _cli(["export", str(path), str(tmp_path / "ds")]) == 0
    import datasets

    assert datasets.load_from_disk(str(tmp_path / "ds")).num_rows == 2
    assert _cli(["export", str(path), str(tmp_path / "x.parquet")]) == 0
    assert datasets.Dataset.from_parquet(str(tmp_path / "x.parquet")).num_rows == 2
    assert _cli(["rate", str(path), "missing-id", "1"]) == 1
    assert "missing-id" in capsys.readouterr().err
    if backend == "sqlite":
        assert _cli(["stats", str(tmp_path / "absent.db")]) == 2
        assert not (tmp_path / "absent.db").exists()


# -- issue #10 -------------------------------------------------------------------------------

SECRETS = ["sk-proj-ABCDEFGHIJKLMNOPQRSTUV0001", "abcdefghijklmnopqrstuvwxyz0002", "AKIAIOSFODNN7EXAMPLE",
           "hunter2-0003", "tok-SECRET-0004", "PRIVATE-0005", "OPENAI-0006", "pwd-0007", "0008"]


def test_secret_keys_and_values_are_redacted_everywhere(tmp_path, store):
    record = make_record(
        query=f"why does password={SECRETS[3]} fail?",
        answer=f"Use the key {SECRETS[0]} with Authorization: Bearer {SECRETS[1]}",
        metadata={"token": SECRETS[4], "private_key": SECRETS[5], "openai_key": SECRETS[6], "pwd": SECRETS[7],
                  "OPENAI_KEY": "x" + SECRETS[8], "prompt_tokens": 12, "app": "demo"},
    )
    record.candidates[0].text = f"aws id {SECRETS[2]} in the config"
    record.candidates[0].metadata = {"nested": [{"apiKey": "secret"}], "source": "wiki"}
    store.add(record)
    store.rate(record.id, 1.0, comment=f"works with {SECRETS[0]}")
    store.update(record.id, answer=f"streamed: token: {SECRETS[4]}")
    got = store.get(record.id)
    assert got.metadata == {"prompt_tokens": 12, "app": "demo"}
    assert got.candidates[0].metadata == {"nested": [{}], "source": "wiki"}
    assert got.query == "why does password=[REDACTED] fail?"
    assert got.candidates[0].text == "aws id [REDACTED] in the config"
    assert got.comment == "works with [REDACTED]" and got.answer == "streamed: token: [REDACTED]"
    store.export_jsonl(tmp_path / "out.jsonl")
    store.export_parquet(tmp_path / "out.parquet")
    raw = stored_text(store) + (tmp_path / "out.jsonl").read_bytes() + (tmp_path / "out.parquet").read_bytes()
    assert not any(secret.encode() in raw for secret in SECRETS)


def test_store_and_export_are_readable_by_their_owner_only(tmp_path):
    import stat

    with FeedbackStore(tmp_path / "fb.db") as store:
        store.add(make_record())
        store.export_jsonl(tmp_path / "out.jsonl")
        files = list(tmp_path.glob("fb.db*")) + [tmp_path / "out.jsonl"]
        assert len(files) >= 2
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, file


def test_a_thread_per_request_holds_a_bounded_number_of_connections(tmp_path):
    import os

    path = tmp_path / "fb.db"
    store = FeedbackStore(path)  # a pool of at most 4 connections

    def open_files():
        names = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                 if os.path.exists(f"/proc/self/fd/{fd}")]
        return sum(1 for name in names if name.startswith(str(path)))

    for batch in range(3):  # 60 short-lived threads, 20 at a time
        threads = [threading.Thread(target=store.add, args=(make_record(query=f"{batch}-{i}"),)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert open_files() <= 4 * 3  # db + wal + shm per pooled connection, at most
    assert len(store) == 60 and store.integrity_check() == "ok"
    store.close()
    assert open_files() == 0


def test_integrity_errors_say_what_is_wrong(store):
    with pytest.raises((TypeError, ValueError)) as info:
        store.add(make_record(query=None))
    assert "query" in str(info.value) and "already" not in str(info.value)
    record = make_record()
    store.add(record)
    with pytest.raises(ValueError, match="already in"):
        store.add(record)


def test_nan_and_infinity_are_exported_as_null(store, tmp_path):
    nan, inf = float("nan"), float("inf")
    record = make_record(kept_scores=[nan, inf], latency_ms=nan, metadata={"loss": -inf, "ok": 1.5})
    record.candidates[0].score = nan
    store.add(record)
    store.export_jsonl(tmp_path / "out.jsonl")

    def strict(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    line = json.loads((tmp_path / "out.jsonl").read_text(), parse_constant=strict)
    assert line["kept_scores"] == [None, None] and line["latency_ms"] is None
    assert line["metadata"] == {"loss": None, "ok": 1.5} and line["candidates"][0]["score"] is None
    assert store.export().num_rows == 1 and load_jsonl(tmp_path / "out.jsonl")[0].kept_scores == [None, None]


def test_cli_missing_or_foreign_files_are_one_clear_error(tmp_path, capsys):
    from rrpo.cli import main

    missing = tmp_path / "typo.sqlite"
    assert main(["train", "--feedback", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err and str(missing) in err
    assert not missing.exists()
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a database, just some notes " * 40)
    other_app = tmp_path / "app.sqlite"
    conn = sqlite3.connect(other_app)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    for path in (text_file, other_app):
        assert main(["feedback", "stats", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not a feedback store" in err and "Traceback" not in err
    conn = sqlite3.connect(other_app)
    assert [name for (name,) in conn.execute("SELECT name FROM sqlite_master")] == ["users"]  # untouched
    conn.close()


# -- issue #15: streaming reads, filters, schema steps, the background writer ------------------


def test_iter_records_streams_in_bounded_pages_in_insertion_order(store, monkeypatch):
    for i in range(23):  # equal timestamps: the order falls back to insertion order
        store.add(make_record(query=f"q{i:02d}", created_at=1000.0 + (i // 10)))
    pages = []
    execute = store._backend.execute

    def counting(sql, params=()):
        rows = execute(sql, params)
        pages.append(len(rows))
        return rows

    monkeypatch.setattr(store._backend, "execute", counting)
    got = [r.query for r in store.iter_records(batch_size=4)]
    assert got == [f"q{i:02d}" for i in range(23)]
    assert max(pages) <= 4 and len(pages) == 6  # never more than a page in memory
    assert [r.query for r in store.iter_records(limit=5, batch_size=2)] == [f"q{i:02d}" for i in range(18, 23)]
    assert list(store.iter_records(limit=0)) == []


def test_filters_by_time_window_reranker_version_and_rating(store):
    versions = ["minilm-l6@aaaa", "minilm-l6@bbbb", "bge@cccc", None]
    for i in range(12):
        rid = store.add(make_record(query=f"q{i}", created_at=1000.0 + i, reranker=versions[i % 4]))
        if i % 3 == 0:
            store.rate(rid, 1.0)

    def queries(**filters):
        return [int(r.query[1:]) for r in store.iter_records(batch_size=3, **filters)]

    assert queries(since=1004, until=1008) == [4, 5, 6, 7]
    assert queries(reranker="minilm-l6@bbbb") == [1, 5, 9]
    assert queries(reranker="minilm-l6@*") == [0, 1, 4, 5, 8, 9]
    assert queries(reranker=["bge@cccc", "minilm-l6@aaaa"], rated_only=True) == [0, 6]
    assert queries(rated_only=True, since="1970-01-01T00:16:43") == [3, 6, 9]  # ISO, UTC
    assert queries(reranker="minilm_l6@*") == []  # _ and % are literal in a prefix
    assert queries(rated_only=True, limit=2) == [6, 9]
    assert store.count(reranker="minilm-l6@*", rated_only=True) == 2 and len(store) == 12
    recent = store.add(make_record(query="q99"))
    assert [r.id for r in store.iter_records(since="1h")] == [recent]
    with pytest.raises(ValueError, match="not a time"):
        list(store.iter_records(since="last tuesday"))


def test_train_feedback_reads_only_the_chosen_records(location, capsys):
    import argparse

    from rrpo.commands import train as train_cmd

    with FeedbackStore(location) as store:
        for i in range(6):
            rid = store.add(make_record(query=f"q{i}", created_at=1000.0 + i, reranker=f"v{i % 2}"))
            if i >= 2:
                store.rate(rid, 1.0)
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)

    def examples(*flags):
        args = parser.parse_args(["--feedback", location, *flags])
        return [ex.query for ex in train_cmd.load_training_examples(args)]

    assert examples() == [f"q{i}" for i in range(6)]
    assert examples("--rated-only", "--reranker-version", "v1") == ["q3", "q5"]
    assert examples("--since", "1001", "--until", "1004", "--limit", "2") == ["q2", "q3"]
    with pytest.raises(ValueError, match="empty"):
        examples("--reranker-version", "v9")
    with pytest.raises(ValueError, match="--rated-only"):
        train_cmd.load_training_examples(parser.parse_args(["--data", "x.jsonl", "--rated-only"]))


def test_cli_export_streams_with_filters(location, tmp_path, capsys):
    import datasets

    with FeedbackStore(location) as store:
        for i in range(5):
            rid = store.add(make_record(query=f"q{i}", answer=f"a{i}", created_at=1000.0 + i, reranker="v1"))
            if i % 2 == 0:
                store.rate(rid, 0.5)
    out = tmp_path / "rated.parquet"
    assert _cli(["export", location, str(out), "--rated-only", "--since", "1001"]) == 0
    assert "exported 2 records" in capsys.readouterr().out
    dataset = datasets.Dataset.from_parquet(str(out))
    assert dataset["query"] == ["q2", "q4"] and dataset[0]["candidates"][0]["id"] == "p0"
    with FeedbackStore(location) as store:
        assert dataset.features == store.export().features  # the same schema both ways
    assert _cli(["export", location, str(tmp_path / "ds"), "--reranker-version", "v1", "--until", "1002"]) == 0
    assert datasets.load_from_disk(str(tmp_path / "ds"))["query"] == ["q0", "q1"]
    assert _cli(["export", location, str(tmp_path / "none.parquet"), "--reranker-version", "nope"]) == 0
    import pyarrow.parquet as pq

    empty = pq.read_table(str(tmp_path / "none.parquet"))  # datasets cannot read a file without rows
    assert empty.num_rows == 0 and "candidates" in empty.column_names
    assert _cli(["export", location, str(tmp_path / "none"), "--since", "2h"]) == 0
    assert datasets.load_from_disk(str(tmp_path / "none")).num_rows == 0


def test_background_writer_loses_nothing_and_reads_what_it_wrote(location):
    store = FeedbackStore(location, background=True)
    first = store.add(make_record(query="first"))
    store.rate(first, 1.0)  # waits for its own record: no UnknownRecordError
    assert store.get(first).rating == 1.0
    streamed = store.add(make_record(query="streamed"))
    store.update(streamed, answer="the whole stream")  # queued behind its add
    errors = []

    def worker(t: int) -> None:
        try:
            for i in range(25):
                store.add(make_record(query=f"t{t}-{i}"))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()  # drains the queue
    assert not errors
    with FeedbackStore(location, create=False) as again:
        assert len(again) == 202 and again.get(streamed).answer == "the whole stream"
        assert {r.query for r in again.records()} >= {f"t{t}-{i}" for t in range(8) for i in range(25)}


def test_background_writer_reports_a_refused_record_and_writes_the_rest(location, caplog):
    store = FeedbackStore(location, background=True)
    record = make_record()
    store.add(record)
    store.add(record)  # the same id again: refused by the database, later
    store.add(make_record(query="after"))
    assert store.flush(timeout=30)
    assert store.write_errors == 1 and "already in" in caplog.text
    assert [r.query for r in store.records()] == ["who wrote hamlet?", "after"]
    store.close()


def test_a_version_1_sqlite_file_is_upgraded_on_open(tmp_path):
    from rrpo.feedback_sqlite import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    MIGRATIONS[1](conn)  # the file an rrpo of schema version 1 wrote
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO records (id, created_at, query, candidates, kept_ids, kept_scores, metadata) "
        "VALUES ('old', 1.0, 'q', '[]', '[]', '[]', '{}')"
    )
    conn.commit()
    conn.close()
    with FeedbackStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        assert store.get("old").query == "q"
        assert [r.id for r in store.iter_records(rated_only=True)] == []
    conn = sqlite3.connect(path)
    names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert {"records_reranker", "records_rated"} <= names


def test_create_false_on_an_empty_database_is_not_found(backend, new_location):
    location = new_location()
    if backend == "sqlite":
        location += ".missing"
    with pytest.raises(StoreNotFoundError, match="not found") as info:
        FeedbackStore(location, create=False)
    assert isinstance(info.value, FileNotFoundError)


REPLICA = textwrap.dedent(
    """
    import json, sys, threading
    from rrpo import Candidate, FeedbackRecord
    from rrpo.feedback import FeedbackStore, UnknownRecordError
    location, me, replicas, per_thread = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = FeedbackStore(location, max_connections=4)
    committed, rated, lock = [], [], threading.Lock()
    print("ready", flush=True)
    sys.stdin.readline()  # every replica starts writing at once

    def worker(t):
        for i in range(per_thread):
            rid = f"r{me}-t{t}-{i}"
            store.add(FeedbackRecord(id=rid, query=rid, kept_ids=["a"], candidates=[Candidate(id="a", text=rid)]))
            with lock:
                committed.append(rid)
            other = f"r{(me + 1) % replicas}-t{t}-{i // 2}"  # a record another replica served
            try:
                store.rate(other, float(me))
                with lock:
                    rated.append(other)
            except UnknownRecordError:
                pass  # not written yet over there

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    print(json.dumps({"committed": committed, "rated": rated}), flush=True)
    """
)


def test_four_replicas_times_eight_threads_write_and_rate_each_others_records(location):
    replicas, per_thread = 4, 15
    FeedbackStore(location).close()  # the schema exists before the race
    children = [
        subprocess.Popen([sys.executable, "-c", REPLICA, location, str(me), str(replicas), str(per_thread)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for me in range(replicas)
    ]  # fmt: skip
    try:
        assert all(child.stdout.readline().strip() == "ready" for child in children)
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = [json.loads(child.communicate(timeout=120)[0]) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [child.returncode for child in children] == [0] * replicas
    committed = [rid for report in reports for rid in report["committed"]]
    assert len(committed) == replicas * 8 * per_thread
    with FeedbackStore(location) as store:
        stored = [r.id for r in store.iter_records(batch_size=200)]
        assert sorted(stored) == sorted(committed)  # every committed record, exactly once
        ratings = {r.id: r.rating for r in store.iter_records(rated_only=True)}
        for me, report in enumerate(reports):
            for rid in report["rated"]:  # a rating given at one replica, for another's record
                assert ratings[rid] == float(me)
        assert sum(len(report["rated"]) for report in reports) > 0
        assert store.integrity_check() == "ok"


def test_redaction_prefilter_never_skips_a_secret():
    """redact_text skips a pattern whose literal part is absent (the store redacts every
    passage of every record, so this is its hot path): it must redact exactly what
    running every pattern on every string does."""
    import random

    from rrpo import redact as R

    def every_pattern(text: str) -> str:
        for pattern in R._VALUE_PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + R.REDACTED, text) if pattern.groups else pattern.sub(R.REDACTED, text)
        return text

    fragments = SECRETS + [
        "password=hunter2", "Authorization: Basic abc", "Bearer abcdefghijklmnopqrstuvwxyz", "sk-proj-" + "A" * 20,
        "ghp_" + "a" * 36, "github_pat_" + "b" * 30, "hf_" + "c" * 34, "xoxb-1234567890ab", "AIza" + "d" * 35,
        "eyJabcdefghij.abcdefghij.abcdefghij", "-----BEGIN RSA PRIVATE KEY-----\nx\n-----END RSA PRIVATE KEY-----",
        "my key is " + "3f9a" * 10, "TOKEN: 'v'", "Client_Secret = x", "Passphrase:y", "postgresql://u:pw@h/db",
        "KEY " + "Z" * 40, "auth", "key", ":", "=", "://", "Sk-", "AKIA", "aSiA" + "Q" * 16,
        "pa\u017fsword=x", "AUTHOR\u0130ZAT\u0130ON: abc", "to\u212aen=abc", "\u0131", "PASSWORD: 'quoted'",
    ]  # fmt: skip
    prose = "The author passed the Asia keynote: tokens of authority = credentials of the past. "
    rng = random.Random(0)
    texts = []
    for _ in range(1500):
        text = prose * rng.randint(1, 3)
        for _ in range(rng.randint(0, 3)):
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(fragments) + rng.choice(["", " ", "\n", "="]) + text[at:]
        texts.append(text)
    changed = 0
    for text in texts + fragments:
        expected = every_pattern(text)
        assert R.redact_text(text) == expected, text
        changed += expected != text
    assert changed > 500  # the test does exercise the patterns
