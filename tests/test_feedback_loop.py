"""The live loop, tiny and whole (examples/feedback_loop.py): a LlamaIndex engine over
the SQuAD corpus with BM25, RRPORerank, SmolLM2 behind llama-cpp-python's server via
LlamaIndex's OpenAILike; rated traffic; ``rrpo train --feedback``; the retrained
reranker answers held-out questions. The reranker and the training reader are the tiny
test models (the served answers come from the real SmolLM2). About a minute on an idle
2-core machine; the timeout leaves room for a loaded one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.timeout(1200)
def test_the_whole_loop_runs_and_swaps_in_the_retrained_reranker(
    tiny_cross_encoder_dir, tiny_causal_lm_dir, shared_data_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("RRPO_SHARED_DATA", str(shared_data_dir))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    loop = __import__("feedback_loop")

    from rrpo.feedback import FeedbackStore
    from rrpo.offpolicy import Propensity

    result = loop.run_loop(
        str(tiny_cross_encoder_dir), tmp_path, traffic=4, dev=2, steps=2, top_k=5, top_n=3, explore=0.5,
        train_reader=str(tiny_causal_lm_dir),
    )
    assert len(result["traffic"]) == 4 and len(result["before"]) == len(result["after"]) == 2
    for row in result["traffic"] + result["before"] + result["after"]:
        assert row["thumbs_up"] in (0.0, 1.0) and 1 <= row["k"] <= 3 and row["latency_ms"] > 0
    with FeedbackStore(tmp_path / "feedback.db", create=False) as store:
        records = store.records()
    assert len(records) == 4 and all(r.rating is not None and r.answer for r in records)
    props = [Propensity.from_metadata(r.metadata) for r in records]
    assert all(p is not None and p.epsilon == 0.5 and p.version == r.reranker for p, r in zip(props, records))
    steps = [json.loads(line) for line in result["metrics"].read_text().splitlines()]
    assert len(steps) == 2 and (result["model"] / "rrpo_config.json").is_file()
    with FeedbackStore(tmp_path / "eval-after.db", create=False) as after, \
            FeedbackStore(tmp_path / "eval-before.db", create=False) as before:  # fmt: skip
        # the swapped-in reranker is a different one, and the records say so
        assert {r.reranker for r in after.records()}.isdisjoint({r.reranker for r in before.records()})
    assert sys.modules["feedback_loop"] is loop
