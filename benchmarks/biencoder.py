"""The offline default before any training: bi-encoder vs cross-encoder vs BM25.

One run, the same questions for every row:

1. Zero-shot ranking quality: gold recall@3 and nDCG@10 on HotpotQA dev (distractor
   setting: the data set's 10 passages) and SQuAD dev (BM25 top-20 over the dev corpus;
   questions whose gold passage BM25 missed have no recall and are left out) for:
   retrieval order, BM25 (over the same candidates), the packaged MiniLM as a
   cross-encoder with a fresh head (``scoring="cross_encoder"``, the old default), the
   same weights as a bi-encoder (the new default), and both after a small relevance SFT
   on HotpotQA train (``--sft-questions``; the bi-encoder trains its query tower only).
2. Rerank latency per query, one at a time (``rerank``, dynamic k, top_n 3) on HotpotQA
   dev: cold (passages never seen) and warm (the same passages again: for a bi-encoder
   their embeddings are cached, as they would be when a vector store supplies them).
3. The policy side of one RRPO step: 8 queries x 10 candidates, G = 4, default
   ``RRPOConfig`` otherwise, with a reader that costs nothing (so the step is the
   reranker's work only): the first step (everything computed) and later steps over
   the same queries (caches warm), for the cross-encoder and the bi-encoder.

    python benchmarks/biencoder.py --results benchmarks/RESULTS.md      # 2-core CPU: 30-60 min
    python benchmarks/biencoder.py --hotpot 20 --squad 20 --sft-questions 16 --cross-sft-questions 0   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results.py beside this file

from _results import append_results, command_line  # noqa: E402

from rrpo import Example, Reranker  # noqa: E402
from rrpo.data import BM25Index, load_corpus_questions, load_examples, shared_data_dir  # noqa: E402
from rrpo.evaluate import gold_recall, ndcg_at_k, percentile  # noqa: E402

Orders = list[list[int]]  # per question: candidate indices, best first


@dataclass
class Row:
    name: str
    hotpot: Orders
    squad: Orders
    ms_per_query: float | None = None  # batched scoring, both sets together
    latency: tuple[float, float] | None = None  # (cold p50, warm p50) ms, one query at a time
    note: str = ""


# ------------------------------------------------------------------ data
def load_data(args: argparse.Namespace) -> tuple[list[Example], list[Example], list[Example]]:
    data = Path(args.data_dir) if args.data_dir else shared_data_dir()
    hotpot = load_examples(data / "hotpotqa-distractor.dev.jsonl.gz", limit=args.hotpot)
    squad = load_corpus_questions(
        data / "squad-dev-corpus.jsonl.gz", data / "squad-dev-questions.dev.jsonl.gz", k=20, limit=args.squad
    )
    train = load_examples(data / "hotpotqa-distractor.train.jsonl.gz", limit=max(args.sft_questions, args.step_queries))
    return hotpot, squad, train


# ------------------------------------------------------------------ rankers
def bm25_orders(examples: list[Example]) -> Orders:
    """BM25 over each question's own candidates (IDF from those candidates)."""
    orders = []
    for ex in examples:
        ranked = BM25Index(ex.candidates).search([ex.query], k=len(ex.candidates))[0]
        by_id = {c.id: i for i, c in enumerate(ex.candidates)}
        order = [by_id[c.id] for c in ranked]
        orders.append(order + [i for i in range(len(ex.candidates)) if i not in set(order)])
    return orders


def reranker_orders(rr: Reranker, examples: list[Example]) -> tuple[Orders, float]:
    """Full rankings (no cut) and the wall time, scored in length-sorted batches."""
    start = time.perf_counter()
    sels = rr.rerank_batch([e.query for e in examples], [e.candidates for e in examples], dynamic_k=False)
    return [s.order for s in sels], time.perf_counter() - start


def latency(rr: Reranker, examples: list[Example]) -> tuple[float, float]:
    """p50 ms of one-at-a-time ``rerank`` calls: first pass cold, second pass warm."""
    passes = []
    for _ in range(2):
        times = []
        for ex in examples:
            start = time.perf_counter()
            rr.rerank(ex.query, ex.candidates, top_n=3)
            times.append(1000 * (time.perf_counter() - start))
        passes.append(percentile(times, 50))
    return passes[0], passes[1]


def reranker_row(name: str, rr: Reranker, hotpot, squad, lat_examples, note: str = "") -> Row:
    lat = latency(rr, lat_examples) if lat_examples else None
    h, th = reranker_orders(rr, hotpot)
    s, ts = reranker_orders(rr, squad)
    return Row(name, h, s, 1000 * (th + ts) / max(1, len(hotpot) + len(squad)), lat, note)


