"""Learning from what a live pipeline did: logged propensities, exploration, pseudo-gold.

A deployed reranker chooses a selection per query; weeks later a rated record of it
reaches the trainer, whose policy has moved since. To learn from it without bias the
trainer needs the probability with which the *serving* procedure chose that selection
(its propensity, ``mu``), not the current policy's. This module:

* serves a query and returns that propensity (:func:`logged_rerank`), greedily or with
  opt-in exploration (:class:`Exploration`: with probability ``epsilon`` a sample from
  the Plackett-Luce-with-STOP policy at ``temperature``, else the greedy selection);
* stores it in the record (``metadata["rrpo_propensity"]``, :class:`Propensity`);
* gives the trainer a clipped importance weight ``min(pi / mu, clip)``
  (:func:`importance_weight`);
* turns rated records into training examples whose ``answers`` are the rated-good
  answers (pseudo-gold), so a gold-answer reward can score every alternative selection
  offline (:func:`feedback_examples`).

The assumptions (docs/architecture.md, "Off-policy feedback"): the logged candidate
list is the one the trainer ranks, the rating depends only on the kept passages, and
``mu > 0`` wherever the current policy puts mass for the estimate to be unbiased —
greedy serving (``mu = 1`` on one selection) gives a biased, support-limited estimate.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from .types import Candidate, Example, FeedbackRecord, Selection

PROPENSITY_KEY = "rrpo_propensity"  # record metadata key (and LlamaIndex event tag)

# Rewards that compare the reader with gold answers: they need pseudo-gold on feedback.
GOLD_REWARDS = ("exact_match", "token_f1", "contains_answer", "gold_loglik")


@dataclass(frozen=True)
class Exploration:
    """Opt-in exploration at serving time. ``epsilon``: the chance of serving a sample
    instead of the greedy selection (0 = always greedy, 1 = always a sample);
    ``temperature``: of that sample (>1 flatter, <1 closer to greedy); ``seed``: for
    reproducible traffic (None = fresh randomness)."""

    epsilon: float = 0.0
    temperature: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise ValueError(f"explore_epsilon must be in [0, 1], got {self.epsilon}")
        if not float(self.temperature) > 0.0 or not math.isfinite(float(self.temperature)):
            raise ValueError(f"explore_temperature must be a positive number, got {self.temperature}")

    @property
    def active(self) -> bool:
        return self.epsilon > 0.0


@dataclass
class Propensity:
    """How a served selection was chosen. ``behaviour_log_prob``: log mu, the
    probability that the serving procedure (greedy or exploring) chose it (0.0 for
    greedy: it was certain); ``log_prob``: log pi under the serving policy itself at
    temperature 1 (None when it was not computed); ``candidates``: how many candidates
    these probabilities are over (the trainer checks it against the record)."""

    behaviour_log_prob: float
    log_prob: float | None
    explored: bool
    epsilon: float
    temperature: float
    min_k: int
    top_n: int | None
    candidates: int
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> "Propensity | None":
        """The propensity a record carries, or None (an older record, or unreadable)."""
        data = (metadata or {}).get(PROPENSITY_KEY)
        if not isinstance(data, Mapping):
            return None
        try:
            return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})
        except TypeError:
            return None


class ExplorationRandomness:
    """The coin and the sampler's generator of one adapter (a lock: queries may arrive
    from many threads)."""

    def __init__(self, seed: int | None) -> None:
        import torch

        self._lock = threading.Lock()
        self._coin = random.Random(seed)
        self._generator = torch.Generator()
        self._generator.manual_seed(seed if seed is not None else random.SystemRandom().getrandbits(62))

    def draw(self, epsilon: float) -> tuple[bool, Any]:
        with self._lock:
            return self._coin.random() < epsilon, self._generator


def _serving_limits(reranker: Any, n: int, top_n: int | None, min_k: int, dynamic_k: bool) -> tuple[int, int | None]:
    """min_k and top_n of the Plackett-Luce-with-STOP distribution the served selection
    is drawn from: with ``dynamic_k=False`` exactly ``top_n`` are kept, so no STOP."""
    from .plackett_luce import selection_limit

    if top_n is None and dynamic_k:
        top_n = reranker.settings.default_top_n  # as rerank_batch: the cap training used
    min_k, top_n = reranker._limits(n, top_n, min_k)
    if not dynamic_k:
        min_k = selection_limit(n, top_n)
    return min_k, top_n


def _log_probs(reranker: Any, scored: Any, picks: list[list[int]], min_k: int, top_n: int | None,
               temperature: float = 1.0) -> list[float]:
    from .plackett_luce import step_log_probs

    steps = step_log_probs(scored.scores, scored.hidden, reranker.stop_head, picks, min_k=min_k, max_k=top_n,
                           norm_k=reranker.settings.max_k, temperature=temperature)  # fmt: skip
    return [float(v) for v in steps.total()]


def _sampled(reranker: Any, scored: Any, min_k: int, top_n: int | None, temperature: float, generator: Any) -> Selection:
    from .plackett_luce import sample_picks, selection_limit
    from .policy import _complete_order

    picks = sample_picks(scored.scores, scored.hidden, reranker.stop_head, 1, min_k=min_k, max_k=top_n,
                         norm_k=reranker.settings.max_k, generator=generator, temperature=temperature)[0]  # fmt: skip
    scores = scored.scores.float().tolist()
    limit = selection_limit(len(scores), top_n)
    return Selection(order=_complete_order(picks, scores), k=len(picks), scores=scores, stopped=len(picks) < limit)


def behaviour_log_prob(greedy_kept: Sequence[int], kept: Sequence[int], epsilon: float, sample_log_prob: float) -> float:
    """log mu of the served selection under the epsilon-mixture
    ``mu = (1 - epsilon) * [selection == greedy] + epsilon * pi_T(selection)``."""
    mixed = epsilon * math.exp(sample_log_prob)
    if list(kept) == list(greedy_kept):
        mixed += 1.0 - epsilon
    return math.log(mixed) if mixed > 0 else float("-inf")


def logged_rerank(
    reranker: Any,
    query: str,
    candidates: Sequence[Candidate],
    *,
    top_n: int | None,
    min_k: int,
    dynamic_k: bool,
    exploration: Exploration | None = None,
    randomness: ExplorationRandomness | None = None,
    batch_size: int | None = None,
) -> tuple[Selection, Propensity]:
    """Serve one query with an rrpo :class:`~rrpo.Reranker` and say how the selection
    was chosen. One forward pass: the greedy selection, the sample (when exploring) and
    their probabilities all come from the same scores."""
    import torch

    exploration = exploration or Exploration()
    cands = reranker._check(query, candidates)
    explored, generator = False, None
    if exploration.active:
        explored, generator = (randomness or ExplorationRandomness(exploration.seed)).draw(exploration.epsilon)
    with torch.inference_mode():
        scored = reranker.score_pairs([query], [cands], batch_size)[0]
        greedy = _greedy(reranker, scored, top_n, min_k, dynamic_k)
        low, cap = _serving_limits(reranker, len(cands), top_n, min_k, dynamic_k)
        chosen = _sampled(reranker, scored, low, cap, exploration.temperature, generator) if explored else greedy
        policy_lp = _log_probs(reranker, scored, [chosen.kept], low, cap)[0]
        sample_lp = policy_lp
        if exploration.active and exploration.temperature != 1.0:
            sample_lp = _log_probs(reranker, scored, [chosen.kept], low, cap, exploration.temperature)[0]
    # greedy serving was certain (mu = 1); exploring mixes greedy and the sampler
    mu = behaviour_log_prob(greedy.kept, chosen.kept, exploration.epsilon, sample_lp) if exploration.active else 0.0
    if exploration.active:
        chosen.log_prob = mu
    return chosen, Propensity(
        behaviour_log_prob=mu, log_prob=policy_lp, explored=chosen.kept != greedy.kept,
        epsilon=float(exploration.epsilon), temperature=float(exploration.temperature),
        min_k=low, top_n=cap, candidates=len(cands),
    )  # fmt: skip


def _greedy(reranker: Any, scored: Any, top_n: int | None, min_k: int, dynamic_k: bool) -> Selection:
    if top_n is None and dynamic_k:
        top_n = reranker.settings.default_top_n  # as rerank_batch does
    return reranker._greedy(scored, top_n, min_k, dynamic_k)


def greedy_propensity(selection: Selection, options: Any, n: int) -> Propensity:
    """A greedy selection served without its scores at hand (e.g. micro-batched): it was
    certain (log mu = 0); the policy's own log-prob is unknown."""
    return Propensity(behaviour_log_prob=0.0, log_prob=None, explored=False, epsilon=0.0, temperature=1.0,
                      min_k=min(options.min_k, n), top_n=options.top_n, candidates=n)  # fmt: skip


