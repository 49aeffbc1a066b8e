"""Speed of the rrpo reranker against sentence-transformers, on realistic pairs.

Four measurements, one run, the same model weights and the same inputs for both sides:

1. Scoring throughput: pairs/s of ``Reranker.score_pairs`` (under
   ``torch.inference_mode``) against sentence-transformers ``CrossEncoder.predict``
   (batch 32, its default, and 64; the speed-up is against the better of the two).
   The Reranker is saved with ``save_pretrained`` and the CrossEncoder loads that
   directory, so both run the same weights; a check on a few pairs asserts that both
   give the same scores (within 1e-3, in fp32) before anything is timed. rrpo is timed
   twice: with a cold document-token cache (every passage new, the fair comparison)
   and a warm one (the same passages again, as in training and repeated queries).
2. Rerank latency per query for 20 and 100 candidates: ``Reranker.rerank`` (scores +
   the STOP head's dynamic k) against ``CrossEncoder.rank``; p50/p95 in ms.
3. Ranking quality of the faster backends (``--backends int8,bf16``): gold
   recall@3 and nDCG@10 on ``--quality-queries`` HotpotQA dev questions for the main
   reranker and each backend, and how often a backend keeps the main ranking (top-3,
   top-1, Spearman) and the STOP head's k. Only meaningful on a trained reranker
   (``benchmarks/sft_reranker.py``); int8 and bf16 also get rows in 1 and 2.
4. RRPO training throughput: training queries/s of ``rrpo.train.RRPOTrainer`` (G=4,
   max_k=5) with a scripted reader that costs nothing, so it measures the trainer and
   the reranker, not the LLM (the reader's own throughput is ``benchmarks/readers.py``;
   with the real reader, ``benchmarks/train_speed.py``).

Inputs are built from real HotpotQA dev text, deterministic by ``--seed``: queries are
dev questions of 6-16 words; passages are 40-220 words (uniform), cut from consecutive
dev passages concatenated; the models see at most ``--max-length`` (256) tokens.

Prints Markdown tables; ``--results benchmarks/RESULTS.md`` appends them there with the
command, machine and date. Examples::

    python benchmarks/speed.py                                  # best device; CPU: ~5 min on 2 cores
    python benchmarks/speed.py --device cuda --results benchmarks/RESULTS.md
    python benchmarks/speed.py --model /path/to/cross-encoder --pairs 1000 --queries 20
    python benchmarks/speed.py --model runs/sft-minilm-hotpot/model --backends int8,bf16 --no-training
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results.py beside this file
from _results import append_results, command_line  # noqa: E402

from rrpo import Candidate, Example, Reranker  # noqa: E402
from rrpo.data import load_examples, shared_data_dir  # noqa: E402
from rrpo.models import best_device  # noqa: E402

# In the shared data folder ($RRPO_SHARED_DATA, else ../shared/data beside the checkout).
DEFAULT_DATA = "hotpotqa-distractor.dev.jsonl.gz"
DEFAULT_TRAIN_DATA = "hotpotqa-distractor.train.jsonl.gz"
QUERY_WORDS = (6, 16)
PASSAGE_WORDS = (40, 220)
PEER_BATCH_SIZES = (32, 64)
CHECK_PAIRS = 8
CHECK_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- workload
@dataclass
class Workload:
    """Real questions and a pool of real passages to cut benchmark inputs from."""

    questions: list[str]
    passages: list[str]
    rng: random.Random
    serial: int = 0  # makes every generated passage's id unique (a cold cache means cold)

    def passage(self) -> Candidate:
        """A passage of 40-220 words: consecutive pool passages joined, then cut."""
        target = self.rng.randint(*PASSAGE_WORDS)
        words: list[str] = []
        index = self.rng.randrange(len(self.passages))
        while len(words) < target:
            words += self.passages[index % len(self.passages)].split()
            index += 1
        self.serial += 1
        return Candidate(id=f"bench-{self.serial}", text=" ".join(words[:target]))

    def query(self) -> str:
        return self.rng.choice(self.questions)

    def groups(self, n_pairs: int, per_query: int) -> tuple[list[str], list[list[Candidate]]]:
        """``n_pairs`` (query, passage) pairs, ``per_query`` passages per query."""
        queries, lists = [], []
        while n_pairs > 0:
            size = min(per_query, n_pairs)
            queries.append(self.query())
            lists.append([self.passage() for _ in range(size)])
            n_pairs -= size
        return queries, lists


def load_workload(path: Path, seed: int) -> Workload:
    examples = load_examples(path)
    if not examples:
        raise ValueError(f"{path}: no examples to build benchmark inputs from")
    questions = [ex.query for ex in examples if QUERY_WORDS[0] <= len(ex.query.split()) <= QUERY_WORDS[1]]
    passages = list(dict.fromkeys(c.text for ex in examples for c in ex.candidates if c.text.split()))
    if not questions or not passages:
        raise ValueError(f"{path}: no questions of {QUERY_WORDS} words or no passages")
    return Workload(questions, passages, random.Random(seed))


def flat_pairs(queries: list[str], lists: list[list[Candidate]]) -> list[tuple[str, str]]:
    return [(q, c.text) for q, cands in zip(queries, lists) for c in cands]


# --------------------------------------------------------------------------- measuring
@dataclass
class Measured:
    seconds: float
    peak_mib: float  # CUDA: max_memory_allocated; CPU: the process's peak RSS so far (getrusage)
    extra_mib: float  # peak above what was in use when the phase started
    values: list[float] = field(default_factory=list)  # per-call seconds, when timed per call


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _maxrss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS; this benchmark reports Linux numbers).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def _rss_sampler(interval: float = 0.005) -> Iterator[Callable[[], float]]:
    """Samples the resident set while the block runs: ru_maxrss never goes down, so it
    cannot tell one phase's peak from an earlier one's."""
    peak = [_rss_mib()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            peak[0] = max(peak[0], _rss_mib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        done.set()
        thread.join()


def _release_freed_memory() -> None:
    """Hand memory freed by earlier phases back to the OS (glibc keeps it otherwise), so
    a phase's RSS increase is its own and not smaller just because it ran later."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the increase is a lower bound
        pass


