"""The micro-batcher both adapters use (rrpo.microbatch), and benchmarks/microbatch.py end
to end on the tiny cross-encoder."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from rrpo import Candidate
from rrpo.microbatch import MicroBatcher

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def candidates(n: int = 3) -> list[Candidate]:
    return [Candidate(id=f"c{i}", text=f"passage number {i} about rivers") for i in range(n)]


def test_lone_request_waits_at_most_the_bound(tiny_reranker):
    batcher = MicroBatcher(tiny_reranker, max_wait_s=0.05, max_queries=8)
    start = time.perf_counter()
    selection = batcher.rerank("which river?", candidates(), top_n=2)
    assert time.perf_counter() - start < 2.0 and 1 <= selection.k <= 2 and batcher.batches == 1
    assert selection.order == tiny_reranker.rerank("which river?", candidates(), top_n=2).order


def test_a_bad_query_fails_alone(tiny_reranker):
    batcher = MicroBatcher(tiny_reranker, max_wait_s=0.5, max_queries=3)
    results, barrier = {}, threading.Barrier(3)

    def ask(query):
        barrier.wait()
        try:
            results[query] = batcher.rerank(query, candidates(), top_n=2)
        except ValueError as err:
            results[query] = err

    threads = [threading.Thread(target=ask, args=(q,)) for q in ("rivers", "   ", "lakes")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert isinstance(results["   "], ValueError)  # an empty query
    assert results["rivers"].k >= 1 and results["lakes"].k >= 1


def test_benchmark_script_runs_and_appends_its_table(tiny_cross_encoder_dir, shared_data_dir, tmp_path):
    results = tmp_path / "RESULTS.md"
    command = [
        sys.executable, str(BENCHMARKS / "microbatch.py"), "--model", str(tiny_cross_encoder_dir), "--device", "cpu",
        "--clients", "2", "--queries-per-client", "2", "--repeats", "1", "--threads", "1",
        "--data", str(shared_data_dir / "hotpotqa-distractor.dev.jsonl.gz"), "--results", str(results),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = results.read_text()
    assert "## Micro-batching: 2 concurrent clients" in text and "- command: `python " in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[2].strip().isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == [
        "one at a time", "2 concurrent clients, no batching", "2 concurrent clients, micro-batching (10 ms)"]
    assert "kept the same passages for every query: yes" in text
