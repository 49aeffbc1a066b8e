"""Quality benchmark on real data: does RRPO beat relevance SFT?

For each data set, trains a relevance-SFT reranker and an RRPO reranker from the same
base (MiniLM-L6) with the default reader (SmolLM2-135M), then evaluates side by side:
none (retrieval order), oracle (gold passages), SFT top-3 / top-5, RRPO top-3 and RRPO
with dynamic k (plus the untrained base at top-3 in the full size).

- HotpotQA distractor: train on ``hotpotqa-distractor.train``, evaluate on ``.dev``.
- SQuAD v1.1 dev: candidates are the BM25 top-20 over the dev corpus; train on
  ``squad-dev-questions.train``, evaluate on ``squad-dev-questions.dev`` (split by
  article, so no article crosses).

    python benchmarks/quality.py --size small            # CPU smoke run, HotpotQA, 15-40 min
    python benchmarks/quality.py --size full --device cuda --dataset both

Writes OUT/<dataset>/eval.{json,md,png}, the trained checkpoints, and OUT/RESULTS.md
(the tables with the command, machine, date and data split), and checks the issue's
targets against the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Size:
    """How much of each data set a run uses (None = all)."""

    sft_train: int | None  # training questions for relevance SFT
    sft_epochs: float
    rrpo_train: int | None  # training questions RRPO draws from
    rrpo_steps: int  # optimisation steps, each over queries_per_step questions
    queries_per_step: int
    eval: int | None  # evaluation questions
    with_base_row: bool  # also evaluate the untrained base at top-3


SIZES = {
    # A 2-core CPU, where the reader is the wall: SmolLM2-135M answers ~16 questions
    # (3 passages each) in 45-190 s and scores 16 log-liks in 30-120 s (idle vs busy
    # machine), for each of the 6 rows. So 30 evaluation questions and a few RRPO steps:
    # every part runs, the numbers are a smoke test, not a result (use --size full).
    "small": Size(sft_train=64, sft_epochs=1, rrpo_train=16, rrpo_steps=3, queries_per_step=2,
                  eval=30, with_base_row=False),
    # A GPU: every training question for SFT; RRPO 300 steps x 8 questions (about two
    # passes over the 1,291 HotpotQA train questions); every evaluation question.
    "full": Size(sft_train=None, sft_epochs=2, rrpo_train=None, rrpo_steps=300, queries_per_step=8,
                 eval=None, with_base_row=True),
}

BASELINE = "sft:top3"


@dataclass
class Split:
    name: str
    train: list  # list[rrpo.Example]
    dev: list
    description: str


# ------------------------------------------------------------------ data ---


def train_limit(size: Size) -> int | None:
    """Training questions to read: enough for both trainers (None = all)."""
    if size.sft_train is None or size.rrpo_train is None:
        return None
    return max(size.sft_train, size.rrpo_train)


def load_hotpotqa(data_dir: Path, size: Size) -> Split:
    from rrpo.data import load_examples

    return Split(
        name="hotpotqa",
        train=load_examples(data_dir / "hotpotqa-distractor.train.jsonl.gz", limit=train_limit(size)),
        dev=load_examples(data_dir / "hotpotqa-distractor.dev.jsonl.gz", limit=size.eval),
        description="HotpotQA distractor: train = hotpotqa-distractor.train, eval = hotpotqa-distractor.dev",
    )


def load_squad(data_dir: Path, size: Size, first_stage_k: int = 20) -> Split:
    from rrpo.data import BM25Index, load_corpus, load_corpus_questions

    corpus = data_dir / "squad-dev-corpus.jsonl.gz"
    index = BM25Index(load_corpus(corpus))  # one index for both question files
    load = lambda name, limit: load_corpus_questions(  # noqa: E731
        corpus, data_dir / name, k=first_stage_k, limit=limit, index=index
    )
    train = load("squad-dev-questions.train.jsonl.gz", train_limit(size))
    return Split(
        name="squad",
        # A question whose gold paragraph BM25 missed teaches the reranker nothing about gold.
        train=[ex for ex in train if ex.metadata.get("gold_retrieved")],
        dev=load("squad-dev-questions.dev.jsonl.gz", size.eval),
        description=f"SQuAD v1.1 dev, BM25 top-{first_stage_k} over squad-dev-corpus: "
        "train = squad-dev-questions.train (37 articles), eval = squad-dev-questions.dev (11 articles)",
    )


# -------------------------------------------------------------- training ---


def train_sft(base: str, examples: list, size: Size, device: str | None, out: Path):
    from rrpo import Reranker
    from rrpo.train import SFTConfig, SFTTrainer

    reranker = Reranker.from_pretrained(base, device=device)
    config = SFTConfig(epochs=size.sft_epochs, max_k=5, device=device, out_dir=str(out), seed=0, overwrite=True)
    return SFTTrainer(reranker, examples[: size.sft_train], config).train()  # saved to out/model


def train_rrpo(base: str, reader, examples: list, size: Size, device: str | None, out: Path, max_words: int):
    from rrpo import Reranker
    from rrpo.train import RRPOConfig, RRPOTrainer

    policy = Reranker.from_pretrained(base, device=device)
    # The defaults are the method's choices (gold-answer log-lik per prefix, 1e-3 per
    # context word, reference-anchored baseline); only the budget changes with --size.
    config = RRPOConfig(
        min_k=1, max_k=5, max_steps=size.rrpo_steps, queries_per_step=size.queries_per_step,
        max_words=max_words, device=device, out_dir=str(out), seed=0, overwrite=True,  # re-runs start over
    )
    return RRPOTrainer(policy, reader, examples[: size.rrpo_train], config).train()  # saved to out/model


# ------------------------------------------------------------ evaluation ---


def build_specs(sft, rrpo, base_model):
    from rrpo.evaluate import RerankerSpec

    specs = [RerankerSpec.none(top_n=3), RerankerSpec.oracle()]
    if base_model is not None:
        specs.append(RerankerSpec("base:top3", base_model, top_n=3))
    specs += [
        RerankerSpec("sft:top3", sft, top_n=3),
        RerankerSpec("sft:top5", sft, top_n=5),
        RerankerSpec("rrpo:top3", rrpo, top_n=3),
        RerankerSpec("rrpo:dynamic", rrpo, top_n=5, min_k=1, dynamic_k=True),
    ]
    return specs


def check_targets(report) -> list[str]:
    """The issue's targets, each as one line saying met / not met with the numbers."""
    names = {r.name for r in report.rows}
    if not {"sft:top3", "rrpo:dynamic", "rrpo:top3", "oracle", "none"} <= names:
        return ["targets: rows missing, not checked"]
    sft, dyn, top3 = report.row("sft:top3"), report.row("rrpo:dynamic"), report.row("rrpo:top3")
    oracle, none = report.row("oracle"), report.row("none")
    lines = []
    for metric in ("f1", "loglik"):
        gap = oracle[metric] - sft[metric]
        closed = (dyn[metric] - sft[metric]) / gap if gap else float("nan")
        lines.append(_verdict(closed >= 0.5, f"RRPO dynamic closes {closed:.0%} of the SFT-top3 -> oracle gap on {metric} (target >= 50%)"))
    _, lo, hi = dyn.diffs.get("f1", (float("nan"),) * 3)
    lines.append(_verdict(lo > 0, f"RRPO dynamic - SFT top3 F1 interval [{100 * lo:+.1f}, {100 * hi:+.1f}] above 0"))
    fewer = 1 - dyn["words"] / sft["words"]
    lines.append(_verdict(fewer >= 0.25, f"RRPO dynamic uses {fewer:.0%} fewer context words than SFT top3 (target >= 25%)"))
    for metric in ("f1", "loglik"):
        lines.append(_verdict(top3[metric] >= sft[metric], f"RRPO top3 {metric} {top3[metric]:.3f} >= SFT top3 {sft[metric]:.3f}"))
    for row in report.rows:
        if row.name not in {"none", "oracle"} and row["recall3"] is not None:
            lines.append(_verdict(row["recall3"] > none["recall3"], f"{row.name} gold recall@3 {row['recall3']:.1%} > none {none['recall3']:.1%}"))
    return lines


