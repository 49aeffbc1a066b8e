"""Data parallel: ``torchrun --nproc_per_node 2`` (gloo, CPU) trains RRPO and SFT like one
process over the same global batch.

tests/ddp_driver.py runs both trainers for 3 steps on 8 HotpotQA questions with the
tiny cross-encoder: once as 2 processes of 2 questions per step, once as 1 process of
4. The two runs must agree to float noise: the relative difference of their parameter
updates is ~1.5e-4 (Adam turns rounding-level gradient differences, such as those of
attention key biases, whose true gradient is zero, into steps of the learning rate's
size); per-rank loss means and advantage scales instead of global ones give 8e-2
(RRPO) and 1.5e-1 (SFT).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "ddp_driver.py"
MODES = ("rrpo", "sft")
TOLERANCE = 1e-3  # relative difference of the parameter updates


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_cross_encoder_dir, shared_data_dir) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", RRPO_SHARED_DATA=str(shared_data_dir))  # fmt: skip
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    common = ["--model", str(tiny_cross_encoder_dir), "--out", str(out)]
    launches = [
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(DRIVER),
         *common, "--per-rank", "2"],
        [sys.executable, str(DRIVER), *common, "--per-rank", "4"],  # one process, the same global batch
    ]  # fmt: skip
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in launches]  # fmt: skip
    for proc, cmd in zip(procs, launches):
        output, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-4000:]}"
    return out


def _params(runs: Path, label: str, mode: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(runs / label / f"params-{mode}.safetensors"))


def _start_params(model_dir: Path) -> dict[str, torch.Tensor]:
    from rrpo import Reranker

    return {k: v.detach() for k, v in Reranker.from_pretrained(model_dir, device="cpu").state_dict().items()}


def _seen(runs: Path, label: str, mode: str) -> list[list[str]]:
    return json.loads((runs / label / f"seen-{mode}.json").read_text())


@pytest.mark.parametrize("mode", [*MODES, "idle"])  # idle: rank 1 had no usable reward
def test_ranks_end_with_identical_parameters(runs, mode, tiny_cross_encoder_dir):
    rank0, rank1 = _params(runs, "rank0", mode), _params(runs, "rank1", mode)
    assert rank0.keys() == rank1.keys()
    different = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not different, f"{mode}: ranks disagree on {different[:5]}"
    if mode == "idle":  # rank 0's samples still moved both
        start = _start_params(tiny_cross_encoder_dir)
        assert any(not torch.equal(rank1[k], start[k]) for k in start), "idle: rank 1 never stepped"


@pytest.mark.parametrize("mode", MODES)
def test_each_rank_sees_its_own_shard_of_the_global_batch(runs, mode):
    rank0, rank1, single = (_seen(runs, label, mode) for label in ("rank0", "rank1", "single"))
    assert len(rank0) == len(rank1) == len(single) == 3
    for step, (a, b, whole) in enumerate(zip(rank0, rank1, single), start=1):
        assert len(a) == len(b) == 2, f"{mode} step {step}: shards {a} / {b}"
        assert not set(a) & set(b), f"{mode} step {step}: both ranks trained on {set(a) & set(b)}"
        assert sorted(a + b) == sorted(whole), f"{mode} step {step}: shards {a} + {b} are not the global batch {whole}"


def test_only_rank_zero_writes_metrics_checkpoints_and_models(runs):
    for mode in MODES:
        written = runs / "rank0" / mode
        assert (written / "metrics.jsonl").is_file() and (written / "model").is_dir() and (written / "config.json").is_file()
        rows = [json.loads(line) for line in (written / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3]
        quiet = runs / "rank1" / mode
        leftovers = sorted(p.name for p in quiet.iterdir()) if quiet.is_dir() else []
        leftovers = [n for n in leftovers if not n.startswith("reader_cache.sqlite")]  # each rank's own cache
        assert not leftovers, f"rank 1 wrote {leftovers} in {quiet}"
    assert sorted(p.name for p in (runs / "rank0" / "rrpo").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_step_like_one_over_the_same_global_batch(runs, mode, tiny_cross_encoder_dir):
    start = _start_params(tiny_cross_encoder_dir)
    ddp, single = _params(runs, "rank0", mode), _params(runs, "single", mode)
    diff = sum(float(((ddp[k] - start[k]) - (single[k] - start[k])).pow(2).sum()) for k in single) ** 0.5
    update = sum(float((single[k] - start[k]).pow(2).sum()) for k in single) ** 0.5
    assert update > 1e-3, f"{mode}: the single-process run barely moved ({update:.2e}): nothing to compare"
    assert diff / update < TOLERANCE, f"{mode}: the 2-process update differs by {diff / update:.2e} of its size"
