"""``rrpo train``: RRPO from a QA data set (gold answers) or a feedback store."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train"
HELP = "train a reranker with RRPO: reinforcement learning from the reader's answer quality"


def add_data_arguments(parser: argparse.ArgumentParser, feedback: bool) -> None:
    parser.add_argument("--data", help="QA data: a JSONL(.gz) file in rrpo's schema or a datasets id/path")
    if feedback:
        parser.add_argument("--feedback", help="a feedback store (SQLite) recorded from live pipelines")
    parser.add_argument("--init", default="minilm-l6", help="the reranker to start from: a directory, alias or hub id")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    parser.add_argument("--config", default=None, help="a JSON or TOML file of config fields (flags win)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.config import RRPOConfig, add_config_arguments

    add_data_arguments(parser, feedback=True)
    parser.add_argument("--reader", default="smollm2-135m", help="reader: smollm2-135m, a model dir, or openai:MODEL@BASE_URL")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    add_config_arguments(parser, RRPOConfig)


def load_training_examples(args: argparse.Namespace):
    if bool(args.data) == bool(getattr(args, "feedback", None)):
        raise ValueError("give exactly one of --data or --feedback")
    if args.data:
        from ..data import load_examples

        examples = load_examples(args.data, limit=args.limit)
    else:
        from ..feedback import FeedbackStore

        # create=False: a mistyped path is an error, not a new empty store.
        with FeedbackStore(args.feedback, create=False) as store:
            records = store.records(limit=args.limit)
        examples = [r.to_example() for r in records]
    if not examples:
        raise ValueError("the training data is empty")
    return examples


def run(args: argparse.Namespace) -> int:
    from ..train import RRPOConfig, RRPOTrainer
    from ..train.common import claim_out_dir
    from ..train.config import config_from_args
    from . import load_reader, load_reranker

    config = config_from_args(RRPOConfig, args, args.config)  # fails fast, before loading models
    if args.resume and config.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in --out, or start over")
    if not args.resume:  # a used --out, too (the trainer checks again, then clears it for --overwrite)
        claim_out_dir(Path(config.out_dir), config.overwrite, remove=False)
    examples = load_training_examples(args)
    policy = load_reranker(args.init, device=config.device)
    reader = load_reader(args.reader, device=config.device)
    trainer = RRPOTrainer(policy, reader, examples, config, resume=args.resume)
    trainer.train()
    print(f"trained {trainer.step} steps; model saved to {config.out_dir}/model")
    return 0
