"""The RRPO and SFT trainers on tiny models with scripted rewards.

The rewards here are plain callables over the selected contexts, so each test says
exactly what it pays for; the reader is a counting fake that the trainer wraps in its
cache (its own tests live with the readers).
"""

from __future__ import annotations

import json

import pytest
import torch

from rrpo import Candidate, Example, Reranker
from rrpo.train import RRPOConfig, RRPOTrainer, SFTConfig, SFTTrainer


class CountingReader:
    identity = "counting-fake"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts):
        self.calls += len(prompts)
        return ["an answer"] * len(prompts)

    def loglik(self, prompts, targets):
        self.calls += len(prompts)
        return [-1.0] * len(prompts)


def make_examples(n: int = 6, size: int = 5) -> list[Example]:
    topics = ["rivers", "castles", "painters", "bridges", "islands", "poets", "ships", "mountains"]
    examples = []
    for q in range(n):
        topic = topics[q % len(topics)]
        cands = [Candidate("X", f"The archive holds one note about {topic} and the old harbour.")]
        cands += [Candidate(f"d{j}", f"A passage {j} about {topic}, trade and the northern road {q}.") for j in range(size - 1)]
        examples.append(Example(id=f"q{q}", query=f"What does the archive say about {topic}?", candidates=cands,
                                answers=["the harbour"], gold=[True] + [False] * (size - 1)))  # fmt: skip
    return examples


def pays_for_x_first(*, contexts, **_):
    return [1.0 if ctx and ctx[0].id == "X" else 0.0 for ctx in contexts]


def pays_for_two(*, contexts, **_):
    return [1.0 if len(ctx) == 2 else 0.0 for ctx in contexts]


def flat_reward(*, contexts, **_):
    return [1.0 for _ in contexts]


def config(tmp_path, **overrides) -> RRPOConfig:
    base = dict(
        group_size=4, queries_per_step=3, max_steps=1, max_k=4, ppo_epochs=2, learning_rate=1e-3,
        stop_head_lr=1e-2, weight_decay=0.0, warmup_steps=0, context_cost=0.0, kl_beta=0.0,
        checkpoint_every=0, device="cpu", progress=False, out_dir=str(tmp_path / "run"),
    )  # fmt: skip
    base.update(overrides)
    return RRPOConfig(**base)


def p_first(rr: Reranker, examples: list[Example], cand_id: str) -> float:
    """Mean probability that ``cand_id`` is picked first (STOP is not allowed at step 0)."""
    with torch.no_grad():
        scored = rr.score_pairs([e.query for e in examples], [e.candidates for e in examples])
    probs = []
    for ex, s in zip(examples, scored):
        idx = [c.id for c in ex.candidates].index(cand_id)
        probs.append(torch.softmax(s.scores.float(), 0)[idx].item())
    return sum(probs) / len(probs)


def mean_greedy_k(rr: Reranker, examples: list[Example], max_k: int) -> float:
    sels = rr.rerank_batch([e.query for e in examples], [e.candidates for e in examples], top_n=max_k)
    return sum(s.k for s in sels) / len(sels)


