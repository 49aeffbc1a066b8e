"""The reranker policy: Plackett-Luce with a STOP action, greedy k, saving, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rrpo import Candidate, Reranker, Selection
from rrpo.plackett_luce import StopHead, greedy_k, sample_picks, step_log_probs

QUERY = "Which river runs through the old capital of Veldmark?"
TEXTS = [
    "The Aster river runs through Karsk, the old capital of Veldmark.",
    "Veldmark is a small country known for its mountains and lakes.",
    "Karsk was the capital until 1890, when the court moved to Ostra.",
]


def constant_stop_head(hidden_size: int, bias: float) -> StopHead:
    head = StopHead(hidden_size)
    with torch.no_grad():
        head.out.bias.fill_(bias)  # the last layer starts at zero: u_t == bias
    return head


def all_selections(n: int, min_k: int, max_k: int) -> list[list[int]]:
    return [list(p) for k in range(min_k, max_k + 1) for p in itertools.permutations(range(n), k)]


# ---------------------------------------------------------------- the distribution
def test_log_prob_matches_hand_computed_product():
    scores = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    hidden = torch.zeros(3, 4)
    b = 0.3
    head = constant_stop_head(4, b)
    lp = step_log_probs(scores, hidden, head, [[2, 0]], min_k=1, max_k=3, norm_k=3).total()[0]
    e = [math.exp(v) for v in (0.5, -1.0, 2.0)]
    # step 0: STOP not allowed yet (min_k=1); step 1: picks 0 against {0, 1, STOP};
    # step 2: STOP chosen against {1, STOP}.
    expected = (e[2] / sum(e)) * (e[0] / (e[0] + e[1] + math.exp(b))) * (math.exp(b) / (e[1] + math.exp(b)))
    assert lp.item() == pytest.approx(math.log(expected), abs=1e-5)
    lp.backward()
    assert scores.grad is not None and torch.all(scores.grad != 0)
    assert head.out.bias.grad is not None and head.out.bias.grad.abs().item() > 0


def test_stop_grad_off_keeps_the_probabilities_and_leaves_stop_to_its_log_odds():
    """The trainer's greedy STOP labels: the policy gradient must not reach the STOP head
    through the sampled steps' probabilities, while the STOP log-odds still train it."""
    scores = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    head = constant_stop_head(4, 0.3)
    args = dict(min_k=1, max_k=3, norm_k=3)
    free = step_log_probs(scores, torch.zeros(3, 4), head, [[2, 0]], **args)
    held = step_log_probs(scores, torch.zeros(3, 4), head, [[2, 0]], stop_grad=False, **args)
    assert torch.allclose(free.values, held.values)
    held.total()[0].backward()
    assert scores.grad is not None and torch.all(scores.grad != 0)  # the ranking still learns
    assert head.out.bias.grad is None or head.out.bias.grad.abs().item() == 0.0
    held.stop_log_odds[0, 1].backward()
    assert head.out.bias.grad.abs().item() > 0


def test_forced_stop_has_no_factor():
    scores = torch.tensor([1.0, 0.0])
    head = constant_stop_head(4, 0.0)
    # k == max_k: the stop is forced, so only the two pick factors count.
    lp = step_log_probs(scores, torch.zeros(2, 4), head, [[0, 1]], min_k=1, max_k=2, norm_k=2).total()[0]
    e0, e1, eb = math.exp(1.0), 1.0, 1.0
    assert lp.item() == pytest.approx(math.log(e0 / (e0 + e1) * e1 / (e1 + eb)), abs=1e-6)


