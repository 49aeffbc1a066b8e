"""The CPU rehearsal of the GPU suite: the same command, ``--device cpu --size tiny``, with
the tiny models, runs every part end to end and writes every section, so the run on a
lent GPU (about 15 minutes, start-up included) cannot fail on a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_suite import PARTS, section_title  # noqa: E402


def test_tiny_rehearsal_writes_every_section(tmp_path, tiny_cross_encoder_dir, tiny_causal_lm_dir, shared_data_dir):
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "--out", str(tmp_path / "gpu"), "--device", "cpu",
           "--size", "tiny", "--results", str(results), "--reranker", str(tiny_cross_encoder_dir),
           "--reader", str(tiny_causal_lm_dir)]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               RRPO_SHARED_DATA=str(shared_data_dir), RRPO_CACHE_DIR=str(tmp_path / "cache"))  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    seconds = time.perf_counter() - start
    summary = json.loads((tmp_path / "gpu" / "summary.json").read_text())
    failed = [r for r in summary if r["status"] != "ok"]
    errors = {p.name: p.read_text()[-1500:] for p in (tmp_path / "gpu").glob("*.error.txt")}
    assert proc.returncode == 0 and not failed, f"{failed}\n{errors}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    text = results.read_text()
    for part in PARTS:
        assert f"## {section_title('cpu', 'tiny', part)}\n" in text, f"section {part!r} missing"
    assert text == (tmp_path / "gpu" / "RESULTS.md").read_text()  # the run's own copy holds the same
    # Every section says what produced it (benchmarks/_results.py), numbers in tables.
    assert text.count("- command: `python benchmarks/gpu_suite.py --out ") == len(PARTS)
    assert "| rrpo `Reranker.score_pairs`, cold document cache |" in text
    assert "| prefix sharing (one row at a time) |" in text and "| padded batches (64) |" in text
    assert "| rrpo:dynamic |" in text or "rrpo:dynamic" in text
    print(f"rehearsal: {seconds:.0f} s")  # the bound is 3 minutes on 2 cores; a loaded machine takes longer


def test_env_overrides_point_the_default_models_at_carried_copies(tmp_path, monkeypatch, tiny_cross_encoder_dir):
    """On the GPU machine the model packages are absent: RRPO_MINILM_DIR and
    RRPO_SMOLLM2_GGUF stand in for them (scripts/gpu_bootstrap.sh sets both)."""
    import pytest

    from rrpo.models import resolve_reader, resolve_reranker

    gguf = tmp_path / "reader.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("RRPO_MINILM_DIR", str(tiny_cross_encoder_dir))
    monkeypatch.setenv("RRPO_SMOLLM2_GGUF", str(gguf))
    assert resolve_reranker("minilm-l6").path == str(tiny_cross_encoder_dir)
    reader = resolve_reader("smollm2-135m")
    assert (reader.path, reader.gguf_file) == (str(tmp_path), "reader.gguf")
    monkeypatch.setenv("RRPO_MINILM_DIR", str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="RRPO_MINILM_DIR"):
        resolve_reranker("minilm-l6")


def test_prepare_splits_into_parts_that_join_back(tmp_path):
    """gpu_prepare.py's parts: equal sizes, none above the limit, joined = the original."""
    sys.path.insert(0, str(REPO / "scripts"))
    from gpu_prepare import split

    original = tmp_path / "payload.tar"
    original.write_bytes(os.urandom(2500))
    parts = split(original, tmp_path, part_bytes=1000)
    assert [p.name for p in parts] == ["payload.tar.part-00", "payload.tar.part-01", "payload.tar.part-02"]
    assert max(p.stat().st_size for p in parts) <= 1000
    assert b"".join(p.read_bytes() for p in parts) == original.read_bytes()


def test_a_part_over_its_budget_stops_and_the_next_one_runs(tmp_path, monkeypatch):
    """The budget is a SIGALRM: the overrunning part writes the rows it has, with the
    reason, and the suite goes on (no model is loaded here)."""
    import argparse
    import dataclasses

    import gpu_suite

    def slow(ctx, section):
        rows = section.table("partial", ["n"])
        rows.append(["1"])
        time.sleep(30)  # interrupted after the 1 s budget
        rows.append(["2"])

    def quick(ctx, section):
        section.table("done", ["n"]).append(["3"])

    monkeypatch.setitem(gpu_suite.PART_FUNCTIONS, "reranker", slow)
    monkeypatch.setitem(gpu_suite.PART_FUNCTIONS, "reader", quick)
    plan = dataclasses.replace(gpu_suite.PLANS["tiny"], budgets={"reranker": 1, "reader": 60})
    args = argparse.Namespace(out=tmp_path, results=None, size="tiny", budget_scale=1.0)
    ctx = gpu_suite.Context(args, plan, "cpu", False, tmp_path, time.perf_counter() + 60, "python test")
    start = time.perf_counter()
    first, second = gpu_suite.run_part(ctx, "reranker"), gpu_suite.run_part(ctx, "reader")
    assert time.perf_counter() - start < 25  # the 30 s sleep was cut short (the rest is imports, slow on a busy CPU)
    assert first["status"].startswith("stopped: over its budget") and first["written"]
    assert second["status"] == "ok" and second["written"]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| 1 |" in text and "| 2 |" not in text and "| 3 |" in text and "stopped: over its budget" in text
