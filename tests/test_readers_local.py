"""LocalReader: batching logic on the tiny causal LM, real behaviour on the packaged
SmolLM2 GGUF with real HotpotQA passages."""

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
    return LocalReader(str(tiny_causal_lm_dir), device="cpu", batch_size=2, max_new_tokens=6, progress=False)


def test_is_a_reader_and_model_is_shared(tiny, tiny_causal_lm_dir):
    assert isinstance(tiny, Reader)
    again = LocalReader(str(tiny_causal_lm_dir), device="cpu", batch_size=1)
    assert again.model is tiny.model and again.tokenizer is tiny.tokenizer
    assert tiny.identity.startswith(f"local:{tiny_causal_lm_dir}|float32|")
    assert tiny.tokenizer.padding_side == "left"


def test_generation_batched_equals_one_by_one(tiny, tiny_causal_lm_dir):
    batched = tiny.generate(PROMPTS)
    assert len(batched) == len(PROMPTS) and all(isinstance(a, str) for a in batched)
    single = LocalReader(str(tiny_causal_lm_dir), device="cpu", batch_size=1, max_new_tokens=6)
    assert [single.generate([p])[0] for p in PROMPTS] == batched
    assert tiny.generate([]) == []
    with pytest.raises(TypeError, match="list of prompts"):
        tiny.generate("one prompt")


def test_loglik_batched_equals_unbatched_and_a_manual_forward(tiny, tiny_causal_lm_dir):
    batched = tiny.loglik(PROMPTS, TARGETS)
    assert all(math.isfinite(v) and v < 0 for v in batched)
    single = LocalReader(str(tiny_causal_lm_dir), device="cpu", batch_size=1)
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
    reader = LocalReader(str(tiny_causal_lm_dir), device="cpu", max_prompt_tokens=48, max_new_tokens=2)
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
    assert get_reader(str(tiny_causal_lm_dir), device="cpu").model is LocalReader(str(tiny_causal_lm_dir), device="cpu").model


# --------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2():
    return LocalReader("smollm2-135m", device="cpu", batch_size=16, max_new_tokens=12, progress=False)


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
