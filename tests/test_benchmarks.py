"""benchmarks/speed.py end to end on the tiny cross-encoder, and the RESULTS.md writer."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"rrpo_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speed_run(tiny_cross_encoder_dir, shared_data_dir, tmp_path_factory):
    """One tiny run of the whole benchmark, appending to a fresh RESULTS file."""
    results = tmp_path_factory.mktemp("speed") / "RESULTS.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, str(BENCHMARKS / "speed.py"), "--model", str(tiny_cross_encoder_dir), "--device", "cpu",
        "--pairs", "40", "--queries", "3", "--train-steps", "1", "--train-queries", "2",
        "--data", str(shared_data_dir / "hotpotqa-distractor.dev.jsonl.gz"),
        "--train-data", str(shared_data_dir / "hotpotqa-distractor.train.jsonl.gz"),
        "--results", str(results), "--notes", "tiny test run",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, results


def _rows(stdout: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


def test_scores_agree_before_timing(speed_run):
    stdout, _ = speed_run
    match = re.search(r"max \|rrpo - sentence-transformers\| = ([0-9.e+-]+) <= 0.001: OK", stdout)
    assert match and float(match.group(1)) <= 1e-3


def test_throughput_table_has_both_sides(speed_run):
    stdout, _ = speed_run
    rows = {(r[0], r[1]): r for r in _rows_starting(stdout, ("rrpo `Reranker.score_pairs`", "sentence-transformers"))}
    assert set(rows) == {
        ("rrpo `Reranker.score_pairs`, cold document cache", "64"),
        ("rrpo `Reranker.score_pairs`, warm document cache", "64"),
        ("sentence-transformers `CrossEncoder.predict`", "32"),
        ("sentence-transformers `CrossEncoder.predict`", "64"),
    }
    for row in rows.values():
        assert row[2] == "float32"
        assert float(row[3].replace(",", "")) > 0  # pairs/s
        assert row[4].endswith("x")
    # The speed-up column is relative to the better peer batch size: one peer row is 1.00x.
    assert [r[4] for k, r in rows.items() if k[0].startswith("sentence")].count("1.00x") == 1


def _rows_starting(stdout: str, prefixes: tuple[str, ...]) -> list[list[str]]:
    out = []
    for line in stdout.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0].startswith(prefixes):
                out.append(cells)
    return out


def test_latency_rows_for_20_and_100_candidates(speed_run):
    stdout, _ = speed_run
    rows = _rows(stdout, "20") + _rows(stdout, "100")
    assert [(r[0], r[1]) for r in rows] == [
        ("20", "rrpo `Reranker.rerank` (dynamic k)"),
        ("20", "sentence-transformers `CrossEncoder.rank`"),
        ("100", "rrpo `Reranker.rerank` (dynamic k)"),
        ("100", "sentence-transformers `CrossEncoder.rank`"),
    ]
    for row in rows:
        p50, p95 = (float(x.replace(",", "")) for x in row[2:4])
        assert 0 < p50 <= p95


def test_training_throughput_row(speed_run):
    stdout, _ = speed_run
    (row,) = _rows(stdout, "rrpo `RRPOTrainer` (scripted reader, excluded)")
    assert row[1:6] == ["4", "5", "10", "2", "1"]  # G, max_k, candidates/query, queries/step, steps
    assert float(row[6]) > 0 and float(row[8]) > 0  # queries/s, reader calls per query


def test_results_section_records_command_machine_and_date(speed_run):
    stdout, results = speed_run
    text = results.read_text()
    assert text.startswith("# rrpo benchmark results")
    assert text.count("## Speed:") == 1 and "on cpu" in text
    assert re.search(r"^- command: `python \S*speed\.py --model \S+ --device cpu --pairs 40 --queries 3 ", text, re.M)
    assert re.search(r"^- machine: CPU: .+ \(\d+ cores\), Python [\d.]+, torch \S+, GPU: ", text, re.M)
    assert re.search(r"^- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC$", text, re.M)
    for table_line in ("### Scoring throughput: 40 pairs", "### Rerank latency: 3 queries", "### RRPO training throughput"):
        assert table_line in text
    assert "tiny test run" in text and "load average" in text
    assert f"appended to {results}" in stdout


def test_append_results_creates_header_once_and_appends(tmp_path):
    results = _load("_results")
    path = tmp_path / "sub" / "RESULTS.md"
    results.append_results(path, "First", "python x.py --a", "| a |\n|---|\n| 1 |", notes="note one")
    results.append_results(path, "Second", "python x.py --b", "| b |\n|---|\n| 2 |")
    text = path.read_text()
    assert text.count("# rrpo benchmark results") == 1
    assert text.index("## First") < text.index("## Second")
    assert "- command: `python x.py --a`" in text and "note one" in text and "| 2 |" in text
    with pytest.raises(ValueError, match="table"):
        results.append_results(path, "Empty", "python x.py", "  ")
    assert results.command_line(["speed.py", "--notes", "two words"]) == "python speed.py --notes 'two words'"


def test_percentile_matches_linear_interpolation():
    speed = _load("speed")
    assert speed.percentile([4.0], 95) == 4.0
    assert speed.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert speed.percentile([3.0, 1.0, 2.0], 95) == pytest.approx(2.9)


def test_peer_runs_in_fp32_even_from_a_bf16_directory(tiny_cross_encoder_dir, tmp_path):
    """rrpo saves bf16 weights when it runs in bf16 (its CUDA default); the peer's fp32
    rows must still be fp32, and both sides must score alike in fp32."""
    import torch

    from rrpo import Reranker

    speed = _load("speed")
    bf16 = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu", dtype="bfloat16", max_length=64)
    directory = bf16.save_pretrained(tmp_path / "bf16")
    assert speed._peer_dtype(speed.load_peer(directory, 64, "cpu")) == "float32"
    assert speed._peer_dtype(speed.load_peer(directory, 64, "cpu", torch.bfloat16)) == "bfloat16"
    workload = speed.Workload(["who wrote the book about the river"], ["one two three four five six"] * 3, speed.random.Random(0))
    line = speed.check_same_scores(directory, speed.load_peer(directory, 64, "cpu"), workload, "cpu", 64)
    assert line.endswith("OK")


def test_score_check_refuses_to_time_different_models(tiny_cross_encoder_dir, tmp_path):
    import torch

    from rrpo import Reranker

    speed = _load("speed")
    reranker = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu", max_length=64)
    same = reranker.save_pretrained(tmp_path / "same")
    with torch.no_grad():
        reranker.scorer.classifier.bias += 0.01  # a different model, by more than the tolerance
    other = reranker.save_pretrained(tmp_path / "other")
    workload = speed.Workload(["who wrote the book about the river"], ["one two three four five six"] * 3, speed.random.Random(0))
    with pytest.raises(SystemExit, match="do not compute the same model"):
        speed.check_same_scores(same, speed.load_peer(other, 64, "cpu"), workload, "cpu", 64)


def test_quality_cpu_size_evaluates_dev_questions_after_the_ones_reported_before(shared_data_dir):
    quality = _load("quality")
    size = quality.budget(quality.parse_args(["--size", "cpu"]))
    split = quality.load_hotpotqa(shared_data_dir, size)
    from rrpo.data import load_examples

    first = load_examples(shared_data_dir / "hotpotqa-distractor.dev.jsonl.gz", limit=size.eval_start + 1)
    assert [ex.id for ex in split.dev[:1]] == [first[size.eval_start].id]
    assert len(split.dev) == size.eval == 300
    assert len(split.train) >= max(size.sft_train, size.rrpo_train)
    # an offset past the file is refused with the file's length, not an empty evaluation
    beyond = quality.budget(quality.parse_args(["--size", "cpu", "--eval-start", "100000"]))
    with pytest.raises(SystemExit, match="has only"):
        quality.load_hotpotqa(shared_data_dir, beyond)


def test_quality_fullwiki_evaluates_only_questions_the_distractor_dev_file_does_not_hold(shared_data_dir):
    quality = _load("quality")
    size = quality.budget(quality.parse_args(["--size", "cpu", "--dataset", "hotpotqa-fullwiki", "--eval-start", "0"]))
    split = quality.load_hotpotqa_fullwiki(shared_data_dir, size)
    from rrpo.data import load_examples

    reported = {ex.query for ex in load_examples(shared_data_dir / "hotpotqa-distractor.dev.jsonl.gz")}
    trained = {ex.query for ex in split.train}
    assert len(split.dev) == 300 and not any(ex.query in reported or ex.query in trained for ex in split.dev)
    assert all(2 <= len(ex.candidates) <= 10 for ex in split.dev)  # the official TF-IDF top 10 (a few hold fewer)


def test_train_speed_refuses_an_unknown_side():
    train_speed = _load("train_speed")
    assert train_speed.parse_args(["--sides", "new,bf16,old"]).sides == "new,bf16,old"
    with pytest.raises(SystemExit):
        train_speed.parse_args(["--sides", "new,fp8"])


def test_run_summary_tables_an_rrpo_folder_and_refuses_another(tmp_path):
    run_summary = _load("run_summary")
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "reward_mean": -3.5, "mean_k": 2.0, "greedy_k": 2.0, "kl": 0.25, "clip_frac": 0.2,
                    "stop_loss": 0.6, "reader_calls": 154, "queries_per_s": 0.12}) + "\n")  # fmt: skip
    (tmp_path / "validation.json").write_text(json.dumps({"queries": ["a", "b"], "best_step": 0, "validations": [
        {"step": 0, "reward": -3.37, "mean_k": 2.0},
        {"step": 8, "reward": -3.9, "mean_k": 2.0, "gain_vs_kept": {"kept_step": 0, "mean": -0.53, "se": 0.2, "n": 2}}]}))
    text = run_summary.summary(tmp_path)
    assert "| 1 | -3.50 | 2.00 | 2.00 | 0.250 |" in text
    assert "| 8 | -3.900 | 2.00 | -0.530 ± 0.200 (vs step 0, 2 questions) |" in text and "step 0's" in text
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        run_summary.main([str(tmp_path / "elsewhere")])


def test_learning_set_parses_config_fields_by_type_and_names_a_wrong_one():
    learning = _load("learning")
    assert learning.config_overrides(["learning_rate=1e-4", "group_size=6", "lora=true", "stop_labels=sampled"]) == {
        "learning_rate": 1e-4, "group_size": 6, "lora": True, "stop_labels": "sampled"}
    with pytest.raises(SystemExit, match="RRPOConfig's fields"):
        learning.config_overrides(["learnig_rate=1e-4"])
