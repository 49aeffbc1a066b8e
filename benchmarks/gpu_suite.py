"""Every GPU figure in one command, each part on its own time budget.

    python benchmarks/gpu_suite.py --out runs/gpu --device cuda --results benchmarks/RESULTS.md
    python benchmarks/gpu_suite.py --out /tmp/gpu --device cpu --size tiny \\
        --reranker TINY_CROSS_ENCODER_DIR --reader TINY_CAUSAL_LM_DIR       # the CPU rehearsal

Parts, in this order (``--parts`` picks some):

1. ``reranker``: 20,000 varied HotpotQA pairs, rrpo ``Reranker.score_pairs`` (bf16 on
   CUDA) against sentence-transformers ``CrossEncoder.predict`` in fp32 and bf16 on the
   same weights (``benchmarks/speed.py``'s workload, score check and table), plus rrpo's
   own batch-size sweep.
2. ``reader``: ``LocalReader`` (SmolLM2-135M) likelihoods/s and answers/s over a batch
   sweep with padded batches, the same with ``prefix_sharing=True`` (one row at a time
   with a shared key/value cache), and the per-prefix RRPO workload on both paths.
3. ``training``: ``RRPOTrainer`` queries/s with the real reader (G=4, max_k=5,
   gold-answer log-likelihood per prefix) on both reader paths; reader rows per query
   without the response cache (what the reward asks for) and with it (what reaches
   the model), on a pool of questions each visited about twice, as in the full run.
4. ``bf16``: fp32 against bf16 for the reranker's scores and the reader's likelihoods
   (largest difference, top-1 agreement, speed, peak memory) and one RRPO step each way.
5. ``quality``: ``benchmarks/quality.py``'s HotpotQA table at its ``full`` size (SFT on
   all train questions, RRPO from SFT, all 868 dev questions); it gets what is left of
   ``--total-budget`` when the parts before it are done.

Each part writes its section through ``benchmarks/_results.py`` as soon as it ends, to
``OUT/RESULTS.md`` and to ``--results``; a part that runs past its budget or fails
writes the rows it has, with the reason, and the next part starts. ``OUT/summary.md``
lists every part's status and time; the exit code is 1 when any part did not finish.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import signal
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _results.py, speed.py, readers.py, quality.py beside this file
from _results import append_results, command_line  # noqa: E402

PARTS = ("reranker", "reader", "training", "bf16", "quality")
TITLES = {
    "reranker": "reranker scoring vs sentence-transformers",
    "reader": "reader throughput",
    "training": "RRPO training with the real reader",
    "bf16": "bf16 paths and peak memory",
    "quality": "HotpotQA quality",
}
TRAIN_DATA = "hotpotqa-distractor.train.jsonl.gz"
DEV_DATA = "hotpotqa-distractor.dev.jsonl.gz"


@dataclass(frozen=True)
class Plan:
    """How much each part does, and its budget in seconds."""

    pairs: int
    rerank_batches: tuple[int, ...]
    reader_batches: tuple[int, ...]
    reader_prompts: int
    shared_prompts: int  # prompts for the one-row-at-a-time prefix-sharing path
    prefix_questions: int
    train_steps: int  # timed, after one warm-up step
    train_queries: int
    bf16_pairs: int
    new_tokens: int  # the reader's answer length (the rehearsal's tiny reader needs few)
    max_words: int  # words of each passage the reader sees (120 as in quality.py; fewer in the rehearsal)
    budgets: dict[str, float]
    total_budget: float  # the quality part gets what the others leave of it


PLANS = {
    # One H100/H200: about 8 minutes in all.
    "full": Plan(pairs=20000, rerank_batches=(64, 128, 256, 512), reader_batches=(8, 32, 64, 128),
                 reader_prompts=256, shared_prompts=64, prefix_questions=8, train_steps=5, train_queries=8,
                 bf16_pairs=2000, new_tokens=16, max_words=120, budgets={"reranker": 60, "reader": 60, "training": 60, "bf16": 30, "quality": 240},
                 total_budget=450),
    # The CPU rehearsal with tiny models: every code path, tiny counts, 2-3 minutes on 2 cores.
    "tiny": Plan(pairs=24, rerank_batches=(8,), reader_batches=(2,), reader_prompts=2, shared_prompts=2,
                 prefix_questions=1, train_steps=1, train_queries=2, bf16_pairs=8, new_tokens=4, max_words=30,
                 # Generous: a rehearsal proves the code paths, and a CI machine shared with
                 # other jobs runs them 2-3x slower (tests/test_gpu_suite.py checks the
                 # budget mechanism itself with a part that overruns).
                 budgets={"reranker": 300, "reader": 300, "training": 300, "bf16": 300, "quality": 300}, total_budget=1500),
}  # fmt: skip


# --------------------------------------------------------------------------- sections
@dataclass
class Section:
    """One part's tables, filled row by row, so a part stopped midway still reports."""

    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: str = ""  # a table rendered by speed.py or quality.py

    def table(self, subtitle: str, header: list[str]) -> list[list[str]]:
        rows: list[list[str]] = []
        self.tables.append((subtitle, header, rows))
        return rows

    def markdown(self) -> str:
        out = []
        if self.raw:
            out.append(self.raw.strip())
        for subtitle, header, rows in self.tables:
            if rows:
                lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                lines += ["| " + " | ".join(r) + " |" for r in rows]
                out.append(f"### {subtitle}\n\n" + "\n".join(lines))
        return "\n\n".join(out)