# -- training from such records ------------------------------------------------------------


def importance_weight(policy_log_prob: float, behaviour: float | None, clip: float) -> float:
    """The clipped importance weight ``min(pi / mu, clip)`` of a logged selection (1.0
    when the record carries no propensity: it is then treated as on-policy, as before)."""
    if behaviour is None or not math.isfinite(behaviour):
        return 1.0
    return min(math.exp(min(policy_log_prob - behaviour, 50.0)), clip)


def reward_needs_gold(reward: Any) -> str:
    """``"all"`` when every (non-cost) part of the reward compares with gold answers,
    ``"some"`` when some part does, ``"none"`` otherwise (rating, judge)."""
    from .rewards import get_reward

    if isinstance(reward, str) and reward.strip() in GOLD_REWARDS:
        return "all"
    fn = get_reward(reward)
    parts = getattr(fn, "parts", None)
    if parts is None:
        return "all" if getattr(fn, "__name__", "") in GOLD_REWARDS else "none"
    named = [getattr(part, "__name__", "") for part, _ in parts if not getattr(part, "is_cost", False)]
    hits = [name in GOLD_REWARDS for name in named]
    return "all" if hits and all(hits) else "some" if any(hits) else "none"


def pseudo_gold(record: FeedbackRecord, good_rating: float) -> list[str]:
    """The record's answer as a pseudo-gold answer when a user rated it good (rating at
    least ``good_rating``); else none."""
    answer = (record.answer or "").strip()
    if record.rating is None or record.rating < good_rating or not answer:
        return []
    return [answer]


def feedback_examples(records: Iterable[FeedbackRecord], reward: Any = None, good_rating: float = 1.0,
                      pseudo: str = "auto") -> list[Example]:
    """Training examples from feedback records. ``pseudo``: ``"on"`` gives each rated-good
    record its answer as the gold answer; ``"auto"`` does so when the reward compares
    with gold answers (and, when every part of it does, leaves out records without
    one: no reward could score them); ``"off"`` never."""
    if pseudo not in ("auto", "on", "off"):
        raise ValueError(f"pseudo-gold must be auto, on or off, got {pseudo!r}")
    needs = reward_needs_gold(reward) if reward is not None else "none"
    use = pseudo == "on" or (pseudo == "auto" and needs != "none")
    out = []
    for record in records:
        example = record.to_example()
        if use:
            example.answers = pseudo_gold(record, good_rating)
            if not example.answers and needs == "all":
                continue
        out.append(example)
    return out
