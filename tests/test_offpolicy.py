"""Logged propensities, exploration and training from production feedback
(rrpo.offpolicy; the adapters' logging; the RRPO trainer's importance weight; the
pseudo-gold examples of ``rrpo train --feedback``), on the tiny cross-encoder."""

from __future__ import annotations

import argparse
import itertools
import math

import pytest
import torch

from rrpo import Candidate, FeedbackRecord, Reranker
from rrpo.feedback import FeedbackStore
from rrpo.offpolicy import (
    PROPENSITY_KEY,
    Exploration,
    ExplorationRandomness,
    Propensity,
    feedback_examples,
    importance_weight,
    logged_rerank,
    reward_needs_gold,
)
from rrpo.plackett_luce import step_log_probs
from rrpo.train import RRPOConfig, RRPOTrainer

QUERY = "Which river runs through the old harbour town?"


def candidates(n: int = 4) -> list[Candidate]:
    return [Candidate(f"d{i}", f"Passage {i} about rivers, bridges and {i * 7} boats in the harbour.") for i in range(n)]


@pytest.fixture(scope="module")
def reranker(tiny_cross_encoder_dir) -> Reranker:
    return Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")


def all_selections(n: int, min_k: int, limit: int):
    for k in range(min_k, limit + 1):
        yield from itertools.permutations(range(n), k)


# -- serving -------------------------------------------------------------------------------


def test_greedy_serving_logs_certainty_and_the_policy_log_prob(reranker):
    sel, prop = logged_rerank(reranker, QUERY, candidates(), top_n=3, min_k=1, dynamic_k=True)
    assert sel.kept == reranker.rerank(QUERY, candidates(), top_n=3).kept
    assert prop.behaviour_log_prob == 0.0 and not prop.explored and prop.candidates == 4
    with torch.no_grad():
        scored = reranker.score_pairs([QUERY], [candidates()])[0]
        expected = reranker.step_log_probs(scored, [sel], top_n=3, min_k=1).total()[0].item()
    assert prop.log_prob == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("epsilon,temperature", [(1.0, 1.0), (0.3, 2.0), (0.5, 0.5)])
def test_the_behaviour_distribution_is_exact(reranker, epsilon, temperature):
    """mu sums to one over every selection the server can make, and the served
    selections follow it."""
    cands = candidates(4)
    with torch.no_grad():
        scored = reranker.score_pairs([QUERY], [cands])[0]
    picks = [list(p) for p in all_selections(4, 1, 3)]
    with torch.no_grad():
        at_t = step_log_probs(scored.scores, scored.hidden, reranker.stop_head, picks, min_k=1, max_k=3,
                              norm_k=reranker.settings.max_k, temperature=temperature).total().exp()  # fmt: skip
    assert float(at_t.sum()) == pytest.approx(1.0, abs=1e-4)
    exploration = Exploration(epsilon, temperature, seed=3)
    randomness = ExplorationRandomness(3)
    seen: dict[tuple, float] = {}
    counts: dict[tuple, int] = {}
    draws = 400
    for _ in range(draws):
        sel, prop = logged_rerank(reranker, QUERY, cands, top_n=3, min_k=1, dynamic_k=True,
                                  exploration=exploration, randomness=randomness)  # fmt: skip
        seen[tuple(sel.kept)] = prop.behaviour_log_prob
        counts[tuple(sel.kept)] = counts.get(tuple(sel.kept), 0) + 1
    greedy = tuple(reranker.rerank(QUERY, cands, top_n=3).kept)
    for kept, mu in seen.items():
        pl = float(at_t[picks.index(list(kept))])
        assert math.exp(mu) == pytest.approx(epsilon * pl + (1 - epsilon) * (kept == greedy), rel=1e-4)
    top = max(counts, key=counts.get)  # the most frequent selection at its expected rate
    assert counts[top] / draws == pytest.approx(math.exp(seen[top]), abs=0.08)


def test_fixed_k_exploration_keeps_top_n(reranker):
    exploration = Exploration(1.0, 1.0, seed=0)
    for _ in range(5):
        sel, prop = logged_rerank(reranker, QUERY, candidates(), top_n=2, min_k=1, dynamic_k=False,
                                  exploration=exploration)  # fmt: skip
        assert sel.k == 2 and prop.min_k == 2 and prop.behaviour_log_prob <= 0.0


def test_bad_exploration_settings_fail():
    with pytest.raises(ValueError, match="epsilon"):
        Exploration(1.5)
    with pytest.raises(ValueError, match="temperature"):
        Exploration(0.1, 0.0)


# -- the adapters record it ----------------------------------------------------------------