@dataclass
class Context:
    args: argparse.Namespace
    plan: Plan
    device: str
    cuda: bool
    data_dir: Path
    deadline: float  # perf_counter() by which the whole suite should be done
    command: str  # as typed, recorded with every section


class PartTimeout(BaseException):
    """A BaseException, so that no library's ``except Exception`` swallows the alarm."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise PartTimeout in the main thread once ``seconds`` have passed (SIGALRM: a
    running forward pass finishes first, then the part stops)."""

    def expire(signum: int, frame: Any) -> None:
        raise PartTimeout(f"over its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def measured(ctx: Context, fn: Callable[[], Any]):
    """speed.py's timer: wall seconds (device synchronised) and peak memory (CUDA
    allocator peak, or the process's peak RSS on CPU)."""
    from speed import measure

    return measure(ctx.device, fn)


def _mib(m: Any) -> str:
    return f"{m.peak_mib:,.0f}"


# --------------------------------------------------------------------------- 1. reranker
def part_reranker(ctx: Context, section: Section) -> None:
    import torch
    from speed import Variant, check_same_scores, load_peer, load_workload, peer_scores, rrpo_scores, scoring_throughput

    from rrpo import Reranker

    args, plan = ctx.args, ctx.plan
    workload = load_workload(ctx.data_dir / DEV_DATA, seed=0)
    reranker = Reranker.from_pretrained(args.reranker, device=ctx.device, max_length=256, scoring="cross_encoder")
    dtype = next(reranker.scorer.parameters()).dtype
    with tempfile.TemporaryDirectory(prefix="rrpo-suite-") as tmp:
        directory = reranker.save_pretrained(Path(tmp) / "reranker")
        peers = {"": load_peer(directory, 256, ctx.device)}
        section.notes.append(check_same_scores(directory, peers[""], workload, ctx.device, 256))
        if dtype != torch.float32:  # the peer in rrpo's dtype too, so fp32 is not its handicap
            try:
                peer = load_peer(directory, 256, ctx.device, dtype)
                peer_scores(peer, [("a question", "a passage")], batch_size=1)
                peers[f" ({str(dtype).removeprefix('torch.')})"] = peer
            except Exception as exc:  # noqa: BLE001 - only this row is lost
                section.notes.append(f"sentence-transformers in {dtype} left out: {type(exc).__name__}: {exc}")
        speed_args = argparse.Namespace(device=ctx.device, pairs=plan.pairs, group=20, batch_size=64)
        variants = {"": Variant(reranker, str(dtype).removeprefix("torch."))}
        table = scoring_throughput(speed_args, variants, peers, workload)
        section.raw = f"### {plan.pairs} pairs, rrpo vs the peer (batch 64 both; the peer also at 32)\n\n{table}"
    rows = section.table(f"rrpo batch sweep, {plan.pairs} new pairs each (cold document cache)",
                         ["batch", "dtype", "pairs/s", "peak MiB"])  # fmt: skip
    for batch in plan.rerank_batches:
        queries, lists = workload.groups(plan.pairs, per_query=20)  # fresh passages: a cold cache
        m = measured(ctx, lambda: rrpo_scores(reranker, queries, lists, batch))
        rows.append([str(batch), str(dtype).removeprefix("torch."), f"{plan.pairs / m.seconds:,.0f}", _mib(m)])


# --------------------------------------------------------------------------- 2. reader
def _reader(ctx: Context, **kwargs: Any):
    from rrpo.readers import LocalReader

    return LocalReader(ctx.args.reader, device=ctx.device, progress=False, max_new_tokens=ctx.plan.new_tokens, **kwargs)


def part_reader(ctx: Context, section: Section) -> None:
    from readers import prefix_sharing_lines, prefix_sharing_side_by_side, prefix_workload, throughput

    from rrpo.data import gold_pair_examples, load_examples

    plan = ctx.plan
    gold = gold_pair_examples(ctx.data_dir / DEV_DATA, plan.reader_prompts)
    rows = section.table(
        f"{plan.reader_prompts} HotpotQA dev prompts (2 gold passages, <= {plan.max_words} words each), {plan.new_tokens} new tokens",
        ["loglik path", "batch", "dtype", "prompts", "mean prompt tokens", "likelihoods/s", "answers/s", "peak MiB"],
    )
    settings = [(False, b, gold) for b in plan.reader_batches] + [(True, plan.reader_batches[0], gold[: plan.shared_prompts])]
    for sharing, batch, prompts in settings:
        reader = _reader(ctx, batch_size=batch, prefix_sharing=sharing)
        result = {}
        m = measured(ctx, lambda: result.update(throughput(reader, prompts, plan.max_words)))
        rows.append(["prefix sharing (one row at a time)" if sharing else "padded batches",
                     "-" if sharing else str(batch), str(reader.dtype).removeprefix("torch."), str(result["prompts"]),
                     f"{result['mean_tokens']:.0f}", f"{result['likelihoods_per_s']:,.1f}",
                     f"{result['answers_per_s']:,.1f}", _mib(m)])  # fmt: skip
    examples = [e for e in load_examples(ctx.data_dir / DEV_DATA, limit=4 * plan.prefix_questions) if e.answers]
    groups = prefix_workload(examples[: plan.prefix_questions], samples=4, max_k=5, max_words=plan.max_words)
    readers = {"padded batches": _reader(ctx, batch_size=64, prefix_sharing=False),
               "prefix sharing": _reader(ctx, batch_size=64, prefix_sharing=True)}  # fmt: skip
    lines = prefix_sharing_lines(ctx.device, str(readers["padded batches"].dtype).removeprefix("torch."), 0,
                                 prefix_sharing_side_by_side(readers, groups))  # fmt: skip
    per_prefix = section.table(
        f"per-prefix RRPO workload: {len(groups)} questions x (greedy + 4 sampled rankings, k <= 5) x prefixes "
        f"= {sum(len(p) for p, _ in groups)} likelihoods, one call per question",
        ["device", "dtype", "loglik path", "likelihoods", "likelihoods/s", "tokens run", "token ratio", "speed-up vs padded", "max diff"],
    )
    for line in lines:  # readers.py's row, without its CPU-threads column
        cells = [c.strip() for c in line.strip("|").split("|")]
        per_prefix.append(cells[:2] + cells[3:])


# --------------------------------------------------------------------------- 3. training
def _train_config(ctx: Context, out_dir: str, steps: int, **overrides: Any):
    from rrpo.train import RRPOConfig

    values = dict(reward="gold_loglik", reward_mode="per_prefix", group_size=4, max_k=5,
                  queries_per_step=ctx.plan.train_queries, max_steps=steps + 1, warmup_steps=0,
                  checkpoint_every=0, progress=False, device=ctx.device, out_dir=out_dir, seed=0, overwrite=True,
                  max_words=ctx.plan.max_words)  # fmt: skip
    values.update(overrides)
    return RRPOConfig(**values)


def _timed_training(ctx: Context, reader: Any, examples: list, steps: int, **overrides: Any) -> dict[str, float]:
    """One warm-up step, then ``steps`` timed ones; reader rows counted before and past the cache."""
    from rrpo import Reranker
    from rrpo.train import RRPOTrainer

    policy = Reranker.from_pretrained(ctx.args.reranker, device=ctx.device, scoring="cross_encoder")
    with tempfile.TemporaryDirectory(prefix="rrpo-suite-train-") as out_dir:
        trainer = RRPOTrainer(policy, reader, examples, _train_config(ctx, out_dir, steps, **overrides))
        trainer.train_step()
        cache = trainer.reader
        requested0, computed0 = cache.hits + cache.misses, cache.calls
        rows: list[dict] = []
        m = measured(ctx, lambda: rows.extend(trainer.train_step() for _ in range(steps)))
        queries = steps * ctx.plan.train_queries
        return {
            "queries_per_s": queries / m.seconds, "s_per_step": m.seconds / steps,
            "requested": (cache.hits + cache.misses - requested0) / queries,
            "computed": (cache.calls - computed0) / queries, "peak": m.peak_mib,
            "reward": statistics.fmean(r["reward_mean"] for r in rows),
        }  # fmt: skip


def part_training(ctx: Context, section: Section) -> None:
    from rrpo.data import load_examples

    plan = ctx.plan
    visits = plan.train_queries * (plan.train_steps + 1)
    # About two visits per question, as in the full run (300 steps x 8 over 1,291 questions):
    # the response cache pays off on the second visit.
    examples = load_examples(ctx.data_dir / TRAIN_DATA, limit=max(plan.train_queries, visits // 2))
    rows = section.table(
        f"RRPOTrainer, G=4, max_k=5, gold_loglik per prefix, {plan.train_queries} queries/step, {len(examples)} "
        f"questions, 1 warm-up + {plan.train_steps} timed steps",
        ["reader loglik path", "queries/s", "s/step", "reader rows/query without cache", "with cache",
         "mean reward", "peak MiB"],
    )  # fmt: skip
    for sharing in (False, True):
        r = _timed_training(ctx, _reader(ctx, batch_size=64, prefix_sharing=sharing), examples, plan.train_steps)
        rows.append(["prefix sharing" if sharing else "padded batches (64)", f"{r['queries_per_s']:.2f}",
                     f"{r['s_per_step']:.2f}", f"{r['requested']:.1f}", f"{r['computed']:.1f}",
                     f"{r['reward']:.3f}", f"{r['peak']:,.0f}"])  # fmt: skip
    section.notes.append("without cache: likelihood rows the reward asks for per query (distinct within a step); "
                         "with cache: rows that reached the reader's model (the response cache answers repeats "
                         "across steps). Target: >= 50 queries/s on an H100.")  # fmt: skip


# --------------------------------------------------------------------------- 4. bf16
def part_bf16(ctx: Context, section: Section) -> None:
    import torch
    from speed import load_workload, rrpo_scores

    from rrpo import Reranker
    from rrpo.data import gold_pair_examples, load_examples
    from rrpo.prompts import build_prompt

    plan = ctx.plan
    workload = load_workload(ctx.data_dir / DEV_DATA, seed=1)
    queries, lists = workload.groups(plan.bf16_pairs, per_query=20)
    rows = section.table("fp32 against bf16 on the same inputs", ["path", "dtype", "items/s", "max abs diff vs fp32",
                                                                  "top-1 agreement", "peak MiB"])  # fmt: skip
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        reranker = Reranker.from_pretrained(ctx.args.reranker, device=ctx.device, dtype=dtype, scoring="cross_encoder")
        rrpo_scores(reranker, queries[:1], lists[:1], 64)  # warm-up
        out = {}
        m = measured(ctx, lambda: out.update(s=rrpo_scores(reranker, queries, lists, 64)))
        scores[dtype] = out["s"].split([len(c) for c in lists])
        diff = max(float((a - b).abs().max()) for a, b in zip(scores[dtype], scores[torch.float32]))
        agree = statistics.fmean(float(a.argmax() == b.argmax()) for a, b in zip(scores[dtype], scores[torch.float32]))
        rows.append([f"reranker `score_pairs`, {plan.bf16_pairs} pairs", str(dtype).removeprefix("torch."),
                     f"{plan.bf16_pairs / m.seconds:,.0f}", f"{diff:.2e}", f"{agree:.0%}", _mib(m)])  # fmt: skip
        del reranker
    gold = gold_pair_examples(ctx.data_dir / DEV_DATA, plan.reader_prompts)
    prompts = [build_prompt(e.query, e.candidates[:3], plan.max_words) for e in gold]
    targets = [e.answers[0] for e in gold]
    values = {}
    for dtype in ("float32", "bfloat16"):
        reader = _reader(ctx, dtype=dtype, batch_size=64, prefix_sharing=False)
        reader.loglik(prompts[:2], targets[:2])  # warm-up
        out = {}
        m = measured(ctx, lambda: out.update(v=reader.loglik(prompts, targets)))
        values[dtype] = out["v"]
        diff = max(abs(a - b) for a, b in zip(values[dtype], values["float32"]))
        rows.append([f"reader `loglik`, {len(prompts)} prompts", dtype, f"{len(prompts) / m.seconds:,.1f}",
                     f"{diff:.2e}", "-", _mib(m)])  # fmt: skip
    examples = load_examples(ctx.data_dir / TRAIN_DATA, limit=ctx.plan.train_queries)
    train = section.table("one RRPO step (after a warm-up step), padded reader", ["trainer autocast", "s/step", "peak MiB"])
    for bf16 in (False, True):
        r = _timed_training(ctx, _reader(ctx, batch_size=64, prefix_sharing=False), examples, 1, bf16=bf16)
        train.append(["bf16" if bf16 else "fp32", f"{r['s_per_step']:.2f}", f"{r['peak']:,.0f}"])


# --------------------------------------------------------------------------- 5. quality
def quality_size(ctx: Context):
    """quality.py's ``full`` size on the GPU; a few questions and one step in the rehearsal."""
    import quality

    if ctx.args.size == "full":
        return "full", quality.SIZES["full"]
    return "tiny", dataclasses.replace(quality.SIZES["small"], sft_train=4, rrpo_train=4, rrpo_steps=1,
                                       queries_per_step=2, eval=2)  # fmt: skip


def part_quality(ctx: Context, section: Section, budget: float) -> None:
    import quality

    from rrpo.readers import CachedReader

    name, size = quality_size(ctx)
    # On CUDA the reader scores and answers in padded batches of 64: one row at a time
    # (prefix sharing) leaves a GPU idle between small kernels (the reader part measures both).
    options = {"batch_size": 64, "prefix_sharing": False} if ctx.cuda else {}
    reader = CachedReader(_reader(ctx, **options))
    # quality.py's own arguments with their defaults; its --minutes makes it fit what is
    # left (RRPO stops early, the evaluation takes the first questions that fit, both said
    # in its table) before this part's alarm would cut it off with nothing written.
    args = quality.parse_args(["--size", "small", "--out", str(Path(ctx.args.out) / "quality"), "--base",
                               ctx.args.reranker, "--device", ctx.device, "--reader", ctx.args.reader])  # fmt: skip
    args.size, args.bootstrap, args.started = name, 1000 if name == "full" else 50, time.time()
    args.max_words = ctx.plan.max_words
    if hasattr(args, "minutes") and name == "full":  # (tiny: 2 dev questions, no time to fit)
        args.minutes = max(0.5, 0.92 * (budget - 10)) / 60
    split = quality.load_hotpotqa(ctx.data_dir, size)
    section.raw = quality.run_dataset(split, args, size, reader).replace("## hotpotqa", "### hotpotqa", 1)
    section.notes.append(f"size {name}: {json.dumps(dataclasses.asdict(size))}; reader options {options or 'defaults'}; "
                         f"time budget {getattr(args, 'minutes', None) or 0:.1f} min (quality.py --minutes)")


PART_FUNCTIONS: dict[str, Callable[[Context, Section], None]] = {
    "reranker": part_reranker, "reader": part_reader, "training": part_training, "bf16": part_bf16,
}  # fmt: skip (quality takes its budget too: run_part calls it)


# --------------------------------------------------------------------------- the runner
def _free_memory(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_part(ctx: Context, name: str) -> dict[str, Any]:
    """Run one part within its budget; write its section (whatever rows it has) at once."""
    budget = ctx.plan.budgets[name] * ctx.args.budget_scale
    if name == "quality":  # the last part gets what the others left
        budget = max(budget, ctx.deadline - time.perf_counter())
    section, status = Section(), "ok"
    start = time.perf_counter()
    print(f"\n=== {name} (budget {budget:.0f} s)", flush=True)
    try:
        with time_limit(budget + (30 if name == "quality" else 0)):  # quality stops itself first
            if name == "quality":
                part_quality(ctx, section, budget)
            else:
                PART_FUNCTIONS[name](ctx, section)
    except PartTimeout as exc:
        status = f"stopped: {exc}"
    except Exception as exc:  # noqa: BLE001 - one part failing must not stop the others
        status = f"failed: {type(exc).__name__}: {exc}"
        (Path(ctx.args.out) / f"{name}.error.txt").write_text(traceback.format_exc())
        traceback.print_exc()
    finally:
        _free_memory(ctx.cuda)
    seconds = time.perf_counter() - start
    section.notes.append(f"part `{name}`: {status}; {seconds:.0f} s of a {budget:.0f} s budget.")
    written = _write_section(ctx, name, section)
    print(f"=== {name}: {status} in {seconds:.0f} s", flush=True)
    return {"part": name, "status": status, "seconds": seconds, "budget": budget, "written": written}


def section_title(device: str, size: str, name: str) -> str:
    return f"GPU suite ({device}, {size}): {TITLES[name]}"


def _write_section(ctx: Context, name: str, section: Section) -> bool:
    body = section.markdown()
    if not body.strip():
        return False  # nothing measured: the status goes to summary.md only
    title = section_title(ctx.device, ctx.args.size, name)
    notes = "\n".join(f"- {n}" for n in section.notes)
    print(f"\n## {title}\n\n{body}\n\n{notes}", flush=True)
    for path in {Path(ctx.args.out) / "RESULTS.md", *( [ctx.args.results] if ctx.args.results else [])}:
        append_results(path, title, ctx.command, body, notes)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for RESULTS.md, summary.md, the quality run")
    p.add_argument("--device", default=None, help="cuda, cpu (default: the best available)")
    p.add_argument("--size", choices=sorted(PLANS), default="full", help="full: the GPU run; tiny: the CPU rehearsal")
    p.add_argument("--results", type=Path, default=None, help="also append each section here (benchmarks/RESULTS.md)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)} (default: all)")
    p.add_argument("--reranker", default="minilm-l6", help="reranker: alias or directory (default: minilm-l6)")
    p.add_argument("--reader", default="smollm2-135m", help="reader: alias, directory or .gguf (default: smollm2-135m)")
    p.add_argument("--total-budget", type=float, default=None, help="seconds for the whole suite (default: the size's)")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every part's budget (a rehearsal with the real models on a slow CPU)")
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}: choose from {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    from rrpo.data import shared_data_dir
    from rrpo.models import best_device

    start = time.perf_counter()
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    plan = PLANS[args.size]
    device = best_device(args.device)
    torch.manual_seed(0)
    command = command_line(None if argv is None else [str(Path(__file__).relative_to(HERE.parent)), *argv])
    ctx = Context(args, plan, device, device.startswith("cuda"), shared_data_dir(),
                  start + (args.total_budget or plan.total_budget * args.budget_scale), command)  # fmt: skip
    results = [run_part(ctx, name) for name in args.parts]
    lines = ["| part | status | seconds | budget | section written |", "|---|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['status']} | {r['seconds']:.0f} | {r['budget']:.0f} | {'yes' if r['written'] else 'no'} |"
              for r in results]  # fmt: skip
    summary = "\n".join(lines) + f"\n\nTotal: {time.perf_counter() - start:.0f} s, `{command}`\n"
    (args.out / "summary.md").write_text(summary)
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))
    print("\n" + summary, flush=True)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
