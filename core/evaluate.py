"""Side-by-side evaluation of rerankers with one reader on the same questions.

For every :class:`RerankerSpec` the evaluation selects passages per question, builds the
reader prompt (the same ``rrpo.prompts.build_prompt`` training uses), and records per
question: answer EM / token F1 / contains-answer of the generated answer, the best
gold-answer log-likelihood, gold recall of the kept passages and nDCG@10 of the full
order (where gold flags exist), k, context words and rerank latency. Means, the k
distribution, reader calls and paired-bootstrap differences to a baseline make up the
:class:`EvalReport`, which prints as Markdown and saves as JSON and PNG.

Two reserved reference rows: ``RerankerSpec.none()`` (retrieval order) and
``RerankerSpec.oracle()`` (the gold passages only, where gold flags exist).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .types import Candidate, Example

__all__ = [
    "EvalReport",
    "EvalRow",
    "RerankerSpec",
    "evaluate",
    "gold_recall",
    "ndcg_at_k",
    "paired_bootstrap",
    "percentile",
]

NONE = "none"
ORACLE = "oracle"

# Per-question metrics, in table order; "higher is better" for all but words/k/latency.
METRICS = ("em", "f1", "contains", "loglik", "recall", "recall3", "ndcg10", "k", "words", "latency_ms")
# Metrics whose differences to the baseline get bootstrap intervals.
DIFF_METRICS = ("em", "f1", "contains", "loglik", "recall", "recall3", "ndcg10", "k", "words")


# ------------------------------------------------------------- metrics ---


def gold_recall(kept: Sequence[int], gold: Sequence[bool] | None) -> float | None:
    """Share of the gold passages among the kept ones; None without gold flags or
    when no candidate is gold (nothing to recall)."""
    if gold is None:
        return None
    total = sum(1 for g in gold if g)
    if total == 0:
        return None
    return sum(1 for i in kept if gold[i]) / total


def ndcg_at_k(order: Sequence[int], gold: Sequence[bool] | None, k: int = 10) -> float | None:
    """Binary-gain nDCG@k of a ranking (candidate indices, best first)."""
    if gold is None:
        return None
    total = sum(1 for g in gold if g)
    if total == 0:
        return None
    dcg = sum(1.0 / math.log2(rank + 2) for rank, i in enumerate(order[:k]) if gold[i])
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(total, k)))
    return dcg / ideal


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    pos = (len(values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def paired_bootstrap(
    a: Sequence[float | None], b: Sequence[float | None], n: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over questions with a 95% paired-bootstrap interval.

    Questions where either value is None are left out. Returns ``(mean_diff, lo, hi)``;
    all NaN when no pair is left.
    """
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs equal lengths, got {len(a)} and {len(b)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    diffs = np.array([x - y for x, y in zip(a, b) if x is not None and y is not None], dtype=float)
    if diffs.size == 0:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    chunk = max(1, 2_000_000 // diffs.size)  # bounds memory for large question sets
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        idx = rng.integers(0, diffs.size, size=(stop - start, diffs.size))
        means[start:stop] = diffs[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(diffs.mean()), float(lo), float(hi))


# --------------------------------------------------------------- specs ---


@dataclass
class RerankerSpec:
    """One row of the comparison.

    ``reranker`` None means retrieval order (name ``"none"``), or the gold passages only
    when the name is ``"oracle"``. ``top_n`` is k for fixed k and the most passages kept
    for dynamic k; ``min_k`` the fewest.
    """

    name: str
    reranker: Any = None  # rrpo.Reranker | None; Any keeps torch out of this import
    top_n: int = 3
    min_k: int = 1
    dynamic_k: bool = False

    def __post_init__(self) -> None:
        if self.top_n < 1:
            raise ValueError(f"reranker {self.name!r}: top_n must be >= 1, got {self.top_n}")
        if not 0 <= self.min_k <= self.top_n:
            raise ValueError(
                f"reranker {self.name!r}: min_k must be between 0 and top_n={self.top_n}, "
                f"got {self.min_k}"
            )
        if self.reranker is None and self.dynamic_k:
            raise ValueError(f"reranker {self.name!r}: dynamic k needs a reranker")

    @property
    def is_oracle(self) -> bool:
        return self.reranker is None and self.name == ORACLE

    @classmethod
    def none(cls, top_n: int = 3) -> "RerankerSpec":
        """Retrieval order, first ``top_n`` passages."""
        return cls(name=NONE, top_n=top_n)

    @classmethod
    def oracle(cls) -> "RerankerSpec":
        """The gold passages only (needs gold flags)."""
        return cls(name=ORACLE)


@dataclass
class _Choice:
    """What one spec kept for one question."""

    order: list[int]
    kept: list[int]
    latency_ms: float | None


def _choose(spec: RerankerSpec, example: Example) -> _Choice:
    n = len(example.candidates)
    if spec.is_oracle:
        if example.gold is None:
            raise ValueError(f"the oracle row needs gold flags; example {example.id!r} has none")
        gold = [i for i in range(n) if example.gold[i]]
        rest = [i for i in range(n) if not example.gold[i]]
        return _Choice(order=gold + rest, kept=gold, latency_ms=None)
    if spec.reranker is None:
        order = list(range(n))
        return _Choice(order=order, kept=order[: spec.top_n], latency_ms=None)
    # One query per call, timed: the latency a live pipeline sees for one query
    # (batching queries would measure throughput instead).
    start = time.perf_counter()
    selection = spec.reranker.rerank(
        example.query,
        example.candidates,
        top_n=spec.top_n,
        min_k=spec.min_k,
        dynamic_k=spec.dynamic_k,
    )
    latency = (time.perf_counter() - start) * 1000.0
    return _Choice(order=list(selection.order), kept=list(selection.kept), latency_ms=latency)


def _choose_all(specs: Sequence[RerankerSpec], examples: list[Example]) -> dict[str, list[_Choice]]:
    """Every spec's choice for every example. Specs that share one reranker (top-1..5 and
    dynamic k of one model) score each query once: the scores do not depend on k, only
    the greedy selection does; each gets that one scoring's latency."""
    import torch

    choices: dict[str, list[_Choice]] = {s.name: [] for s in specs}
    groups: dict[int, list[RerankerSpec]] = {}
    for spec in specs:
        shared = spec.reranker is not None and all(
            hasattr(spec.reranker, a) for a in ("score_pairs", "_check", "_greedy")
        )
        if shared:
            groups.setdefault(id(spec.reranker), []).append(spec)
    for ex in examples:
        for spec in specs:
            if spec.reranker is None or id(spec.reranker) not in groups:
                choices[spec.name].append(_choose(spec, ex))
        for group in groups.values():
            model = group[0].reranker
            start = time.perf_counter()
            with torch.inference_mode():
                scored = model.score_pairs([ex.query], [model._check(ex.query, ex.candidates)])[0]
                selections = [model._greedy(scored, s.top_n, s.min_k, s.dynamic_k) for s in group]
            latency = (time.perf_counter() - start) * 1000.0
            for spec, sel in zip(group, selections):
                choices[spec.name].append(_Choice(order=list(sel.order), kept=list(sel.kept), latency_ms=latency))
    return choices


# -------------------------------------------------------------- report ---


@dataclass
class EvalRow:
    """Results of one reranker spec: means, k distribution, costs, per-question values."""

    name: str
    n: int
    means: dict[str, float | None]
    k_distribution: dict[int, int]
    reader_calls: int
    cache_hits: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    per_question: dict[str, list[float | None]] = field(default_factory=dict)
    predictions: list[str] = field(default_factory=list)
    # metric -> (mean difference to the baseline, 95% low, 95% high)
    diffs: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, metric: str) -> float | None:
        return self.means.get(metric)


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * scale:.{digits}f}"


