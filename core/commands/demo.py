"""``rrpo demo``: the main job, end to end, in minutes on a laptop CPU.

    rrpo demo [--size tiny|small|default|large] [--out ./rrpo-demo] [--device cpu] [--seed 0]

1. Generates a small fictional world (:mod:`rrpo.synthetic`) where the passage that
   answers a question looks *less* on topic than distractors about the same entity.
2. Trains, from the offline default cross-encoder, a relevance-SFT reranker (labels:
   on topic or gold) and an RRPO reranker with dynamic k (reward: the offline reader's
   gold-answer log-likelihood), warm-started from the SFT one as usual, at
   ``RRPOConfig``'s defaults.
3. Evaluates none / SFT top-3 / RRPO top-3 / RRPO dynamic k (k <= 5; and the gold-only
   oracle as a ceiling) on held-out questions with the same reader, and writes the table
   (``results.md``), ``results.json`` and ``results.png`` under ``--out``.

Layout of ``--out``: ``data/`` (train / held-out JSONL), ``models/sft`` and
``models/rrpo`` (``Reranker.from_pretrained`` folders), ``runs/`` (training metrics and
curves), ``results.md|json|png`` and ``run.json`` (sizes, seed, seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

NAME = "demo"
HELP = "generate a small world, train relevance-SFT and RRPO rerankers, compare them"

TOP_N = 3  # the fixed k of the "top-3" rows
MAX_K = 5  # the most the dynamic-k row keeps (RRPOConfig's default max_k)


@dataclass(frozen=True)
class DemoSize:
    """How much work one ``--size`` does. ``default`` fits in 10 minutes on 2 CPU cores."""

    train_questions: int
    eval_questions: int
    candidates: tuple[int, int]  # passages per question (min, max)
    sft_epochs: int
    rrpo_steps: int
    rrpo_queries_per_step: int
    group_size: int  # sampled rankings per query (G)
    max_new_tokens: int  # reader answer length in the evaluation


# Budget, measured on an idle 2-core Intel Xeon (fp32): with 32 training and 40 held-out
# questions and 12 RRPO steps, SFT took 17 s, RRPO 140 s (12 s a step: the reader scores
# every prefix of every sampled ranking, with the key/value cache of the shared passages
# reused), the evaluation ~105 s, 281 s in all. "default" spends the rest of the
# 10 minutes on what the result needs most: twice the RRPO steps and training questions,
# and 50 held-out questions for tighter intervals (~8 minutes). Everything else is
# RRPOConfig's defaults: the demo shows what a user gets.
SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(4, 3, (8, 8), 1, 2, 2, 2, 4),
    "small": DemoSize(16, 12, (8, 8), 2, 3, 4, 2, 8),
    "default": DemoSize(64, 50, (8, 8), 2, 24, 8, 4, 8),
    "large": DemoSize(800, 300, (8, 12), 3, 200, 8, 8, 12),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", choices=list(SIZES), default="default",
        help="how much to generate and train (default: ~10 minutes on a 2-core CPU; "
        "tiny: under a minute, for smoke tests)",
    )
    parser.add_argument("--out", default="./rrpo-demo", help="output folder (data, models, results)")
    parser.add_argument(
        "--device", default=None,
        help="torch device for the reranker and the reader (default: CUDA if available, else CPU)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated world and of training")
    parser.add_argument(
        "--reranker", default="minilm-l6",
        help="cross-encoder to start from (offline default: minilm-l6)",
    )
    parser.add_argument(
        "--reader", default="smollm2-135m",
        help="reader LLM that answers from the kept passages (offline default: smollm2-135m)",
    )


def run(args: argparse.Namespace) -> int:
    size = SIZES[args.size]
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    train, held_out = _make_data(size, args.seed, out)
    _say(f"data: {len(train)} training and {len(held_out)} held-out questions in {out / 'data'}")

    sft = _train_sft(args, size, train, out)
    reader = _reader(args, size)
    rrpo = _train_rrpo(args, size, train, reader, out)

    report = _evaluate(size, held_out, reader, sft, rrpo, args.seed)
    table = _write_results(report, out, args, size, time.perf_counter() - started)
    print(table)
    _say(f"done in {time.perf_counter() - started:.0f} s; results in {out}")
    return 0


def _say(message: str) -> None:
    print(f"[rrpo demo] {message}", flush=True)


# ----------------------------------------------------------------------------- steps


def _make_data(size: DemoSize, seed: int, out: Path):
    from rrpo.data import save_examples
    from rrpo.synthetic import generate_examples

    examples = generate_examples(
        size.train_questions + size.eval_questions, seed=seed, candidates=size.candidates
    )
    # Questions are distinct (entity, attribute) pairs, so the split shares no question.
    train, held_out = examples[: size.train_questions], examples[size.train_questions :]
    save_examples(train, out / "data" / "train.jsonl")
    save_examples(held_out, out / "data" / "held_out.jsonl")
    return train, held_out


def _train_sft(args: argparse.Namespace, size: DemoSize, train, out: Path):
    from rrpo import Reranker
    from rrpo.synthetic import relevance_labels
    from rrpo.train import SFTConfig, SFTTrainer

    _say(f"training the relevance-SFT reranker from {args.reranker} (labels: on topic)")
    # A cross-encoder, as the demo's story is about one: the packaged MiniLM gets a
    # fresh scoring head (its own default scoring is the bi-encoder).
    scoring = "cross_encoder" if args.reranker == "minilm-l6" else None
    base = Reranker.from_pretrained(args.reranker, device=args.device, seed=args.seed, scoring=scoring)
    config = SFTConfig(
        epochs=size.sft_epochs, max_k=TOP_N, seed=args.seed, device=args.device,
        out_dir=str(out / "runs" / "sft"),
        overwrite=True,  # a demo run again into the same --out starts over
    )  # fmt: skip
    sft = SFTTrainer(base, train, config, label_fn=relevance_labels).train()
    sft.save_pretrained(out / "models" / "sft")
    return sft


def _reader(args: argparse.Namespace, size: DemoSize):
    from rrpo.readers import LocalReader

    _say(f"loading the reader {args.reader}")
    return LocalReader(args.reader, device=args.device, max_new_tokens=size.max_new_tokens)


def _train_rrpo(args: argparse.Namespace, size: DemoSize, train, reader, out: Path):
    from rrpo import Reranker
    from rrpo.train import RRPOConfig, RRPOTrainer

    _say("training the RRPO reranker with dynamic k (reward: gold-answer log-likelihood)")
    # Warm start from the SFT model (saved just before), the usual recipe: RRPO then
    # only has to learn which of the on-topic passages actually helps the reader.
    policy = Reranker.from_pretrained(out / "models" / "sft", device=args.device)
    config = RRPOConfig(  # the library's defaults, sized: reward, rates, k cap, advantages
        max_steps=size.rrpo_steps,
        queries_per_step=size.rrpo_queries_per_step,
        group_size=size.group_size,
        checkpoint_every=0,
        seed=args.seed,
        device=args.device,
        out_dir=str(out / "runs" / "rrpo"),  # metrics.jsonl, curves.png
        overwrite=True,
    )
    rrpo = RRPOTrainer(policy=policy, reader=reader, examples=train, config=config).train()
    rrpo.save_pretrained(out / "models" / "rrpo")
    return rrpo


def _evaluate(size: DemoSize, held_out, reader, sft, rrpo, seed: int):
    from rrpo.evaluate import RerankerSpec, evaluate

    _say(f"evaluating on {len(held_out)} held-out questions")
    specs = [
        RerankerSpec.none(top_n=TOP_N),
        RerankerSpec("sft-top3", sft, top_n=TOP_N),
        RerankerSpec("rrpo-top3", rrpo, top_n=TOP_N),
        RerankerSpec("rrpo-dynamic-k", rrpo, top_n=MAX_K, min_k=1, dynamic_k=True),
        RerankerSpec.oracle(),
    ]
    return evaluate(held_out, specs, reader, baseline="sft-top3", seed=seed)


def _write_results(report, out: Path, args: argparse.Namespace, size: DemoSize, seconds: float) -> str:
    table = (
        f"# rrpo demo (--size {args.size}, seed {args.seed})\n\n"
        "Held-out questions about a generated world where the passage that answers looks "
        "less on topic than the distractors. `none`: retrieval order; `sft-top3`: "
        "relevance-SFT reranker; `rrpo-*`: trained with the reader's gold-answer "
        "likelihood; `oracle`: the answer passage alone (a ceiling).\n\n"
        + report.to_markdown()
    )
    (out / "results.md").write_text(table, encoding="utf-8")
    report.to_json(out / "results.json")
    report.plot(out / "results.png")
    run_info = {"size": args.size, "settings": asdict(size), "seed": args.seed, "seconds": round(seconds, 1)}
    (out / "run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    return table
