"""RRPO at the library's defaults learns what the reward pays for, fast.

The real packaged MiniLM with a fresh scoring head (what ``Reranker.from_pretrained``
gives for a plain encoder), the generated world and a reader that costs nothing
(:class:`rrpo.synthetic.AnswerPassageReader`: the answer passage alone is the best
context). Only the size of the run is set; every learning setting is ``RRPOConfig()``'s.
benchmarks/learning.py runs the same thing longer and from an SFT start too.
"""

from __future__ import annotations

import pytest

from rrpo import Reranker
from rrpo.synthetic import AnswerPassageReader, generate_examples
from rrpo.train import RRPOConfig, RRPOTrainer


def held_out_greedy(policy: Reranker, examples, max_k: int) -> tuple[float, float]:
    """(gold@1, mean greedy k) on held-out questions."""
    sels = policy.rerank_batch([e.query for e in examples], [e.candidates for e in examples], top_n=max_k)
    gold_first = sum(bool(e.gold[s.order[0]]) for e, s in zip(examples, sels)) / len(examples)
    return gold_first, sum(s.k for s in sels) / len(sels)


@pytest.mark.slow
def test_defaults_learn_the_answer_passage_first_and_to_stop_after_it(tmp_path):
    examples = generate_examples(64, seed=1, candidates=(8, 8))
    train, held_out = examples[:32], examples[32:]
    policy = Reranker.from_pretrained("minilm-l6", device="cpu", scoring="cross_encoder")
    config = RRPOConfig(max_steps=24, out_dir=str(tmp_path / "run"), device="cpu", progress=False, checkpoint_every=0)
    gold_before, k_before = held_out_greedy(policy, held_out, config.max_k)

    RRPOTrainer(policy, AnswerPassageReader(), train, config).train()

    gold_after, k_after = held_out_greedy(policy, held_out, config.max_k)
    assert gold_after >= gold_before + 0.3, (gold_before, gold_after)
    assert k_after <= k_before - 1, (k_before, k_after)
