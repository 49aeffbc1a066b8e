"""LocalReader: batching logic on the tiny causal LM, real behaviour on the packaged
SmolLM2 GGUF with real HotpotQA passages.

The exactness checks (batched = one by one, prefix-shared = padded) pin fp32: they test
the bookkeeping, which bf16 rounding would blur. The default dtype (bf16 on a CPU with
native bf16) has its own tests at the end."""

import logging
import math

import pytest
import torch

from rrpo import Candidate
from rrpo.data import gold_pair_examples, split_gold
from rrpo.evaluate import gold_pair_preference
from rrpo.prompts import build_prompt
from rrpo.readers import LocalReader, Reader, get_reader
from rrpo.rewards import token_f1

PROMPTS = [
    "What is the capital of France?",
    "Name one colour of the rainbow, please, and say nothing else at all.",
    "2+2?",
    build_prompt("Who wrote Hamlet?", [Candidate(id="1", title="Hamlet", text="Hamlet is a tragedy by William Shakespeare.")]),
    "A somewhat longer question that needs more tokens than the others to be written down here?",
]
TARGETS = ["Paris", "red", "4", "William Shakespeare", "a long answer with several words"]


@pytest.fixture(scope="module")
def tiny(tiny_causal_lm_dir):
    return LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", batch_size=2, max_new_tokens=6, progress=False)


def test_is_a_reader_and_model_is_shared(tiny, tiny_causal_lm_dir):
    assert isinstance(tiny, Reader)
    again = LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", batch_size=1)
    assert again.model is tiny.model and again.tokenizer is tiny.tokenizer
    assert tiny.identity.startswith(f"local:{tiny_causal_lm_dir}|float32|")
    assert tiny.tokenizer.padding_side == "left"


def test_generation_batched_equals_one_by_one(tiny, tiny_causal_lm_dir):
    batched = tiny.generate(PROMPTS)
    assert len(batched) == len(PROMPTS) and all(isinstance(a, str) for a in batched)
    single = LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", batch_size=1, max_new_tokens=6)
    assert [single.generate([p])[0] for p in PROMPTS] == batched
    assert tiny.generate([]) == []
    with pytest.raises(TypeError, match="list of prompts"):
        tiny.generate("one prompt")


def test_loglik_batched_equals_unbatched_and_a_manual_forward(tiny, tiny_causal_lm_dir):
    batched = tiny.loglik(PROMPTS, TARGETS)
    assert all(math.isfinite(v) and v < 0 for v in batched)
    single = LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", batch_size=1)
    assert [single.loglik([p], [t])[0] for p, t in zip(PROMPTS, TARGETS)] == pytest.approx(batched, abs=1e-4)

    # Independent check of the indexing: a plain unpadded forward over chat + target.
    tok, model = tiny.tokenizer, tiny.model
    context = tok.apply_chat_template([{"role": "user", "content": PROMPTS[3]}], add_generation_prompt=True, tokenize=False)
    ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
    tgt_ids = tok(TARGETS[3], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx_ids + tgt_ids])
    with torch.inference_mode():
        logprobs = model(ids).logits.log_softmax(-1)[0]
    expected = sum(logprobs[len(ctx_ids) + j - 1, t].item() for j, t in enumerate(tgt_ids)) / len(tgt_ids)
    assert batched[3] == pytest.approx(expected, abs=1e-4)


def test_loglik_rejects_bad_inputs(tiny):
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        tiny.loglik(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="target 1 is empty"):
        tiny.loglik(["a", "b"], ["x", "  "])
    assert tiny.loglik([], []) == []


def test_long_prompts_are_cut_in_the_middle(tiny_causal_lm_dir, caplog):
    reader = LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", max_prompt_tokens=48, max_new_tokens=2)
    long_prompt = "word " * 500 + "Question: what?"
    with caplog.at_level(logging.WARNING, logger="rrpo.readers"):
        value = reader.loglik([long_prompt], ["yes"])[0]
        answer = reader.generate([long_prompt])[0]
    assert math.isfinite(value) and isinstance(answer, str)
    assert "cut to" in caplog.text
    ids = reader._fit(list(range(100)), 48)
    assert len(ids) == 48 and ids[:12] == list(range(12)) and ids[-1] == 99


