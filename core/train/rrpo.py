"""The RRPO trainer: PPO on Plackett-Luce-with-stop rankings, rewarded by the reader.

One optimisation step, phase by phase (each a short method below):

1. ``rollout``: score a batch of queries once, draw G selections per query (the STOP
   action decides k), keep their per-step log-probs under the rollout policy and the
   frozen reference.
2. ``rewards``: the reader scores the contexts. The quality of a prefix of t passages
   is ``Q(t) = reward(first t passages) - context_cost * words(first t passages)``;
   ``per_prefix`` mode asks for every prefix (dense credit), ``terminal`` only for the
   kept set. The cached reader makes shared prefixes free.
3. ``advantages``: the reference-anchored deterministic baseline. The frozen reference
   reranker's greedy prefixes give a quality curve ``Q_ref(0..limit)`` per query
   (computed once, cached). The value of a state with t passages is the gain the
   reference still makes from t to its best length, ``V(t) = C - Q_ref(t)`` with
   ``C = max Q_ref``; per-prefix rewards are the telescoping gains ``Q(t+1) - Q(t)``, so
   the return equals the final quality and the policy gradient is unchanged, only its
   variance drops. GAE(gamma, lambda) over the steps, normalised over the batch.
   ``baseline="group"`` uses the leave-one-out mean of the group's final qualities.
4. ``loss``: PPO-clip on the per-step log-probs against the rollout policy, plus
   beta * KL to the reference (the k3 estimator on the sampled actions).
5. ``step``: clip gradients, AdamW, linear schedule; metrics to ``metrics.jsonl``;
   checkpoints that ``resume`` restores exactly.

The policy stays in eval mode (no dropout) while training: the PPO ratio compares the
same function at rollout and update time, and dropout would make it noisy.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..offpolicy import Propensity, importance_weight
from ..plackett_luce import greedy_k, selection_limit
from ..policy import Reranker, Scored
from ..types import Example, Selection
from . import common
from .config import RRPOConfig, config_to_dict

logger = logging.getLogger(__name__)

CURVE_KEYS = ("reward_mean", "mean_k", "greedy_k", "kl", "context_words", "val_reward")


@dataclass
class QueryRollout:
    """One query's sampled selections and everything the update needs about them."""

    example: Example
    selections: list[Selection]
    limit: int
    old_logp: torch.Tensor  # (G, L) per-step log-probs under the rollout policy
    ref_logp: torch.Tensor  # (G, L) under the frozen reference
    mask: torch.Tensor  # (G, L) steps that exist
    qualities: list[dict[int, float | None]] = field(default_factory=list)  # per sample: {t: Q(t)}
    advantages: torch.Tensor | None = None  # (G, L)
    greedy_k: int = 0
    live: Scored | None = None  # the rollout's forward, with its graph: the first PPO epoch reuses it
    stop_gains: torch.Tensor | None = None  # (rows, L) what stopping at t would have gained over going on; nan = no label
    order: list[int] = field(default_factory=list)  # every candidate, by the rollout policy's score
    greedy_curve: list[float | None] = field(default_factory=list)  # Q of its prefixes 0..len-1 (stop_labels 'greedy')
    weights: torch.Tensor | None = None  # (G,) 1 for a sample; min(pi/mu, c) for a logged production selection
    # ranking 'greedy': the states along the greedy ranking whose every alternative the
    # reader scores, as (the greedy prefix, the remaining candidates), and Q(prefix + c) for each
    rank_states: list[tuple[tuple[int, ...], list[int]]] = field(default_factory=list)
    rank_values: list[torch.Tensor] = field(default_factory=list)  # per state: Q per candidate (scaled in advantages)

    @property
    def greedy_order(self) -> list[int]:
        """The rollout policy's greedy picks (its ranking, cut at the selection limit)."""
        return self.order[: self.limit]


