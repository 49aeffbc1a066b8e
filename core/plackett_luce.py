"""Plackett-Luce over candidate scores, with a STOP action (dynamic k).

A selection is built one step at a time. At step ``t`` (``t`` candidates picked so far)
the remaining candidates compete with a STOP action whose logit ``u_t`` comes from the
:class:`StopHead`. With ``R_t`` the remaining set and ``s_i`` the scores::

    P(pick i | t) = exp(s_i) / Z_t      P(stop | t) = exp(u_t) / Z_t
    Z_t = sum_{j in R_t} exp(s_j) + exp(u_t)   (the u_t term only when t >= min_k)

STOP is not allowed before ``min_k`` picks, and is forced (probability one, no factor)
once ``limit = min(max_k, n)`` candidates are picked. The probability of a selection is
the product of its pick factors and, when it stopped by choice, the stop factor.

Everything here is plain tensor code, batched over ``G`` selections of one query, so the
trainer can take per-step log-probabilities for PPO and the reranker can sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

NEG_INF = float("-inf")


class StopHead(nn.Module):
    """The STOP logit at each step, from what scoring already computed.

    Features (no extra encoder pass): the mean pooled state of the selected pairs, the
    mean pooled state of all candidates (this carries the query), the best remaining
    score, and the step as a fraction of ``max_k``; plus a learned bias per step (steps
    past ``MAX_STEP_BIAS`` share the last one), so a preference for a length is cheap to
    learn while the MLP carries what depends on the query. The last layer and the step
    biases start at zero, so a fresh head gives every step the same logit ``init_bias``.
    """

    MAX_STEP_BIAS = 32

    def __init__(
        self,
        hidden_size: int,
        inner_size: int = 64,
        init_bias: float = 0.0,
        relative: bool = False,
        init_k: float | None = None,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.inner_size = inner_size
        # relative: the head's output is the log-odds of stopping against *all* remaining
        # candidates together (P(stop | t) = sigmoid(h_t)), so it does not depend on the
        # scale of the scores. absolute (round-1 models): the output competes with each
        # remaining score like one more candidate.
        self.relative = relative
        # A relative head also sees the score gap between the best kept candidate and the
        # best remaining one: "the kept passage clearly beats the rest" is a stop signal.
        self.proj = nn.Linear(2 * hidden_size + (3 if relative else 2), inner_size)
        self.out = nn.Linear(inner_size, 1)
        self.step_bias = nn.Parameter(torch.zeros(self.MAX_STEP_BIAS + 1))
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, init_bias)
        if relative and init_k is not None:
            # A fresh head starts with greedy k = init_k and sampled k spread around it:
            # P(stop | t) = sigmoid(t - init_k + 0.5). Starting at max_k (the round-1
            # init) left nothing to learn from about stopping early.
            with torch.no_grad():
                self.step_bias.copy_(torch.arange(self.MAX_STEP_BIAS + 1).float() - float(init_k) + 0.5)

    def forward(
        self,
        selected_mean: torch.Tensor,  # (..., H)
        all_mean: torch.Tensor,  # (..., H)
        best_remaining: torch.Tensor,  # (...)
        step_fraction: torch.Tensor,  # (...)
        step: torch.Tensor,  # (...) long: picks made so far
        gap: torch.Tensor | None = None,  # (...) best kept score - best remaining (0 before any pick)
    ) -> torch.Tensor:
        parts = [selected_mean, all_mean, best_remaining.unsqueeze(-1), step_fraction.unsqueeze(-1)]
        if self.relative:
            parts.append((gap if gap is not None else torch.zeros_like(best_remaining)).unsqueeze(-1))
        features = torch.cat(parts, dim=-1)
        dtype = self.proj.weight.dtype
        logit = self.out(torch.tanh(self.proj(features.to(dtype)))).squeeze(-1).float()
        return logit + self.step_bias[step.clamp(max=self.MAX_STEP_BIAS)].float()


@dataclass
class StepLogProbs:
    """Per-step log-probabilities of G selections: ``values[g, t]`` is the log-prob of
    the action taken at step ``t`` (a pick, or the stop at ``t == k``); ``mask`` marks
    the steps that exist (forced stops have no step)."""

    values: torch.Tensor  # (G, L) float32
    mask: torch.Tensor  # (G, L) bool
    # (G, L) log-odds of stopping against all remaining candidates at each step
    # (-inf where STOP is not allowed); the remaining scores are detached, so a loss
    # on it trains the STOP head only.
    stop_log_odds: torch.Tensor | None = None

    def total(self) -> torch.Tensor:
        return (self.values * self.mask).sum(-1)


def effective_stop_logit(stop_head: StopHead, raw: torch.Tensor, remaining_logits: torch.Tensor) -> torch.Tensor:
    """The STOP logit that competes with the remaining candidates' logits.

    ``raw`` (...) is the head's output, ``remaining_logits`` (..., n) the scores with
    taken candidates at -inf. A relative head's output is the log-odds of stopping,
    so its competing logit is ``raw + logsumexp(remaining)``.
    """
    if not stop_head.relative:
        return raw
    return raw + torch.logsumexp(remaining_logits, -1)


def selection_limit(n: int, max_k: int | None) -> int:
    return n if max_k is None else min(max_k, n)


def _stop_features(hidden: torch.Tensor, before: torch.Tensor, scores: torch.Tensor, norm_k: int):
    """Features for every (selection, step) from the picked-before masks.

    hidden (n, H); before (G, L, n) float, 1 where a candidate was picked before step t.
    """
    count = before.sum(-1, keepdim=True)  # (G, L, 1)
    selected_mean = (before @ hidden.float()) / count.clamp(min=1.0)
    all_mean = hidden.float().mean(0).expand_as(selected_mean)
    remaining_scores = scores.masked_fill(before.bool(), NEG_INF)  # (G, L, n)
    best = remaining_scores.max(-1).values
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    steps = before.sum(-1).long()  # (G, L): picks made before each step
    fraction = steps.float() / max(norm_k, 1)
    kept_best = scores.masked_fill(~before.bool(), NEG_INF).max(-1).values
    gap = torch.where(torch.isfinite(kept_best), kept_best - best, torch.zeros_like(best))
    return selected_mean, all_mean, best, fraction, steps, gap


def step_log_probs(
    scores: torch.Tensor,
    hidden: torch.Tensor,
    stop_head: StopHead,
    picks: list[list[int]],
    *,
    min_k: int,
    max_k: int | None,
    norm_k: int,
    temperature: float = 1.0,
    stop_grad: bool = True,
) -> StepLogProbs:
    """Differentiable per-step log-probabilities of the given picks (one list per selection).

    ``temperature`` divides every logit of a step (the candidates' and STOP's): the
    probabilities of a policy that explores at that temperature (1 = the policy itself).
    ``stop_grad=False`` detaches the STOP logits inside ``values`` (the probabilities are
    unchanged; no gradient reaches the STOP head through them), while ``stop_log_odds``
    keeps its gradient: the trainer fits STOP by its own objective then."""
    n = scores.shape[0]
    limit = selection_limit(n, max_k)
    G = len(picks)
    device = scores.device
    scores = scores.float()
    if limit == 0:
        empty = torch.zeros(G, 0, device=device)
        return StepLogProbs(empty, empty.bool())
    pick_index = torch.full((G, limit), -1, dtype=torch.long, device=device)
    for g, p in enumerate(picks):
        if len(p) > limit:
            raise ValueError(f"selection {g} keeps {len(p)} candidates, more than the limit {limit}")
        if p:
            pick_index[g, : len(p)] = torch.as_tensor(p, device=device)
    ks = torch.as_tensor([len(p) for p in picks], device=device)
    onehot = torch.zeros(G, limit, n, device=device)
    valid = pick_index >= 0
    onehot[valid] = torch.nn.functional.one_hot(pick_index[valid], n).float()
    before = onehot.cumsum(1) - onehot  # picked strictly before step t

    steps = torch.arange(limit, device=device)
    stop_allowed = (steps >= min_k).expand(G, -1)
    cand_logits = scores.expand(G, limit, n).masked_fill(before.bool(), NEG_INF)
    raw_stop = stop_head(*_stop_features(hidden, before, scores, norm_k))  # (G, L)
    stop_logit = effective_stop_logit(stop_head, raw_stop if stop_grad else raw_stop.detach(), cand_logits)
    stop_column = stop_logit.masked_fill(~stop_allowed, NEG_INF).unsqueeze(-1)
    log_z = torch.logsumexp(torch.cat([cand_logits, stop_column], -1) / temperature, -1)  # (G, L)

    pick_scores = scores[pick_index.clamp(min=0)] / temperature
    is_pick = steps.unsqueeze(0) < ks.unsqueeze(1)
    is_stop = (steps.unsqueeze(0) == ks.unsqueeze(1)) & stop_allowed
    values = torch.where(is_pick, pick_scores - log_z, torch.zeros_like(log_z))
    values = torch.where(is_stop, stop_logit / temperature - log_z, values)
    if stop_head.relative:
        log_odds = raw_stop
    else:
        log_odds = raw_stop - torch.logsumexp(cand_logits, -1).detach()  # = stop_logit's, with its gradient
    log_odds = log_odds.masked_fill(~stop_allowed, NEG_INF)
    return StepLogProbs(values, is_pick | is_stop, log_odds)


@torch.no_grad()
def sample_picks(
    scores: torch.Tensor,
    hidden: torch.Tensor,
    stop_head: StopHead,
    num: int,
    *,
    min_k: int,
    max_k: int | None,
    norm_k: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> list[list[int]]:
    """Draw ``num`` selections (lists of picked indices) by Gumbel-max, step by step
    (at ``temperature``: every logit of a step divided by it)."""
    n = scores.shape[0]
    limit = selection_limit(n, max_k)
    device = scores.device
    scores = scores.float()
    picks: list[list[int]] = [[] for _ in range(num)]
    before = torch.zeros(num, 1, n, device=device)
    done = torch.zeros(num, dtype=torch.bool, device=device)
    for t in range(limit):
        remaining = scores.masked_fill(before[:, 0].bool(), NEG_INF)
        raw_stop = stop_head(*_stop_features(hidden, before, scores, norm_k))[:, 0]
        stop_logit = effective_stop_logit(stop_head, raw_stop, remaining)
        if t < min_k:
            stop_logit = torch.full_like(stop_logit, NEG_INF)
        logits = torch.cat([remaining, stop_logit[:, None]], -1) / temperature
        uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-12, 1 - 1e-12).to(device)
        choice = (logits - torch.log(-torch.log(uniform))).argmax(-1)
        done |= choice == n
        for g in torch.nonzero(~done).flatten().tolist():
            idx = int(choice[g])
            picks[g].append(idx)
            before[g, 0, idx] = 1.0
        if bool(done.all()):
            break
    return picks


@torch.no_grad()
def greedy_k(
    scores: torch.Tensor,
    hidden: torch.Tensor,
    stop_head: StopHead,
    order: torch.Tensor,
    *,
    min_k: int,
    max_k: int | None,
    norm_k: int,
) -> int:
    """How many of ``order`` (candidates sorted by score) greedy decoding keeps.

    At each step greedy takes the more probable of the two decisions, stop or go on:
    it stops once ``P(stop) > P(pick any remaining)``, i.e. once the STOP logit beats
    the log-sum-exp of the remaining scores; when it goes on it takes the best remaining
    candidate, so the kept sets are prefixes of the sorted order. All stop logits come
    from one batched head call.
    """
    n = scores.shape[0]
    limit = selection_limit(n, max_k)
    if limit <= min_k:
        return limit
    scores = scores.float()
    prefix = torch.zeros(1, limit, n, device=scores.device)
    for t in range(1, limit):
        prefix[0, t] = prefix[0, t - 1]
        prefix[0, t, order[t - 1]] = 1.0
    raw_stop = stop_head(*_stop_features(hidden, prefix, scores, norm_k))[0]
    sorted_scores = scores[order]
    remaining_lse = torch.logcumsumexp(sorted_scores.flip(0), 0).flip(0)  # lse of order[t:]
    stop_logit = raw_stop + remaining_lse[:limit] if stop_head.relative else raw_stop
    for t in range(min_k, limit):
        if stop_logit[t] > remaining_lse[t]:
            return t
    return limit