def test_bad_arguments_are_named(tiny_causal_lm_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown dtype 'float7'"):
        LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float7")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        LocalReader(str(tiny_causal_lm_dir), batch_size=0)
    with pytest.raises(FileNotFoundError, match="reader model not found"):
        LocalReader(str(tmp_path / "missing.gguf"))
    assert get_reader(str(tiny_causal_lm_dir), device="cpu", dtype="float32").model is LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32").model


# --------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2():
    return LocalReader("smollm2-135m", device="cpu", dtype="float32", batch_size=16, max_new_tokens=12, progress=False)


def test_smollm2_likelihood_prefers_gold_passages(smollm2, shared_data_dir):
    rows = gold_pair_examples(shared_data_dir / "hotpotqa-distractor.dev.jsonl.gz", 30)
    # Passages cut to 60 words keep this under a minute or two on a 2-core CPU.
    share, _, _ = gold_pair_preference(smollm2, rows, max_words=60)
    print(f"gold pair preferred for {share:.0%} of {len(rows)} dev questions")
    assert share > 0.6  # DESIGN measured 89.7% on 863 questions


def test_smollm2_answers_real_passages(smollm2, shared_data_dir):
    rows = gold_pair_examples(shared_data_dir / "hotpotqa-distractor.dev.jsonl.gz", 3)
    prompts = [build_prompt(r.query, split_gold(r)[0]) for r in rows]
    answers = smollm2.generate(prompts)
    assert all(a and "\n" not in a for a in answers)
    f1 = token_f1(queries=[r.query for r in rows], contexts=None, answers=[r.answers for r in rows],
                  reader=smollm2, prompts=prompts, generations=answers)
    assert all(0.0 <= v <= 1.0 for v in f1)
    # A real reader: the gold answer is likelier after the right passage than after none.
    with_gold = smollm2.loglik(prompts, [r.answers[0] for r in rows])
    closed = smollm2.loglik([build_prompt(r.query, []) for r in rows], [r.answers[0] for r in rows])
    assert sum(w > c for w, c in zip(with_gold, closed)) >= 2


# --------------------------------------------------------------------------- prefix sharing

RANKING = [
    Candidate(id=str(i), title=f"Passage {i}", text=f"Fact number {i}: the river {i} flows north past the town of Vell{i}. " * 3)
    for i in range(5)
]


def _shared_prefix_workload() -> tuple[list[str], list[str]]:
    """Nested prefixes of a ranking, another ranking that starts alike, an unrelated
    question, duplicates: shuffled, as a trainer would send them."""
    import random

    prompts = [build_prompt("Which way does the river flow?", RANKING[:k]) for k in range(len(RANKING) + 1)]
    targets = ["north"] * len(prompts)
    prompts += [build_prompt("Which way does the river flow?", [RANKING[0], RANKING[3]])] * 2
    targets += ["north", "north"]
    prompts += [build_prompt("Who founded Vell2?", RANKING[2:4]), "2+2?"]
    targets += ["nobody we know of", "4"]
    order = list(range(len(prompts)))
    random.Random(0).shuffle(order)
    return [prompts[i] for i in order], [targets[i] for i in order]


def test_prefix_shared_loglik_equals_padded_batches(tiny, tiny_causal_lm_dir):
    plain = LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", batch_size=4, progress=False, prefix_sharing=False)
    assert tiny.prefix_sharing and not plain.prefix_sharing
    prompts, targets = _shared_prefix_workload()
    tiny.reset_stats()
    shared = tiny.loglik(prompts, targets)
    assert shared == pytest.approx(plain.loglik(prompts, targets), abs=1e-5)  # in input order
    assert tiny.stats["rows"] == len(prompts)
    assert tiny.stats["tokens_requested"] == plain.stats["tokens_requested"]
    assert tiny.stats["tokens_evaluated"] < 0.5 * tiny.stats["tokens_requested"] <= plain.stats["tokens_evaluated"]
    tiny.reset_stats()
    assert tiny.stats == {"rows": 0, "tokens_requested": 0, "tokens_evaluated": 0}


def test_prefix_shared_edge_cases(tiny, tiny_causal_lm_dir):
    assert tiny.loglik([], []) == [] and tiny.stats["rows"] == 0
    plain = LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", progress=False, prefix_sharing=False)
    one = tiny.loglik([PROMPTS[3]], [TARGETS[3]])
    assert one == pytest.approx(plain.loglik([PROMPTS[3]], [TARGETS[3]]), abs=1e-5)
    # A target longer than the whole budget: both paths keep half the budget of target
    # tokens and cut the context in the middle, so they score the same tokens.
    kw = dict(device="cpu", dtype="float32", max_prompt_tokens=48, progress=False)
    short_shared = LocalReader(str(tiny_causal_lm_dir), **kw)
    short_plain = LocalReader(str(tiny_causal_lm_dir), prefix_sharing=False, **kw)
    prompts, targets = [PROMPTS[3], PROMPTS[3]], ["a very long answer " * 20, "Shakespeare"]
    values = short_shared.loglik(prompts, targets)
    assert all(math.isfinite(v) for v in values)
    assert values == pytest.approx(short_plain.loglik(prompts, targets), abs=1e-5)
    assert short_shared.stats["tokens_requested"] <= 2 * 48


def test_prefix_sharing_falls_back_without_a_cropable_cache(tiny, monkeypatch, tiny_causal_lm_dir):
    from types import SimpleNamespace

    from transformers import LlamaConfig, MistralConfig

    def no_cache(input_ids=None, attention_mask=None, position_ids=None):  # pragma: no cover
        raise AssertionError

    def with_cache(input_ids=None, cache=None, position_ids=None):  # pragma: no cover
        raise AssertionError

    def fake(forward, config):
        return SimpleNamespace(model=SimpleNamespace(forward=forward, config=config))

    assert LocalReader._cache_argument(fake(no_cache, LlamaConfig(num_hidden_layers=1))) is None
    assert LocalReader._cache_argument(fake(with_cache, LlamaConfig(num_hidden_layers=1))) == "cache"
    sliding = MistralConfig(num_hidden_layers=1, sliding_window=16)  # cannot be cropped back
    assert LocalReader._cache_argument(fake(with_cache, sliding)) is None

    monkeypatch.setattr(LocalReader, "_cache_argument", lambda self: None)
    fallback = LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", progress=False)
    assert not fallback.prefix_sharing
    prompts, targets = _shared_prefix_workload()
    assert fallback.loglik(prompts, targets) == pytest.approx(tiny.loglik(prompts, targets), abs=1e-5)


@pytest.mark.slow
def test_smollm2_prefix_sharing_agrees_on_a_real_ranking(smollm2, shared_data_dir):
    first, other = gold_pair_examples(shared_data_dir / "hotpotqa-distractor.dev.jsonl.gz", 2)
    passages = first.candidates
    # The 5 prefixes of a 5-passage ranking, a sampled ranking that starts alike, and a
    # ranking for another question: the reward workload of one RRPO step, in small.
    prompts = [build_prompt(first.query, passages[:k], 60) for k in range(1, 6)]
    prompts += [build_prompt(first.query, [passages[0], passages[3], passages[5]], 60),
                build_prompt(other.query, other.candidates[:2], 60)]
    targets = [first.answers[0]] * 6 + [other.answers[0]]
    plain = LocalReader("smollm2-135m", device="cpu", dtype="float32", progress=False, prefix_sharing=False)
    assert plain.model is smollm2.model
    smollm2.reset_stats()
    shared = smollm2.loglik(prompts, targets)
    assert shared == pytest.approx(plain.loglik(prompts, targets), abs=1e-4)
    stats = smollm2.stats
    print(f"prefix sharing ran {stats['tokens_evaluated']} of {stats['tokens_requested']} tokens")
    assert stats["tokens_evaluated"] < 0.6 * stats["tokens_requested"]


def test_prefix_shared_generate_equals_padded_batches(tiny, tiny_causal_lm_dir):
    # Nested prefixes, shuffled, with duplicates; plus the short prompts of the batching test.
    plain = LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", batch_size=3, max_new_tokens=6,
                        progress=False, prefix_sharing=False)
    prompts, _ = _shared_prefix_workload()
    prompts += PROMPTS + [PROMPTS[0]]
    shared = tiny.generate(prompts)
    assert shared == plain.generate(prompts)  # in input order
    assert shared[-1] == shared[len(prompts) - 1 - len(PROMPTS)]  # the duplicate
    assert tiny.generate([prompts[2]]) == [shared[2]]  # alone: the same answer
    longer = LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", max_new_tokens=12, progress=False)
    longer_plain = LocalReader(str(tiny_causal_lm_dir), device="cpu", dtype="float32", max_new_tokens=12, progress=False,
                               prefix_sharing=False)
    assert longer.generate(prompts[:6]) == longer_plain.generate(prompts[:6])


