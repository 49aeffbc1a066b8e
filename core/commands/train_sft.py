"""``rrpo train-sft``: the relevance baseline (pointwise BCE on gold flags)."""

from __future__ import annotations

import argparse

NAME = "train-sft"
HELP = "train the relevance-SFT baseline reranker on gold passage flags"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.config import SFTConfig, add_config_arguments
    from .train import add_data_arguments

    add_data_arguments(parser, feedback=False)
    add_config_arguments(parser, SFTConfig)


def run(args: argparse.Namespace) -> int:
    from .. import Reranker
    from ..data import load_examples
    from ..train import SFTConfig, SFTTrainer
    from ..train.config import config_from_args

    config = config_from_args(SFTConfig, args, args.config)
    if not args.data:
        raise SystemExit("rrpo train-sft: --data is required")
    examples = load_examples(args.data, limit=args.limit)
    reranker = Reranker.from_pretrained(args.init, device=config.device)
    SFTTrainer(reranker, examples, config).train()
    print(f"model saved to {config.out_dir}/model")
    return 0