def measure(device: str, fn: Callable[[], Any]) -> Measured:
    """Wall time of ``fn()`` (device synchronised) and the memory it needed."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**20
        return Measured(seconds, peak, peak - before)
    _release_freed_memory()
    before = _rss_mib()
    with _rss_sampler() as sampled_peak:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return Measured(seconds, _maxrss_mib(), max(0.0, sampled_peak() - before))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------- the two sides
def rrpo_scores(reranker: Reranker, queries: list[str], lists: list[list[Candidate]], batch_size: int) -> torch.Tensor:
    """All scores on the CPU, as the peer returns them (a numpy array)."""
    with torch.inference_mode():
        scored = reranker.score_pairs(queries, lists, batch_size=batch_size)
        return torch.cat([s.scores for s in scored]).float().cpu()


def load_peer(directory: Path, max_length: int, device: str, dtype: torch.dtype | None = None):
    """sentence-transformers' CrossEncoder on the same directory, in ``dtype`` (default
    fp32), returning raw logits (its default for one label is a sigmoid; rrpo's scores
    are the logits)."""
    try:
        from sentence_transformers import CrossEncoder
    except ImportError as exc:  # the benchmark needs the peer; rrpo itself does not
        raise ImportError("benchmarks/speed.py needs sentence-transformers: pip install sentence-transformers") from exc
    identity = torch.nn.Identity()
    try:
        peer = CrossEncoder(str(directory), max_length=max_length, device=device, activation_fn=identity)
    except TypeError:  # sentence-transformers < 4 calls it default_activation_function
        peer = CrossEncoder(str(directory), max_length=max_length, device=device, default_activation_function=identity)
    # Always cast: recent transformers load a directory in the dtype it was saved in, and
    # rrpo saves bf16 weights when it runs in bf16; the peer's own default is fp32.
    _peer_module(peer).to(dtype or torch.float32)
    return peer


def _peer_module(peer: Any) -> torch.nn.Module:
    """The torch module holding the weights (the CrossEncoder itself from version 4 on)."""
    return peer if isinstance(peer, torch.nn.Module) else peer.model


def peer_scores(peer: Any, pairs: list[tuple[str, str]], batch_size: int) -> Any:
    return peer.predict(pairs, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)


def check_same_scores(directory: Path, peer32: Any, workload: Workload, device: str, max_length: int) -> str:
    """Both sides in fp32 on the same pairs: scores must agree within CHECK_TOLERANCE."""
    reranker32 = Reranker.from_pretrained(directory, device=device, dtype="float32", max_length=max_length)
    queries, lists = workload.groups(CHECK_PAIRS, per_query=2)
    ours = rrpo_scores(reranker32, queries, lists, batch_size=CHECK_PAIRS).tolist()
    theirs = [float(x) for x in peer_scores(peer32, flat_pairs(queries, lists), batch_size=CHECK_PAIRS)]
    diff = max(abs(a - b) for a, b in zip(ours, theirs))
    line = f"score check (fp32, {len(ours)} pairs): max |rrpo - sentence-transformers| = {diff:.2e}"
    if diff > CHECK_TOLERANCE:
        raise SystemExit(f"{line} > {CHECK_TOLERANCE}: the two sides do not compute the same model; not timing")
    del reranker32
    return line + f" <= {CHECK_TOLERANCE}: OK"


# --------------------------------------------------------------------------- 1. throughput
@dataclass
class Row:
    name: str
    batch: int
    dtype: str
    rate: float  # pairs/s
    memory: Measured


def scoring_throughput(args: argparse.Namespace, rerankers: dict[str, "Variant"], peers: dict[str, Any], workload: Workload) -> str:
    queries, lists = workload.groups(args.pairs, per_query=args.group)
    pairs = flat_pairs(queries, lists)
    # Warm-up on other passages: first-call costs (allocations, kernel choice) are not
    # throughput. A CPU needs one small batch; a GPU sees a few full-size shapes.
    warm_size = 2 * args.batch_size if args.device.startswith("cuda") else 16
    warm_q, warm_l = workload.groups(min(warm_size, args.pairs), per_query=args.group)
    rows: list[Row] = []
    for label, variant in rerankers.items():  # every variant scores the very same pairs, each cold first
        model = variant.model
        rrpo_scores(model, warm_q, warm_l, args.batch_size)
        cold = measure(args.device, lambda model=model: rrpo_scores(model, queries, lists, args.batch_size))
        rows.append(Row(f"rrpo `Reranker.score_pairs`{label}, cold document cache", args.batch_size, variant.dtype,
                        len(pairs) / cold.seconds, cold))  # fmt: skip
        warm = measure(args.device, lambda model=model: rrpo_scores(model, queries, lists, args.batch_size))
        rows.append(Row(f"rrpo `Reranker.score_pairs`{label}, warm document cache", args.batch_size, variant.dtype,
                        len(pairs) / warm.seconds, warm))  # fmt: skip
    for label, peer in peers.items():
        peer_scores(peer, flat_pairs(warm_q, warm_l), batch_size=args.batch_size)  # warm-up
        for batch in PEER_BATCH_SIZES:
            m = measure(args.device, lambda peer=peer, batch=batch: peer_scores(peer, pairs, batch))
            rows.append(Row(f"sentence-transformers `CrossEncoder.predict`{label}", batch, _peer_dtype(peer), len(pairs) / m.seconds, m))
    best_peer = max(r.rate for r in rows if r.name.startswith("sentence"))
    header = ["scorer", "batch", "dtype", "pairs/s", "vs best peer", "peak MiB", "+MiB in phase"]
    body = [
        [r.name, str(r.batch), r.dtype, f"{r.rate:,.1f}", f"{r.rate / best_peer:.2f}x",
         f"{r.memory.peak_mib:,.0f}", f"{r.memory.extra_mib:,.0f}"]
        for r in rows
    ]  # fmt: skip
    return markdown_table(header, body)


def _peer_dtype(peer: Any) -> str:
    return _dtype_name(next(_peer_module(peer).parameters()).dtype)


# --------------------------------------------------------------------------- 2. latency
def per_query_seconds(calls: list[Callable[[], Any]], desc: str) -> list[float]:
    from tqdm.auto import tqdm

    out = []
    for call in tqdm(calls, desc=desc, leave=False):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def rerank_latency(args: argparse.Namespace, rerankers: dict[str, "Variant"], peer: Any, workload: Workload) -> str:
    header = ["candidates", "ranker", "p50 ms", "p95 ms", "vs peer (p50)"]
    body = []
    for n in args.candidates:
        queries, lists = workload.groups(n * (args.queries + 1), per_query=n)
        timed: list[tuple[str, list[float]]] = []
        for label, variant in rerankers.items():
            model = variant.model
            model.rerank(queries[0], lists[0][:8])  # a short warm-up query, not timed
            times = per_query_seconds(
                [lambda q=q, c=c, m=model: m.rerank(q, c) for q, c in zip(queries[1:], lists[1:])], f"rrpo{label} rerank {n}"
            )
            timed.append((f"rrpo `Reranker.rerank`{label} (dynamic k)", times))
        peer.rank(queries[0], [c.text for c in lists[0][:8]], batch_size=args.batch_size)
        theirs = per_query_seconds(
            [lambda q=q, c=c: peer.rank(q, [x.text for x in c], batch_size=args.batch_size)
             for q, c in zip(queries[1:], lists[1:])],
            f"peer rank {n}",
        )  # fmt: skip
        peer_p50 = percentile(theirs, 50)
        for name, times in (*timed, ("sentence-transformers `CrossEncoder.rank`", theirs)):
            p50 = percentile(times, 50)
            body.append([str(n), name, f"{1000 * p50:,.1f}", f"{1000 * percentile(times, 95):,.1f}", f"{peer_p50 / p50:.2f}x"])
    return markdown_table(header, body)


# --------------------------------------------------------------------------- variants
@dataclass
class Variant:
    """One way rrpo runs the same weights: the default (``--dtype``), int8, bf16."""

    model: Reranker
    dtype: str  # for the tables


def load_variants(args: argparse.Namespace, directory: Path, main: Reranker) -> dict[str, Variant]:
    """The main reranker (label "") plus each of ``--backends`` from the saved directory."""
    variants = {"": Variant(main, _dtype_name(next(main.scorer.parameters()).dtype))}
    for name in args.backends:
        if name == "int8":
            model = Reranker.from_pretrained(directory, backend="int8", max_length=args.max_length, scoring="cross_encoder")
        else:  # "bf16": the existing dtype option, on this device
            model = Reranker.from_pretrained(directory, device=args.device, dtype="bfloat16", max_length=args.max_length,
                                             scoring="cross_encoder")  # fmt: skip
        model.settings.batch_size = args.batch_size
        variants[f" {name}"] = Variant(model, name)
    return variants


# --------------------------------------------------------------------------- 3. ranking quality
def ranking_quality(args: argparse.Namespace, variants: dict[str, Variant]) -> str:
    """Gold recall@3 and nDCG@10 on HotpotQA dev, and how often each variant keeps the
    main (fp32 on CPU) reranker's ranking and k: what int8 must not lose."""
    from rrpo.evaluate import gold_recall, ndcg_at_k

    examples = [ex for ex in load_examples(args.data, limit=args.quality_queries) if ex.gold and any(ex.gold)]
    picked = {label: [v.model.rerank(ex.query, ex.candidates, top_n=args.quality_top_n) for ex in examples]
              for label, v in variants.items()}  # fmt: skip
    ref = picked[""]
    header = ["rrpo", "dtype", "gold recall@3", "nDCG@10", "Δ recall@3", "Δ nDCG@10", "top-3 set = main",
              "top-3 order = main", "top-1 = main", "mean Spearman", "k = main", "mean k"]  # fmt: skip
    body = []
    base = None
    for label, sels in picked.items():
        recall = 100 * statistics.fmean(gold_recall(s.order[:3], ex.gold) for s, ex in zip(sels, examples))
        ndcg = 100 * statistics.fmean(ndcg_at_k(s.order, ex.gold, 10) for s, ex in zip(sels, examples))
        base = base or (recall, ndcg)
        n = len(examples)
        body.append([
            label.strip() or "main", variants[label].dtype, f"{recall:.1f}", f"{ndcg:.1f}",
            f"{recall - base[0]:+.1f}", f"{ndcg - base[1]:+.1f}",
            f"{sum(set(s.order[:3]) == set(r.order[:3]) for s, r in zip(sels, ref))}/{n}",
            f"{sum(s.order[:3] == r.order[:3] for s, r in zip(sels, ref))}/{n}",
            f"{sum(s.order[0] == r.order[0] for s, r in zip(sels, ref))}/{n}",
            f"{statistics.fmean(_spearman(s.scores, r.scores) for s, r in zip(sels, ref)):.4f}",
            f"{sum(s.k == r.k for s, r in zip(sels, ref))}/{n}", f"{statistics.fmean(s.k for s in sels):.2f}",
        ])  # fmt: skip
    return markdown_table(header, body)