def test_probabilities_sum_to_one_and_samples_follow_them(tiny_reranker):
    """Frequencies of 6000 samples on a 3-candidate case match the formula (chi-square)."""
    scored = tiny_reranker.score_pairs([QUERY], [[Candidate(str(i), t) for i, t in enumerate(TEXTS)]])[0]
    # Spread the tiny model's scores so that every outcome has a fair share.
    scored.scores = torch.tensor([1.0, 0.2, -0.5])
    with torch.no_grad():
        tiny_reranker.stop_head.out.bias.fill_(-0.2)
    try:
        outcomes = all_selections(3, 1, 3)
        sels = [Selection(order=o, k=len(o), scores=[0.0] * 3) for o in outcomes]
        probs = tiny_reranker.step_log_probs(scored, sels, top_n=3, min_k=1).total().exp()
        assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)

        draws = 6000
        samples = tiny_reranker.sample_scored(scored, draws, generator=torch.Generator().manual_seed(7), top_n=3)
        counts = {tuple(o): 0 for o in outcomes}
        for s in samples:
            counts[tuple(s.kept)] += 1
        expected = [p * draws for p in probs.tolist()]
        chi2 = sum((counts[tuple(o)] - e) ** 2 / e for o, e in zip(outcomes, expected))
        assert chi2 < 36.12, f"chi-square {chi2:.1f} over the 0.1% critical value (14 dof)"
        # each sample carries its own log-prob, equal to the formula's
        first = samples[0]
        assert first.log_prob == pytest.approx(math.log(probs[outcomes.index(first.kept)].item()), abs=1e-4)
    finally:
        with torch.no_grad():
            tiny_reranker.stop_head.out.bias.fill_(0.0)


