"""``rrpo train``: RRPO from a QA data set (gold answers) or a feedback store."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train"
HELP = "train a reranker with RRPO: reinforcement learning from the reader's answer quality"


def add_data_arguments(parser: argparse.ArgumentParser, feedback: bool) -> None:
    parser.add_argument("--data", help="QA data: a JSONL(.gz) file in rrpo's schema or a datasets id/path")
    if feedback:
        from .feedback import STORE_HELP, add_filter_arguments

        parser.add_argument("--feedback", help=STORE_HELP + ", recorded from live pipelines (streamed)")
    parser.add_argument("--init", default="minilm-l6", help="the reranker to start from: a directory, alias or hub id")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    parser.add_argument("--config", default=None, help="a JSON or TOML file of config fields (flags win)")
    if feedback:
        group = parser.add_argument_group("which feedback records (with --feedback)")
        add_filter_arguments(group)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.config import RRPOConfig, add_config_arguments

    add_data_arguments(parser, feedback=True)
    parser.add_argument("--reader", default="smollm2-135m", help="reader: smollm2-135m, a model dir, or openai:MODEL@BASE_URL")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument(
        "--pseudo-gold", choices=("auto", "on", "off"), default="auto",
        help="with --feedback: a rated-good record's answer becomes its gold answer, so a gold reward "
        "(gold_loglik, token_f1, ...) scores every alternative selection offline. auto: when the reward "
        "compares with gold answers (records without one are then left out if every part of it does)",
    )  # fmt: skip
    parser.add_argument("--good-rating", type=float, default=1.0,
                        help="with --feedback: the lowest rating that makes an answer pseudo-gold (thumbs up = 1)")
    add_config_arguments(parser, RRPOConfig)


def load_training_examples(args: argparse.Namespace, reward: str | None = None):
    """``reward``: the training reward; with --feedback it decides whether rated-good
    answers become pseudo-gold answers (``--pseudo-gold auto``)."""
    if bool(args.data) == bool(getattr(args, "feedback", None)):
        raise ValueError("give exactly one of --data or --feedback")
    if args.data:
        from ..data import load_examples

        _no_feedback_filters(args)
        examples = load_examples(args.data, limit=args.limit)
    else:
        examples = _feedback_examples(args, reward)
    if not examples:
        raise ValueError("the training data is empty")
    return examples


def _no_feedback_filters(args: argparse.Namespace) -> None:
    given = [flag for flag, name in (("--since", "since"), ("--until", "until"),
                                     ("--reranker-version", "reranker_version"), ("--rated-only", "rated_only"))
             if getattr(args, name, None)]
    if given:
        raise ValueError(f"{', '.join(given)} choose feedback records: use with --feedback, not --data")


def _feedback_examples(args: argparse.Namespace, reward: str | None = None) -> list:
    """Training examples from a feedback store: filtered by the database, streamed page
    by page, each record turned into its example as it arrives (with its rated-good
    answer as pseudo-gold when the reward needs gold answers)."""
    from ..feedback import FeedbackStore
    from ..offpolicy import feedback_examples
    from .feedback import record_filters

    # create=False: a mistyped path or URL is an error, not a new empty store.
    with FeedbackStore(args.feedback, create=False) as store:
        records = store.iter_records(limit=args.limit, **record_filters(args))
        return feedback_examples(records, reward=reward, good_rating=getattr(args, "good_rating", 1.0),
                                 pseudo=getattr(args, "pseudo_gold", "off"))  # fmt: skip


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
    examples = load_training_examples(args, reward=config.reward)
    policy = load_reranker(args.init, device=config.device)
    reader = load_reader(args.reader, device=config.device)
    trainer = RRPOTrainer(policy, reader, examples, config, resume=args.resume)
    trainer.train()
    print(f"trained {trainer.step} steps; model saved to {config.out_dir}/model")
    return 0