def _spearman(a: list[float], b: list[float]) -> float:
    ranks = [torch.argsort(torch.argsort(torch.tensor(x))).float() for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


# --------------------------------------------------------------------------- 4. training
class ScriptedReader:
    """A reader that costs nothing, so the benchmark times the trainer, not an LLM.

    Its gold-answer "log-likelihood" is -1 when the answer appears in the prompt and -5
    otherwise: enough for rewards, advantages and updates to do real work.
    """

    identity = "speed-benchmark-scripted-reader"

    def generate(self, prompts: list[str]) -> list[str]:
        return ["" for _ in prompts]

    def loglik(self, prompts: list[str], targets: list[str]) -> list[float]:
        return [-1.0 if t.lower() in p.lower() else -5.0 for p, t in zip(prompts, targets)]


def training_throughput(args: argparse.Namespace, examples: list[Example]) -> str:
    from tqdm.auto import tqdm

    from rrpo.train import RRPOConfig, RRPOTrainer

    # scoring="cross_encoder": this benchmark times the cross-encoder (a plain encoder gets a fresh head)
    policy = Reranker.from_pretrained(args.model, device=args.device, max_length=args.max_length, scoring="cross_encoder")
    with tempfile.TemporaryDirectory(prefix="rrpo-speed-train-") as out_dir:
        config = RRPOConfig(
            reward="gold_loglik", group_size=4, max_k=5, queries_per_step=args.train_queries,
            max_steps=args.train_steps + 1, warmup_steps=0, checkpoint_every=0, progress=False,
            device=args.device, out_dir=out_dir, seed=args.seed,
        )  # fmt: skip
        trainer = RRPOTrainer(policy, ScriptedReader(), examples, config)
        trainer.train_step()  # warm-up step, not timed
        rows: list[dict] = []

        def run_steps() -> None:
            for _ in tqdm(range(args.train_steps), desc="rrpo train steps", leave=False):
                rows.append(trainer.train_step())

        m = measure(args.device, run_steps)
    queries = args.train_steps * args.train_queries
    calls = statistics.fmean(r["reader_calls_per_query"] for r in rows)
    header = ["trainer", "G", "max_k", "candidates/query", "queries/step", "timed steps",
              "queries/s", "s/step", "reader calls/query", "peak MiB", "+MiB in phase"]  # fmt: skip
    candidates = statistics.fmean(len(ex.candidates) for ex in examples)
    body = [[
        "rrpo `RRPOTrainer` (scripted reader, excluded)", "4", "5", f"{candidates:.0f}", str(args.train_queries),
        str(args.train_steps), f"{queries / m.seconds:.2f}", f"{m.seconds / args.train_steps:.2f}",
        f"{calls:.1f}", f"{m.peak_mib:,.0f}", f"{m.extra_mib:,.0f}",
    ]]  # fmt: skip
    return markdown_table(header, body)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6", help="reranker: alias, local dir or hub id (default: minilm-l6)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the best available)")
    p.add_argument("--pairs", type=int, default=None, help="pairs to score (default: 20000 on CUDA, 400 on CPU)")
    p.add_argument("--queries", type=int, default=None, help="timed queries per latency row (default: 100 on CUDA, 4 on CPU)")
    p.add_argument("--candidates", type=lambda s: [int(x) for x in s.split(",")], default=[20, 100],
                   help="candidates per query for the latency rows, comma-separated (default: 20,100)")  # fmt: skip
    p.add_argument("--group", type=int, default=20, help="passages per query in the throughput workload (default: 20)")
    p.add_argument("--dtype", default=None, help="rrpo's dtype: float32, bfloat16, float16 (default: bf16 on CUDA, fp32 elsewhere)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of both sides (the peer also runs at 32)")
    p.add_argument("--max-length", type=int, default=256, help="max tokens per (query, passage) pair (default: 256)")
    p.add_argument("--train-steps", type=int, default=None, help="timed RRPO steps (default: 10 on CUDA, 2 on CPU)")
    p.add_argument("--train-queries", type=int, default=None, help="training queries per RRPO step (default: 8 on CUDA, 2 on CPU)")
    p.add_argument("--no-training", action="store_true", help="skip the training-throughput section")
    p.add_argument("--backends", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="more rrpo rows on the same weights, comma-separated: int8 (backend='int8', CPU), "
                        "bf16 (dtype) (default: none)")
    p.add_argument("--quality-queries", type=int, default=300,
                   help="HotpotQA dev questions for the ranking-quality check of the backends (0: skip; default 300). "
                        "Meaningful on a trained reranker only (benchmarks/sft_reranker.py)")
    p.add_argument("--quality-top-n", type=int, default=None, help="top_n of the quality check's rerank (default: the model's)")
    p.add_argument("--data", type=Path, default=None, help=f"shared-schema JSONL the pairs are cut from (default: shared {DEFAULT_DATA})")
    p.add_argument("--train-data", type=Path, default=None, help=f"training questions (default: shared {DEFAULT_TRAIN_DATA})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=None, help="append the tables to this Markdown file (benchmarks/RESULTS.md)")
    p.add_argument("--notes", default="", help="extra notes for the results section (e.g. the machine's load)")
    args = p.parse_args(argv)
    return _fill_defaults(args, p)


def _fill_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    args.device = best_device(args.device)
    if args.data is None:
        args.data = shared_data_dir() / DEFAULT_DATA
    if args.train_data is None and not args.no_training:
        args.train_data = shared_data_dir() / DEFAULT_TRAIN_DATA
    cuda = args.device.startswith("cuda")
    defaults = {"pairs": (20000, 400), "queries": (100, 4), "train_steps": (10, 2), "train_queries": (8, 2)}
    for name, (on_cuda, on_cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    for name in ("pairs", "queries", "group", "batch_size", "max_length", "train_steps", "train_queries"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.backends = args.backends or []
    unknown = set(args.backends) - {"int8", "bf16"}
    if unknown or ("int8" in args.backends and cuda):
        parser.error(f"--backends: int8 (CPU only) and bf16 are known, got {args.backends} on {args.device}")
    if not args.candidates or min(args.candidates) < 1:
        parser.error(f"--candidates must be positive integers, got {args.candidates}")
    return args


def _peer_in(dtype: torch.dtype, directory: Path, args: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    """The peer cast to ``dtype``, if its version can predict that way (else it is left out, said on stdout)."""
    try:
        peer = load_peer(directory, args.max_length, args.device, dtype)
        peer_scores(peer, flat_pairs(*workload.groups(2, per_query=2)), batch_size=2)
    except Exception as exc:  # noqa: BLE001 - any failure only means this extra row is skipped
        print(f"sentence-transformers in {_dtype_name(dtype)} left out: {type(exc).__name__}: {exc}", flush=True)
        return {}
    return {f" ({_dtype_name(dtype)})": peer}


def _load_average() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    workload = load_workload(args.data, args.seed)
    # A cross-encoder benchmark: the peer is sentence-transformers' CrossEncoder on the same weights.
    reranker = Reranker.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, max_length=args.max_length, scoring="cross_encoder"
    )
    reranker.settings.batch_size = args.batch_size  # what rerank() batches by, like the peer's rank()
    dtype = next(reranker.scorer.parameters()).dtype
    sections: list[tuple[str, str]] = []

    def report(title: str, table: str) -> None:
        sections.append((title, table))
        print(f"\n### {title}\n\n{table}", flush=True)

    with tempfile.TemporaryDirectory(prefix="rrpo-speed-") as tmp:
        directory = reranker.save_pretrained(Path(tmp) / "reranker")
        peer32 = load_peer(directory, args.max_length, args.device)
        check = check_same_scores(directory, peer32, workload, args.device, args.max_length)
        print(check, flush=True)
        peers = {"": peer32}
        if dtype != torch.float32:  # give the peer rrpo's dtype too, so it is not handicapped by fp32
            peers.update(_peer_in(dtype, directory, args, workload))
        variants = load_variants(args, directory, reranker)
        load_before = _load_average()
        report(f"Scoring throughput: {args.pairs} pairs", scoring_throughput(args, variants, peers, workload))
        latency_peer = peers[list(peers)[-1]]  # in rrpo's dtype when it could run that way
        report(f"Rerank latency: {args.queries} queries", rerank_latency(args, variants, latency_peer, workload))
        if len(variants) > 1 and args.quality_queries:
            report(f"Ranking quality of the backends: {args.quality_queries} HotpotQA dev questions",
                   ranking_quality(args, variants))  # fmt: skip
    if not args.no_training:
        examples = load_examples(args.train_data, limit=args.train_queries * (args.train_steps + 1))
        report("RRPO training throughput", training_throughput(args, examples))
    notes = _notes(args, check, load_before, trained=not reranker.fresh_parameters)
    print("\n" + notes)
    if args.results:
        tables = "\n\n".join(f"### {title}\n\n{table}" for title, table in sections)
        append_results(args.results, f"Speed: {args.model} on {args.device}", command_line(), tables, notes)
        print(f"\nappended to {args.results}")
    return 0


def _notes(args: argparse.Namespace, check: str, load_before: str, trained: bool = True) -> str:
    lines = [
        f"- data: queries and passages cut from `{args.data.name}` (questions of {QUERY_WORDS[0]}-{QUERY_WORDS[1]} "
        f"words; passages of {PASSAGE_WORDS[0]}-{PASSAGE_WORDS[1]} words from consecutive passages; seed {args.seed}); "
        f"max {args.max_length} tokens per pair; {args.group} passages per query in the throughput workload; "
        f"training questions from `{args.train_data.name if args.train_data else '-'}`.",
        f"- {check}.",
        "- cold document cache: every passage is new to rrpo's token cache; warm: the same pairs scored again "
        "(what training and repeated candidates see). The peer tokenises every pair every time.",
        "- peak MiB: CUDA `torch.cuda.max_memory_allocated` for the phase; CPU the process's peak RSS so far "
        "(`getrusage` ru_maxrss, never goes down); +MiB in phase: peak above the phase's start (CPU: sampled RSS).",
        "- training: queries/s of `RRPOTrainer.train_step` (rollout, rewards, advantages, PPO update) after one "
        "warm-up step, with a scripted reader that costs nothing: the LLM reader's cost is excluded "
        "(see `benchmarks/readers.py`).",
        f"- load average (1/5/15 min) at the start of timing: {load_before}; at the end: {_load_average()}.",
    ]
    if args.backends:
        lines.append(
            f"- backends: `int8` is `Reranker.from_pretrained(dir, backend=\"int8\")` (rrpo.quantize: int8 Linear "
            "layers, per-channel weights, pooler/classifier and STOP head in fp32); `bf16` is `dtype=\"bfloat16\"`. "
            "The quality check reranks each dev question on its own (`Reranker.rerank`, 10 passages, dynamic k) "
            "and compares with the main row: top-3 set/order, top-1, Spearman of the scores, greedy k."
        )
        if not trained:
            lines.append("- WARNING: the model has a fresh scoring head: its scores are near-equal and the quality "
                         "check says nothing; pass a trained reranker (benchmarks/sft_reranker.py).")  # fmt: skip
    if args.notes:
        lines.append(f"- {args.notes}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