def _fmt_diff(diff: tuple[float, float, float] | None, scale: float, digits: int) -> str:
    if diff is None or math.isnan(diff[0]):
        return "–"
    d, lo, hi = (x * scale for x in diff)
    return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


@dataclass
class EvalReport:
    """All rows of one evaluation, plus how it was run."""

    rows: list[EvalRow]
    question_ids: list[str]
    reader: str
    max_words: int
    baseline: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def row(self, name: str) -> EvalRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row named {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def to_markdown(self) -> str:
        head = (
            "| reranker | EM | F1 | contains | log-lik | gold recall | recall@3 | nDCG@10 | mean k | k dist "
            "| words | reader calls | rerank ms p50/p95 |"
        )
        lines = [
            f"{len(self.question_ids)} questions, reader {self.reader}, passages cut to "
            f"{self.max_words} words. EM / F1 / contains / recall / nDCG in %; gold recall is of "
            "the kept passages, recall@3 of the first 3 in the order (both over questions "
            "with a gold passage among the candidates).",
            "",
            head,
            "|" + "---|" * (head.count("|") - 1),
        ]
        for r in self.rows:
            m = r.means
            k_dist = " ".join(f"{k}:{c}" for k, c in sorted(r.k_distribution.items()))
            latency = (
                f"{_fmt(r.latency_p50_ms)}/{_fmt(r.latency_p95_ms)}" if r.latency_p50_ms is not None else "–"
            )
            lines.append(
                f"| {r.name} | {_fmt(m['em'], 100)} | {_fmt(m['f1'], 100)} | {_fmt(m['contains'], 100)} "
                f"| {_fmt(m['loglik'], 1, 2)} | {_fmt(m['recall'], 100)} | {_fmt(m['recall3'], 100)} | {_fmt(m['ndcg10'], 100)} "
                f"| {_fmt(m['k'], 1, 2)} | {k_dist} | {_fmt(m['words'], 1, 0)} | {r.reader_calls} "
                f"| {latency} |"
            )
        if self.baseline is not None:
            lines += self._diff_table()
        return "\n".join(lines) + "\n"

    def _diff_table(self) -> list[str]:
        lines = [
            "",
            f"Difference to `{self.baseline}`, mean over questions [95% paired bootstrap interval]:",
            "",
            "| reranker | ΔF1 | ΔEM | Δcontains | Δlog-lik | Δgold recall | Δwords |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            if r.name == self.baseline:
                continue
            d = r.diffs
            lines.append(
                f"| {r.name} | {_fmt_diff(d.get('f1'), 100, 1)} | {_fmt_diff(d.get('em'), 100, 1)} "
                f"| {_fmt_diff(d.get('contains'), 100, 1)} | {_fmt_diff(d.get('loglik'), 1, 2)} "
                f"| {_fmt_diff(d.get('recall'), 100, 1)} | {_fmt_diff(d.get('words'), 1, 0)} |"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "reader": self.reader,
            "max_words": self.max_words,
            "baseline": self.baseline,
            "n_questions": len(self.question_ids),
            "question_ids": self.question_ids,
            "info": self.info,
            "rows": [
                {**asdict(r), "k_distribution": {str(k): c for k, c in r.k_distribution.items()}}
                for r in self.rows
            ],
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # NaN (an empty bootstrap) is not JSON; write null instead.
        text = json.dumps(_nan_to_none(self.to_dict()), indent=2, ensure_ascii=False)
        path.write_text(text + "\n", encoding="utf-8")
        return path

    def plot(self, path: str | os.PathLike) -> Path:
        """PNG: F1 against context words (left) and gold-answer log-lik against words
        (right), one labelled point per reranker."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("plotting needs matplotlib: pip install rrpo[eval]") from None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        panels = (("f1", 100.0, "answer F1 (%)"), ("loglik", 1.0, "gold-answer log-likelihood"))
        for ax, (metric, scale, label) in zip(axes, panels):
            for r in self.rows:
                x, y = r.means.get("words"), r.means.get(metric)
                if x is None or y is None:
                    continue
                ax.scatter([x], [y * scale], s=40)
                ax.annotate(r.name, (x, y * scale), textcoords="offset points", xytext=(5, 4), fontsize=8)
            ax.set_xlabel("context words per question (mean)")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        fig.suptitle(f"{len(self.question_ids)} questions, reader {self.reader}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


# ----------------------------------------------------------- evaluation ---


def _cached(reader: Any) -> Any:
    from .readers import CachedReader

    return reader if isinstance(reader, CachedReader) else CachedReader(reader)


def _counter(reader: Any, name: str) -> int:
    return int(getattr(reader, name, 0) or 0)


def _best_logliks(reader: Any, prompts: list[str], answers: list[list[str]]) -> list[float | None]:
    """Best gold-answer log-likelihood per prompt, in one batched reader call."""
    flat_prompts, flat_targets, owner = [], [], []
    for i, (prompt, golds) in enumerate(zip(prompts, answers)):
        for gold in golds:
            flat_prompts.append(prompt)
            flat_targets.append(gold)
            owner.append(i)
    best: list[float | None] = [None] * len(prompts)
    if not flat_prompts:
        return best
    for i, value in zip(owner, reader.loglik(flat_prompts, flat_targets)):
        if value is not None and (best[i] is None or value > best[i]):
            best[i] = float(value)
    return best


def _answer_scores(prediction: str, golds: list[str]) -> tuple[float | None, float | None, float | None]:
    from .rewards import contains_score, exact_match_score, f1_score

    if not golds:
        return None, None, None
    return (
        float(exact_match_score(prediction, golds)),
        float(f1_score(prediction, golds)),
        float(contains_score(prediction, golds)),
    )


def _evaluate_batch(
    spec: RerankerSpec, batch: list[Example], reader: Any, max_words: int,
    choices: list[_Choice] | None = None,
) -> tuple[dict[str, list[float | None]], list[str]]:
    from .prompts import build_prompt, context_words

    if choices is None:
        choices = [_choose(spec, ex) for ex in batch]
    kept_lists: list[list[Candidate]] = [
        [ex.candidates[i] for i in choice.kept] for ex, choice in zip(batch, choices)
    ]
    prompts = [build_prompt(ex.query, kept, max_words) for ex, kept in zip(batch, kept_lists)]
    predictions = list(reader.generate(prompts))
    logliks = _best_logliks(reader, prompts, [ex.answers for ex in batch])
    values: dict[str, list[float | None]] = {m: [] for m in METRICS}
    for ex, choice, kept, pred, ll in zip(batch, choices, kept_lists, predictions, logliks):
        em, f1, contains = _answer_scores(pred, ex.answers)
        values["em"].append(em)
        values["f1"].append(f1)
        values["contains"].append(contains)
        values["loglik"].append(ll)
        values["recall"].append(gold_recall(choice.kept, ex.gold))
        # recall@3 of the order, whatever k was kept: compares orders at equal depth
        values["recall3"].append(gold_recall(choice.order[:3], ex.gold))
        values["ndcg10"].append(ndcg_at_k(choice.order, ex.gold, 10))
        values["k"].append(float(len(choice.kept)))
        values["words"].append(float(context_words(kept, max_words)))
        values["latency_ms"].append(choice.latency_ms)
    return values, predictions


def _evaluate_spec(
    spec: RerankerSpec,
    examples: list[Example],
    reader: Any,
    max_words: int,
    batch_size: int,
    progress: bool,
    choices: list[_Choice] | None = None,
    calls: int | None = None,
) -> EvalRow:
    """One row. ``choices`` (per example) and ``calls`` (the reader calls the row
    needed) come from :func:`_prefetch` when the rows' questions were asked together."""
    from tqdm.auto import tqdm

    calls_before, hits_before = _counter(reader, "calls"), _counter(reader, "hits")
    per_question: dict[str, list[float | None]] = {m: [] for m in METRICS}
    predictions: list[str] = []
    with tqdm(total=len(examples), desc=f"eval {spec.name}", disable=not progress, leave=False) as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            chosen = None if choices is None else choices[start : start + batch_size]
            values, preds = _evaluate_batch(spec, batch, reader, max_words, chosen)
            for metric in METRICS:
                per_question[metric].extend(values[metric])
            predictions.extend(preds)
            bar.update(len(batch))
    k_distribution: dict[int, int] = {}
    for k in per_question["k"]:
        k_distribution[int(k)] = k_distribution.get(int(k), 0) + 1
    latencies = [v for v in per_question["latency_ms"] if v is not None]
    return EvalRow(
        name=spec.name,
        n=len(examples),
        means={m: _mean(per_question[m]) for m in METRICS},
        k_distribution=dict(sorted(k_distribution.items())),
        reader_calls=_counter(reader, "calls") - calls_before if calls is None else calls,
        cache_hits=_counter(reader, "hits") - hits_before,
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        per_question=per_question,
        predictions=predictions,
        settings={
            "top_n": None if spec.is_oracle else spec.top_n,
            "min_k": spec.min_k,
            "dynamic_k": spec.dynamic_k,
            "reranker": getattr(spec.reranker, "name_or_path", None),
        },
    )


def _prefetch(
    specs: Sequence[RerankerSpec],
    examples: list[Example],
    reader: Any,
    max_words: int,
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, list[_Choice]], dict[str, int]]:
    """Every row's selections, and the reader's answers and gold log-liks for all rows'
    prompts of ``batch_size`` questions in one call each (into the cache), so a reader
    that shares prompt prefixes computes the passages common to several rows once (top-1
    .. top-5 and dynamic k of one ranking are prefixes of each other). Returns the
    choices per row and the reader calls each row would have made on its own, in row
    order (what a row-by-row evaluation counts)."""
    from tqdm.auto import tqdm

    from .cache import GENERATE, LOGLIK, cache_key
    from .prompts import build_prompt

    choices = _choose_all(specs, examples)
    calls = {s.name: 0 for s in specs}
    identity = reader.identity
    with tqdm(total=len(examples), desc="eval (all rows)", disable=not progress, leave=False) as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            prompts: list[str] = []
            answers: list[list[str]] = []
            seen: set[str] = set()
            for spec in specs:
                chosen = choices[spec.name][start : start + batch_size]
                mine = [build_prompt(ex.query, [ex.candidates[i] for i in c.kept], max_words) for ex, c in zip(batch, chosen)]
                keys = [cache_key(identity, GENERATE, p) for p in mine]
                keys += [cache_key(identity, LOGLIK, p, g) for p, ex in zip(mine, batch) for g in ex.answers]
                found = reader.cache.get_many(keys)
                fresh = {k for k in keys if k not in found and k not in seen}
                calls[spec.name] += len(fresh)
                seen |= fresh
                prompts += mine
                answers += [list(ex.answers) for ex in batch]
            reader.generate(prompts)
            _best_logliks(reader, prompts, answers)
            bar.update(len(batch))
    return choices, calls


def _check_specs(specs: Sequence[RerankerSpec], examples: Sequence[Example], baseline: str | None) -> None:
    names = [s.name for s in specs]
    if not specs:
        raise ValueError("evaluate needs at least one RerankerSpec")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"reranker names must be unique; repeated: {', '.join(duplicates)}")
    if baseline is not None and baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not among the rerankers: {', '.join(names)}")
    if any(s.is_oracle for s in specs):
        missing = [ex.id for ex in examples if ex.gold is None]
        if missing:
            raise ValueError(
                f"the oracle row needs gold flags; {len(missing)} examples have none "
                f"(first: {missing[0]!r})"
            )


def evaluate(
    examples: Sequence[Example],
    specs: Sequence[RerankerSpec],
    reader: Any,
    max_words: int = 120,
    baseline: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 16,
    share_prompts: bool = True,
) -> EvalReport:
    """Evaluate each spec on the same examples with the same reader.

    ``reader`` follows the rrpo Reader protocol; it is wrapped in a ``CachedReader``
    (unless it is one) so identical prompts (e.g. the oracle and a reranker keeping the
    same passages) cost one call, and ``reader_calls`` counts calls that reached it.
    ``baseline`` names the spec the others are compared against (paired bootstrap).
    ``share_prompts`` asks the reader about all rows' prompts of ``batch_size`` questions
    at once (the same numbers; a prefix-sharing reader computes the passages the rows
    have in common once); ``False`` asks row by row.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate needs at least one example")
    _check_specs(specs, examples, baseline)
    reader = _cached(reader)
    if share_prompts:
        choices, calls = _prefetch(specs, examples, reader, max_words, batch_size, progress)
        rows = [
            _evaluate_spec(s, examples, reader, max_words, batch_size, progress, choices[s.name], calls[s.name])
            for s in specs
        ]
    else:
        rows = [_evaluate_spec(s, examples, reader, max_words, batch_size, progress) for s in specs]
    if baseline is not None:
        base = next(r for r in rows if r.name == baseline)
        for row in rows:
            if row is not base:
                row.diffs = {
                    m: paired_bootstrap(row.per_question[m], base.per_question[m], n_bootstrap, seed)
                    for m in DIFF_METRICS
                }
    return EvalReport(
        rows=rows,
        question_ids=[ex.id for ex in examples],
        reader=str(getattr(reader, "identity", type(reader).__name__)),
        max_words=max_words,
        baseline=baseline,
        info={"n_bootstrap": n_bootstrap, "seed": seed},
    )


def gold_pair_preference(reader: Any, examples: Sequence[Example], max_words: int = 120) -> tuple[float, float, float]:
    """Share of examples where the reader's gold-answer log-likelihood is higher after
    the 2 gold passages than after 2 distractors, and the two mean log-likelihoods
    (examples from :func:`rrpo.data.gold_pair_examples`)."""
    from .data import split_gold
    from .prompts import build_prompt
    from .rewards import gold_loglik

    pairs = [split_gold(ex) for ex in examples]
    queries = [ex.query for ex in examples] * 2
    contexts = [gold for gold, _ in pairs] + [others[:2] for _, others in pairs]
    answers = [list(ex.answers) for ex in examples] * 2
    prompts = [build_prompt(q, c, max_words) for q, c in zip(queries, contexts)]
    values = gold_loglik(queries=queries, contexts=contexts, answers=answers, reader=reader, prompts=prompts)
    gold, distractor = values[: len(examples)], values[len(examples) :]
    share = sum(g > d for g, d in zip(gold, distractor)) / len(examples)
    return share, sum(gold) / len(gold), sum(distractor) / len(distractor)
