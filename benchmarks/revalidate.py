"""Score a quality run's held-out validation questions for two rerankers, per question,
and say whether the second beats the first by RRPOConfig's paired rule (``_beats``).

The validation questions are the ones ``RRPOTrainer`` holds out of the CPU size's 768
HotpotQA train questions (seed 0); the reader is the packaged SmolLM2 (fp32), as in
``benchmarks/quality.py``::

    python benchmarks/revalidate.py bench-out/quality-cpu3/hotpotqa/sft/model bench-out/quality-cpu4/hotpotqa/rrpo/model
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kept", help="the reranker kept so far (e.g. the start)")
    p.add_argument("candidate", help="the reranker that would replace it")
    p.add_argument("--z", type=float, default=1.0, help="standard errors the paired gain must exceed")
    args = p.parse_args(argv)

    from quality import SIZES, load_hotpotqa
    from rrpo import Reranker
    from rrpo.data import shared_data_dir
    from rrpo.readers import CachedReader, get_reader
    from rrpo.train import RRPOConfig, RRPOTrainer
    from rrpo.train.rrpo import _beats, paired_gain

    train = load_hotpotqa(shared_data_dir(), SIZES["cpu"]).train[: SIZES["cpu"].rrpo_train]
    reader = CachedReader(get_reader("smollm2-135m", device="cpu"))
    values = []
    for path in (args.kept, args.candidate):
        cfg = RRPOConfig(min_k=1, max_k=5, max_words=120, out_dir=tempfile.mkdtemp(), overwrite=True, progress=False,
                         device="cpu")  # fmt: skip
        trainer = RRPOTrainer(Reranker.from_pretrained(path, device="cpu"), reader, train, cfg)
        trainer.validate()
        values.append(trainer.best["values"])
        print(path, trainer.validations[-1], flush=True)
    mean, se, n = paired_gain(values[1], values[0])
    print(json.dumps({"questions": n, "mean_gain": mean, "standard_error": se,
                      "candidate_replaces_kept": _beats(values[1], values[0], args.z)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
