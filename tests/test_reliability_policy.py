"""Reliability of the policy on bad input, and its memory (issue #11, items 6 and 8).

Each bad argument fails at the door with a TypeError/ValueError that names it, not
deep inside the tokenizer or the sampler; NaN/inf scores never reach a selection; the
pooled states keep only their own rows; the passage token cache is bounded by bytes
and safe to share between threads.
"""

from __future__ import annotations

import gc
import threading
import tracemalloc

import pytest
import torch

from rrpo import Candidate, Reranker
from rrpo.tokenize import PairTokenizer

PASSAGES = ["Paris is the capital of France.", "Berlin is in Germany.", "Rome is old."]


@pytest.fixture(scope="module")
def rr(tiny_cross_encoder_dir):
    return Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")


# ----------------------------------------------------------------- 6. bad input
@pytest.mark.parametrize(
    "call, error, names",
    [
        (lambda rr: rr.rerank("q", "Paris is nice"), TypeError, "candidates"),
        (lambda rr: rr.rerank("q", None), TypeError, "candidates"),
        (lambda rr: rr.rerank_batch("abc", [PASSAGES] * 3), TypeError, "queries"),
        (lambda rr: rr.rerank_batch(["q"], "abc"), TypeError, "candidate_lists"),
        (lambda rr: rr.score("q", "Paris"), TypeError, "candidates"),
        (lambda rr: rr.rerank("q", PASSAGES, top_n=2.5), TypeError, "top_n"),
        (lambda rr: rr.rerank("q", PASSAGES, top_n="3"), TypeError, "top_n"),
        (lambda rr: rr.rerank("q", PASSAGES, min_k=1.0), TypeError, "min_k"),
        (lambda rr: rr.rerank_batch(["q"], [PASSAGES], batch_size=-1), ValueError, "batch_size"),
        (lambda rr: rr.rerank_batch(["q"], [PASSAGES], batch_size=2.0), TypeError, "batch_size"),
        (lambda rr: rr.sample("q", PASSAGES, n=2.5), TypeError, "n must"),
        (lambda rr: rr.sample("q", PASSAGES, n=2, top_n="2"), TypeError, "top_n"),
        (lambda rr: rr.rerank("q", ["fine", "bad \ud800 text"]), ValueError, "candidate '1' text holds a lone surrogate"),
        (lambda rr: rr.rerank("bad \udc80 query", PASSAGES), ValueError, "query holds a lone surrogate"),
        (lambda rr: rr.rerank("q", [Candidate(id="a", text="x \ud83d y")]), ValueError, "candidate 'a'"),
    ],
    ids=["str-candidates", "none-candidates", "str-queries", "str-lists", "score-str", "float-top-n", "str-top-n",
         "float-min-k", "negative-batch", "float-batch", "float-n", "sample-str-top-n",
         "surrogate-passage", "surrogate-query", "surrogate-candidate"],  # fmt: skip
)
def test_bad_arguments_fail_at_the_door_naming_the_argument(rr, call, error, names):
    with pytest.raises(error, match=names):
        call(rr)


def test_a_candidate_checks_its_fields():
    with pytest.raises(TypeError, match="id must be a str"):
        Candidate(id=[1], text="x")
    with pytest.raises(TypeError, match="text must be a str"):
        Candidate(id="a", text=None)
    assert Candidate(id=7, text="x").id == "7"  # an int id is kept as its str, as data files do


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_never_reach_a_selection(tiny_cross_encoder_dir, bad):
    broken = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    with torch.no_grad():
        broken.scorer.classifier.bias.fill_(bad)
    with pytest.raises(ValueError, match="NaN/inf"):
        broken.rerank("q", PASSAGES)
    with pytest.raises(ValueError, match="NaN/inf"):
        broken.sample("q", PASSAGES, n=2)


# ----------------------------------------------------------------- 8. memory
def test_pooled_states_do_not_keep_the_batch_hidden_state_alive(tiny_cross_encoder_dir, monkeypatch):
    """A pooled row must own its storage: a view of the last hidden state keeps the whole
    (batch, length, hidden) tensor alive for as long as the scores are kept."""
    rr = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    pooled_parts = []
    forward = rr._forward

    def spy(*args, **kwargs):
        scores, pooled = forward(*args, **kwargs)
        pooled_parts.append(pooled)
        return scores, pooled

    monkeypatch.setattr(rr, "_forward", spy)
    passages = [Candidate(str(i), " ".join(f"word{i}{j}" for j in range(60))) for i in range(6)]
    with torch.inference_mode():
        scored = rr.score_pairs(["a question"] * 2, [passages, passages[:3]], batch_size=4)
    for tensor in pooled_parts + [s.hidden for s in scored]:
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def _docs(n: int, words: int = 60, tag: str = "") -> list[tuple[str, str]]:
    return [(f"{tag}{i}", " ".join(f"w{tag}{i}x{j}" for j in range(words))) for i in range(n)]


def test_token_cache_is_bounded_by_bytes(rr):
    budget = 300_000
    pairs = PairTokenizer(rr.tokenizer, 512, cache_bytes=budget)
    docs = _docs(400)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for start in range(0, len(docs), 50):
            pairs.doc_ids(docs[start : start + 50])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0 < pairs.cached_bytes <= budget
    assert held < 2 * budget, held  # what the cache really keeps, not only what it counts
    assert pairs.doc_ids(docs[:2]) == [list(ids) for ids in rr.tokenizer([t for _, t in docs[:2]], add_special_tokens=False)["input_ids"]]


def test_token_cache_answers_a_batch_larger_than_itself(rr):
    pairs = PairTokenizer(rr.tokenizer, 512, cache_size=2)
    docs = _docs(5, words=5)
    expected = rr.tokenizer([t for _, t in docs], add_special_tokens=False)["input_ids"]
    assert pairs.doc_ids(docs) == [list(ids) for ids in expected]


def test_token_cache_is_safe_to_share_between_threads(rr):
    pairs = PairTokenizer(rr.tokenizer, 512, cache_size=8)
    docs = _docs(24, words=8)
    expected = {key: list(ids) for key, ids in zip(docs, rr.tokenizer([t for _, t in docs], add_special_tokens=False)["input_ids"])}
    errors = []

    def work(seed: int) -> None:
        try:
            for i in range(30):
                keys = [docs[(seed * 7 + i * 5 + j) % len(docs)] for j in range(6)]
                assert pairs.doc_ids(keys) == [expected[k] for k in keys]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