def sft(rr: Reranker, train: list[Example], epochs: float, out: Path, device: str) -> float:
    from rrpo.train import SFTConfig, SFTTrainer

    start = time.perf_counter()
    cfg = SFTConfig(epochs=epochs, device=device, progress=False, out_dir=str(out), overwrite=True)
    SFTTrainer(rr, train, cfg).train()
    return time.perf_counter() - start


def load(args: argparse.Namespace, scoring: str | None) -> Reranker:
    return Reranker.from_pretrained(args.model, device=args.device, max_length=args.max_length, scoring=scoring)


# ------------------------------------------------------------------ RRPO step
class FreeReader:
    """A reader that costs nothing: log-lik -1 when the answer is in the prompt, else -5."""

    identity = "biencoder-benchmark-free-reader"

    def generate(self, prompts: list[str]) -> list[str]:
        return ["" for _ in prompts]

    def loglik(self, prompts: list[str], targets: list[str]) -> list[float]:
        return [-1.0 if t.lower() in p.lower() else -5.0 for p, t in zip(prompts, targets)]


def rrpo_step_times(make: Callable[[], Reranker], train: list[Example], args) -> tuple[float, float]:
    """(first step s, mean of the later steps s) over the same ``step_queries`` queries."""
    from rrpo.train import RRPOConfig, RRPOTrainer

    batch = [ex for ex in train if len(ex.candidates) == 10][: args.step_queries]
    with tempfile.TemporaryDirectory(prefix="rrpo-biencoder-step-") as out:
        cfg = RRPOConfig(group_size=4, queries_per_step=len(batch), max_steps=args.steps + 1, checkpoint_every=0,
                         device=args.device, progress=False, out_dir=out)  # fmt: skip
        trainer = RRPOTrainer(make(), FreeReader(), batch, cfg)
        times = []
        for _ in range(args.steps + 1):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


# ------------------------------------------------------------------ metrics and tables
def mean_metric(examples: list[Example], orders: Orders, fn) -> tuple[float | None, int]:
    values = [fn(order, ex.gold) for ex, order in zip(examples, orders)]
    values = [v for v in values if v is not None]
    return (statistics.mean(values) if values else None), len(values)


