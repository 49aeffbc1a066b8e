"""The feedback store: a real SQLite file, threads, a killed writer process, the CLI."""

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
    UnknownRecordError,
    load_jsonl,
)


def make_record(query: str = "who wrote hamlet?", n: int = 3, **kw) -> FeedbackRecord:
    candidates = [
        Candidate(id=f"p{i}", text=f"passage {i} about {query}", title=f"T{i}", score=1.0 - i / 10)
        for i in range(n)
    ]
    kw.setdefault("kept_ids", ["p1", "p0"][: min(2, n)])
    kw.setdefault("kept_scores", [0.9, 0.4][: min(2, n)])
    return FeedbackRecord(query=query, candidates=candidates, **kw)


@pytest.fixture()
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb.db") as s:
        yield s


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


def test_secrets_are_never_written(tmp_path):
    path = tmp_path / "fb.db"
    store = FeedbackStore(path)
    record = make_record(metadata={"api_key": "sk-SECRET1", "Authorization": "Bearer SECRET2",
                                   "nested": {"OPENAI_API_KEY": "SECRET3", "keep": 1}, "app": "demo"})
    record.candidates[0].metadata = {"x-api-key": "SECRET4", "source": "wiki"}
    store.add(record)
    got = store.get(record.id)
    assert got.metadata == {"nested": {"keep": 1}, "app": "demo"}
    assert got.candidates[0].metadata == {"source": "wiki"}
    store.close()
    raw = path.read_bytes() + (path.with_name("fb.db-wal").read_bytes() if path.with_name("fb.db-wal").exists() else b"")
    assert b"SECRET" not in raw


def test_records_limit_keeps_newest_in_order(store):
    for i in range(5):
        store.add(make_record(query=f"q{i}", created_at=1000.0 + i))
    assert [r.query for r in store.records(limit=2)] == ["q3", "q4"]
    assert [r.query for r in store.records()] == [f"q{i}" for i in range(5)]


def test_eight_threads_times_25_records(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
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


def test_writer_killed_mid_stream_keeps_every_committed_record(tmp_path):
    path = tmp_path / "fb.db"
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


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "fb.db"
    FeedbackStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaVersionError, match="Upgrade rrpo"):
        FeedbackStore(path)


def test_export_dataset_and_jsonl(store, tmp_path):
    ids = [store.add(make_record(query=f"q{i}", answer=f"a{i}")) for i in range(3)]
    store.rate(ids[0], 1.0)
    dataset = store.export(jsonl_path=tmp_path / "out.jsonl")
    assert dataset.num_rows == 3
    assert dataset[0]["query"] == "q0" and dataset[0]["candidates"][1]["id"] == "p1"
    assert dataset[0]["kept_ids"] == ["p1", "p0"] and dataset[0]["rating"] == 1.0
    back = load_jsonl(tmp_path / "out.jsonl")
    assert back == store.records()
    assert store.export(rated_only=True).num_rows == 1
    empty = FeedbackStore(tmp_path / "empty.db").export()
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


def test_cli_stats_export_rate(tmp_path, capsys):
    path = tmp_path / "fb.db"
    with FeedbackStore(path) as store:
        rid = store.add(make_record(latency_ms=10.0, reranker="minilm-l6"))
        store.add(make_record(query="other"))
    assert feedback_cmd.NAME == "feedback" and feedback_cmd.HELP
    assert _cli(["rate", str(path), rid, "4", "--comment", "good"]) == 0
    assert _cli(["stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert stats["count"] == 2 and stats["rated"] == 1 and stats["mean_rating"] == 4.0
    assert _cli(["stats", str(path)]) == 0
    assert "records          2" in capsys.readouterr().out
    assert _cli(["export", str(path), str(tmp_path / "x.jsonl"), "--rated-only"]) == 0
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 1
    assert _cli(["export", str(path), str(tmp_path / "ds")]) == 0
    import datasets

    assert datasets.load_from_disk(str(tmp_path / "ds")).num_rows == 2
    assert _cli(["rate", str(path), "missing-id", "1"]) == 1
    assert "missing-id" in capsys.readouterr().err
    assert _cli(["stats", str(tmp_path / "absent.db")]) == 2
    assert not (tmp_path / "absent.db").exists()


# -- issue #10 -------------------------------------------------------------------------------

SECRETS = ["sk-proj-ABCDEFGHIJKLMNOPQRSTUV0001", "abcdefghijklmnopqrstuvwxyz0002", "AKIAIOSFODNN7EXAMPLE",
           "hunter2-0003", "tok-SECRET-0004", "PRIVATE-0005", "OPENAI-0006", "pwd-0007", "0008"]


def test_secret_keys_and_values_are_redacted_everywhere(tmp_path):
    path = tmp_path / "fb.db"
    store = FeedbackStore(path)
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
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("fb.db*")) + (tmp_path / "out.jsonl").read_bytes()
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
