"""The int8 CPU backend (rrpo.quantize) on the tiny cross-encoder: it loads, scores
close to fp32, keeps the STOP head and dynamic k, and refuses training and bad uses."""

from __future__ import annotations

import pytest
import torch

from rrpo import Candidate, Reranker
from rrpo.quantize import Int8Linear, QuantizedReranker, quantize_int8

QUERY = "where is the eiffel tower?"
WORDS = "paris tower river cat museum night capital france dog bridge city old iron river art".split()
DOCS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6 + i % 5)) for i in range(20)]


@pytest.fixture(scope="module")
def fp32(tiny_cross_encoder_dir):
    return Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu", scoring="cross_encoder")


@pytest.fixture(scope="module")
def int8(tiny_cross_encoder_dir):
    return Reranker.from_pretrained(tiny_cross_encoder_dir, backend="int8", scoring="cross_encoder")


def _close(a: list[float], b: list[float]) -> tuple[float, float]:
    """(max |a - b|, Pearson correlation)."""
    x, y = torch.tensor(a), torch.tensor(b)
    return float((x - y).abs().max()), float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def test_int8_backend_loads_with_int8_linears_and_fp32_heads(int8, fp32):
    assert isinstance(int8, QuantizedReranker) and int8.backend == "int8"
    kinds = {name: type(m) for name, m in int8.scorer.named_modules()}
    assert sum(k is Int8Linear for k in kinds.values()) == 6  # q, k, v, attention out, ffn in/out of the one layer
    assert kinds["classifier"] is torch.nn.Linear and kinds["bert.pooler.dense"] is torch.nn.Linear
    assert int8.device.type == "cpu"
    # The STOP head is the fp32 model's, unchanged.
    for (name, a), (_, b) in zip(fp32.stop_head.state_dict().items(), int8.stop_head.state_dict().items()):
        assert torch.equal(a, b), name


def test_int8_scores_are_close_to_fp32(int8, fp32):
    ours, theirs = int8.score(QUERY, DOCS), fp32.score(QUERY, DOCS)
    diff, corr = _close(ours, theirs)
    assert diff < 0.1 and corr > 0.9, (diff, corr)


def test_int8_dynamic_k_matches_fp32(int8, fp32):
    for top_n in (None, 5):
        a = int8.rerank(QUERY, DOCS, top_n=top_n, min_k=1)
        b = fp32.rerank(QUERY, DOCS, top_n=top_n, min_k=1)
        assert 1 <= a.k <= (top_n or len(DOCS))
        assert a.k == b.k and a.order[0] == b.order[0]
    fixed = int8.rerank(QUERY, DOCS, top_n=4, dynamic_k=False)
    assert fixed.k == 4 and not fixed.stopped


def test_quantize_int8_leaves_the_model_alone_and_calibration_stays_close(fp32):
    before = {k: v.clone() for k, v in fp32.scorer.state_dict().items()}
    calibration = [(QUERY, [Candidate(id=str(i), text=d) for i, d in enumerate(DOCS)])]
    smoothed = quantize_int8(fp32, calibration=calibration)
    assert all(torch.equal(v, fp32.scorer.state_dict()[k]) for k, v in before.items())
    assert all(type(m) is not Int8Linear for m in fp32.scorer.modules())
    assert any(m.inv_smooth is not None for m in smoothed.scorer.modules() if isinstance(m, Int8Linear))
    diff, corr = _close(smoothed.score(QUERY, DOCS), fp32.score(QUERY, DOCS))
    assert diff < 0.1 and corr > 0.9, (diff, corr)


def test_unknown_backend_fails_by_name_before_loading():
    with pytest.raises(ValueError, match=r"unknown backend 'onnx-gpu'.*'int8'"):
        Reranker.from_pretrained("/no/such/model", backend="onnx-gpu")


def test_int8_backend_is_cpu_only(tiny_cross_encoder_dir, int8):
    with pytest.raises(ValueError, match="CPU only"):
        Reranker.from_pretrained(tiny_cross_encoder_dir, backend="int8", device="cuda")
    with pytest.raises(RuntimeError, match="stays on the CPU in fp32"):
        int8.half()


def test_training_refuses_an_int8_reranker(int8, tmp_path):
    from rrpo.types import Example
    from rrpo.train import RRPOConfig, RRPOTrainer, SFTConfig, SFTTrainer

    examples = [Example(id="q", query=QUERY, candidates=[Candidate(id=str(i), text=d) for i, d in enumerate(DOCS[:4])],
                        answers=["paris"], gold=[True, False, False, False])]  # fmt: skip
    with pytest.raises(RuntimeError, match="int8 inference backend and cannot be trained"):
        SFTTrainer(int8, examples, SFTConfig(epochs=1, out_dir=str(tmp_path / "sft"), progress=False, device="cpu")).train()

    class Reader:
        identity = "test-reader"

        def generate(self, prompts):
            return ["" for _ in prompts]

        def loglik(self, prompts, targets):
            return [-1.0 for _ in prompts]

    config = RRPOConfig(max_steps=1, out_dir=str(tmp_path / "rrpo"), progress=False, device="cpu", checkpoint_every=0)
    with pytest.raises(RuntimeError, match="int8 inference backend and cannot be trained"):
        RRPOTrainer(int8, Reader(), examples, config)
    with pytest.raises(RuntimeError, match="not saved"):
        int8.save_pretrained(tmp_path / "int8")
