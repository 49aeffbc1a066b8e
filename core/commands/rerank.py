"""``rrpo rerank``: rerank a JSONL file of questions and candidates with any reranker."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "rerank"
HELP = "rerank the candidates of each question in a JSONL file; writes kept ids, scores and k as JSONL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="questions with candidates (rrpo's JSONL schema, .gz ok)")
    parser.add_argument("--model", default="minilm-l6", help="reranker: a directory, alias or hub id")
    parser.add_argument("--top-n", type=int, default=5, help="most candidates to keep (0 = no cap)")
    parser.add_argument("--min-k", type=int, default=1, help="fewest candidates to keep")
    parser.add_argument("--fixed-k", action="store_true", help="keep exactly --top-n (no dynamic k)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--batch-queries", type=int, default=32, help="questions scored together")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--out", default="-", help="output JSONL path ('-' = stdout)")


def check_arguments(args: argparse.Namespace) -> None:
    """Bad numbers and paths fail before any model loads (main prints one line, exit 2)."""
    for flag, value, low in (("--batch-queries", args.batch_queries, 1), ("--top-n", args.top_n, 0),
                             ("--min-k", args.min_k, 0), ("--limit", args.limit, 0)):  # fmt: skip
        if value is not None and value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.out != "-" and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file path for the JSONL output (or '-')")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data import load_examples
    from . import load_reranker

    check_arguments(args)
    examples = load_examples(args.data, limit=args.limit)
    reranker = load_reranker(args.model, device=args.device)
    top_n = args.top_n or None
    out = sys.stdout if args.out == "-" else open(args.out, "w")
    try:
        for start in tqdm(range(0, len(examples), args.batch_queries), desc="rerank", unit="batch"):
            batch = examples[start : start + args.batch_queries]
            selections = reranker.rerank_batch(
                [ex.query for ex in batch], [ex.candidates for ex in batch],
                top_n=top_n, min_k=args.min_k, dynamic_k=not args.fixed_k,
            )  # fmt: skip
            for ex, sel in zip(batch, selections):
                row = {
                    "id": ex.id,
                    "query": ex.query,
                    "k": sel.k,
                    "kept_ids": [ex.candidates[i].id for i in sel.kept],
                    "kept_scores": sel.kept_scores(),
                    "order": [ex.candidates[i].id for i in sel.order],
                }
                out.write(json.dumps(row) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0