class RRPOTrainer:
    """Train a :class:`~rrpo.Reranker` so its kept passages maximise reader quality."""

    def __init__(
        self,
        policy: Reranker,
        reader: Any,
        examples: Sequence[Example],
        config: RRPOConfig | None = None,
        reward: str | Callable | None = None,
        resume: bool = False,
    ):
        from ..cache import CachedReader
        from ..rewards import get_reward

        self.config = (config or RRPOConfig()).validate()
        self.examples, self.validation = hold_out(_check_examples(examples), self.config.validation_queries,
                                                  self.config.seed)  # fmt: skip
        self.reward_fn = get_reward(reward or self.config.reward)
        self.out_dir = Path(self.config.out_dir)
        self.rank, self.world = _distributed_rank()
        if resume and self.config.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run in out_dir, or start over")
        if not resume:  # a fresh run never mixes with an earlier run's checkpoints and metrics
            common.claim_out_dir(self.out_dir, self.config.overwrite, remove=self.rank == 0)
        self.run_id = uuid.uuid4().hex[:12]  # marks this run's checkpoints; a resume takes over theirs
        # The response cache lives with the run, so a resumed run gets the very answers the
        # killed one got (asked again in other batches, a reader's log-lik moves by ~1e-6).
        self.reader = reader if isinstance(reader, CachedReader) else CachedReader(
            reader, self.out_dir / common.READER_CACHE_FILE
        )
        self.device = torch.device(_pick_device(self.config.device, self.rank))

        self.policy = policy.to(self.device)
        common.to_float32(self.policy)
        # The reference is the reranker as it starts: frozen, and the anchor of KL and baseline.
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        if self.config.lora:
            _apply_lora(self.policy, self.config)
        self.policy.train_top_layers(self.config.train_top_layers)
        self.policy.eval()

        self.optimizer = common.make_optimizer(
            self.policy, self.config.learning_rate, self.config.stop_head_lr, self.config.weight_decay,
            head_lr=self.config.head_lr,
        )
        self.scheduler = common.linear_schedule(self.optimizer, self.config.warmup_steps, self.config.max_steps)
        # One sampling stream per rank: with one seed, every rank would draw its j-th
        # query's rankings from the same random numbers.
        self.generator = torch.Generator().manual_seed(self.config.seed + self.rank)
        self.step = 0
        self.epoch = 0
        self.position = 0  # index into this epoch's shuffled order
        self._order = self._epoch_order(0)
        self._reference_curves: dict[str, list[float | None] | None] = {}
        self._ref_orders: dict[str, list[int]] = {}  # the reference's greedy order per query
        self._ref_scored: dict[str, Scored] = {}  # the reference's scores per query
        self.metrics = common.MetricsLog(self.out_dir / "metrics.jsonl", resume=resume)
        self.best: dict[str, Any] | None = None  # the best validated parameters: step, reward, params
        self.validations: list[dict[str, float]] = []
        if resume:
            self._resume()

    # ------------------------------------------------------------------ the loop
    def train(self, deadline: float | None = None) -> Reranker:
        """Run to ``max_steps``, or until the next step would end after ``deadline`` (a
        ``time.time()``; the step's length is the longest of the last three); returns the
        trained policy (also saved to ``out_dir/model``): the best validated parameters
        when queries are held out (``validation_queries``), else the last."""
        import time

        from tqdm.auto import tqdm

        cfg = self.config
        self._write_config()
        if self.validation and self.best is None:
            self.validate()  # the start is a candidate too
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="rrpo", disable=not cfg.progress or self.rank != 0)
        lengths: list[float] = []
        while self.step < cfg.max_steps:
            if deadline is not None and time.time() + max(lengths[-3:], default=0.0) > deadline:
                logger.warning("stopping after %d of %d steps: the time budget is spent", self.step, cfg.max_steps)
                break
            begin = time.time()
            row = self.train_step()
            lengths.append(time.time() - begin)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", k=f"{row['mean_k']:.2f}", kl=f"{row['kl']:.4f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        if self.validation and self.validations and self.validations[-1]["step"] != self.step:
            self.validate()  # stopped early: the last parameters compete too
        self.save_checkpoint()  # the last step's state (a resume continues from it)
        self._restore_best()
        self.save_final()
        self.policy.release_frozen_layers()
        return self.policy

    def train_step(self) -> dict[str, Any]:
        timer = common.Throughput()
        calls_before, hits_before, misses_before = self.reader.calls, self.reader.hits, self.reader.misses
        batch = self._next_batch()
        rollouts = self.rollout(batch)
        self.rewards(rollouts)
        self.advantages(rollouts)
        stats = self.update(rollouts)
        self.step += 1
        if self.validation and (self.step % self.config.validate_every == 0 or self.step >= self.config.max_steps):
            stats["val_reward"] = self.validate()
            stats["val_best_step"] = self.best["step"] if self.best else None
        requested = (self.reader.hits - hits_before) + (self.reader.misses - misses_before)
        row = {
            "step": self.step,
            **self._rollout_stats(rollouts),
            **stats,
            "reader_calls": self.reader.calls - calls_before,
            "reader_calls_per_query": (self.reader.calls - calls_before) / max(1, len(batch)),
            "cache_hit_rate": (self.reader.hits - hits_before) / requested if requested else 0.0,
            "queries_per_s": timer.rate(len(batch) * self.world),
            "lr": self.scheduler.get_last_lr()[0],
        }
        if self.rank == 0:
            self.metrics.write(row)
        return row

    # ------------------------------------------------------------------ validation
    def validate(self) -> float:
        """The mean reward (context cost included) of the policy's greedy selections on the
        held-out training queries; keeps the parameters when they are the best so far.

        Why: on real data with an LLM reader most of a batch's signal is per-query noise,
        and a trained start (relevance-SFT, a hub cross-encoder) can be walked away from a
        good ranking (measured on HotpotQA: gold recall@3 0.75 -> 0.64 in 12 steps at the
        default rate). The saved model is the best validated one, the start included.
        Every rank validates the same queries with the same parameters."""
        cfg = self.config
        with torch.no_grad():
            selections = self.policy.rerank_batch([ex.query for ex in self.validation],
                                                  [ex.candidates for ex in self.validation],
                                                  top_n=cfg.max_k, min_k=cfg.min_k)  # fmt: skip
        kept = [(ex, tuple(sel.order[: sel.k])) for ex, sel in zip(self.validation, selections)]
        qualities = self._qualities(kept)
        per_query = [qualities[(ex.id, idx)] for ex, idx in kept]
        values = [v for v in per_query if v is not None]
        reward = sum(values) / len(values) if values else float("nan")
        entry = {"step": self.step, "reward": reward, "mean_k": sum(sel.k for sel in selections) / len(selections),
                 "values": per_query}
        if self.best is not None:  # the paired gain over the kept policy (what the rule decides on)
            gain, se, n = paired_gain(per_query, self.best["values"])
            entry["gain_vs_kept"] = {"kept_step": self.best["step"], "mean": gain, "se": se, "n": n}
        self.validations.append(entry)
        if values and (self.best is None or _beats(per_query, self.best["values"], self.config.validation_z)):
            params = {n: p.detach().clone() for n, p in self.policy.named_parameters() if p.requires_grad}
            self.best = {"step": self.step, "reward": reward, "values": per_query, "params": params}
        if self.rank == 0:
            (self.out_dir / "validation.json").write_text(json.dumps(
                {"queries": [ex.id for ex in self.validation], "best_step": self.best["step"] if self.best else None,
                 "validations": self.validations}, indent=2))  # fmt: skip
        return reward

    def _restore_best(self) -> None:
        if self.best is None or self.best["step"] == self.step:
            return
        logger.info("restoring the best validated parameters (step %d of %d)", self.best["step"], self.step)
        with torch.no_grad():
            for name, p in self.policy.named_parameters():
                if name in self.best["params"]:
                    p.copy_(self.best["params"][name])

    # ------------------------------------------------------------------ 1. rollout
    def rollout(self, batch: list[Example]) -> list[QueryRollout]:
        cfg = self.config
        queries = [ex.query for ex in batch]
        cands = [ex.candidates for ex in batch]
        # With gradients on: the first PPO epoch reuses this forward (its ratio is exactly
        # 1), so a step with one epoch costs one forward and one backward.
        with common.autocast(self.device, cfg.bf16):
            live = self.policy.score_pairs(queries, cands)
        ref_scored = self._reference_scores(batch)
        out = []
        for ex, s_live, rs in zip(batch, live, ref_scored):
            s_live = _as_float(s_live)
            s = Scored(s_live.scores.detach(), s_live.hidden.detach())
            selections = ([] if cfg.ranking == "greedy" else
                          self.policy.sample_scored(s, cfg.group_size, self.generator, top_n=cfg.max_k, min_k=cfg.min_k))
            logged = _logged_selection(ex, s, cfg)
            if logged is not None:
                selections.append(logged)  # a rated production selection joins its group
            with torch.no_grad():
                old = self.policy.step_log_probs(s, selections, top_n=cfg.max_k, min_k=cfg.min_k)
                ref = self.reference.step_log_probs(rs, selections, top_n=cfg.max_k, min_k=cfg.min_k)
            weights = torch.ones(len(selections), device=old.values.device)
            if logged is not None:  # it was drawn by the serving policy mu, not by this one
                weights[-1] = importance_weight(float(old.total()[-1]), logged.log_prob, cfg.importance_clip)
            limit = selection_limit(len(ex.candidates), cfg.max_k)
            order = torch.argsort(s.scores, descending=True, stable=True)
            gk = greedy_k(s.scores, s.hidden, self.policy.stop_head, order, min_k=min(cfg.min_k, limit),
                          max_k=cfg.max_k, norm_k=self.policy.settings.max_k)  # fmt: skip
            rollout = QueryRollout(ex, selections, limit, old.values, ref.values, old.mask, greedy_k=gk, live=s_live,
                                   weights=weights, order=order.tolist())  # fmt: skip
            rollout.rank_states = self._rank_states(rollout)
            out.append(rollout)
            if ex.id not in self._ref_orders:  # the reference is frozen: its order never changes
                self._ref_orders[ex.id] = torch.argsort(rs.scores, descending=True, stable=True).tolist()
        return out

    def _reference_scores(self, batch: list[Example]) -> list[Scored]:
        """The frozen reference's scores, computed once per query and kept (small: n
        scores and n pooled states), so a query seen again in a later epoch costs the
        reference no forward pass."""
        todo = list({ex.id: ex for ex in batch if ex.id not in self._ref_scored}.values())
        if todo:
            with torch.no_grad(), common.autocast(self.device, self.config.bf16):
                fresh = self.reference.score_pairs([ex.query for ex in todo], [ex.candidates for ex in todo])
            for ex, rs in zip(todo, fresh):
                self._ref_scored[ex.id] = _as_float(rs)
        return [self._ref_scored[ex.id] for ex in batch]

    # ------------------------------------------------------------------ 2. rewards
    def rewards(self, rollouts: list[QueryRollout]) -> None:
        """Fill each sample's prefix qualities and each query's reference curve, in one
        batched reward call."""
        cfg = self.config
        requests: list[tuple[Example, tuple[int, ...]]] = []
        for r in rollouts:
            if self._needs_reference_curve(r):
                order = self._ref_orders[r.example.id]
                requests += [(r.example, tuple(order[:t])) for t in range(r.limit + 1)]
            requests += [(r.example, prefix + (c,)) for prefix, rest in r.rank_states for c in rest]
            for sel in r.selections:
                lengths = range(0, sel.k + 1) if cfg.reward_mode == "per_prefix" else [sel.k]
                requests += [(r.example, tuple(sel.kept[:t])) for t in lengths]
            requests += [(r.example, tuple(r.greedy_order[:t])) for t in range(self._greedy_curve_length(r))]
        values = self._qualities(requests)
        for r in rollouts:
            r.rank_values = [torch.tensor([_nan_if_none(values[(r.example.id, prefix + (c,))]) for c in rest])
                             for prefix, rest in r.rank_states]  # fmt: skip
            if self._needs_reference_curve(r):
                order = self._ref_orders[r.example.id]
                self._reference_curves[r.example.id] = [
                    values[(r.example.id, tuple(order[:t]))] for t in range(r.limit + 1)
                ]
            r.qualities = []
            for sel in r.selections:
                lengths = range(0, sel.k + 1) if cfg.reward_mode == "per_prefix" else [sel.k]
                r.qualities.append({t: values[(r.example.id, tuple(sel.kept[:t]))] for t in lengths})
            r.greedy_curve = [values[(r.example.id, tuple(r.greedy_order[:t]))] for t in range(self._greedy_curve_length(r))]

    def _needs_reference_curve(self, r: QueryRollout) -> bool:
        """The reference's greedy curve is the baseline of ``baseline='reference'`` only."""
        return self.config.baseline == "reference" and self._reference_curves.get(r.example.id) is None

    def _rank_states(self, r: QueryRollout) -> list[tuple[tuple[int, ...], list[int]]]:
        """ranking 'greedy': the first ``rank_depth`` steps of the greedy ranking, each as its
        greedy prefix and the candidates that could be picked there (all the others)."""
        if self.config.ranking != "greedy":
            return []
        depth = min(self.config.rank_depth, r.limit)
        return [(tuple(r.order[:t]), r.order[t:]) for t in range(depth) if len(r.order) - t > 1]

    def _greedy_labels(self) -> bool:
        cfg = self.config
        return cfg.stop_labels == "greedy" and cfg.reward_mode == "per_prefix" and cfg.stop_loss_weight > 0

    def _greedy_curve_length(self, r: QueryRollout) -> int:
        """Greedy prefixes to score: 0 .. greedy k + stop_lookahead (within the limit),
        so both the decision greedy takes now and the next ones get labels."""
        if not self._greedy_labels():
            return 0
        return min(r.limit, max(r.greedy_k, self.config.min_k) + self.config.stop_lookahead) + 1

    def _qualities(self, requests: list[tuple[Example, tuple[int, ...]]]) -> dict[tuple[str, tuple[int, ...]], float | None]:
        from ..prompts import build_prompt, context_words

        cfg = self.config
        unique = {(ex.id, idx): (ex, idx) for ex, idx in requests}
        items = list(unique.values())
        contexts = [[ex.candidates[i] for i in idx] for ex, idx in items]
        raw = self.reward_fn(
            queries=[ex.query for ex, _ in items],
            contexts=contexts,
            answers=[list(ex.answers) for ex, _ in items],
            reader=self.reader,
            prompts=[build_prompt(ex.query, ctx, cfg.max_words) for (ex, _), ctx in zip(items, contexts)],
            rating=[_rating_for(ex, idx) for ex, idx in items],
            metadata=[ex.metadata for ex, _ in items],
        )
        out = {}
        for key, value, ctx in zip(unique, raw, contexts):
            cost = cfg.context_cost * context_words(ctx, max_words=cfg.max_words)
            out[key] = None if value is None else float(value) - cost
        return out

    # ------------------------------------------------------------------ 3. advantages
    def advantages(self, rollouts: list[QueryRollout]) -> None:
        for r in rollouts:
            r.advantages = torch.zeros_like(r.old_logp)
            if self.config.baseline == "group" or not _usable_curve(self._reference_curves.get(r.example.id)):
                self._group_advantages(r)
            else:
                self._reference_advantages(r)
            r.stop_gains = self._stop_gains(r)
        valid = torch.cat([r.advantages[r.mask] for r in rollouts]) if rollouts else torch.zeros(0)
        # Over the global batch (all ranks): each rank scaling by its own std would step
        # differently from one process over the same batch.
        sigma = common.global_std(valid, self.world)
        if sigma is not None:
            # Scale only: the baselines already centre the advantages, and a shared shift
            # would give every step of every sample the same push.
            for r in rollouts:
                r.advantages = torch.where(r.mask, r.advantages / (sigma + 1e-8), torch.zeros_like(r.advantages))
        self._rank_advantages(rollouts)

    def _rank_advantages(self, rollouts: list[QueryRollout]) -> None:
        """ranking 'greedy': each state's Q values centred on their mean and scaled by the
        batch's standard deviation of those (a state with an unscored candidate is dropped:
        the exact gradient needs every alternative)."""
        for r in rollouts:
            kept = [(state, q) for state, q in zip(r.rank_states, r.rank_values) if not bool(torch.isnan(q).any())]
            r.rank_states, r.rank_values = [s for s, _ in kept], [q - q.mean() for _, q in kept]
        values = [q for r in rollouts for q in r.rank_values]
        centred = torch.cat(values) if values else torch.zeros(0)
        sigma = common.global_std(centred, self.world)
        for r in rollouts:
            r.rank_values = [q / (sigma + 1e-8) if sigma is not None else q * 0.0 for q in r.rank_values]

    def _reference_advantages(self, r: QueryRollout) -> None:
        cfg = self.config
        curve = self._reference_curves[r.example.id]
        allowed = [q for t, q in enumerate(curve) if q is not None and t >= min(cfg.min_k, r.limit)]
        best = max(allowed) if allowed else 0.0
        value = [None if q is None else best - q for q in curve]  # V(t): gain still to come
        for g, (sel, quality) in enumerate(zip(r.selections, r.qualities)):
            if quality.get(sel.k) is None:
                r.mask[g] = False  # reward not applicable: this sample teaches nothing
                continue
            rewards, values = self._step_rewards(sel, quality, value, curve, r.limit)
            if rewards is None:
                r.mask[g] = False
                continue
            r.advantages[g, : len(rewards)] = torch.tensor(_gae(rewards, values, cfg.gamma, cfg.gae_lambda))

    def _step_rewards(self, sel, quality, value, curve, limit):
        """Per-step rewards and state values (the last value is the terminal state's, 0)."""
        steps = sel.k + (1 if sel.k < limit else 0)  # picks, plus the stop when chosen
        if self.config.reward_mode == "per_prefix":
            if any(quality.get(t) is None for t in range(sel.k + 1)) or any(v is None for v in value[: steps]):
                return None, None
            rewards = [quality[t + 1] - quality[t] for t in range(sel.k)] + [0.0] * (steps - sel.k)
            values = [value[t] for t in range(steps)] + [0.0]
        else:
            base = max((q for q in curve if q is not None), default=0.0)
            rewards = [0.0] * (steps - 1) + [quality[sel.k]]
            values = [base] * steps + [0.0]
        return rewards, values

    def _group_advantages(self, r: QueryRollout) -> None:
        """Leave-one-out over the group, step by step (unbiased: each sample's baseline
        comes from the other, independent samples of the same query).

        The return from step t is what the rest of the sample earned, Q(k) - Q(t) with
        per-prefix qualities (the final Q(k) in terminal mode, where Q(t) is unknown); the
        baseline at step t is the mean return of the other samples from the same step,
        0 for a sample that had already stopped there (it earns nothing more).
        """
        per_prefix = self.config.reward_mode == "per_prefix"
        returns: list[list[float] | None] = []
        for sel, q in zip(r.selections, r.qualities):
            steps = sel.k + (1 if sel.k < r.limit else 0)
            known = range(sel.k + 1) if per_prefix else [sel.k]
            if any(q.get(t) is None for t in known):
                returns.append(None)
            elif per_prefix:
                returns.append(_returns_to_go([q[t + 1] - q[t] for t in range(sel.k)], steps, self.config.gamma))
            else:
                returns.append([q[sel.k]] * steps)
        width = r.advantages.shape[1]
        for g, own in enumerate(returns):
            others = [ret for j, ret in enumerate(returns) if j != g and ret is not None]
            if own is None or not others:
                r.mask[g] = False
                continue
            for t in range(min(len(own), width)):
                # a sample that had stopped before step t earns nothing more (0); in
                # terminal mode its final quality stands for every step
                pad = 0.0 if per_prefix else None
                base = [ret[t] if t < len(ret) else (pad if pad is not None else ret[-1]) for ret in others]
                r.advantages[g, t] = own[t] - sum(base) / len(base)

    def _stop_gains(self, r: QueryRollout) -> torch.Tensor | None:
        """What stopping would have gained, as STOP labels (:func:`stop_objective` turns
        them into labels and weights).

        ``stop_labels='greedy'`` (one row, the greedy ranking's steps): stopping after t
        greedy picks gives Q(t); going on gives at best the best of the next
        ``stop_lookahead`` greedy prefixes. That is the decision ``rerank`` takes. A
        sampled continuation's next pick is a draw from the policy, usually worse than
        its best remaining passage, so labels from samples pay stopping too often.

        ``'sampled'`` (one row per sample): at every step t where a sample went on,
        stopping would have given Q(t), going on gave Q(k)."""
        if self.config.reward_mode != "per_prefix" or self.config.stop_loss_weight == 0:
            return None
        if self._greedy_labels():
            return _greedy_stop_gains(r.greedy_curve, min(self.config.min_k, r.limit), r.limit,
                                      r.old_logp.new_zeros(1, r.old_logp.shape[1]))
        gains = torch.full_like(r.old_logp, float("nan"))
        for g, (sel, q) in enumerate(zip(r.selections, r.qualities)):
            if any(q.get(t) is None for t in range(sel.k + 1)):
                continue
            for t in range(min(self.config.min_k, r.limit), sel.k):
                gains[g, t] = q[t] - q[sel.k]
        return gains

    # ------------------------------------------------------------------ 4./5. loss and step
    def update(self, rollouts: list[QueryRollout]) -> dict[str, float]:
        cfg = self.config
        live = [r for r in rollouts if bool(r.mask.any()) or r.rank_states]
        stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0, "stop_loss": 0.0}
        if not live and self.world <= 1:
            for r in rollouts:
                r.live = None
            self.scheduler.step()
            return stats
        for epoch in range(cfg.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            scored: list[Scored] = []
            if live:
                if epoch == 0:
                    scored = [r.live for r in live]
                else:
                    with common.autocast(self.device, cfg.bf16):
                        scored = self.policy.score_pairs([r.example.query for r in live], [r.example.candidates for r in live])
                loss, parts = self.loss(live, scored)
                loss.backward()
            else:  # nothing to learn from on this rank; the other ranks' all-reduces wait for it
                loss, parts = self._idle_loss()
            _sync_gradients(self.policy, self.world)
            norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            before = self._step_log_probs(live, scored, epoch) if cfg.max_step_kl > 0 else None
            saved = [p.detach().clone() for p in self._trained()] if before is not None else None
            self.optimizer.step()
            stats = {"loss": common.global_value(loss, self.world), "grad_norm": norm.item(),
                     **{k: common.global_value(v, self.world) if k != "clip_frac" else v.item() for k, v in parts.items()}}
            if before is not None:
                stats["step_kl"], stats["trust_scale"] = self._trust_region(live, before, saved)
        for r in rollouts:
            r.live = None  # free the rollout's graph
        self.scheduler.step()
        return stats

    def _trained(self) -> list[torch.Tensor]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def _step_log_probs(self, live: list[QueryRollout], scored: list[Scored], epoch: int) -> list[torch.Tensor]:
        """The sampled steps' log-probabilities under the parameters before this optimizer
        step: the rollout's own in the first epoch, else from this epoch's forward."""
        if epoch == 0:
            return [r.old_logp for r in live]
        cfg = self.config
        with torch.no_grad():
            return [self.policy.step_log_probs(Scored(_as_float(s).scores.detach(), _as_float(s).hidden.detach()),
                                               r.selections, top_n=cfg.max_k, min_k=cfg.min_k).values
                    for r, s in zip(live, scored)]  # fmt: skip

    def _trust_region(self, live: list[QueryRollout], before: list[torch.Tensor], saved: list[torch.Tensor]) -> tuple[float, float]:
        """Bound how far one optimizer step moves the policy: the mean KL from the policy
        before the step to the one after, over the batch's sampled steps (k3 estimator,
        samples drawn before), at most ``max_step_kl``. A longer step is shortened along
        its own direction by sqrt(max_step_kl / KL) (KL grows with the step's square).

        Why (an option, off by default): AdamW normalises gradients, so every step has
        about the learning rate's length whatever the batch says. Measured, one step moves
        the policy by KL ~0.001-0.17 on the generated world and ~0.015-0.07 on HotpotQA
        from SFT, so a bound cannot tell the two apart (docs/architecture.md); it is for
        users who raise the rates and want a ceiling on any one step. Returns (the step's
        KL before shortening, the scale used)."""
        cfg = self.config
        terms = []
        with torch.no_grad():
            if live:
                with common.autocast(self.device, cfg.bf16):
                    after = self.policy.score_pairs([r.example.query for r in live], [r.example.candidates for r in live])
                for r, s, b in zip(live, after, before):
                    new = self.policy.step_log_probs(_as_float(s), r.selections, top_n=cfg.max_k, min_k=cfg.min_k).values
                    d = (new - b)[r.mask]
                    terms.append(torch.exp(d) - 1 - d)
            measured = torch.cat(terms) if terms else torch.zeros(0, device=self.device)
            kl = common.global_value(common.global_mean(measured, self.world), self.world)
            if not kl > cfg.max_step_kl:  # also when nothing was measured (nan)
                return kl, 1.0
            scale = (cfg.max_step_kl / kl) ** 0.5
            for p, old in zip(self._trained(), saved):
                p.copy_(old + scale * (p - old))
        return kl, scale

    def loss(self, rollouts: list[QueryRollout], scored: list[Scored]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO-clip + beta * KL to the reference + the STOP objective (weighted)."""
        cfg = self.config
        pg_terms, kl_terms, clipped, stop_logits, stop_gains = [], [], [], [], []
        greedy = self._greedy_labels()
        for r, s in zip(rollouts, scored):
            # Where the greedy ranking has STOP labels, the policy gradient trains the
            # ranking only (its STOP factor would carry the sampled continuations' bias);
            # where the reward could not label it, the policy gradient still trains STOP.
            labelled_here = greedy and r.stop_gains is not None and bool((~torch.isnan(r.stop_gains)).any())
            # the greedy ranking rides along as one more row: one STOP-head pass for both
            rows = r.selections + ([_greedy_selection(r)] if labelled_here else [])
            steps = self.policy.step_log_probs(_as_float(s), rows, top_n=cfg.max_k, min_k=cfg.min_k,
                                               stop_grad=not labelled_here)
            G = len(r.selections)
            new, mask = steps.values[:G], r.mask
            ratio = torch.exp(new - r.old_logp)
            adv = r.advantages
            unclipped = ratio * adv
            bounded = torch.clamp(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv
            # a logged selection's terms count its importance weight times (1 for samples)
            w = r.weights[:, None].expand_as(new) if r.weights is not None else torch.ones_like(new)
            pg_terms.append((-torch.minimum(unclipped, bounded) * w)[mask])
            log_ratio_ref = r.ref_logp - new
            kl_terms.append(((torch.exp(log_ratio_ref) - log_ratio_ref - 1) * w)[mask])
            clipped.append(((ratio - 1).abs() > cfg.clip_eps)[mask].float())
            if r.rank_states:  # ranking 'greedy': one exact term per enumerated state
                objective, divergence = self._rank_terms(r, _as_float(s).scores)
                pg_terms.append(objective)
                kl_terms.append(divergence)
            if r.stop_gains is not None:
                odds = steps.stop_log_odds[G:] if labelled_here else steps.stop_log_odds
                labelled = ~torch.isnan(r.stop_gains) & torch.isfinite(odds)
                if bool(labelled.any()):
                    stop_logits.append(odds[labelled])
                    stop_gains.append(r.stop_gains[labelled])
        # Means over the global batch (common.global_mean), so ranks holding more steps
        # weigh as much as one process would give them; with one process, plain means.
        pg = common.global_mean(torch.cat(pg_terms), self.world)
        kl = common.global_mean(torch.cat(kl_terms), self.world)
        logits = torch.cat(stop_logits) if stop_logits else pg.new_zeros(0)
        gains = torch.cat(stop_gains) if stop_gains else pg.new_zeros(0)
        # The weights' scale is the whole batch's mean |gain|, so ranks weigh alike.
        scale = common.global_average(gains.abs(), self.world)
        stop = common.global_mean(stop_objective(logits, gains, scale), self.world)
        loss = pg + cfg.kl_beta * kl + cfg.stop_loss_weight * stop
        clip = torch.cat(clipped)
        parts = {"kl": kl.detach(), "clip_frac": clip.mean() if clip.numel() else clip.new_zeros(()),
                 "stop_loss": stop.detach()}
        return loss, parts

    def _rank_terms(self, r: QueryRollout, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ranking 'greedy': per enumerated state, minus the expected (scaled) reward of the
        pick, sum over c of pi(c) * Q(c), whose gradient is the exact policy gradient of that
        step (every alternative scored: no sampling noise; a state where the reader prefers
        no candidate gives no gradient), and the exact KL of the pick distribution to the
        reference's. pi is the policy's pick distribution given that it goes on (softmax of
        the remaining candidates' scores; STOP has its own objective)."""
        reference = self._ref_scored[r.example.id].scores.to(scores.device)
        objectives, divergences = [], []
        for (_, rest), q in zip(r.rank_states, r.rank_values):
            idx = torch.as_tensor(rest, device=scores.device)
            log_pi = torch.log_softmax(scores[idx], -1)
            log_ref = torch.log_softmax(reference[idx], -1)
            pi = log_pi.exp()
            objectives.append(-(pi * q.to(pi)).sum())
            divergences.append((pi * (log_pi - log_ref)).sum())
        return torch.stack(objectives), torch.stack(divergences)

    def _idle_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A rank with no usable sample: a zero loss, joining loss()'s four all-reduces
        in the same order."""
        empty = torch.zeros(0, device=self.device)
        common.global_mean(empty, self.world)  # pg
        common.global_mean(empty, self.world)  # kl
        common.global_average(empty, self.world)  # the STOP weights' scale
        common.global_mean(empty, self.world)  # stop
        zero = torch.zeros((), device=self.device)
        return zero, {"kl": zero, "clip_frac": zero, "stop_loss": zero}

    # ------------------------------------------------------------------ data order
    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        return order[self.rank :: self.world] or order  # data-parallel: each rank its shard

    def _next_batch(self) -> list[Example]:
        batch = []
        while len(batch) < self.config.queries_per_step:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
            batch.append(self.examples[self._order[self.position]])
            self.position += 1
        return batch

    # ------------------------------------------------------------------ metrics, saving
    def _rollout_stats(self, rollouts: list[QueryRollout]) -> dict[str, float]:
        from ..prompts import context_words

        finals, ks, words = [], [], []
        for r in rollouts:
            if not r.selections:  # ranking 'greedy' draws no samples: report the greedy selection
                ks.append(r.greedy_k)
                words.append(context_words([r.example.candidates[i] for i in r.order[: r.greedy_k]],
                                           max_words=self.config.max_words))  # fmt: skip
                if r.greedy_k < len(r.greedy_curve) and r.greedy_curve[r.greedy_k] is not None:
                    finals.append(r.greedy_curve[r.greedy_k])
            for sel, q in zip(r.selections, r.qualities):
                ks.append(sel.k)
                words.append(context_words(sel.select(r.example.candidates), max_words=self.config.max_words))
                if q.get(sel.k) is not None:
                    finals.append(q[sel.k])
        adv = torch.cat([r.advantages[r.mask] for r in rollouts]) if rollouts else torch.zeros(0)
        return {
            "reward_mean": common.mean(finals) if finals else 0.0,
            "reward_std": common.std(finals),
            "mean_k": common.mean(ks),
            "greedy_k": common.mean([r.greedy_k for r in rollouts]),
            "context_words": common.mean(words),
            "advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
            "samples_scored": len(finals),
        }

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": common.rng_state(self.generator),
            "run_id": self.run_id,
            "best": self.best,
            "validations": self.validations,
            # The frozen reference's per-query results, kept as computed: scored again in
            # other batches after a resume, they could differ in the last bit.
            "reference": {
                "scores": {qid: s.scores for qid, s in self._ref_scored.items()},
                "hidden": {qid: s.hidden for qid, s in self._ref_scored.items()},
                "orders": self._ref_orders,
                "curves": self._reference_curves,
            },
        }

    def save_checkpoint(self) -> Path | None:
        if self.rank != 0:
            return None
        return common.save_checkpoint(
            self.out_dir, self.step, self.policy, self._state(), self._save_model, run_id=self.run_id
        )

    def _resume(self) -> None:
        # The newest checkpoint that verifies; a damaged one is skipped with a warning.
        found = common.load_latest_checkpoint(self.out_dir, self.policy)
        if found is None:
            logger.info("no checkpoint under %s: starting from step 0", self.out_dir)
            self.metrics.truncate_after(0)  # steps logged without a checkpoint are redone
            return
        checkpoint, state = found
        self.run_id = state.get("run_id") or common.checkpoint_run(checkpoint) or self.run_id
        reference = state.get("reference") or {}
        hidden = reference.get("hidden", {})
        self._ref_scored = {
            qid: Scored(scores.to(self.device), hidden[qid].to(self.device))
            for qid, scores in reference.get("scores", {}).items()
        }
        self._ref_orders = dict(reference.get("orders", {}))
        self._reference_curves = dict(reference.get("curves", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        common.set_rng_state(state["rng"], self.generator)
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.best, self.validations = state.get("best"), list(state.get("validations", []))
        self._order = self._epoch_order(self.epoch)
        self.metrics.truncate_after(self.step)
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    def _save_model(self, directory: Path) -> None:
        # The STOP head was trained up to max_k only: rerank's default cap from now on.
        self.policy.settings.default_top_n = self.config.max_k
        self.policy.fresh_parameters = set()
        if not self.config.lora:
            self.policy.save_pretrained(directory)
            return
        merged = copy.deepcopy(self.policy)
        merged.scorer = merged.scorer.merge_and_unload()
        merged.save_pretrained(directory)

    def save_final(self) -> Path | None:
        if self.rank != 0:
            return None
        final = self.out_dir / "model"
        self._save_model(final)
        common.plot_curves(self.metrics.rows, CURVE_KEYS, self.out_dir / "curves.png", "RRPO training")
        return final

    def _write_config(self) -> None:
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(config_to_dict(self.config), indent=2))


# ---------------------------------------------------------------------- helpers
def paired_gain(new: list[float | None], best: list[float | None]) -> tuple[float, float, int]:
    """(mean, standard error, count) of ``new - best`` over the queries both scored
    (standard error 0 with fewer than two; mean nan with none)."""
    diffs = [a - b for a, b in zip(new, best) if a is not None and b is not None]
    if not diffs:
        return float("nan"), 0.0, 0
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return mean, 0.0, 1
    return mean, (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5, len(diffs)


def _beats(new: list[float | None], best: list[float | None], z: float) -> bool:
    """Whether ``new`` validates better than ``best``: the mean paired gain over the
    queries both scored exceeds ``z`` standard errors of it (a 32-query validation is
    noisy; a change that only wins by noise should not replace what is kept)."""
    mean, se, n = paired_gain(new, best)
    return n > 0 and mean > 0 and mean > z * se


def hold_out(examples: list[Example], n: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(training, validation): ``n`` examples drawn at random (seeded) to validate on,
    when there are at least 4n; otherwise all train and none validate."""
    if n <= 0 or len(examples) < 4 * n:
        return examples, []
    chosen = set(random.Random(seed * 7_919 + 1).sample(range(len(examples)), n))
    return ([ex for i, ex in enumerate(examples) if i not in chosen],
            [ex for i, ex in enumerate(examples) if i in chosen])  # fmt: skip


def _check_examples(examples: Sequence[Example]) -> list[Example]:
    examples = list(examples)
    if not examples:
        raise ValueError("examples: the training data is empty")
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise TypeError(f"examples[{i}] must be an rrpo.Example, got {type(ex).__name__}")
        if not ex.candidates:
            raise ValueError(f"examples[{i}] ({ex.id!r}) has no candidates")
    # Reference scores, curves and cached rewards are keyed by the id: two questions
    # sharing one would silently share them.
    first: dict[str, int] = {}
    for i, ex in enumerate(examples):
        if ex.id in first:
            raise ValueError(
                f"examples[{first[ex.id]}] and examples[{i}] share the id {ex.id!r}: example ids must be unique"
            )
        first[ex.id] = i
    return examples


def stop_objective(logits: torch.Tensor, gains: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Per-decision STOP losses from the STOP log-odds and the gain of stopping.

    Binary cross-entropy with label "stopping was at least as good" (gain >= 0),
    each decision weighted by |gain| / ``scale`` (default: the mean |gain| here;
    the trainer passes the whole batch's over all ranks), so weights average 1. Unweighted,
    the STOP head would learn how *often* stopping wins, and stop wherever most
    continuations cost a little context, even where the rare one that finds the answer
    is worth far more (measured: a real reader collapsed to k = 1). Weighted, the
    optimum P(stop) = E[gain+] / E[|gain|] is above 1/2 exactly when the expected gain of
    stopping is positive: the head stops when going on does not pay on average.
    """
    gains = gains.detach()
    weights = gains.abs()
    if scale is None:
        scale = float(weights.mean()) if weights.numel() else 0.0
    if scale == 0.0:  # every continuation tied with stopping: nothing to learn
        return logits * 0.0
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, (gains >= 0).to(logits.dtype), reduction="none")
    return loss * weights / scale


def _greedy_stop_gains(curve: list[float | None], first: int, limit: int, like: torch.Tensor) -> torch.Tensor:
    """Gains (shaped and placed like ``like``, one row) of stopping after t greedy picks:
    Q(t) minus the best Q of the longer prefixes scored (nan where Q is unknown or STOP
    is not a choice)."""
    gains = torch.full_like(like, float("nan"))
    for t in range(first, min(limit, len(curve) - 1)):
        later = [q for q in curve[t + 1 :] if q is not None]
        if curve[t] is not None and later:
            gains[0, t] = curve[t] - max(later)
    return gains


def _greedy_selection(r: QueryRollout) -> Selection:
    """The greedy ranking as a selection that keeps every scored prefix (its steps'
    STOP log-odds are what the greedy labels fit)."""
    k = max(len(r.greedy_curve) - 1, 0)
    return Selection(order=list(r.greedy_order), k=k, scores=[], stopped=False)


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def _as_float(s: Scored) -> Scored:
    return Scored(s.scores.float(), s.hidden.float())


def _usable_curve(curve: list[float | None] | None) -> bool:
    return curve is not None and all(q is not None for q in curve)


def _returns_to_go(gains: list[float], steps: int, gamma: float) -> list[float]:
    """Discounted sums of the per-pick gains from each step on (the stop step, if any,
    earns nothing more); with gamma = 1 the return from step t is Q(k) - Q(t)."""
    out, running = [0.0] * steps, 0.0
    for t in reversed(range(steps)):
        running = (gains[t] if t < len(gains) else 0.0) + gamma * running
        out[t] = running
    return out


def _gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Generalised advantage estimation; ``values`` has one more entry (the next state)."""
    adv, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * values[t + 1] - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv


def _rating_for(ex: Example, idx: tuple[int, ...]) -> float | None:
    """A user's rating is about the passages that were actually shown: it applies to
    that context only."""
    logged = ex.metadata.get("kept_ids")
    rating = ex.metadata.get("rating")
    if rating is None or logged is None:
        return None
    return rating if [ex.candidates[i].id for i in idx] == list(logged) else None


def _logged_selection(ex: Example, scored: Scored, cfg: RRPOConfig) -> Selection | None:
    """The selection a live pipeline made, when the example is a rated feedback record.
    Its ``log_prob`` is the behaviour log-prob the record logged (log mu under the
    serving policy), or None when the record has none (then it counts as on-policy)."""
    logged = ex.metadata.get("kept_ids")
    if ex.metadata.get("rating") is None or not logged:
        return None
    index = {c.id: i for i, c in enumerate(ex.candidates)}
    if any(i not in index for i in logged) or not cfg.min_k <= len(logged) <= cfg.max_k:
        return None
    kept = [index[i] for i in logged]
    scores = scored.scores.tolist()
    rest = sorted((i for i in range(len(scores)) if i not in set(kept)), key=lambda i: -scores[i])
    served = Propensity.from_metadata(ex.metadata)
    # mu is over the list the server ranked: another list (deduplicated) has another mu
    behaviour = served.behaviour_log_prob if served is not None and served.candidates == len(ex.candidates) else None
    return Selection(order=kept + rest, k=len(kept), scores=scores, log_prob=behaviour)


def _apply_lora(policy: Reranker, cfg: RRPOConfig) -> None:
    if policy.is_bi_encoder:  # peft would wrap the two towers as one sequence classifier
        raise ValueError("lora trains cross-encoders; a bi-encoder trains its query tower: use train_top_layers")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("LoRA training needs peft: pip install 'rrpo[train]'") from err
    lora = LoraConfig(task_type="SEQ_CLS", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear")
    policy.scorer = get_peft_model(policy.scorer, lora)


def _pick_device(device: str | None, rank: int) -> str:
    from ..models import best_device

    chosen = best_device(device)
    if chosen == "cuda" and torch.cuda.device_count() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    return chosen


# Data parallel: shared with the SFT trainer (common.py says why there is no DDP wrapper).
_distributed_rank = common.distributed_rank
_sync_gradients = common.sync_gradients
