"""Micro-batching across concurrent queries: throughput with 8 clients vs one at a time.

A server with many concurrent requests calls the reranker once per query. With
``batch_wait_ms`` set, the adapters hand concurrent queries to one
``Reranker.rerank_batch`` call (pairs of all queries length-sorted into full batches;
``rrpo.microbatch``). This measures, on the same queries and the same weights:

1. one client, one query at a time (the baseline);
2. ``--clients`` concurrent clients (threads), no micro-batching;
3. the same clients with micro-batching (``--wait-ms`` bounded wait, ``--max-batch``).

Queries are real HotpotQA dev questions with their 10 passages (cut to ``--max-words``);
every mode runs the same list, with fresh passage ids each time so rrpo's token cache is
cold in every mode (a server sees new passages). Modes run in turn ``--repeats`` times
and each reports its best run (the machine may be shared: the table gives the load). Each client goes through the LangChain adapter
(``langchain_rrpo.RRPORerank.compress_documents``, ``--adapter langchain``) or through
the core call both adapters make (``--adapter core``: no framework needed). Reports
queries/s, latency p50/p95 and how many ``rerank_batch`` calls ran; checks that every
mode kept the same passages.

    python benchmarks/microbatch.py                                   # best device
    python benchmarks/microbatch.py --device cpu --queries-per-client 3 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results.py beside this file
from _results import append_results, command_line  # noqa: E402

from rrpo import Candidate, Reranker  # noqa: E402
from rrpo.data import load_examples, shared_data_dir  # noqa: E402

DEFAULT_DATA = "hotpotqa-distractor.dev.jsonl.gz"


class CountingReranker:
    """The reranker, counting its ``rerank_batch`` calls and the queries in each."""

    def __init__(self, inner: Reranker) -> None:
        self.inner, self.version, self.name_or_path = inner, inner.version, inner.name_or_path
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def rerank_batch(self, queries, candidate_lists, **options):
        with self._lock:
            self.sizes.append(len(queries))
        return self.inner.rerank_batch(queries, candidate_lists, **options)


def workload(path: Path, n: int, max_words: int) -> list[tuple[str, list[Candidate]]]:
    """``n`` (question, passages) pairs, passages cut to ``max_words`` words."""
    examples = load_examples(path, limit=n)
    if len(examples) < n:
        raise SystemExit(f"{path} has only {len(examples)} questions, {n} needed")
    cut = lambda c: Candidate(id=c.id, text=" ".join(c.text.split()[:max_words]), title=c.title)  # noqa: E731
    return [(e.query, [cut(c) for c in e.candidates]) for e in examples]


def make_client(adapter: str, reranker: Any, top_n: int, wait_ms: float | None, max_batch: int) -> Callable:
    """A function (query, candidates) -> kept ids, through the chosen adapter path."""
    if adapter == "langchain":
        from langchain_core.documents import Document

        from langchain_rrpo import RRPORerank

        rerank = RRPORerank(reranker=reranker, top_n=top_n, batch_wait_ms=wait_ms, max_batch_queries=max_batch)

        def run(query, candidates):
            docs = [Document(page_content=c.text, metadata={"title": c.title}, id=c.id) for c in candidates]
            return [d.id for d in rerank.compress_documents(docs, query)]

        return run
    from rrpo.adapter_support import LazyReranker, RerankOptions

    holder, options = LazyReranker(reranker), RerankOptions(top_n=top_n)

    def run_core(query, candidates):
        selection = holder.select(reranker, query, candidates, options, wait_ms, max_batch)
        return [candidates[i].id for i in selection.kept]

    return run_core


def fresh_ids(queries: list, tag: str) -> list:
    """The same queries and passages under new ids: a cold token cache."""
    return [(q, [Candidate(id=f"{tag}:{c.id}", text=c.text, title=c.title) for c in cs]) for q, cs in queries]


def run_mode(client: Callable, queries: list, clients: int) -> dict[str, Any]:
    """Send ``queries`` from ``clients`` threads (round robin); wall time and latencies."""
    latencies: list[float] = [0.0] * len(queries)
    kept: list[Any] = [None] * len(queries)
    start_line = threading.Barrier(clients)

    def worker(c: int) -> None:
        start_line.wait()
        for i in range(c, len(queries), clients):
            t0 = time.perf_counter()
            kept[i] = client(*queries[i])
            latencies[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    ms = sorted(x * 1000.0 for x in latencies)
    return {"wall": wall, "qps": len(queries) / wall, "p50": statistics.median(ms),
            "p95": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], "kept": kept}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm-l6", help="reranker: alias, directory or hub id")
    parser.add_argument("--device", default=None, help="torch device (default: the best available)")
    parser.add_argument("--adapter", choices=("langchain", "core"), default="langchain")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (threads)")
    parser.add_argument("--queries-per-client", type=int, default=4)
    parser.add_argument("--top-n", type=int, default=3)
    parser.add_argument("--max-words", type=int, default=60, help="cut each passage to this many words")
    parser.add_argument("--wait-ms", type=float, default=10.0, help="micro-batch: bounded wait")
    parser.add_argument("--max-batch", type=int, default=None, help="micro-batch size (default: --clients)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 on a shared CPU, where "
                        "threads that wait for each other dominate small forward passes")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode (each reports its best)")
    parser.add_argument("--data", default=None, help=f"QA JSONL (default: shared data {DEFAULT_DATA})")
    parser.add_argument("--results", default=None, help="append the table to this RESULTS.md")
    parser.add_argument("--notes", default="", help="a line added under the table")
    args = parser.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else shared_data_dir() / DEFAULT_DATA
    n = args.clients * args.queries_per_client
    queries = workload(data, n + 2, args.max_words)
    warmup, queries = queries[:2], queries[2:]
    reranker = CountingReranker(Reranker.from_pretrained(args.model, device=args.device))
    max_batch = args.max_batch or args.clients
    modes = [
        ("one at a time", 1, None),
        (f"{args.clients} concurrent clients, no batching", args.clients, None),
        (f"{args.clients} concurrent clients, micro-batching ({args.wait_ms:g} ms)", args.clients, args.wait_ms),
    ]
    load_before = _load_average()
    clients_of = [make_client(args.adapter, reranker, args.top_n, wait_ms, max_batch) for _, _, wait_ms in modes]
    for client in clients_of:
        run_mode(client, warmup, 1)  # warm-up: allocate, first-call costs
    best: list[dict[str, Any] | None] = [None] * len(modes)
    for repeat in range(args.repeats):
        for m, ((_, clients, _), client) in enumerate(zip(modes, clients_of)):
            reranker.sizes.clear()
            result = run_mode(client, fresh_ids(queries, f"r{repeat}m{m}"), clients)
            result["calls"] = len(reranker.sizes)
            result["kept"] = [[i.split(":", 1)[1] for i in ids] for ids in result["kept"]]
            if best[m] is None or result["qps"] > best[m]["qps"]:
                best[m] = result
    results = [r for r in best if r is not None]
    rows = [(label, clients, r) for (label, clients, _), r in zip(modes, results)]
    base = results[0]["qps"]
    same = all(r["kept"] == results[0]["kept"] for r in results)
    table = [
        "| mode | clients | queries | wall s | queries/s | vs one at a time | p50 ms | p95 ms | rerank_batch calls |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, clients, r in rows:
        table.append(
            f"| {label} | {clients} | {len(queries)} | {r['wall']:.2f} | {r['qps']:.2f} | {r['qps'] / base:.2f}x "
            f"| {r['p50']:,.0f} | {r['p95']:,.0f} | {r['calls']} |"
        )
    device = str(reranker.inner.device)
    notes = [
        f"- reranker `{args.model}` on {device} ({_threads()} torch threads); adapter path: `{args.adapter}`; top_n {args.top_n}; "
        f"{len(queries[0][1])} passages per query cut to {args.max_words} words; HotpotQA dev questions "
        f"({data.name}); micro-batch max {max_batch} queries, wait {args.wait_ms:g} ms; best of "
        f"{args.repeats} runs per mode, modes in turn, cold token cache in each.",
        f"- every mode kept the same passages for every query: {'yes' if same else 'NO'}.",
        f"- load average (1/5/15 min) at the start: {load_before}; at the end: {_load_average()}.",
    ]
    if args.notes:
        notes.append(f"- {args.notes}")
    text = "\n".join(table)
    print(text + "\n\n" + "\n".join(notes))
    if args.results:
        append_results(args.results, f"Micro-batching: {args.clients} concurrent clients", command_line(),
                       text, "\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
