"""The feedback store on each backend: records/s written and read, and what the
collector adds to a LlamaIndex query.

1. **Throughput**: ``--writers`` 1, 8 and 32 threads share ``--records`` records, each
   ``FeedbackStore.add`` its own transaction (``sync``), or queued for the background
   writer (``background``: timed until ``close()`` has written everything). Then as many
   readers stream the whole store with ``iter_records`` (pages of 500). Records are
   HotpotQA dev questions with their 10 passages, so redaction and JSON see real text.
2. **Collector latency**: a LlamaIndex ``RetrieverQueryEngine`` (a fixed retriever of
   the question's 10 passages, ``MockLLM``: no model, so only the recording shows)
   answers ``--queries`` questions with no collector, with a ``FeedbackCollector`` on
   a synchronous store, and on a ``background=True`` store, on each backend. Each mode
   runs in ``ROUNDS`` blocks of queries, the blocks in turn (the machine may be shared:
   drift then hits every mode alike), with ``--gap-ms`` between queries as requests
   arrive; a background writer works as in production (woken by its timer, batching,
   in those gaps or beside the next query) and is flushed, untimed, between blocks. Added
   latency = the mode's p50 (p95) minus the p50 (p95) without a collector.

SQLite runs at its defaults (WAL, ``synchronous=NORMAL``: no fsync per commit).
PostgreSQL is a private server started for the run from Debian's packages (``initdb``
in a temporary directory, loopback, ``fsync=on`` and ``synchronous_commit=on``: one
fsync per commit) unless ``--postgres URL`` names one (the benchmark creates and drops
a schema of its own there).

    python benchmarks/feedback_store.py
    python benchmarks/feedback_store.py --results benchmarks/RESULTS.md --notes "..."
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results.py beside this file
sys.path.insert(0, str(ROOT))  # tests/pg_server.py: the private server of the tests
from _results import append_results, command_line  # noqa: E402

from rrpo import Candidate, FeedbackRecord  # noqa: E402
from rrpo.data import load_examples, shared_data_dir  # noqa: E402
from rrpo.feedback import FeedbackStore  # noqa: E402

DEFAULT_DATA = "hotpotqa-distractor.dev.jsonl.gz"
ROUNDS = 6  # collector modes run in this many blocks each, in turn
WARMUP = 3  # untimed queries at the start of each block


def workload(path: Path, n: int) -> list[tuple[str, list[Candidate]]]:
    """``n`` (question, passages) pairs from the data set, repeated if it is shorter."""
    examples = load_examples(path, limit=min(n, 500))
    return [(examples[i % len(examples)].query, examples[i % len(examples)].candidates) for i in range(n)]


def make_record(query: str, candidates: list[Candidate]) -> FeedbackRecord:
    kept = [c.id for c in candidates[:3]]
    return FeedbackRecord(query=query, candidates=candidates, kept_ids=kept, kept_scores=[0.9, 0.5, 0.2],
                          answer="an answer", latency_ms=12.0, reranker="minilm-l6@bench")


# -- stores -------------------------------------------------------------------------------


class Locations:
    """Fresh, empty store locations per run: a new SQLite file, or a new PostgreSQL schema."""

    def __init__(self, postgres_url: str | None) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="rrpo-bench-"))
        self.server = None
        self.base_url = postgres_url
        self.schemas: list[str] = []

    def postgres(self) -> str:
        if self.base_url is None:
            from tests.pg_server import postgres_bin, start_private_postgres

            if postgres_bin() is None:
                raise SystemExit("PostgreSQL is not installed (apt-get install postgresql) and no --postgres URL given")
            self.server = start_private_postgres(fsync=True)
            self.base_url = self.server.url()
        import psycopg

        schema = "rrpo_bench_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")  # a name we made: no injection
        self.schemas.append(schema)
        joiner = "&" if "?" in self.base_url else "?"
        return f"{self.base_url}{joiner}options=-csearch_path%3D{schema}"

    def sqlite(self) -> str:
        return str(self.scratch / f"{uuid.uuid4().hex[:10]}.db")

    def new(self, backend: str) -> str:
        return self.sqlite() if backend == "sqlite" else self.postgres()

    def cleanup(self) -> None:
        import shutil

        if self.schemas:
            import psycopg

            with psycopg.connect(self.base_url, autocommit=True) as conn:
                for schema in self.schemas:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _connections(backend: str, writers: int) -> int:
    # SQLite serialises writers: more connections only add lock contention. A server
    # gives each writer its own connection.
    return 4 if backend == "sqlite" else max(4, writers)


# -- throughput ---------------------------------------------------------------------------


def in_threads(n: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` in ``n`` threads released together; the wall time."""
    barrier = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as err:  # pragma: no cover - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def throughput(backend: str, mode: str, writers: int, items: list, locations: Locations) -> dict[str, Any]:
    location = locations.new(backend)
    connections = _connections(backend, writers)
    records = [make_record(q, c) for q, c in items]
    store = FeedbackStore(location, max_connections=connections, background=(mode == "background"))
    shares = [records[i::writers] for i in range(writers)]

    def write(i: int) -> None:
        for record in shares[i]:
            store.add(record)

    started = time.perf_counter()
    in_threads(writers, write)
    store.close()  # background: returns once everything is written
    write_s = time.perf_counter() - started
    reader = FeedbackStore(location, max_connections=connections)
    counts = [0] * writers

    def read(i: int) -> None:
        counts[i] = sum(1 for _ in reader.iter_records(batch_size=500))

    read_s = in_threads(writers, read)
    stored = len(reader)
    reader.close()
    if stored != len(records) or any(c != len(records) for c in counts):
        raise RuntimeError(f"{backend}/{mode}: stored {stored}, read {counts}, wrote {len(records)}")
    return {"backend": backend, "mode": mode, "writers": writers, "connections": connections,
            "records": len(records), "write": len(records) / write_s, "read": sum(counts) / read_s}