def quality_table(rows: list[Row], hotpot, squad) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    def ms(v):
        return "-" if v is None else f"{v:,.1f}"

    header = ["reranker", "HotpotQA recall@3", "HotpotQA nDCG@10", "SQuAD recall@3", "SQuAD nDCG@10",
              "ms/query (batched)", "p50 ms cold", "p50 ms warm"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.name]
        for examples, orders in ((hotpot, r.hotpot), (squad, r.squad)):
            cells.append(fmt(mean_metric(examples, orders, lambda o, g: gold_recall(o[:3], g))[0]))
            cells.append(fmt(mean_metric(examples, orders, lambda o, g: ndcg_at_k(o, g, 10))[0]))
        cells.append(ms(r.ms_per_query))
        cells += [ms(r.latency[0]), ms(r.latency[1])] if r.latency else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_table(results: dict[str, tuple[float, float]], args) -> str:
    header = ["policy", "first step s", "later steps s (same queries, median)", "vs cross-encoder (later)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = results.get("cross-encoder (fresh head)", (None, None))[1]
    for name, (first, later) in results.items():
        ratio = f"{base / later:.1f}x" if base else "-"
        lines.append(f"| {name} | {first:.2f} | {later:.2f} | {ratio} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm-l6", help="a plain encoder: alias, directory or hub id")
    p.add_argument("--hotpot", type=int, default=300, help="HotpotQA dev questions")
    p.add_argument("--squad", type=int, default=300, help="SQuAD dev questions (BM25 top-20 each)")
    p.add_argument("--sft-questions", type=int, default=300, help="HotpotQA train questions for the bi-encoder SFT (0: none)")
    p.add_argument("--cross-sft-questions", type=int, default=300, help="... for the cross-encoder SFT (0: none)")
    p.add_argument("--sft-epochs", type=float, default=2.0, help="SFT epochs (SFTConfig's default: 2)")
    p.add_argument("--latency-queries", type=int, default=20, help="HotpotQA dev questions timed one at a time")
    p.add_argument("--step-queries", type=int, default=8, help="queries of the timed RRPO step (10 candidates each)")
    p.add_argument("--steps", type=int, default=3, help="timed RRPO steps after the first")
    p.add_argument("--max-length", type=int, default=256, help="tokens per pair / per text, both scorings (MiniLM's own 256)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None, help="default: $RRPO_SHARED_DATA, else ../shared/data")
    p.add_argument("--results", default=None, help="append the tables to this RESULTS.md")
    p.add_argument("--notes", default="", help="a line to add under the tables")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    hotpot, squad, train = load_data(args)
    lat = hotpot[: args.latency_queries]
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"{len(hotpot)} HotpotQA dev, {len(squad)} SQuAD dev questions; {len(train)} HotpotQA train")

    rows = [Row("retrieval order", [list(range(len(e.candidates))) for e in hotpot],
                [list(range(len(e.candidates))) for e in squad], note="SQuAD: BM25 top-20 order")]  # fmt: skip
    rows.append(Row("BM25 (over the candidates)", bm25_orders(hotpot), bm25_orders(squad)))
    timings = {}
    # Loaded outside inference_mode: both train later (rerank itself runs under it).
    ce = load(args, "cross_encoder")
    rows.append(reranker_row("cross-encoder, fresh head (the old default)", ce, hotpot, squad, lat))
    say(quality_table(rows[-1:], hotpot, squad))  # each row as it is done: a long run can die
    bi = load(args, None)
    assert bi.is_bi_encoder, "--model must be a plain encoder (no classification head)"
    weight = bi.scorer.lexical_weight.item()
    with torch.no_grad():
        bi.scorer.lexical_weight.zero_()
    rows.append(reranker_row("bi-encoder, zero-shot, cosine alone (lexical_weight 0)", bi, hotpot, squad, lat))
    say(quality_table(rows[-1:], hotpot, squad))
    with torch.no_grad():
        bi.scorer.lexical_weight.fill_(weight)
    rows.append(reranker_row(f"bi-encoder, zero-shot (the default: cosine + {weight:g} x z(BM25))", bi, hotpot, squad, lat))
    say(quality_table(rows[-1:], hotpot, squad))
    with tempfile.TemporaryDirectory(prefix="rrpo-biencoder-sft-") as tmp:
        for name, model, n in (("bi-encoder", bi, args.sft_questions), ("cross-encoder", ce, args.cross_sft_questions)):
            if not n:
                continue
            # In place: the bi-encoder keeps its cached passage embeddings (frozen tower).
            timings[name] = sft(model, train[:n], args.sft_epochs, Path(tmp) / name, args.device)
            rows.append(reranker_row(f"{name}, relevance SFT ({n} q x {args.sft_epochs:g} epochs)", model, hotpot, squad, []))
            say(quality_table(rows[-1:], hotpot, squad) + f"\n({timings[name]:.0f} s of training)")
    del ce, bi
    steps = {
        "cross-encoder (fresh head)": rrpo_step_times(lambda: load(args, "cross_encoder"), train, args),
        "bi-encoder (query tower trains)": rrpo_step_times(lambda: load(args, "bi_encoder"), train, args),
    }  # fmt: skip

    gold_found = sum(bool(e.metadata.get("gold_retrieved")) for e in squad)
    tables = quality_table(rows, hotpot, squad) + "\n\n" + step_table(steps, args)
    notes = "\n".join([
        f"- `{args.model}` on {args.device}, at most {args.max_length} tokens per pair (cross-encoder) or text (bi-encoder); HotpotQA dev: the first {len(hotpot)} questions, 10 passages each; "
        f"SQuAD dev: the first {len(squad)} questions, BM25 top-20 over the dev corpus "
        f"({len({c.id for e in squad for c in e.candidates})} distinct passages retrieved); BM25 found the gold passage for {gold_found} of them "
        "(recall and nDCG over those; retrieval order = BM25 order there).",
        "- BM25 (over the candidates): bm25s over each question's own candidates (English stopwords).",
        "- ms/query (batched): `rerank_batch` over all questions of both sets (cold caches); p50 cold / warm: "
        f"`rerank(top_n=3)` one query at a time over {len(lat)} HotpotQA dev questions, first pass / the same again "
        "(a bi-encoder's warm pass finds every passage embedding cached).",
        *(f"- {name} relevance SFT: `SFTTrainer` defaults, {n} HotpotQA train questions x {args.sft_epochs:g} epochs, "
          f"{timings[name]:.0f} s on {args.device}" + (" (query tower only; passages embedded once)" if name == "bi-encoder" else "")
          for name, n in (("bi-encoder", args.sft_questions), ("cross-encoder", args.cross_sft_questions)) if name in timings),
        f"- RRPO step: `RRPOConfig` defaults (G = 4, 2 PPO epochs, train_top_layers = 2, max_k 5), "
        f"{args.step_queries} HotpotQA train queries x 10 candidates, a reader that costs nothing; the first step scores "
        f"everything (policy and frozen reference); 'later' is the median of {args.steps} more steps over the same queries.",
        "- load average (1/5/15 min) at the start: {:.2f} {:.2f} {:.2f}; at the end: {:.2f} {:.2f} {:.2f}.".format(
            *load_start, *os.getloadavg()),
        "- Not measured here: RRPO-trained versions (they need the reader: a GPU run).",
        *([f"- {args.notes}"] if args.notes else []),
    ])  # fmt: skip
    say(tables + "\n\n" + notes)
    if args.results:
        append_results(args.results, "Zero-shot rerankers: bi-encoder vs cross-encoder vs BM25", command_line(), tables, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