def _verdict(ok: bool, text: str) -> str:
    return f"- [{'x' if ok else ' '}] {'met' if ok else 'NOT met'}: {text}"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node() or 'host'}, {platform.processor() or platform.machine()}, {gpu}, torch {torch.__version__}"


def run_dataset(split: Split, args, size: Size, reader) -> str:
    from rrpo import Reranker
    from rrpo.evaluate import evaluate

    out = Path(args.out) / split.name
    times = {}
    start = time.perf_counter()
    sft = train_sft(args.base, split.train, size, args.device, out / "sft")
    times["sft_train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    rrpo = train_rrpo(args.base, reader, split.train, size, args.device, out / "rrpo", args.max_words)
    times["rrpo_train_s"] = time.perf_counter() - start
    base_model = Reranker.from_pretrained(args.base, device=args.device) if size.with_base_row else None
    start = time.perf_counter()
    report = evaluate(
        split.dev, build_specs(sft, rrpo, base_model), reader,
        max_words=args.max_words, baseline=BASELINE, n_bootstrap=args.bootstrap, seed=0,
    )
    times["eval_s"] = time.perf_counter() - start
    report.info.update(
        dataset=split.description, size=args.size, n_train=len(split.train),
        sft_train=size.sft_train, rrpo_train=size.rrpo_train, base=args.base, **times,
    )
    report.to_json(out / "eval.json")
    report.plot(out / "eval.png")
    table = report.to_markdown()
    targets = "\n".join(check_targets(report))
    (out / "eval.md").write_text(table + "\n" + targets + "\n", encoding="utf-8")
    timing = ", ".join(f"{k} {v:.0f}" for k, v in times.items())
    return f"## {split.name}\n\n{split.description}\n\n{table}\nTargets:\n\n{targets}\n\nTimes (s): {timing}\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--dataset", choices=["hotpotqa", "squad", "both"], default=None,
                        help="default: hotpotqa for --size small, both for --size full")
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: rrpo.data.shared_data_dir())")
    parser.add_argument("--reader", default="smollm2-135m")
    parser.add_argument("--base", default="minilm-l6", help="base cross-encoder for SFT and RRPO")
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-words", type=int, default=120)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default="bench-out/quality")
    # Overrides of the --size budget, for quick smoke runs.
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluation questions (overrides --size)")
    parser.add_argument("--sft-train", type=int, default=None, help="SFT training questions (overrides --size)")
    parser.add_argument("--rrpo-steps", type=int, default=None, help="RRPO steps (overrides --size)")
    parser.add_argument("--results", default=None, help="append the tables to this RESULTS.md (benchmarks/RESULTS.md)")
    parser.add_argument("--notes", default="", help="notes to record with --results (e.g. machine load)")
    return parser.parse_args(argv)