class FixedRetriever:
    """A LlamaIndex retriever that returns the same nodes for every query."""

    @staticmethod
    def build(nodes):
        from llama_index.core.retrievers import BaseRetriever

        class _Fixed(BaseRetriever):
            def _retrieve(self, query_bundle):
                return list(nodes)

        return _Fixed()


def test_llama_index_records_the_propensity_and_explores(reranker, tmp_path):
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import NodeWithScore, TextNode

    from llama_index_rrpo import FeedbackCollector, RRPORerank

    nodes = [NodeWithScore(node=TextNode(id_=c.id, text=c.text), score=0.5) for c in candidates(5)]
    with FeedbackStore(tmp_path / "fb.db") as store:
        for epsilon in (0.0, 1.0):
            rerank = RRPORerank(reranker=reranker, top_n=3, explore_epsilon=epsilon, explore_temperature=3.0,
                                explore_seed=1)  # fmt: skip
            engine = RetrieverQueryEngine.from_args(FixedRetriever.build(nodes), llm=MockLLM(),
                                                    node_postprocessors=[rerank])  # fmt: skip
            with FeedbackCollector(store, query_engine=engine):
                for _ in range(6):
                    engine.query(QUERY)
        records = store.records()
    props = [Propensity.from_metadata(r.metadata) for r in records]
    assert all(p is not None for p in props) and len(props) == 12
    greedy, explored = props[:6], props[6:]
    assert all(p.behaviour_log_prob == 0.0 and p.epsilon == 0.0 for p in greedy)
    assert all(p.version == records[0].reranker for p in props)
    assert any(p.explored for p in explored) and all(p.behaviour_log_prob < 0 for p in explored if p.explored)
    assert len({tuple(r.kept_ids) for r in records[6:]}) > 1  # exploring served several selections


def test_langchain_records_the_propensity(reranker, tmp_path):
    from langchain_core.documents import Document

    from langchain_rrpo import FeedbackCallbackHandler, RRPORerank
    from langchain_rrpo.compressor import RERANK_EVENT

    docs = [Document(page_content=c.text, id=c.id) for c in candidates(4)]
    rerank = RRPORerank(reranker=reranker, top_n=2, explore_epsilon=1.0, explore_seed=0)
    with FeedbackStore(tmp_path / "fb.db") as store:
        handler = FeedbackCallbackHandler(store)
        from langchain_core.runnables import RunnableLambda

        chain = RunnableLambda(lambda q: rerank.compress_documents(docs, q))
        chain.invoke(QUERY, config={"callbacks": [handler]})
        assert RERANK_EVENT == "rrpo_rerank"
        record = store.get(handler.last_record_id)
    prop = Propensity.from_metadata(record.metadata)
    assert prop is not None and prop.epsilon == 1.0 and prop.candidates == 4 and prop.behaviour_log_prob < 0


# -- training from it ----------------------------------------------------------------------


def test_importance_weight_is_clipped_and_neutral_without_a_propensity():
    assert importance_weight(-1.0, None, 1.0) == 1.0
    assert importance_weight(-2.0, -1.0, 1.0) == pytest.approx(math.exp(-1.0))
    assert importance_weight(-1.0, -3.0, 2.0) == 2.0  # pi/mu = e^2, clipped at c


def rated_example(behaviour: float | None, n: int = 5, candidates_logged: int | None = None):
    cands = candidates(n)
    meta = {}
    if behaviour is not None:
        meta[PROPENSITY_KEY] = Propensity(behaviour, None, True, 1.0, 1.0, 1, 3, candidates_logged or n).to_dict()
    record = FeedbackRecord(query=QUERY, candidates=cands, kept_ids=["d3", "d1"], rating=1.0, answer="the Danube",
                            metadata=meta)  # fmt: skip
    return record.to_example()


def logged_weight(reranker, tmp_path, example, clip=1.0) -> tuple[float, float]:
    config = RRPOConfig(group_size=3, queries_per_step=1, max_steps=1, max_k=3, device="cpu", progress=False,
                        checkpoint_every=0, importance_clip=clip, out_dir=str(tmp_path / "run"), overwrite=True)  # fmt: skip
    trainer = RRPOTrainer(reranker, _NoReader(), [example], config, reward="user_rating")
    rollout = trainer.rollout([example])[0]
    assert [rollout.example.candidates[i].id for i in rollout.selections[-1].kept] == ["d3", "d1"]
    return float(rollout.weights[-1]), float(rollout.old_logp[-1][rollout.mask[-1]].sum())


class _NoReader:
    identity = "none"

    def generate(self, prompts):
        return ["x"] * len(prompts)

    def loglik(self, prompts, targets):
        return [-1.0] * len(prompts)