# -- collector latency --------------------------------------------------------------------


def collector_latency(items: list, backends: list[str], locations: Locations, queries: int,
                      gap_s: float) -> list[dict[str, Any]]:
    from llama_index.core import get_response_synthesizer
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, TextNode

    from llama_index_rrpo import FeedbackCollector

    class Fixed(BaseRetriever):
        """The question's own passages, as a vector store would have returned them."""

        def __init__(self) -> None:
            super().__init__()
            self.nodes: list[NodeWithScore] = []

        def _retrieve(self, query_bundle):
            return self.nodes

    retriever = Fixed()
    llm = MockLLM(max_tokens=8)
    engine = RetrieverQueryEngine(retriever=retriever, response_synthesizer=get_response_synthesizer(llm=llm))
    modes: dict[str, Any] = {"no collector": None}  # the baseline: the same engine, unrecorded
    stores = []
    for backend in backends:
        for background in (False, True):
            store = FeedbackStore(locations.new(backend), background=background)
            stores.append(store)
            name = f"{backend}, {'background' if background else 'sync'} store"
            modes[name] = FeedbackCollector(store, query_engine=engine, attach=False)
    times: dict[str, list[float]] = {name: [] for name in modes}
    rounds = max(1, min(ROUNDS, queries))
    asked = 0
    for round_ in range(rounds):  # modes in blocks, blocks in turn: drift hits every mode alike
        for name, collector in modes.items():
            if collector is not None:
                collector.attach()
            for i in range(WARMUP + queries // rounds):
                question, passages = items[(round_ * queries + i) % len(items)]
                retriever.nodes = [NodeWithScore(node=TextNode(text=c.text, id_=f"{asked}-{c.id}"), score=1.0 - j / 10)
                                   for j, c in enumerate(passages)]  # fmt: skip
                asked += 1
                started = time.perf_counter()
                engine.query(question)
                if i >= WARMUP:
                    times[name].append((time.perf_counter() - started) * 1000.0)
                time.sleep(gap_s)  # requests arrive with gaps; a writer works in them
            if collector is not None:
                collector.detach()
                collector.store.flush()  # untimed: the next block starts with an idle writer
                time.sleep(0.05)
    for store in stores:
        if len(store) != rounds * (WARMUP + queries // rounds):  # every query recorded
            raise RuntimeError(f"{store.location}: {len(store)} records, expected one per query")
        store.close()
    base = times["no collector"]
    rows = []
    for name, values in times.items():
        rows.append({"mode": name, "p50": statistics.median(values), "p95": _p95(values),
                     "added_p50": statistics.median(values) - statistics.median(base),
                     "added_p95": _p95(values) - _p95(base)})
    return rows


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


# -- report -------------------------------------------------------------------------------


def throughput_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| backend | writes | writers / readers | connections | records | written records/s | read records/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['mode']} | {r['writers']} | {r['connections']} | {r['records']:,} "
                     f"| {r['write']:,.0f} | {r['read']:,.0f} |")
    return "\n".join(lines)


