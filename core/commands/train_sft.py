"""``rrpo train-sft``: the relevance baseline (pointwise BCE on gold flags)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train-sft"
HELP = "train the relevance-SFT baseline reranker on gold passage flags"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.config import SFTConfig, add_config_arguments
    from .train import add_data_arguments

    add_data_arguments(parser, feedback=False)
    add_config_arguments(parser, SFTConfig)


def run(args: argparse.Namespace) -> int:
    from ..data import load_examples
    from ..train import SFTConfig, SFTTrainer
    from ..train.common import claim_out_dir
    from ..train.config import config_from_args
    from . import load_reranker

    config = config_from_args(SFTConfig, args, args.config)
    claim_out_dir(Path(config.out_dir), config.overwrite, remove=False)  # before loading models
    if not args.data:
        raise ValueError("--data is required")
    examples = load_examples(args.data, limit=args.limit)
    reranker = load_reranker(args.init, device=config.device)
    SFTTrainer(reranker, examples, config).train()
    print(f"model saved to {config.out_dir}/model")
    return 0