def test_the_trainer_weights_a_logged_selection_by_pi_over_mu(tiny_cross_encoder_dir, tmp_path):
    def fresh():
        return Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")

    w, pi = logged_weight(fresh(), tmp_path, rated_example(None))
    assert w == 1.0  # an old record without a propensity: treated as on-policy, as before
    w, pi = logged_weight(fresh(), tmp_path, rated_example(-0.5))
    assert w == pytest.approx(min(math.exp(pi + 0.5), 1.0), rel=1e-5)
    w, pi = logged_weight(fresh(), tmp_path, rated_example(pi - 1.0), clip=2.0)
    assert w == pytest.approx(2.0)  # pi/mu = e: clipped at 2
    # mu over another candidate list (the server deduplicated) does not apply
    w, _ = logged_weight(fresh(), tmp_path, rated_example(-0.5, candidates_logged=4))
    assert w == 1.0


def test_a_rated_logged_selection_moves_the_policy_through_the_weighted_loss(tiny_cross_encoder_dir, tmp_path):
    """With pseudo-gold every sample of the group is scored, and the rated logged
    selection joins it with its weight: one step runs end to end."""
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    example = rated_example(0.0)
    example.answers = ["the Danube"]
    config = RRPOConfig(group_size=3, queries_per_step=1, max_steps=2, max_k=3, device="cpu", progress=False,
                        checkpoint_every=0, out_dir=str(tmp_path / "run"), reward="gold_loglik+user_rating")  # fmt: skip
    trainer = RRPOTrainer(policy, _NoReader(), [example], config)
    row = trainer.train_step()
    assert math.isfinite(row["loss"]) and row["samples_scored"] == 4


# -- rewards that exist in production ------------------------------------------------------


def test_reward_needs_gold():
    assert reward_needs_gold("gold_loglik") == "all"
    assert reward_needs_gold("token_f1+0.5*contains_answer") == "all"
    assert reward_needs_gold("user_rating+0.5*gold_loglik") == "some"
    assert reward_needs_gold("user_rating") == reward_needs_gold("llm_judge") == "none"


def records() -> list[FeedbackRecord]:
    return [
        FeedbackRecord(id="good", query="q1", candidates=candidates(3), kept_ids=["d0"], answer="the Danube", rating=1.0),
        FeedbackRecord(id="bad", query="q2", candidates=candidates(3), kept_ids=["d1"], answer="Paris", rating=0.0),
        FeedbackRecord(id="unrated", query="q3", candidates=candidates(3), kept_ids=["d2"], answer="Rome"),
    ]


def test_rated_good_answers_become_pseudo_gold():
    only_gold = feedback_examples(records(), reward="gold_loglik")
    assert [(e.id, e.answers) for e in only_gold] == [("good", ["the Danube"])]
    mixed = feedback_examples(records(), reward="user_rating+gold_loglik")
    assert [(e.id, e.answers) for e in mixed] == [("good", ["the Danube"]), ("bad", []), ("unrated", [])]
    plain = feedback_examples(records(), reward="user_rating")
    assert all(e.answers == [] for e in plain) and len(plain) == 3
    strict = feedback_examples(records(), reward="gold_loglik", pseudo="on", good_rating=0.0)
    assert [e.id for e in strict] == ["good", "bad"]


def test_pseudo_gold_scores_every_alternative_offline():
    """gold_loglik with the rated-good answer as target scores any context."""
    from rrpo.rewards import gold_loglik

    class Reader:
        def loglik(self, prompts, targets):
            return [-1.0 if "Danube" in p else -5.0 for p in prompts]

    example = feedback_examples(records(), reward="gold_loglik")[0]
    contexts = [[Candidate("a", "The Danube flows east.")], [Candidate("b", "Paris is in France.")]]
    values = gold_loglik(queries=["q1", "q1"], contexts=contexts, answers=[example.answers] * 2, reader=Reader())
    assert values == [-1.0, -5.0]


def test_train_feedback_builds_pseudo_gold_examples(tmp_path):
    from rrpo.commands import train as train_cmd

    path = tmp_path / "fb.db"
    with FeedbackStore(path) as store:
        store.add_many(records())
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    args = parser.parse_args(["--feedback", str(path)])
    examples = train_cmd.load_training_examples(args, reward="gold_loglik")
    assert [(e.id, e.answers) for e in examples] == [("good", ["the Danube"])]
    args = parser.parse_args(["--feedback", str(path), "--pseudo-gold", "off"])
    assert len(train_cmd.load_training_examples(args, reward="gold_loglik")) == 3