def latency_table(rows: list[dict[str, Any]], queries: int) -> str:
    lines = [f"| LlamaIndex query engine ({queries} queries per mode) | query p50 ms | query p95 ms "
             "| added p50 ms | added p95 ms |", "|---|---|---|---|---|"]
    for r in rows:
        added = "-" if r["mode"] == "no collector" else f"{r['added_p50']:.2f}"
        added95 = "-" if r["mode"] == "no collector" else f"{r['added_p95']:.2f}"
        lines.append(f"| {r['mode']} | {r['p50']:.2f} | {r['p95']:.2f} | {added} | {added95} |")
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--postgres", default=None, metavar="URL",
                        help="a PostgreSQL database to use (default: a private server started for the run)")
    parser.add_argument("--records", type=int, default=2000, help="records written per throughput run")
    parser.add_argument("--writers", default="1,8,32", help="concurrent writer (and reader) threads, comma-separated")
    parser.add_argument("--modes", default="sync,background", help="write modes: sync, background")
    parser.add_argument("--queries", type=int, default=300, help="timed LlamaIndex queries per collector mode")
    parser.add_argument("--gap-ms", type=float, default=5.0,
                        help="pause between queries (untimed): one thread serving requests as they arrive")
    parser.add_argument("--data", default=None, help=f"questions with passages (default: {DEFAULT_DATA} in the shared data)")
    parser.add_argument("--results", default=None, help="append the tables to this RESULTS.md")
    parser.add_argument("--notes", default="", help="a line to add under the tables (e.g. the machine's load)")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}")
    data = Path(args.data) if args.data else shared_data_dir() / DEFAULT_DATA
    items = workload(data, max(args.records, args.queries + 5))
    locations = Locations(args.postgres)
    load_before = _load()
    try:
        rows = [throughput(backend, mode.strip(), int(w), items[: args.records], locations)
                for backend in backends for mode in args.modes.split(",") for w in args.writers.split(",")]
        latency = collector_latency(items, backends, locations, args.queries, args.gap_ms / 1000.0)
        server = "a private server started for the run (fsync on)" if locations.server else "the --postgres server"
    finally:
        locations.cleanup()
    tables = throughput_table(rows) + "\n\n" + latency_table(latency, args.queries)
    print(tables)
    notes = "\n".join(line for line in [
        f"- records: HotpotQA dev questions with their 10 passages ({data.name}); PostgreSQL: {server}, on loopback; "
        "SQLite: WAL, synchronous=NORMAL (no fsync per commit; PostgreSQL fsyncs every commit).",
        "- writes: each writer thread adds its share of the records; `sync` = one transaction per `add`, "
        "`background` = `FeedbackStore(background=True)`, timed until `close()` has written every record. "
        "reads: as many threads as writers, each streaming the whole store (`iter_records`, pages of 500).",
        "- collector: `FeedbackCollector` on a `RetrieverQueryEngine` (fixed retriever of 10 passages, `MockLLM`); "
        f"each mode in {ROUNDS} blocks taken in turn, {args.gap_ms:g} ms between queries (untimed); "
        "added = the mode's p50 (p95) minus that without a collector.",
        f"- load average (1/5/15 min) at the start: {load_before}; at the end: {_load()}.",
        f"- {args.notes}" if args.notes.strip() else "",
    ] if line)  # fmt: skip
    print(notes)
    if args.results:
        command = command_line()
        if args.postgres:  # the command line is written down: never with the password
            from rrpo.feedback_postgres import safe_url

            command = command.replace(args.postgres, safe_url(args.postgres))
        append_results(args.results, "Feedback store: throughput and collector latency", command, tables, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
