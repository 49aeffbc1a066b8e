"""Train the relevance-SFT MiniLM cross-encoder that the int8 quality check in ``speed.py`` ranks with.

Quantization error only matters where the scores mean something: a fresh head's
near-equal scores reorder under any rounding. So the check needs a trained reranker:
BCE on HotpotQA's gold flags (``rrpo.train.SFTTrainer``), saved as a plain rrpo
directory under ``runs/`` (git-ignored). On 2 CPU cores a few hundred questions for one
epoch is what fits (about 30-60 min); on a GPU use all 1,291 questions and 2 epochs::

    python benchmarks/sft_reranker.py --out runs/sft-minilm-hotpot --questions 600 --epochs 1
    python benchmarks/speed.py --model runs/sft-minilm-hotpot/model --backends fp32,int8 --quality-queries 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rrpo import Reranker
from rrpo.data import load_examples, shared_data_dir
from rrpo.train import SFTConfig, SFTTrainer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/sft-minilm-hotpot"), help="run folder; the model goes to OUT/model")
    p.add_argument("--questions", type=int, default=600, help="HotpotQA train questions to use (the first N)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--examples-per-step", type=int, default=4, help="questions per step (4 x 10 pairs bounds memory on CPU)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per pair (HotpotQA passages are short)")
    p.add_argument("--init", default="minilm-l6")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    examples = load_examples(shared_data_dir() / "hotpotqa-distractor.train.jsonl.gz", limit=args.questions)
    # A cross-encoder (a plain encoder gets a fresh one-logit head): what speed.py and its
    # sentence-transformers peer run.
    reranker = Reranker.from_pretrained(args.init, device=args.device, max_length=args.max_length, scoring="cross_encoder")
    config = SFTConfig(
        epochs=args.epochs, examples_per_step=args.examples_per_step, device=args.device,
        out_dir=str(args.out), overwrite=True, progress=False,
    )  # fmt: skip
    start = time.perf_counter()
    SFTTrainer(reranker, examples, config).train()
    print(f"{len(examples)} questions, {args.epochs} epoch(s) in {time.perf_counter() - start:.0f} s: model in {args.out}/model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