# ---------------------------------------------------------------- the update itself
def test_every_trainable_parameter_changes_and_the_reference_does_not(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    before = {k: v.clone() for k, v in policy.named_parameters()}
    # A context cost makes every STOP decision matter (each passage after the first costs
    # its words), so the STOP head has gains to fit; without one they would all tie.
    trainer = RRPOTrainer(policy, CountingReader(), make_examples(), config(tmp_path, context_cost=0.01),
                          reward=pays_for_x_first)  # fmt: skip
    ref_before = {k: v.clone() for k, v in trainer.reference.named_parameters()}
    row = trainer.train_step()
    unchanged = [k for k, v in policy.named_parameters() if v.requires_grad and torch.equal(v, before[k])]
    assert unchanged == []
    assert all(torch.equal(v, ref_before[k]) for k, v in trainer.reference.named_parameters())
    for key in ("reward_mean", "reward_std", "mean_k", "kl", "clip_frac", "advantage_std", "reader_calls",
                "cache_hit_rate", "context_words", "queries_per_s"):  # fmt: skip
        assert key in row


def test_trust_region_shortens_a_step_that_moves_the_policy_too_far(tiny_cross_encoder_dir, tmp_path):
    """The same batch and gradient, once without the bound and once with it: the bounded
    step is the free one times sqrt(max_step_kl / its KL), along the same direction."""
    moved, rows = {}, {}
    for bound in (0.0, 0.01):
        policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
        start = {k: v.clone() for k, v in policy.named_parameters() if v.requires_grad}
        cfg = config(tmp_path / str(bound), learning_rate=0.05, stop_head_lr=0.05, ppo_epochs=1, max_step_kl=bound)
        rows[bound] = RRPOTrainer(policy, CountingReader(), make_examples(), cfg, reward=pays_for_x_first).train_step()
        moved[bound] = torch.cat([(v - start[k]).flatten() for k, v in policy.named_parameters() if v.requires_grad])
    row = rows[0.01]
    assert "step_kl" not in rows[0.0]
    assert row["step_kl"] > 0.01, row  # the free step went further than the bound
    assert row["trust_scale"] == pytest.approx((0.01 / row["step_kl"]) ** 0.5)
    assert torch.allclose(moved[0.01], row["trust_scale"] * moved[0.0], atol=1e-6)


def test_trust_region_leaves_a_short_step_alone(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    cfg = config(tmp_path, learning_rate=1e-6, stop_head_lr=1e-6, max_step_kl=0.05)
    row = RRPOTrainer(policy, CountingReader(), make_examples(), cfg, reward=pays_for_x_first).train_step()
    assert 0 <= row["step_kl"] < 0.05 and row["trust_scale"] == 1.0


def test_hold_out_draws_validation_queries_only_from_enough_data():
    from rrpo.train.rrpo import hold_out

    few = make_examples(7)
    assert hold_out(few, 2, seed=0) == (few, [])  # fewer than 4x: all train
    many = make_examples(8)
    train, validation = hold_out(many, 2, seed=0)
    assert len(validation) == 2 and len(train) == 6
    assert {ex.id for ex in train}.isdisjoint(ex.id for ex in validation)
    assert hold_out(many, 2, seed=0) == (train, validation)  # seeded
    assert hold_out(many, 0, seed=0) == (many, [])


def _pays_on_validation_only(validation_ids):
    """X first pays on the held-out queries, X not first on the training ones: training
    then makes the validated reward worse."""
    def reward(*, queries, contexts, **_):
        out = []
        for q, ctx in zip(queries, contexts):
            first = bool(ctx) and ctx[0].id == "X"
            out.append(float(first) if q in validation_ids else float(not first))
        return out
    return reward


def test_the_saved_model_is_the_best_validated_one_the_start_included(tiny_cross_encoder_dir, tmp_path):
    from rrpo.train.rrpo import hold_out

    examples = make_examples(8)
    _, validation = hold_out(examples, 2, seed=0)
    held_queries = {ex.query for ex in validation}
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    start = {k: v.clone() for k, v in policy.named_parameters()}
    cfg = config(tmp_path, max_steps=6, validation_queries=2, validate_every=3)
    trainer = RRPOTrainer(policy, CountingReader(), examples, cfg, reward=_pays_on_validation_only(held_queries))
    assert [ex.id for ex in trainer.validation] == [ex.id for ex in validation]
    trained = trainer.train()
    assert [v["step"] for v in trainer.validations] == [0, 3, 6]
    rewards = [v["reward"] for v in trainer.validations]
    assert rewards[-1] < rewards[0], rewards  # training hurt the held-out queries...
    assert trainer.best["step"] == 0  # ...so the start is what is kept
    saved = Reranker.from_pretrained(str(tmp_path / "run" / "model"), device="cpu")
    for name, p in saved.named_parameters():
        assert torch.allclose(p, start[name], atol=1e-6), name
    assert all(torch.equal(p, start[n]) for n, p in trained.named_parameters())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_reward" in r] == [3, 6]
    record = json.loads((tmp_path / "run" / "validation.json").read_text())
    assert record["best_step"] == 0 and set(record["queries"]) == {ex.id for ex in validation}
    # per-question rewards and the paired gain the rule decided on, for a later look
    last = record["validations"][-1]
    assert len(last["values"]) == 2 and last["gain_vs_kept"]["kept_step"] == 0
    assert last["gain_vs_kept"]["mean"] == pytest.approx(rewards[-1] - rewards[0])


def test_a_validated_gain_within_its_noise_does_not_replace_the_kept_policy():
    from rrpo.train.rrpo import _beats

    start = [-3.0, -4.0, -2.0, -5.0]
    noisy = [-2.0, -5.0, -1.5, -5.4]  # +0.025 on average, +-0.9 per query
    assert not _beats(noisy, start, z=1.0)
    assert _beats([v + 0.3 for v in start], start, z=1.0)  # the same gain on every query
    assert not _beats([None] * 4, start, z=1.0)
    assert _beats([-2.9, None, None, None], start, z=1.0)  # one shared query: the sign decides


def test_validation_keeps_the_trained_model_when_training_helps(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    cfg = config(tmp_path, max_steps=8, validation_queries=2, validate_every=4, context_cost=0.02)
    trainer = RRPOTrainer(policy, CountingReader(), make_examples(8), cfg, reward=flat_reward)
    start = mean_greedy_k(policy, trainer.validation, 4)
    trainer.train()
    assert trainer.best["step"] > 0 and trainer.best["reward"] > trainer.validations[0]["reward"]
    assert mean_greedy_k(policy, trainer.validation, 4) < start  # the kept parameters are the trained ones


def test_validation_without_an_applicable_reward_has_no_say(tiny_cross_encoder_dir, tmp_path):
    """A rating reward applies only to the logged selection, never to a greedy one on a
    held-out query: validation then keeps nothing and the last parameters are saved."""
    def rates_only_x_alone(*, contexts, **_):  # applies to one selection only
        return [1.0 if [c.id for c in ctx] == ["X"] else None for ctx in contexts]

    examples = make_examples(8)
    cfg = config(tmp_path, max_steps=2, validation_queries=2, validate_every=1, min_k=2)
    trainer = RRPOTrainer(Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu"), CountingReader(), examples,
                          cfg, reward=rates_only_x_alone)  # fmt: skip
    trainer.train()
    assert trainer.best is None and len(trainer.validations) == 3
    assert json.loads((tmp_path / "run" / "validation.json").read_text())["best_step"] is None


def test_a_resumed_run_keeps_its_best_validated_parameters(tiny_cross_encoder_dir, tmp_path):
    examples = make_examples(8)
    cfg = config(tmp_path, max_steps=3, validation_queries=2, validate_every=3, checkpoint_every=1)
    first = RRPOTrainer(Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu"), CountingReader(), examples,
                        cfg, reward=pays_for_x_first)  # fmt: skip
    first.validate()
    first.train_step()
    first.save_checkpoint()
    again = RRPOTrainer(Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu"), CountingReader(), examples,
                        cfg, reward=pays_for_x_first, resume=True)  # fmt: skip
    assert again.step == 1 and again.best["step"] == first.best["step"] == 0
    assert again.validations == first.validations
    assert all(torch.equal(again.best["params"][n], p) for n, p in first.best["params"].items())


def test_reward_for_x_first_raises_its_probability(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    examples = make_examples(6)
    start = p_first(policy, examples, "X")
    RRPOTrainer(policy, CountingReader(), examples, config(tmp_path, max_steps=30), reward=pays_for_x_first).train()
    end = p_first(policy, examples, "X")
    assert end > start + 0.4, (start, end)


def test_reward_for_two_passages_moves_greedy_k_to_two(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    examples = make_examples(6)
    cfg = config(tmp_path, max_steps=40, group_size=6)
    RRPOTrainer(policy, CountingReader(), examples, cfg, reward=pays_for_two).train()
    sels = policy.rerank_batch([e.query for e in examples], [e.candidates for e in examples], top_n=4)
    assert [s.k for s in sels] == [2] * len(examples)


def test_context_cost_shrinks_k_when_the_reward_is_indifferent(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    with torch.no_grad():
        policy.stop_head.out.bias.fill_(-2.0)  # start by keeping many passages
    examples = make_examples(6)
    start = mean_greedy_k(policy, examples, 4)
    cfg = config(tmp_path, max_steps=25, context_cost=0.02)
    RRPOTrainer(policy, CountingReader(), examples, cfg, reward=flat_reward).train()
    end = mean_greedy_k(policy, examples, 4)
    assert start >= 3 and end <= start - 1.5, (start, end)


def test_terminal_and_group_modes_also_learn(tiny_cross_encoder_dir, tmp_path):
    examples = make_examples(6)
    for overrides in ({"reward_mode": "terminal"}, {"baseline": "group"}):
        policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
        start = p_first(policy, examples, "X")
        cfg = config(tmp_path / overrides.popitem()[1], max_steps=25, **overrides)
        RRPOTrainer(policy, CountingReader(), examples, cfg, reward=pays_for_x_first).train()
        assert p_first(policy, examples, "X") > start + 0.3


# ---------------------------------------------------------------- outputs and resume
def test_outputs_metrics_checkpoints_and_cache(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    reader = CountingReader()
    cfg = config(tmp_path, max_steps=4, checkpoint_every=2, reward="gold_loglik")
    trainer = RRPOTrainer(policy, reader, make_examples(3), cfg)
    trainer.train()
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert (out / "model" / "rrpo_stop_head.safetensors").is_file()
    assert (out / "curves.png").stat().st_size > 1000
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # 3 queries, one per step... their prefixes repeat across steps: the cache answers them
    assert rows[-1]["cache_hit_rate"] > 0 and reader.calls == trainer.reader.calls
    assert Reranker.from_pretrained(out / "model", device="cpu").rerank("rivers?", ["a", "b"]).k >= 1


def test_resume_after_a_kill_reaches_the_same_parameters(tiny_cross_encoder_dir, tmp_path):
    examples = make_examples(5)

    def fresh(out):
        policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
        return policy, config(tmp_path, out_dir=str(tmp_path / out), max_steps=6, checkpoint_every=1)

    policy, cfg = fresh("straight")
    RRPOTrainer(policy, CountingReader(), examples, cfg, reward=pays_for_x_first).train()
    straight = {k: v.detach().clone() for k, v in policy.state_dict().items()}

    policy, cfg = fresh("killed")
    killed = RRPOTrainer(policy, CountingReader(), examples, cfg, reward=pays_for_x_first)
    for _ in range(3):
        killed.train_step()
    killed.save_checkpoint()
    del killed  # the process dies here; only the checkpoint survives

    policy, cfg = fresh("killed")
    resumed = RRPOTrainer(policy, CountingReader(), examples, cfg, reward=pays_for_x_first, resume=True)
    assert resumed.step == 3
    resumed.train()
    for key, value in policy.state_dict().items():
        assert torch.equal(value, straight[key]), key  # bit-identical: the run's cache and state persist
    rows = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------- bad config
@pytest.mark.parametrize(
    "overrides, field",
    [({"group_size": 0}, "group_size"), ({"min_k": 4, "max_k": 2}, "min_k"), ({"reward_mode": "x"}, "reward_mode"),
     ({"baseline": "group", "group_size": 1}, "group_size"), ({"max_step_kl": -0.1}, "max_step_kl"),
     ({"validate_every": 0}, "validate_every"), ({"stop_labels": "best"}, "stop_labels"),
     ({"stop_lookahead": 0}, "stop_lookahead"), ({"ranking": "best"}, "ranking"), ({"rank_depth": 0}, "rank_depth"),
     ({"ranking": "greedy", "reward_mode": "terminal"}, "reward_mode")],  # fmt: skip
)
def test_bad_config_fails_before_any_work(overrides, field, tmp_path):
    with pytest.raises(ValueError, match=field):
        RRPOTrainer(object(), CountingReader(), make_examples(), config(tmp_path, **overrides))  # type: ignore[arg-type]


def test_empty_data_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="examples"):
        RRPOTrainer(object(), CountingReader(), [], config(tmp_path))  # type: ignore[arg-type]


# ---------------------------------------------------------------- SFT
def test_sft_raises_gold_scores_and_learns_to_stop_after_them(tiny_cross_encoder_dir, tmp_path):
    rr = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    examples = make_examples(8)
    start = p_first(rr, examples, "X")
    cfg = SFTConfig(epochs=15, examples_per_step=4, learning_rate=1e-3, stop_head_lr=1e-2, device="cpu",
                    progress=False, out_dir=str(tmp_path / "sft"), warmup_ratio=0.0)  # fmt: skip
    SFTTrainer(rr, examples, cfg).train()
    assert p_first(rr, examples, "X") > start + 0.4
    assert mean_greedy_k(rr, examples, 4) == pytest.approx(1.0)  # one gold passage each: keep one
    assert (tmp_path / "sft" / "model" / "model.safetensors").is_file()


def test_sft_without_labels_names_the_fix(tiny_cross_encoder_dir, tmp_path):
    rr = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    ex = make_examples(1)[0]
    ex.gold = None
    with pytest.raises(ValueError, match="label_fn"):
        SFTTrainer(rr, [ex], SFTConfig(out_dir=str(tmp_path)))


KILLED_RUN = """
import sys, time
sys.path.insert(0, sys.argv[1])
from test_train import CountingReader, config, make_examples, pays_for_x_first
from rrpo import Reranker
from rrpo.train import RRPOTrainer
from pathlib import Path

def slow_reward(**kw):
    time.sleep(0.3)  # a reader takes time: the kill lands mid-step or mid-save
    return pays_for_x_first(**kw)

policy = Reranker.from_pretrained(sys.argv[2], device="cpu")
cfg = config(Path(sys.argv[3]), out_dir=sys.argv[3], max_steps=6, checkpoint_every=1)
RRPOTrainer(policy, CountingReader(), make_examples(5), cfg, reward=slow_reward).train()
"""


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tiny_cross_encoder_dir, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    examples = make_examples(5)
    straight = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    cfg = config(tmp_path, out_dir=str(tmp_path / "straight"), max_steps=6, checkpoint_every=1)
    RRPOTrainer(straight, CountingReader(), examples, cfg, reward=pays_for_x_first).train()

    out = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(Path(__file__).parent), str(tiny_cross_encoder_dir), str(out)]
    )
    deadline = time.time() + 300
    while not (out / "checkpoint-3").is_dir() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    cfg = config(tmp_path, out_dir=str(out), max_steps=6, checkpoint_every=1)
    resumed = RRPOTrainer(policy, CountingReader(), examples, cfg, reward=pays_for_x_first, resume=True)
    assert 3 <= resumed.step < 6
    resumed.train()
    for key, value in policy.state_dict().items():
        assert torch.equal(value, straight.state_dict()[key]), key  # bit-identical
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_stop_objective_stops_when_stopping_pays_on_average_not_when_it_wins_most_often():
    """Nine continuations cost 0.1 each; one brings the answer (+2). Stopping wins 9 of 10
    times, yet going on pays on average: the weighted objective pushes toward going on."""
    from core.train.rrpo import stop_objective

    gains = torch.tensor([0.1] * 9 + [-2.0])  # gain of stopping = Q(t) - Q(k)
    logits = torch.zeros(10, requires_grad=True)
    stop_objective(logits, gains).mean().backward()
    assert float(logits.grad.sum()) > 0  # descent lowers the STOP log-odds: go on

    logits = torch.zeros(10, requires_grad=True)
    stop_objective(logits, torch.tensor([-0.01] * 9 + [2.0])).mean().backward()  # rarely wins, by a lot
    assert float(logits.grad.sum()) < 0
    # Ties carry no information and no loss.
    assert float(stop_objective(torch.zeros(3), torch.zeros(3)).sum()) == 0.0


# ---------------------------------------------------------------- greedy STOP labels
def test_greedy_stop_labels_compare_stopping_with_the_best_longer_greedy_prefix():
    from core.train.rrpo import _greedy_stop_gains

    # Q of the greedy prefixes of length 0..3; STOP is a choice from t = 1 (min_k) on
    gains = _greedy_stop_gains([0.0, 1.0, 0.5, 2.0], first=1, limit=4, like=torch.zeros(1, 4))
    assert torch.isnan(gains[0, 0]) and torch.isnan(gains[0, 3])  # before min_k; nothing longer scored
    assert gains[0, 1].item() == pytest.approx(1.0 - 2.0)  # going on reaches 2.0 within the lookahead
    assert gains[0, 2].item() == pytest.approx(0.5 - 2.0)
    # an unknown quality (reward not applicable) gives no label, and is no target
    gains = _greedy_stop_gains([0.0, None, 0.5, None], first=1, limit=4, like=torch.zeros(1, 4))
    assert torch.isnan(gains[0, 1]) and gains[0, 2].isnan()


def test_stop_labels_come_from_the_policys_greedy_ranking_by_default(tiny_cross_encoder_dir, tmp_path):
    """The default labels score the prefixes of the greedy ranking (what rerank keeps),
    up to greedy k + stop_lookahead; the samples' continuations give no STOP label."""
    from core.train.rrpo import _greedy_stop_gains

    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    seen = []

    def pays_for_x_then_words(*, contexts, **_):
        seen.extend(tuple(c.id for c in ctx) for ctx in contexts)
        return [(1.0 if any(c.id == "X" for c in ctx) else 0.0) - 0.1 * len(ctx) for ctx in contexts]

    cfg = config(tmp_path, max_k=4, stop_lookahead=1)
    assert RRPOConfig().stop_labels == "greedy"
    trainer = RRPOTrainer(policy, CountingReader(), make_examples(3), cfg, reward=pays_for_x_then_words)
    rollouts = trainer.rollout(trainer._next_batch())
    trainer.rewards(rollouts)
    trainer.advantages(rollouts)
    for r in rollouts:
        ids = [c.id for c in r.example.candidates]
        length = min(r.limit, max(r.greedy_k, cfg.min_k) + 1) + 1
        prefixes = [tuple(ids[i] for i in r.greedy_order[:t]) for t in range(length)]
        assert set(prefixes) <= set(seen)  # each greedy prefix was scored
        expected = [(1.0 if "X" in p else 0.0) - 0.1 * len(p) for p in prefixes]
        assert r.greedy_curve == pytest.approx(expected)
        assert r.stop_gains.shape[0] == 1  # one row: the greedy ranking, not the samples
        assert torch.allclose(r.stop_gains, _greedy_stop_gains(r.greedy_curve, cfg.min_k, r.limit, r.old_logp[:1]),
                              equal_nan=True)
    # the loss runs and its STOP part is fitted on those labels
    loss, parts = trainer.loss(rollouts, [r.live for r in rollouts])
    assert torch.isfinite(loss) and parts["stop_loss"].item() > 0


def test_sampled_stop_labels_remain_an_option(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    cfg = config(tmp_path, stop_labels="sampled")
    trainer = RRPOTrainer(policy, CountingReader(), make_examples(3), cfg, reward=pays_for_two)
    rollouts = trainer.rollout(trainer._next_batch())
    trainer.rewards(rollouts)
    trainer.advantages(rollouts)
    assert all(r.greedy_curve == [] and r.stop_gains.shape[0] == len(r.selections) for r in rollouts)


def test_the_policy_gradient_still_trains_stop_where_the_greedy_ranking_has_no_label(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    trainer = RRPOTrainer(policy, CountingReader(), make_examples(3), config(tmp_path, stop_loss_weight=1.0),
                          reward=pays_for_two)
    rollouts = trainer.rollout(trainer._next_batch())
    trainer.rewards(rollouts)
    trainer.advantages(rollouts)
    for r in rollouts:
        r.stop_gains = torch.full_like(r.stop_gains, float("nan"))  # as if the reward had no value for them
    loss, parts = trainer.loss(rollouts, [r.live for r in rollouts])
    loss.backward()
    grad = policy.stop_head.out.weight.grad
    assert parts["stop_loss"].item() == 0.0 and grad is not None and grad.abs().sum().item() > 0


# ---------------------------------------------------------------- ranking 'greedy'
def test_greedy_ranking_scores_every_alternative_along_the_greedy_ranking_and_samples_nothing(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    seen = []

    def pays_for_x(*, contexts, **_):
        seen.extend(tuple(c.id for c in ctx) for ctx in contexts)
        return [(1.0 if any(c.id == "X" for c in ctx) else 0.0) - 0.1 * len(ctx) for ctx in contexts]

    cfg = config(tmp_path, ranking="greedy", rank_depth=2)
    trainer = RRPOTrainer(policy, CountingReader(), make_examples(3), cfg, reward=pays_for_x)
    rollouts = trainer.rollout(trainer._next_batch())
    trainer.rewards(rollouts)
    trainer.advantages(rollouts)
    for r in rollouts:
        assert r.selections == []  # no sampled rankings, so no sampling noise
        ids = [c.id for c in r.example.candidates]
        assert [greedy for greedy, _ in r.rank_states] == [(), tuple(r.order[:1])]  # greedy steps 0 and 1
        for (greedy, rest), q in zip(r.rank_states, r.rank_values):
            prefix = tuple(ids[i] for i in greedy)
            assert sorted(rest) == sorted(set(range(len(ids))) - set(greedy))
            assert {prefix + (ids[c],) for c in rest} <= set(seen)  # every alternative was scored
            assert q.mean().item() == pytest.approx(0.0, abs=1e-6)  # centred per state
            expected = [(1.0 if "X" in prefix + (ids[c],) else 0.0) for c in rest]
            assert (torch.argsort(q, descending=True)[0].item() == expected.index(max(expected))) or max(expected) == min(expected)
    loss, parts = trainer.loss(rollouts, [r.live for r in rollouts])
    assert torch.isfinite(loss) and parts["kl"].item() == pytest.approx(0.0, abs=1e-6)  # still at the reference


def test_greedy_ranking_learns_the_paid_passage_first(tiny_cross_encoder_dir, tmp_path):
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    examples = make_examples(6)
    start = p_first(policy, examples, "X")
    RRPOTrainer(policy, CountingReader(), examples, config(tmp_path, ranking="greedy", max_steps=15),
                reward=pays_for_x_first).train()
    assert p_first(policy, examples, "X") > start + 0.4, start


def test_greedy_ranking_leaves_the_ranking_alone_where_the_reader_prefers_no_passage(tiny_cross_encoder_dir, tmp_path):
    """The exact policy gradient of a state whose alternatives all score the same is 0: a
    question the reader answers alike from every passage does not pull the ranking toward
    uniform (a soft-label fit to softmax(Q) would)."""
    policy = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    trainer = RRPOTrainer(policy, CountingReader(), make_examples(3),
                          config(tmp_path, ranking="greedy", stop_loss_weight=0.0), reward=flat_reward)
    rollouts = trainer.rollout(trainer._next_batch())
    trainer.rewards(rollouts)
    trainer.advantages(rollouts)
    loss, _ = trainer.loss(rollouts, [r.live for r in rollouts])
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.abs().max().item() == 0.0 for g in grads)