def test_sampling_respects_min_k_and_cap():
    scores = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4])
    head = constant_stop_head(4, 5.0)  # STOP very likely whenever allowed
    picks = sample_picks(scores, torch.zeros(5, 4), head, 200, min_k=2, max_k=3, norm_k=5,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert all(2 <= len(p) <= 3 for p in picks)
    assert all(len(set(p)) == len(p) for p in picks)


# ---------------------------------------------------------------- gradients through the model
def test_log_prob_gradients_reach_the_encoder(tiny_cross_encoder_dir):
    rr = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    sels = rr.sample(QUERY, TEXTS, n=4, generator=torch.Generator().manual_seed(0))
    lp = rr.log_prob(QUERY, TEXTS, sels)
    assert lp.shape == (4,)
    assert torch.allclose(lp.detach(), torch.tensor([s.log_prob for s in sels]), atol=1e-5)
    lp.sum().backward()
    grads = [p.grad for p in rr.scorer.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum().item() > 0 for g in grads) > len(grads) // 2


# ---------------------------------------------------------------- greedy decoding
def test_greedy_stops_where_stop_beats_going_on():
    scores = torch.tensor([5.0, -3.0, 4.0, -4.0])
    order = torch.argsort(scores, descending=True)
    # u = 0 beats log(e^-3 + e^-4) = -2.7 once the two positives are taken, not before
    head = constant_stop_head(4, 0.0)
    hidden = torch.zeros(4, 4)
    assert greedy_k(scores, hidden, head, order, min_k=1, max_k=None, norm_k=10) == 2
    assert greedy_k(scores, hidden, head, order, min_k=3, max_k=None, norm_k=10) == 3
    assert greedy_k(scores, hidden, head, order, min_k=1, max_k=1, norm_k=10) == 1


def test_rerank_respects_min_k_and_top_n(tiny_cross_encoder_dir):
    rr = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    texts = [f"passage number {i} about rivers and capitals" for i in range(8)]
    with torch.no_grad():
        rr.stop_head.out.bias.fill_(100.0)  # STOP always wins once allowed
    assert rr.rerank(QUERY, texts, min_k=2).k == 2
    with torch.no_grad():
        rr.stop_head.out.bias.fill_(-100.0)  # STOP never wins
    sel = rr.rerank(QUERY, texts, top_n=5, min_k=1)
    assert sel.k == 5 and not sel.stopped
    assert rr.rerank(QUERY, texts, top_n=None).k == 8
    fixed = rr.rerank(QUERY, texts, top_n=3, dynamic_k=False)
    assert fixed.k == 3
    # the order is the full ranking by score, best first
    assert sorted(fixed.order) == list(range(8))
    assert [fixed.scores[i] for i in fixed.order] == sorted(fixed.scores, reverse=True)
    assert fixed.kept == fixed.order[:3]


def test_rerank_batch_equals_single_calls(tiny_reranker):
    queries = [QUERY, "When was Karsk the capital?", "mountains"]
    lists = [TEXTS, TEXTS[::-1], TEXTS[:2] + ["an unrelated passage about cooking pasta"]]
    batch = tiny_reranker.rerank_batch(queries, lists, top_n=3)
    for q, cands, sel in zip(queries, lists, batch):
        single = tiny_reranker.rerank(q, cands, top_n=3)
        assert single.order == sel.order and single.k == sel.k
        assert single.scores == pytest.approx(sel.scores, abs=1e-5)


# ---------------------------------------------------------------- saving and loading
def test_save_load_gives_identical_scores_and_k(tiny_cross_encoder_dir, tmp_path):
    rr = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    with torch.no_grad():
        rr.stop_head.proj.weight.normal_(0, 0.5)
        rr.stop_head.out.weight.normal_(0, 0.5)
        rr.stop_head.out.bias.fill_(0.1)
    before = rr.rerank(QUERY, TEXTS)
    rr.save_pretrained(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"model.safetensors", "config.json", "rrpo_config.json", "rrpo_stop_head.safetensors"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    loaded = Reranker.from_pretrained(tmp_path / "model", device="cpu")
    after = loaded.rerank(QUERY, TEXTS)
    assert after.scores == pytest.approx(before.scores, abs=1e-6)
    assert (after.order, after.k) == (before.order, before.k)
    assert loaded.version == rr.version and loaded.version.startswith("model-")


def test_packaged_default_loads_offline():
    rr = Reranker.from_pretrained("minilm-l6", device="cpu")
    again = Reranker.from_pretrained("minilm-l6", device="cpu")
    scores = rr.score(QUERY, TEXTS)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    # loading twice gives the same reranker: a bi-encoder by default (rrpo.bi_encoder) ...
    assert again.score(QUERY, TEXTS) == pytest.approx(scores, abs=1e-6)
    assert rr.is_bi_encoder and rr.scorer.config.hidden_size == 384 and rr.version == "minilm-l6"
    # ... and, on request, a cross-encoder whose fresh head is seeded
    fresh = [Reranker.from_pretrained("minilm-l6", device="cpu", scoring="cross_encoder") for _ in range(2)]
    assert not fresh[0].is_bi_encoder and fresh[0].fresh_parameters
    assert fresh[1].score(QUERY, TEXTS) == pytest.approx(fresh[0].score(QUERY, TEXTS), abs=1e-6)


# ---------------------------------------------------------------- tokenisation
def test_pair_tokens_match_the_tokenizer_and_truncate_the_document_only(tiny_reranker):
    tok = tiny_reranker.tokenizer
    pairs = tiny_reranker.pairs
    assert pairs.template is not None  # BERT's template is read, so documents are cached
    long_doc = " ".join(["river"] * 2000)
    for doc in [TEXTS[0], long_doc]:
        ids, types = pairs.encode_pairs(QUERY, [("d", doc)])[0]
        ref = tok(QUERY, doc, truncation="only_second", max_length=pairs.max_length)
        assert ids == list(ref["input_ids"]) and types == list(ref["token_type_ids"])
    ids, _ = pairs.encode_pairs(QUERY, [("d", long_doc)])[0]
    q_ids = tok(QUERY, add_special_tokens=False)["input_ids"]
    assert len(ids) == pairs.max_length and ids[1 : 1 + len(q_ids)] == q_ids
    hits = pairs.cache_hits
    pairs.encode_pairs("another query", [("d", long_doc)])
    assert pairs.cache_hits == hits + 1


# ---------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_errors(tiny_reranker):
    assert tiny_reranker.rerank(QUERY, []) == Selection(order=[], k=0, scores=[], stopped=False)
    with pytest.raises(ValueError, match="query is empty"):
        tiny_reranker.rerank("   ", TEXTS)
    with pytest.raises(TypeError, match="candidate 1"):
        tiny_reranker.rerank(QUERY, ["fine", 42])
    with pytest.raises(TypeError, match="candidate 'a': text must be a str"):  # Candidate checks itself
        tiny_reranker.rerank(QUERY, [Candidate("a", None)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"top_n \(1\) must be >= min_k \(2\)"):
        tiny_reranker.rerank(QUERY, TEXTS, top_n=1, min_k=2)
    dup = tiny_reranker.rerank(QUERY, [TEXTS[0], TEXTS[0]], top_n=2, dynamic_k=False)
    assert dup.k == 2 and dup.scores[0] == pytest.approx(dup.scores[1], abs=1e-6)
    with pytest.raises(ValueError, match="n must be >= 1"):
        tiny_reranker.sample(QUERY, TEXTS, n=0)
