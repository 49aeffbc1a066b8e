"""The relevance baseline: pointwise BCE on gold / relevant labels.

This is the static-label approach RRPO argues against, and the usual warm start for it.
The cross-encoder learns "is this passage relevant?"; the STOP head learns, from the same
labels, to stop once the relevant passages are taken (the log-likelihood of the
selection "relevant passages, best-scored first, then STOP"), so an SFT reranker has a
dynamic k too and the comparison with RRPO is like for like.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..policy import Reranker, Scored
from ..types import Example, Selection
from . import common
from .config import SFTConfig, config_to_dict

LabelFn = Callable[[Example], Sequence[bool]]


def gold_labels(example: Example) -> list[bool]:
    if example.gold is None:
        raise ValueError(f"example {example.id!r} has no gold flags; pass label_fn= to SFTTrainer")
    return list(example.gold)


class SFTTrainer:
    """Fine-tune a reranker on relevance labels (``label_fn(example) -> list[bool]``)."""

    def __init__(
        self,
        reranker: Reranker,
        examples: Sequence[Example],
        config: SFTConfig | None = None,
        label_fn: LabelFn | None = None,
    ):
        self.config = (config or SFTConfig()).validate()
        self.label_fn = label_fn or gold_labels
        self.examples = [ex for ex in examples if ex.candidates]
        if not self.examples:
            raise ValueError("examples: the training data is empty")
        self.labels = [self._labels(ex) for ex in self.examples]
        # Data parallel (torchrun): examples_per_step is per process, like RRPO's
        # queries_per_step; each global batch is split over the ranks, only rank 0 writes.
        self.rank, self.world = common.distributed_rank()
        self.device = torch.device(_device(self.config.device, self.rank))
        self.reranker = reranker.to(self.device)
        common.to_float32(self.reranker)
        self.optimizer = common.make_optimizer(
            self.reranker, self.config.learning_rate, self.config.stop_head_lr, self.config.weight_decay,
            head_lr=self.config.head_lr,
        )
        per_epoch = math.ceil(len(self.examples) / (self.config.examples_per_step * self.world))
        self.total_steps = max(1, math.ceil(per_epoch * self.config.epochs))
        warmup = int(self.config.warmup_ratio * self.total_steps)
        self.scheduler = common.linear_schedule(self.optimizer, warmup, self.total_steps)
        self.out_dir = Path(self.config.out_dir)
        common.claim_out_dir(self.out_dir, self.config.overwrite, remove=self.rank == 0)  # never mix two runs' metrics
        self.metrics = common.MetricsLog(self.out_dir / "metrics.jsonl")

    def _labels(self, ex: Example) -> list[float]:
        labels = list(self.label_fn(ex))
        if len(labels) != len(ex.candidates):
            raise ValueError(f"example {ex.id!r}: {len(labels)} labels for {len(ex.candidates)} candidates")
        return [float(bool(v)) for v in labels]

    def _batches(self):
        rng = random.Random(self.config.seed)
        size = self.config.examples_per_step * self.world  # the global batch
        step = 0
        while True:
            order = list(range(len(self.examples)))
            rng.shuffle(order)
            for start in range(0, len(order), size):
                if step >= self.total_steps:
                    return
                yield order[start : start + size]
                step += 1

    def train(self) -> Reranker:
        """Train for ``epochs``; saves to ``out_dir/model`` and returns the reranker."""
        from tqdm.auto import tqdm

        torch.manual_seed(self.config.seed)
        self.reranker.train()
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(config_to_dict(self.config), indent=2))
        bar = tqdm(total=self.total_steps, desc="sft", disable=not self.config.progress or self.rank != 0)
        for step, indices in enumerate(self._batches(), start=1):
            row = self.train_step(indices[self.rank :: self.world])  # this rank's share of the global batch
            if self.rank == 0:
                self.metrics.write({"step": step, **row})
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        bar.close()
        self.reranker.eval()
        self.reranker.fresh_parameters = set()  # trained now
        self.reranker.settings.default_top_n = self.config.max_k  # the cap its STOP head learned
        if self.rank == 0:
            self.reranker.save_pretrained(self.out_dir / "model")
            common.plot_curves(self.metrics.rows, ("loss", "bce", "stop_nll"), self.out_dir / "curves.png", "relevance SFT")
        return self.reranker

    def train_step(self, indices: list[int]) -> dict[str, float]:
        batch = [self.examples[i] for i in indices]
        labels = [self.labels[i] for i in indices]
        self.optimizer.zero_grad(set_to_none=True)
        if batch:
            with common.autocast(self.device, self.config.bf16):
                scored = self.reranker.score_pairs([ex.query for ex in batch], [ex.candidates for ex in batch])
            scores = torch.cat([s.scores.float() for s in scored])
            target = torch.tensor([v for row in labels for v in row], device=scores.device)
            pair_losses = F.binary_cross_entropy_with_logits(scores, target, reduction="none")
        else:  # a last global batch smaller than the world: this rank only joins the all-reduces
            scored, pair_losses = [], torch.zeros(0, device=self.device)
        # Means over the global batch: ranks hold different numbers of pairs.
        bce = common.global_mean(pair_losses, self.world)
        stop_nll = self._stop_loss(scored, labels)
        loss = bce + self.config.stop_loss_weight * stop_nll
        if loss.requires_grad:
            loss.backward()
        common.sync_gradients(self.reranker, self.world)
        torch.nn.utils.clip_grad_norm_(self.reranker.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        values = {name: common.global_value(v, self.world) for name, v in (("loss", loss), ("bce", bce), ("stop_nll", stop_nll))}
        return {**values, "lr": self.scheduler.get_last_lr()[0]}

    def _stop_loss(self, scored, labels) -> torch.Tensor:
        """-log P(relevant passages best-first, then STOP); the scores are detached so
        this loss trains the STOP head only and the BCE alone shapes the scores."""
        terms = []
        for s, row in zip(scored, labels):
            positives = [i for i, v in enumerate(row) if v]
            if not positives or len(positives) > self.config.max_k:
                continue
            detached = s.scores.detach().float()
            kept = sorted(positives, key=lambda i: -float(detached[i]))
            sel = Selection(order=kept, k=len(kept), scores=detached.tolist())
            hidden = s.hidden.detach().float()
            logp = self.reranker.step_log_probs(Scored(detached, hidden), [sel], top_n=self.config.max_k, min_k=1)
            terms.append(-logp.total()[0])
        return common.global_mean(torch.stack(terms) if terms else torch.zeros(0, device=self.device), self.world)


def _device(device: str | None, rank: int = 0) -> str:
    from .rrpo import _pick_device

    return _pick_device(device, rank)  # one GPU per process when there are several
