"""``rrpo eval``: rerankers side by side on the same questions with the same reader.

    rrpo eval --data hotpotqa-distractor.dev.jsonl.gz --reranker none \\
        --reranker minilm-l6:top3 --reranker out/rrpo:dynamic --reranker out/rrpo:top3
    rrpo eval --data squad-dev-questions.dev.jsonl.gz --corpus squad-dev-corpus.jsonl.gz ...

Writes OUT/eval.json, OUT/eval.md and OUT/eval.png and prints the table.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

NAME = "eval"
HELP = "compare rerankers on QA data with one reader: F1/EM, log-lik, recall, k, words, latency"

RERANKER_HELP = """\
reranker to evaluate, repeatable: [LABEL=]MODEL[:MODE].
MODEL: 'none' (retrieval order), a packaged name (minilm-l6), a local folder
(an rrpo checkpoint, a trainer's out_dir holding model/, any cross-encoder)
or a hub id.
MODE: 'topN' keeps exactly N passages; 'dynamic' lets the reranker choose k
between --min-k and --max-k; 'dynamicN' chooses k between --min-k and N.
Default MODE: top{top_n}. LABEL names the row (default: the spec itself).
'oracle' (gold passages only) is reserved: use --oracle."""

_MODE = re.compile(r"^(top|dynamic)(\d*)$")


@dataclass
class ParsedSpec:
    """One --reranker value, before any model is loaded."""

    label: str
    model: str  # "none" or a name / path / hub id
    top_n: int
    dynamic_k: bool


def parse_reranker_spec(text: str, top_n: int = 3, max_k: int = 5) -> ParsedSpec:
    """``[LABEL=]MODEL[:MODE]`` -> :class:`ParsedSpec` (see ``RERANKER_HELP``)."""
    raw = text.strip()
    label, sep, body = raw.partition("=")
    if not sep:
        label, body = "", raw
    model, mode = body, ""
    head, colon, tail = body.rpartition(":")
    # Only a trailing topN/dynamic[N] is a mode, so paths with ':' still work.
    if colon and _MODE.match(tail):
        model, mode = head, tail
    if not model:
        raise ValueError(f"--reranker {text!r}: no model given")
    if model == "oracle":
        raise ValueError("--reranker oracle: 'oracle' is reserved; use --oracle for the gold-passages row")
    match = _MODE.match(mode) if mode else None
    dynamic = bool(match and match.group(1) == "dynamic")
    number = int(match.group(2)) if match and match.group(2) else (max_k if dynamic else top_n)
    if number < 1:
        raise ValueError(f"--reranker {text!r}: k must be >= 1")
    if model == "none" and dynamic:
        raise ValueError(f"--reranker {text!r}: retrieval order ('none') cannot choose k")
    return ParsedSpec(label=label or raw, model=model, top_n=number, dynamic_k=dynamic)


EXAMPLES = """\
examples:
  rrpo eval --data hotpotqa-distractor.dev.jsonl.gz --limit 200 \\
      --reranker none --reranker minilm-l6:top3 --reranker out/rrpo:top3 --reranker out/rrpo:dynamic
  rrpo eval --data squad-dev-questions.dev.jsonl.gz --corpus squad-dev-corpus.jsonl.gz \\
      --reranker none --reranker SFT=out/sft:top3 --baseline SFT --out eval-squad
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawTextHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument(
        "--data", required=True,
        help="QA data: shared-schema .jsonl(.gz), or a questions file with --corpus,\n"
        "or a Hugging Face datasets id/folder",
    )
    parser.add_argument(
        "--corpus", default=None,
        help="corpus .jsonl(.gz) for corpus + questions data (e.g. SQuAD):\n"
        "candidates are its BM25 top --first-stage-k passages",
    )
    parser.add_argument("--first-stage-k", type=int, default=20, help="BM25 candidates per question (default 20)")
    parser.add_argument("--split", default=None, help="split of a Hugging Face data set")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N questions only")
    parser.add_argument(
        "--reader", default="smollm2-135m",
        help="reader LLM: smollm2-135m (packaged), a local folder, or an\n"
        "OpenAI-compatible spec understood by rrpo.readers.get_reader",
    )
    parser.add_argument("--reranker", action="append", default=None, metavar="SPEC",
                        help=RERANKER_HELP.format(top_n="N from --top-n"))
    parser.add_argument("--top-n", type=int, default=3, help="k for specs without a mode (default 3)")
    parser.add_argument("--max-k", type=int, default=5, help="most passages for 'dynamic' (default 5)")
    parser.add_argument("--min-k", type=int, default=1, help="fewest passages for dynamic k (default 1)")
    parser.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=None,
                        help="add the gold-passages row (default: when the data has gold flags)")
    parser.add_argument("--baseline", default=None,
                        help="row to compare the others against (bootstrap 95%% intervals);\n"
                        "default: the first --reranker")
    parser.add_argument("--max-words", type=int, default=120, help="passage words shown to the reader (default 120)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="questions per reader batch (default 16)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: best available)")
    parser.add_argument("--out", default="eval-out", help="output folder for eval.json/.md/.png (default eval-out)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def load_data(args: argparse.Namespace):
    """Examples from --data (and --corpus), honouring --limit."""
    from rrpo.data import load_corpus_questions, load_examples

    if args.corpus:
        return load_corpus_questions(args.corpus, args.data, k=args.first_stage_k, limit=args.limit)
    return load_examples(args.data, split=args.split, limit=args.limit)


def _checkpoint_dir(model: str) -> str:
    """A trainer's out_dir keeps the final model in out_dir/model; accept either."""
    path = Path(model)
    if path.is_dir() and not (path / "config.json").exists() and (path / "model" / "config.json").exists():
        return str(path / "model")
    return model


def build_specs(parsed: list[ParsedSpec], args: argparse.Namespace, with_oracle: bool):
    """Load each distinct model once and turn parsed specs into RerankerSpecs."""
    from rrpo.evaluate import RerankerSpec

    from . import load_reranker

    models: dict[str, object] = {}
    specs = []
    for p in parsed:
        reranker = None
        if p.model != "none":
            if p.model not in models:
                models[p.model] = load_reranker(_checkpoint_dir(p.model), device=args.device)
            reranker = models[p.model]
        min_k = min(args.min_k, p.top_n)
        specs.append(RerankerSpec(p.label, reranker, top_n=p.top_n, min_k=min_k, dynamic_k=p.dynamic_k))
    if with_oracle:
        specs.append(RerankerSpec.oracle())
    return specs


def write_outputs(report, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = report.to_markdown()
    (out_dir / "eval.md").write_text(markdown, encoding="utf-8")
    return {
        "json": report.to_json(out_dir / "eval.json"),
        "md": out_dir / "eval.md",
        "png": report.plot(out_dir / "eval.png"),
    }


def run(args: argparse.Namespace) -> int:
    from rrpo.evaluate import evaluate

    from . import load_reader

    try:
        parsed = [
            parse_reranker_spec(s, top_n=args.top_n, max_k=args.max_k)
            for s in (args.reranker or ["none"])
        ]
        examples = load_data(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"rrpo eval: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if not examples:
        print(f"rrpo eval: no questions in {args.data}", file=sys.stderr)
        return 2
    has_gold = all(ex.gold is not None for ex in examples)
    if args.oracle and not has_gold:
        print("rrpo eval: --oracle needs gold flags, and this data has none", file=sys.stderr)
        return 2
    with_oracle = has_gold if args.oracle is None else args.oracle
    baseline = args.baseline or parsed[0].label
    try:
        specs = build_specs(parsed, args, with_oracle)
        reader = load_reader(args.reader, device=args.device)
        report = evaluate(
            examples, specs, reader, max_words=args.max_words, baseline=baseline,
            n_bootstrap=args.bootstrap, seed=args.seed, progress=not args.no_progress,
            batch_size=args.batch_size,
        )
    except (ValueError, OSError) as err:  # a bad spec, a model or file that is not there
        print(f"rrpo eval: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    report.info.update(data=str(args.data), corpus=args.corpus, limit=args.limit)
    paths = write_outputs(report, Path(args.out))
    print(report.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