@pytest.mark.slow
def test_smollm2_prefix_shared_generate_agrees_on_real_prompts(smollm2, shared_data_dir):
    rows = gold_pair_examples(shared_data_dir / "hotpotqa-distractor.dev.jsonl.gz", 2)
    # k = 1..3 of one ranking (nested prefixes) and another question, as an evaluation asks.
    prompts = [build_prompt(rows[0].query, rows[0].candidates[:k], 40) for k in (3, 1, 2)]
    prompts += [build_prompt(rows[1].query, rows[1].candidates[:2], 40)]
    plain = LocalReader("smollm2-135m", device="cpu", dtype="float32", max_new_tokens=12, progress=False, prefix_sharing=False)
    assert plain.model is smollm2.model
    assert smollm2.generate(prompts) == plain.generate(prompts)


# --------------------------------------------------------------------------- the default dtype
def test_default_dtype_is_bf16_exactly_where_the_cpu_multiplies_bf16(monkeypatch):
    from rrpo import models, readers

    monkeypatch.setattr(models, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert readers._resolve_dtype(None, "cpu") == torch.bfloat16
    monkeypatch.setattr(models, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert readers._resolve_dtype(None, "cpu") == torch.bfloat16
    monkeypatch.setattr(models, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert readers._resolve_dtype(None, "cpu") == torch.float32  # emulated bf16 is slower than fp32
    assert readers._resolve_dtype(None, "cuda") == torch.bfloat16
    assert readers._resolve_dtype("float32", "cpu") == torch.float32  # asked for: always honoured


@pytest.mark.slow
def test_smollm2_in_bf16_keeps_the_order_of_the_likelihoods(shared_data_dir):
    """The bf16 reader (the default on a CPU with native bf16) against fp32 on the
    reward workload of one question: the same prompts, values within bf16 rounding,
    and the prefixes' order by likelihood kept."""
    first, = gold_pair_examples(shared_data_dir / "hotpotqa-distractor.dev.jsonl.gz", 1)
    prompts = [build_prompt(first.query, first.candidates[:k], 60) for k in range(0, 6)]
    targets = [first.answers[0]] * len(prompts)
    exact = LocalReader("smollm2-135m", device="cpu", dtype="float32", progress=False).loglik(prompts, targets)
    bf16 = LocalReader("smollm2-135m", device="cpu", dtype="bfloat16", progress=False)
    # dense bf16 layers, and no GGUF quantization entry left to warn about "packed" weights
    assert bf16.model.model.layers[0].mlp.gate_proj.weight.dtype == torch.bfloat16
    assert getattr(bf16.model.config, "quantization_config", None) is None
    fast = bf16.loglik(prompts, targets)
    assert max(abs(a - b) for a, b in zip(exact, fast)) < 0.3
    pairs = [(i, j) for i in range(len(prompts)) for j in range(i + 1, len(prompts)) if abs(exact[i] - exact[j]) > 0.3]
    assert pairs and all((exact[i] > exact[j]) == (fast[i] > fast[j]) for i, j in pairs)
