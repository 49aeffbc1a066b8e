"""The bi-encoder scoring mode (rrpo.bi_encoder) behind the Reranker API.

A tiny 2-layer BERT saved as a plain ``BertModel`` (what a sentence-embedding model is)
loads as a bi-encoder through the real loading path; the packaged MiniLM only where the
test is about it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from rrpo import Candidate, Example, Reranker
from rrpo.bi_encoder import HEAD_FILE, PASSAGE_DIR, pool
from rrpo.lexical import bm25_scores, standardised, words
from rrpo.train import RRPOConfig, RRPOTrainer, SFTConfig, SFTTrainer

QUERY = "Which river runs through Karsk?"
TEXTS = [
    "Karsk was the capital of Veldmark until 1890.",
    "The Aster river runs through Karsk.",
    "Veldmark is known for its lakes and mountains.",
    "Ostra lies on the coast.",
]


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A 2-layer BERT without any head (architectures: BertModel), MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rrpo.models import packaged_minilm_dir

    out = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, initializer_range=0.2, architectures=["BertModel"],
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def bi(tiny_encoder_dir):
    return Reranker.from_pretrained(tiny_encoder_dir, device="cpu")


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.named_parameters() if not torch.equal(v, before[k])}


def reference_embeddings(directory, texts: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings computed directly with transformers."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(directory).eval()
    enc = AutoTokenizer.from_pretrained(directory)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        last = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((last * mask).sum(1) / mask.sum(1), dim=-1)


# ---------------------------------------------------------------- loading and scoring
def test_a_plain_encoder_loads_as_a_bi_encoder_whose_scores_are_scale_times_cosine(bi, tiny_encoder_dir):
    assert bi.is_bi_encoder and bi.settings.scoring == "bi_encoder" and bi.settings.pooling == "mean"
    assert bi.fresh_parameters == {"scorer.logit_scale", "scorer.bias", "scorer.lexical_weight"}
    assert bi.scorer.logit_scale.item() == pytest.approx(20.0)
    assert bi.scorer.lexical_weight.item() == pytest.approx(1.0)
    with torch.no_grad():
        scored = bi.score_pairs([QUERY], [[Candidate(str(i), t) for i, t in enumerate(TEXTS)]])[0]
    emb = reference_embeddings(tiny_encoder_dir, [QUERY, *TEXTS])
    q, p = emb[0], emb[1:]
    scale, bias = bi.scorer.logit_scale.item(), bi.scorer.bias.item()
    lexical = torch.tensor(standardised(bm25_scores(QUERY, TEXTS)))
    assert scored.scores.tolist() == pytest.approx((scale * (p @ q) + bias + lexical).tolist(), abs=1e-4)
    # The STOP head's state: the elementwise product, times the width (sums to H * cos).
    assert torch.allclose(scored.hidden, 32 * p * q, atol=1e-5)


def test_bm25_over_the_candidates_matches_a_hand_computation():
    assert words("The Rhine, in 1815: a river!") == ["rhine", "1815", "river"]  # stopwords and 1-letter words out
    texts = ["rhine river rhine", "danube river", "nothing here"]
    # idf over these 3 texts: rhine (df 1) log(1 + 2.5/1.5), river (df 2) log(1 + 1.5/2.5)
    idf_rhine, idf_river = math.log(1 + 2.5 / 1.5), math.log(1 + 1.5 / 2.5)
    average = (3 + 2 + 2) / 3

    def term(tf, length, idf):
        return idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * length / average))

    expected = [term(2, 3, idf_rhine) + term(1, 3, idf_river), term(1, 2, idf_river), 0.0]
    assert bm25_scores("the Rhine river", texts) == pytest.approx(expected)
    assert standardised([2.0, 2.0]) == [0.0, 0.0]  # no spread, no feature
    z = standardised(expected)
    assert sum(z) == pytest.approx(0.0, abs=1e-9) and sum(v * v for v in z) / 3 == pytest.approx(1.0)


def test_the_lexical_feature_lifts_an_exact_match_and_an_old_head_file_scores_as_before(bi, tmp_path):
    from safetensors.torch import load_file, save_file

    cands = [Candidate("a", "The Vessa flows past the old mill."), Candidate("b", "Karsk lies on the Vessa river.")]
    weight = bi.scorer.lexical_weight.item()
    with torch.no_grad():
        bi.scorer.lexical_weight.zero_()
        base = bi.score_pairs([QUERY], [cands])[0].scores
        bi.scorer.lexical_weight.fill_(3.0)
        lifted = bi.score_pairs([QUERY], [cands])[0].scores
    # "Karsk" and "river" are the query's words in passage b only: its score rises against a's
    assert float(lifted[1] - lifted[0]) == pytest.approx(float(base[1] - base[0]) + 2 * 3.0, abs=1e-4)  # z = -1, +1
    # A directory saved before the weight existed: its head file has scale and bias only.
    bi.save_pretrained(tmp_path / "old")
    head = load_file(str(tmp_path / "old" / HEAD_FILE))
    save_file({k: v for k, v in head.items() if k != "lexical_weight"}, str(tmp_path / "old" / HEAD_FILE))
    old = Reranker.from_pretrained(tmp_path / "old", device="cpu")
    assert old.scorer.lexical_weight.item() == 0.0
    with torch.no_grad():
        again = old.score_pairs([QUERY], [cands])[0].scores
        bi.scorer.lexical_weight.zero_()
        cosine_only = bi.score_pairs([QUERY], [cands])[0].scores
        bi.scorer.lexical_weight.fill_(weight)  # the fixture is shared with later tests
    assert again.tolist() == pytest.approx(cosine_only.tolist(), abs=1e-5)


def test_pooling_modes():
    last = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0]])
    assert pool(last, mask, "mean").tolist() == [[3.0, 4.0, 5.0]]
    assert pool(last, mask, "first").tolist() == [[0.0, 1.0, 2.0]]
    assert pool(last, mask, "last").tolist() == [[6.0, 7.0, 8.0]]


def test_a_cross_encoder_checkpoint_stays_a_cross_encoder(tiny_cross_encoder_dir, tiny_encoder_dir):
    ce = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    assert not ce.is_bi_encoder and ce.settings.scoring == "cross_encoder" and ce.fresh_parameters == set()
    # On request, a plain encoder gets today's fresh one-logit head instead.
    fresh = Reranker.from_pretrained(tiny_encoder_dir, device="cpu", scoring="cross_encoder")
    assert not fresh.is_bi_encoder and fresh.fresh_parameters == {"scorer.classifier.weight", "scorer.classifier.bias"}
    with pytest.raises(ValueError, match="scoring"):
        Reranker.from_pretrained(tiny_encoder_dir, device="cpu", scoring="colbert")


def test_save_and_load_keep_the_mode_scores_and_towers(bi, tmp_path):
    with torch.no_grad():
        bi.scorer.logit_scale.fill_(13.0)
        bi.scorer.lexical_weight.fill_(0.7)
        bi.stop_head.out.weight.normal_(0, 0.5)
    before = bi.rerank(QUERY, TEXTS)
    bi.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"model.safetensors", "config.json", "rrpo_config.json", HEAD_FILE} <= files
    assert PASSAGE_DIR not in files  # the towers are still equal: one copy on disk
    assert json.loads((tmp_path / "m" / "rrpo_config.json").read_text())["scoring"] == "bi_encoder"
    loaded = Reranker.from_pretrained(tmp_path / "m", device="cpu")
    assert loaded.is_bi_encoder and loaded.fresh_parameters == set()
    assert loaded.scorer.logit_scale.item() == pytest.approx(13.0)
    assert loaded.scorer.lexical_weight.item() == pytest.approx(0.7)
    after = loaded.rerank(QUERY, TEXTS)
    assert after.scores == pytest.approx(before.scores, abs=1e-5) and (after.order, after.k) == (before.order, before.k)

    # Once the query tower has moved, the frozen passage tower is saved beside it.
    with torch.no_grad():
        bi.scorer.query_encoder.pooler.dense.bias.add_(1.0)
        bi.scorer.query_encoder.encoder.layer[0].output.dense.bias.add_(0.1)
    bi.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / PASSAGE_DIR / "model.safetensors").is_file()
    again = Reranker.from_pretrained(tmp_path / "m", device="cpu")
    for tower in ("query_encoder", "passage_encoder"):
        ours, theirs = getattr(bi.scorer, tower).state_dict(), getattr(again.scorer, tower).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), tower
    # Saving equal towers again removes the stale passage folder.
    again.scorer.passage_encoder.load_state_dict(again.scorer.query_encoder.state_dict())
    again.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / PASSAGE_DIR).exists()


def test_a_saved_cross_encoder_reloads_as_one(tiny_cross_encoder_dir, tmp_path):
    ce = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    ce.save_pretrained(tmp_path / "ce")
    assert json.loads((tmp_path / "ce" / "rrpo_config.json").read_text())["scoring"] == "cross_encoder"
    assert not Reranker.from_pretrained(tmp_path / "ce", device="cpu").is_bi_encoder


# ---------------------------------------------------------------- passage embeddings
def test_passage_embeddings_are_computed_once_per_candidate(bi):
    cache = bi.scorer.cache
    bi.rerank(QUERY, TEXTS)
    assert (cache.hits, cache.misses) == (0, 4)
    bi.rerank("Where is Ostra?", TEXTS)
    assert (cache.hits, cache.misses) == (4, 4)
    bi.rerank(QUERY, [Candidate("0", "new text, same id"), *TEXTS[1:]])  # (id, text) is the key
    assert (cache.hits, cache.misses) == (7, 5)
    with torch.no_grad():  # new passage weights: every cached embedding is stale
        bi.scorer.passage_encoder.pooler.dense.bias.add_(1.0)
    bi.rerank(QUERY, TEXTS)
    assert cache.misses == 9


def test_embeddings_from_the_vector_store_are_used_when_asked(bi, tiny_encoder_dir):
    emb = reference_embeddings(tiny_encoder_dir, [QUERY, "a passage the store embedded"])
    stored = Candidate("v", "the text as shown", metadata={"embedding": (3 * emb[1]).tolist()})
    wrong_width = Candidate("w", TEXTS[1], metadata={"embedding": [1.0, 2.0]})
    bi.settings.use_candidate_embeddings = True
    bi.scorer.configure(bi.tokenizer, bi.pairs.max_length, bi.settings)
    weight = bi.scorer.lexical_weight.item()
    with torch.no_grad():
        bi.scorer.lexical_weight.zero_()  # the cosine alone: the BM25 feature depends on the other candidates
    scores = bi.score(QUERY, [stored, wrong_width])
    scale, bias = bi.scorer.logit_scale.item(), bi.scorer.bias.item()
    assert scores[0] == pytest.approx(scale * float(emb[1] @ emb[0]) + bias, abs=1e-4)  # normalised, not recomputed
    assert scores[1] == pytest.approx(bi.score(QUERY, [TEXTS[1]])[0], abs=1e-5)  # wrong width: embedded here
    with torch.no_grad():
        bi.scorer.lexical_weight.fill_(weight)


# ---------------------------------------------------------------- decisions
def test_sample_log_prob_and_greedy(bi):
    gen = torch.Generator().manual_seed(0)
    sels = bi.sample(QUERY, TEXTS, n=6, generator=gen, top_n=3)
    logp = bi.log_prob(QUERY, TEXTS, sels, top_n=3)
    assert logp.tolist() == pytest.approx([s.log_prob for s in sels], abs=1e-5)
    assert all(1 <= s.k <= 3 for s in sels)
    greedy = bi.rerank(QUERY, TEXTS, top_n=3)
    assert greedy.order == sorted(range(4), key=lambda i: -greedy.scores[i])
    batch = bi.rerank_batch([QUERY, "Where is Ostra?"], [TEXTS, TEXTS[:2]], top_n=3)
    # batched and single forwards may differ in the last bits (other matrix shapes)
    assert (batch[0].order, batch[0].k) == (greedy.order, greedy.k) and len(batch[1].scores) == 2
    assert batch[0].scores == pytest.approx(greedy.scores, abs=1e-4)
    assert bi.rerank(QUERY, []).k == 0


def test_train_top_layers_freezes_lower_query_layers_and_keeps_the_passage_tower_frozen(bi):
    scorer = bi.scorer
    bi.train_top_layers(1)
    trainable = {n for n, p in scorer.named_parameters() if p.requires_grad}
    assert not any(n.startswith("passage_encoder.") for n in trainable)
    assert any(n.startswith("query_encoder.encoder.layer.1.") for n in trainable)
    assert not any(n.startswith(("query_encoder.encoder.layer.0.", "query_encoder.embeddings.")) for n in trainable)
    with torch.no_grad():
        cached = bi.rerank(QUERY, TEXTS).scores
    bi.release_frozen_layers()
    assert all(p.requires_grad for p in scorer.query_encoder.parameters())
    assert not any(p.requires_grad for p in scorer.passage_encoder.parameters())
    assert bi.rerank(QUERY, TEXTS).scores == pytest.approx(cached, abs=1e-5)


# ---------------------------------------------------------------- training
def examples(n: int = 4) -> list[Example]:
    out = []
    for q in range(n):
        cands = [Candidate("X", f"The archive holds a note about item {q}.")]
        cands += [Candidate(f"d{q}-{j}", f"Passage {j} on trade and the road {q}.") for j in range(4)]
        out.append(Example(id=f"q{q}", query=f"What does the archive say about item {q}?", candidates=cands,
                           answers=["a note"], gold=[True, False, False, False, False]))  # fmt: skip
    return out


class FakeReader:
    identity = "fake"

    def generate(self, prompts):
        return ["a note"] * len(prompts)

    def loglik(self, prompts, targets):
        return [-1.0] * len(prompts)


def pays_for_x_first(*, contexts, **_):
    return [1.0 if ctx and ctx[0].id == "X" else 0.0 for ctx in contexts]


def test_an_rrpo_step_trains_the_query_tower_and_not_the_passage_tower(bi, tmp_path):
    before = params(bi)
    cfg = RRPOConfig(group_size=4, queries_per_step=4, max_steps=1, max_k=3, warmup_steps=0, checkpoint_every=0,
                     device="cpu", progress=False, out_dir=str(tmp_path / "run"))  # fmt: skip
    trainer = RRPOTrainer(bi, FakeReader(), examples(), cfg, reward=pays_for_x_first)
    trainer.train_step()
    moved = changed(before, bi)
    assert {"scorer.logit_scale", "scorer.bias"} <= moved
    assert any(n.startswith("scorer.query_encoder.encoder.layer.1.") for n in moved)
    assert not any(n.startswith("scorer.passage_encoder.") for n in moved)
    # train_top_layers=2 (the default) covers this 2-layer tower: every query weight trains.
    assert any(n.startswith("scorer.query_encoder.embeddings.") for n in moved)
    assert bi.scorer.cache.hits > 0  # the PPO epochs and the reference reuse passage embeddings


def test_rrpo_resumes_a_bi_encoder_from_its_checkpoint(tiny_encoder_dir, tmp_path):
    def trainer(resume: bool) -> RRPOTrainer:
        policy = Reranker.from_pretrained(tiny_encoder_dir, device="cpu")
        cfg = RRPOConfig(group_size=2, queries_per_step=2, max_steps=1, max_k=3, warmup_steps=0,
                         checkpoint_every=1, device="cpu", progress=False, out_dir=str(tmp_path / "run"))  # fmt: skip
        return RRPOTrainer(policy, FakeReader(), examples(), cfg, reward=pays_for_x_first, resume=resume)

    trained = params(trainer(resume=False).train())
    resumed = trainer(resume=True)  # a fresh policy, restored from the step-1 checkpoint
    assert resumed.step == 1 and changed(trained, resumed.policy) == set()
    assert Reranker.from_pretrained(tmp_path / "run" / "model", device="cpu").is_bi_encoder


def test_rrpo_with_the_top_layer_only_and_lora_refused(bi, tmp_path):
    before = params(bi)
    cfg = RRPOConfig(group_size=4, queries_per_step=4, max_steps=1, max_k=3, warmup_steps=0, checkpoint_every=0,
                     train_top_layers=1, device="cpu", progress=False, out_dir=str(tmp_path / "top"))  # fmt: skip
    RRPOTrainer(bi, FakeReader(), examples(), cfg, reward=pays_for_x_first).train()
    moved = changed(before, bi)
    assert any(n.startswith("scorer.query_encoder.encoder.layer.1.") for n in moved)
    assert not any(n.startswith(("scorer.query_encoder.encoder.layer.0.", "scorer.passage_encoder.")) for n in moved)
    assert all(p.requires_grad for p in bi.scorer.query_encoder.parameters())  # released after training
    lora = RRPOConfig(lora=True, train_top_layers=0, device="cpu", progress=False, out_dir=str(tmp_path / "lora"))
    with pytest.raises(ValueError, match="bi-encoder"):
        RRPOTrainer(bi, FakeReader(), examples(), lora, reward=pays_for_x_first)


def test_an_sft_step_trains_the_query_tower_only_unless_both_are_asked(tiny_encoder_dir, tmp_path):
    for mode in ("query", "both"):
        rr = Reranker.from_pretrained(tiny_encoder_dir, device="cpu")
        rr.settings.bi_encoder_train = mode
        rr.scorer.set_train_mode(mode)
        before = params(rr)
        cfg = SFTConfig(epochs=1, examples_per_step=4, device="cpu", progress=False, out_dir=str(tmp_path / mode))
        trainer = SFTTrainer(rr, examples(), cfg)
        rr.train()
        trainer.train_step([0, 1, 2, 3])
        moved = changed(before, rr)
        assert any(n.startswith("scorer.query_encoder.") for n in moved)
        assert any(n.startswith("scorer.passage_encoder.") for n in moved) == (mode == "both"), mode
        assert not rr.scorer.passage_encoder.training or mode == "both"  # no dropout in a frozen tower
    rr.save_pretrained(tmp_path / "both-model")
    assert Reranker.from_pretrained(tmp_path / "both-model", device="cpu").settings.bi_encoder_train == "both"


def test_sft_moves_the_gold_passage_up(tiny_encoder_dir, tmp_path):
    rr = Reranker.from_pretrained(tiny_encoder_dir, device="cpu")
    with torch.no_grad():  # these questions share words with their gold passage: BM25 alone gets it right
        rr.scorer.lexical_weight.zero_()
    data = examples(4)

    def p_gold() -> float:
        with torch.no_grad():
            scored = rr.score_pairs([e.query for e in data], [e.candidates for e in data])
        return sum(torch.softmax(s.scores, 0)[0].item() for s in scored) / len(data)

    start = p_gold()
    cfg = SFTConfig(epochs=15, examples_per_step=4, learning_rate=1e-3, device="cpu", progress=False,
                    out_dir=str(tmp_path / "sft"))  # fmt: skip
    SFTTrainer(rr, data, cfg).train()
    assert p_gold() > start + 0.2, (start, p_gold())


# ---------------------------------------------------------------- the packaged default
def test_the_packaged_minilm_is_a_bi_encoder_that_ranks_the_answer_first():
    rr = Reranker.from_pretrained("minilm-l6", device="cpu")
    assert rr.is_bi_encoder and rr.settings.max_length == 256  # sentence-transformers' own length
    selection = rr.rerank(QUERY, TEXTS, top_n=3)
    assert selection.order[0] == 1, selection
