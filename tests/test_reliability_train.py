"""Reliability of training runs (issue #11, items 2, 3 and 4), with real kills.

One uninterrupted run and one run SIGKILLed after its third checkpoint are made once
per module; each test resumes a copy of the killed run's folder (as it is, or with its
newest checkpoint damaged) and must end bit-identical to the uninterrupted run. The
reader answers depend, in the last digits, on which prompts share its batch (as a real
reader's log-likelihoods do through padding), so only a persisted response cache can
make a resume exact.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rrpo import Candidate, Example, Reranker
from rrpo.cli import main
from rrpo.data import save_examples
from rrpo.train import RRPOConfig, RRPOTrainer, SFTConfig, SFTTrainer
from rrpo.train import common

STEPS = 6
TIMING_KEYS = {"queries_per_s", "reader_calls", "reader_calls_per_query", "cache_hit_rate"}


class BatchSensitiveReader:
    """Log-likelihoods that move by 1e-7 with the batch they are asked in."""

    identity = "batch-sensitive-fake"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def generate(self, prompts):
        return ["an answer"] * len(prompts)

    def loglik(self, prompts, targets):
        time.sleep(self.delay)  # a reader takes time: a kill lands mid-step or mid-save
        return [-1.0 - 1e-3 * (len(p) % 97) - 1e-7 * len(prompts) for p in prompts]


def make_examples(n: int = 5) -> list[Example]:
    topics = ["rivers", "castles", "painters", "bridges", "islands", "poets"]
    out = []
    for q in range(n):
        cands = [Candidate(f"d{j}", f"Passage {j} on {topics[q]}, {'the harbour ' * j}and the road {q}.") for j in range(4)]
        out.append(Example(id=f"q{q}", query=f"What about {topics[q]}?", candidates=cands, answers=["the harbour"]))
    return out


def run_config(out: Path, **overrides) -> RRPOConfig:
    base = dict(group_size=3, queries_per_step=2, max_steps=STEPS, max_k=3, ppo_epochs=2, learning_rate=1e-3,
                stop_head_lr=1e-2, warmup_steps=0, kl_beta=0.05, checkpoint_every=1, device="cpu",
                progress=False, out_dir=str(out), reward="gold_loglik")  # fmt: skip
    base.update(overrides)
    return RRPOConfig(**base)


KILLED_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_reliability_train import BatchSensitiveReader, make_examples, run_config
from rrpo import Reranker
from rrpo.train import RRPOTrainer

policy = Reranker.from_pretrained(sys.argv[2], device="cpu")
RRPOTrainer(policy, BatchSensitiveReader(delay=0.1), make_examples(), run_config(Path(sys.argv[3]))).train()
"""


def metric_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


@pytest.fixture(scope="module")
def runs(tiny_cross_encoder_dir, tmp_path_factory):
    """(straight run's parameters and metrics, the killed run's folder)."""
    root = tmp_path_factory.mktemp("runs")
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    RRPOTrainer(policy, BatchSensitiveReader(), make_examples(), run_config(root / "straight")).train()
    straight = {k: v.detach().clone() for k, v in policy.state_dict().items()}

    killed = root / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(Path(__file__).parent), str(tiny_cross_encoder_dir), str(killed)]
    )
    deadline = time.time() + 120
    while not (killed / "checkpoint-3").is_dir() and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return straight, metric_rows(root / "straight"), killed


def resume_copy(runs, tiny_cross_encoder_dir, tmp_path, damage=None):
    """Resume a copy of the killed run (after ``damage(folder)``) to the end."""
    straight, rows, killed = runs
    out = tmp_path / "resumed"
    shutil.copytree(killed, out)
    if damage:
        damage(out)
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    trainer = RRPOTrainer(policy, BatchSensitiveReader(), make_examples(), run_config(out), resume=True)
    start = trainer.step
    trainer.train()
    return policy, start, out


def assert_same_run(policy, out, runs):
    straight, rows, _ = runs
    for key, value in policy.state_dict().items():
        assert torch.equal(value, straight[key]), key
    assert metric_rows(out) == rows  # rewards, losses, KL, k: every step the same


def newest(out: Path) -> Path:
    return common.list_checkpoints(out)[-1][1]


# ----------------------------------------------------------------- 4. exact resume
def test_kill_then_resume_is_bit_identical(runs, tiny_cross_encoder_dir, tmp_path):
    policy, start, out = resume_copy(runs, tiny_cross_encoder_dir, tmp_path)
    assert 3 <= start < STEPS
    assert_same_run(policy, out, runs)
    assert (out / "reader_cache.sqlite").is_file()  # the answers the killed run got


