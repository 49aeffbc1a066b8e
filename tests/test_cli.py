"""The ``rrpo`` command line end to end on tiny models: train-sft, train (with a config
file and --resume), rerank; and the errors a user sees for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rrpo import Candidate, Example, Reranker, __version__
from rrpo.cli import main
from rrpo.data import save_examples


def small_data(path):
    examples = []
    for q in range(4):
        cands = [Candidate(f"q{q}p{j}", f"passage {j} about harbour trade number {q}", title=f"T{j}") for j in range(5)]
        examples.append(Example(id=f"q{q}", query=f"what about harbour {q}?", candidates=cands,
                                answers=["the harbour"], gold=[j == q % 5 for j in range(5)]))  # fmt: skip
    save_examples(examples, path)
    return path


def test_version_and_help():
    done = subprocess.run([sys.executable, "-m", "rrpo", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"rrpo {__version__}"
    done = subprocess.run([sys.executable, "-m", "rrpo", "--help"], capture_output=True, text=True)
    for command in ("demo", "train", "train-sft", "eval", "rerank", "feedback"):
        assert command in done.stdout


def test_train_sft_then_train_then_resume_then_rerank(tiny_cross_encoder_dir, tiny_causal_lm_dir, tmp_path):
    data = small_data(tmp_path / "train.jsonl")
    sft_out = tmp_path / "sft"
    assert main(["train-sft", "--data", str(data), "--init", str(tiny_cross_encoder_dir), "--epochs", "1",
                 "--device", "cpu", "--progress", "false", "--out", str(sft_out)]) == 0  # fmt: skip
    assert (sft_out / "model" / "rrpo_stop_head.safetensors").is_file()

    config = tmp_path / "rrpo.json"
    config.write_text(json.dumps({"group_size": 2, "queries_per_step": 2, "max_k": 3, "checkpoint_every": 1}))
    out = tmp_path / "rrpo"
    common = ["train", "--data", str(data), "--init", str(sft_out / "model"), "--reader", str(tiny_causal_lm_dir),
              "--config", str(config), "--device", "cpu", "--progress", "false", "--out", str(out)]  # fmt: skip
    assert main(common + ["--max-steps", "2"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["group_size"] == 2 and saved["max_steps"] == 2  # file values, and flags on top
    assert main(common + ["--max-steps", "3", "--resume"]) == 0  # continues from checkpoint-2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (out / "curves.png").is_file()
    Reranker.from_pretrained(out / "model", device="cpu")

    ranked = tmp_path / "ranked.jsonl"
    assert main(["rerank", "--data", str(data), "--model", str(out / "model"), "--top-n", "3", "--device", "cpu",
                 "--out", str(ranked)]) == 0  # fmt: skip
    rows = [json.loads(line) for line in ranked.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    assert all(1 <= r["k"] <= 3 and len(r["kept_ids"]) == r["k"] for r in rows)


@pytest.mark.parametrize(
    "flags, field", [(["--group-size", "0"], "group_size"), (["--min-k", "4", "--max-k", "2"], "min_k")]
)
def test_bad_config_names_the_field_before_loading_anything(flags, field, tmp_path, capsys):
    data = small_data(tmp_path / "train.jsonl")
    # --init names no model at all: the config check must fail first
    assert main(["train", "--data", str(data), "--init", str(tmp_path / "no-such-model"), "--out", str(tmp_path)] + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("rrpo train: error:") and field in err and "Traceback" not in err


def test_unknown_config_file_field_is_an_error(tmp_path, capsys):
    data = small_data(tmp_path / "train.jsonl")
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"group_sise": 2}))
    assert main(["train", "--data", str(data), "--config", str(config), "--out", str(tmp_path)]) == 2
    assert "group_sise" in capsys.readouterr().err


def test_train_needs_exactly_one_data_source(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path)]) == 2  # a user error: one line, exit 2
    assert "exactly one of --data or --feedback" in capsys.readouterr().err