def budget(args) -> Size:
    """The --size preset with any command-line overrides applied."""
    size = SIZES[args.size]
    overrides = {"eval": args.eval_limit, "sft_train": args.sft_train, "rrpo_steps": args.rrpo_steps}
    return dataclasses.replace(size, **{k: v for k, v in overrides.items() if v is not None})


def main(argv=None) -> int:
    from rrpo.data import shared_data_dir
    from rrpo.readers import CachedReader, get_reader

    args = parse_args(argv)
    size = budget(args)
    dataset = args.dataset or ("hotpotqa" if args.size == "small" else "both")
    data_dir = Path(args.data_dir) if args.data_dir else shared_data_dir()
    # One cache for training and evaluation: the same prompt is never asked twice.
    reader = CachedReader(get_reader(args.reader, device=args.device))
    loaders = {"hotpotqa": load_hotpotqa, "squad": load_squad}
    names = ["hotpotqa", "squad"] if dataset == "both" else [dataset]
    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sections = [
        f"# Quality benchmark ({args.size})\n\nCommand: `{command}`  \nMachine: {machine()}  \n"
        f"Date: {dt.datetime.now().isoformat(timespec='seconds')}  \nReader: {args.reader}, "
        f"passages cut to {args.max_words} words; base reranker {args.base}; sizes {json.dumps(dataclasses.asdict(size))}\n"
    ]
    for name in names:
        split = loaders[name](data_dir, size)
        section = run_dataset(split, args, size, reader)
        print(section, flush=True)
        sections.append(section)
    results = Path(args.out) / "RESULTS.md"
    results.write_text("\n".join(sections), encoding="utf-8")
    print(f"wrote {results}")
    if args.results:  # the project's results file, with command, machine and date
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _results import append_results, command_line

        append_results(args.results, f"Quality ({args.size}): {', '.join(names)}", command_line(argv),
                       "\n".join(sections[1:]), args.notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