# ----------------------------------------------------------------- 2. damaged checkpoints
def _truncate(name):
    def damage(out: Path) -> None:
        path = newest(out) / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a disk that lost the tail

    return damage


@pytest.mark.parametrize("name", [common.STATE_FILE, common.POLICY_STATE_FILE])
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(runs, tiny_cross_encoder_dir, tmp_path, caplog, name):
    _, _, killed = runs
    expected = common.list_checkpoints(killed)[-2][0]
    with caplog.at_level(logging.WARNING, logger="rrpo.train.common"):
        policy, start, out = resume_copy(runs, tiny_cross_encoder_dir, tmp_path, damage=_truncate(name))
    assert start == expected
    assert any(name in r.getMessage() and "checkpoint-" in r.getMessage() for r in caplog.records)
    assert_same_run(policy, out, runs)


def test_no_usable_checkpoint_is_one_clear_error(runs, tiny_cross_encoder_dir, tmp_path):
    def damage_all(out: Path) -> None:
        for _, checkpoint in common.list_checkpoints(out):
            (checkpoint / common.STATE_FILE).write_bytes(b"not a checkpoint")

    with pytest.raises(ValueError, match=f"no usable checkpoint.*{common.STATE_FILE}"):
        resume_copy(runs, tiny_cross_encoder_dir, tmp_path, damage=damage_all)


# ----------------------------------------------------------------- 3. two runs, one folder
def test_a_fresh_run_refuses_a_used_folder_unless_told_to_overwrite(runs, tiny_cross_encoder_dir, tmp_path):
    _, _, killed = runs
    out = tmp_path / "used"
    shutil.copytree(killed, out)
    before = sorted(p.name for p in out.iterdir())
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    with pytest.raises(ValueError, match="already holds a training run.*overwrite"):
        RRPOTrainer(policy, BatchSensitiveReader(), make_examples(), run_config(out, max_steps=2))
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched

    RRPOTrainer(policy, BatchSensitiveReader(), make_examples(), run_config(out, max_steps=2, overwrite=True)).train()
    assert [step for step, _ in common.list_checkpoints(out)] == [1, 2]  # only the new run's
    assert [row["step"] for row in metric_rows(out)] == [1, 2]
    with pytest.raises(ValueError, match="exclude"):
        RRPOTrainer(policy, BatchSensitiveReader(), make_examples(), run_config(out, overwrite=True), resume=True)


def test_retention_deletes_only_this_runs_checkpoints(tmp_path):
    model = torch.nn.Linear(2, 1)

    def save(step, run_id):
        common.save_checkpoint(tmp_path, step, model, {"step": step}, lambda d: d.mkdir(), keep=2, run_id=run_id)

    save(5, "old-run")
    save(6, "old-run")
    for step in (1, 2, 3):
        save(step, "new-run")
    kept = {step: common.checkpoint_run(path) for step, path in common.list_checkpoints(tmp_path)}
    assert kept == {2: "new-run", 3: "new-run", 5: "old-run", 6: "old-run"}


def test_sft_refuses_a_used_folder_unless_told_to_overwrite(tiny_cross_encoder_dir, tmp_path):
    examples = make_examples()
    for ex in examples:
        ex.gold = [c.id == "d1" for c in ex.candidates]
    rr = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    cfg = dict(epochs=1, examples_per_step=5, device="cpu", progress=False, out_dir=str(tmp_path / "sft"))
    SFTTrainer(rr, examples, SFTConfig(**cfg)).train()
    with pytest.raises(ValueError, match="already holds a training run"):
        SFTTrainer(rr, examples, SFTConfig(**cfg))
    SFTTrainer(rr, examples, SFTConfig(**cfg, overwrite=True)).train()


def test_cli_train_into_a_used_out_needs_overwrite(tiny_cross_encoder_dir, tiny_causal_lm_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    save_examples(make_examples(2), data)
    args = ["train", "--data", str(data), "--init", str(tiny_cross_encoder_dir), "--reader", str(tiny_causal_lm_dir),
            "--max-steps", "1", "--group-size", "2", "--queries-per-step", "1", "--max-k", "2",
            "--reward-mode", "terminal", "--device", "cpu", "--progress", "false", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and "Traceback" not in err
    assert main(args + ["--overwrite"]) == 0
