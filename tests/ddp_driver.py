"""Data-parallel driver for tests/test_distributed.py: RRPO and SFT for a few steps.

Launched twice by the test, on the same 8 HotpotQA questions and the same tiny model:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_driver.py --model DIR --out OUT --per-rank 2
    python tests/ddp_driver.py --model DIR --out OUT --per-rank 4          # one process, the same global batch

Each process trains in ``OUT/<label>/{rrpo,sft}`` (label ``rank0``, ``rank1`` or
``single``), so the test can tell which process wrote what, and leaves beside it the
trained parameters (``params-<mode>.safetensors``; mode ``idle``, with 2 processes
only: RRPO where rank 1 has no usable reward) and the question ids of every step
(``seen-<mode>.json``).

Two things are held fixed so that the runs can be compared number for number:
RRPO's rankings are drawn from a generator seeded by (question, step), not from the
trainer's stream, whose position depends on which questions a process got; and the
dropout of the SFT model is off, since its masks depend on how the batch is laid out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import zlib
from pathlib import Path

import torch

from rrpo import Reranker
from rrpo.data import load_examples, shared_data_dir
from rrpo.train import RRPOConfig, RRPOTrainer, SFTConfig, SFTTrainer

QUESTIONS = 8
PASSAGES = 5  # per question: enough for k <= 3, few enough for a 2-core CPU


class ScriptedReader:
    """Free and deterministic: the gold answer is likely when it is in the prompt, and a
    little less so the longer the prompt, so rewards and advantages differ."""

    identity = "ddp-driver-scripted-reader"

    def generate(self, prompts: list[str]) -> list[str]:
        return ["" for _ in prompts]

    def loglik(self, prompts: list[str], targets: list[str]) -> list[float]:
        return [(-1.0 if t.lower() in p.lower() else -4.0) - 1e-3 * len(p.split()) for p, t in zip(prompts, targets)]


class RecordingRRPO(RRPOTrainer):
    seen: list[list[str]]

    def _next_batch(self):
        batch = super()._next_batch()
        self.seen = getattr(self, "seen", []) + [[ex.id for ex in batch]]
        return batch

    def rollout(self, batch):
        out = []
        for ex in batch:  # rankings depend on the question and the step only
            self.generator = torch.Generator().manual_seed(zlib.crc32(f"{ex.id}:{self.step}".encode()))
            out += super().rollout([ex])
        return out


class RecordingSFT(SFTTrainer):
    seen: list[list[str]]

    def train_step(self, indices):
        self.seen = getattr(self, "seen", []) + [[self.examples[i].id for i in indices]]
        return super().train_step(indices)


def examples():
    out = load_examples(shared_data_dir() / "hotpotqa-distractor.train.jsonl.gz", limit=QUESTIONS)
    return [dataclasses.replace(ex, candidates=ex.candidates[:PASSAGES], gold=ex.gold[:PASSAGES]) for ex in out]


def run_rrpo(model: str, out: Path, per_rank: int, steps: int):
    config = RRPOConfig(
        group_size=4, max_k=3, queries_per_step=per_rank, max_steps=steps, ppo_epochs=2, warmup_steps=0,
        checkpoint_every=2, device="cpu", progress=False, out_dir=str(out), seed=0, max_words=40,
    )  # fmt: skip
    trainer = RecordingRRPO(Reranker.from_pretrained(model, device="cpu"), ScriptedReader(), examples(), config)
    return trainer.train(), trainer.seen


def run_idle(model: str, out: Path, per_rank: int, steps: int):
    """RRPO where rank 1's rewards are all "not applicable" (None): that rank has nothing
    to learn from and must still join every all-reduce, or the others wait for ever."""
    rank = int(os.environ.get("RANK", "0"))

    def reward(*, queries, reader, prompts, answers, **_):
        values = reader.loglik(prompts, [a[0] for a in answers])
        return [None if rank == 1 else v for v in values]

    config = RRPOConfig(group_size=4, max_k=3, queries_per_step=per_rank, max_steps=steps, warmup_steps=0,
                        checkpoint_every=0, device="cpu", progress=False, out_dir=str(out), seed=0, max_words=40)  # fmt: skip
    trainer = RecordingRRPO(Reranker.from_pretrained(model, device="cpu"), ScriptedReader(), examples(), config, reward=reward)
    return trainer.train(), trainer.seen


def run_sft(model: str, out: Path, per_rank: int, steps: int):
    reranker = Reranker.from_pretrained(model, device="cpu")
    for module in reranker.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    epochs = steps * per_rank * int(os.environ.get("WORLD_SIZE", "1")) / QUESTIONS
    config = SFTConfig(epochs=epochs, examples_per_step=per_rank, warmup_ratio=0.0, device="cpu", progress=False,
                       out_dir=str(out), seed=0)  # fmt: skip
    trainer = RecordingSFT(reranker, examples(), config)
    return trainer.train(), trainer.seen


def main() -> None:
    from safetensors.torch import save_file

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-rank", type=int, required=True, help="questions per step in each process")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    label = f"rank{rank}" if "WORLD_SIZE" in os.environ else "single"
    root = args.out / label
    modes = [("rrpo", run_rrpo, args.steps), ("sft", run_sft, args.steps)]
    if label != "single":
        modes.append(("idle", run_idle, 2))
    for mode, run, steps in modes:
        policy, seen = run(args.model, root / mode, args.per_rank, steps)
        state = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
        save_file(state, str(root / f"params-{mode}.safetensors"))
        (root / f"seen-{mode}.json").write_text(json.dumps(seen))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
