"""Learning benchmark: how fast does RRPO learn the ranking and when to stop?

On the generated world (:mod:`rrpo.synthetic`: one passage states the answer, on-topic
distractors and near-namesakes do not) with a reader that costs nothing
(:class:`rrpo.synthetic.AnswerPassageReader`: log-lik -1 when the answer passage is in
the context, -5 otherwise, minus 0.3 per passage, so the optimum is the answer passage
alone, k = 1), RRPO runs at the library's defaults (``RRPOConfig()``: only the number of
steps, the output folder and the device are set) from two starting points:

- ``sft``: a relevance-SFT warm start (``SFTTrainer`` at its defaults on the on-topic
  labels of :func:`rrpo.synthetic.relevance_labels`), which puts on-topic passages first;
- ``fresh``: ``Reranker.from_pretrained("minilm-l6", scoring="cross_encoder")``, the
  packaged MiniLM as a cross-encoder with a fresh scoring head.

Every ``--eval-every`` steps it measures, on held-out questions of the same world:
gold@1 (the greedy first passage is the answer passage), mean greedy k (top_n = max_k),
the greedy selection's reward, and from training the KL to the reference and the
reader calls so far. Writes OUT/learning.png (curves), OUT/learning.json and, with
``--results``, a section of benchmarks/RESULTS.md.

    python benchmarks/learning.py --results benchmarks/RESULTS.md
    python benchmarks/learning.py --starts sft --sft-steps 10     # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGETS = {  # issue #17: from SFT within 25 steps, from a fresh head within 50 (8 queries a step)
    "sft": {"gold@1": 0.9, "greedy_k": 1.2},
    "fresh": {"gold@1": 0.8},
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    from rrpo.synthetic import AnswerPassageReader, generate_examples

    torch.manual_seed(args.seed)
    examples = generate_examples(args.train + args.held_out, seed=args.seed, candidates=(args.candidates,) * 2)
    train, held_out = examples[: args.train], examples[args.train :]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for start in args.starts.split(","):
        steps = args.sft_steps if start == "sft" else args.fresh_steps
        policy = _start(start, train, out, args.device, args.sft_from)
        runs[start] = _run(policy, AnswerPassageReader(), train, held_out, steps, args, out / f"rrpo-{start}")
        print(_curve_table(start, runs[start]), flush=True)
    (out / "learning.json").write_text(json.dumps(runs, indent=2))
    _plot(runs, out / "learning.png")
    summary = _summary(runs)
    print(summary)
    if args.results:
        from _results import append_results, command_line

        tables = summary + "\n\n" + "\n\n".join(_curve_table(s, r) for s, r in runs.items())
        title = ("Learning: RRPO at its defaults on the generated world" if not args.set
                 else f"Learning: RRPO on the generated world with {', '.join(args.set)}")
        append_results(args.results, title, command_line(),
                       tables, _notes(args, out))  # fmt: skip
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--starts", default="sft,fresh", help="comma-separated: sft, fresh")
    p.add_argument("--train", type=int, default=64, help="training questions")
    p.add_argument("--held-out", type=int, default=64, help="held-out questions")
    p.add_argument("--candidates", type=int, default=8, help="passages per question")
    p.add_argument("--sft-steps", type=int, default=25, help="RRPO steps from the SFT start")
    p.add_argument("--fresh-steps", type=int, default=50, help="RRPO steps from the fresh head")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-time budget per start: stop at the first evaluation past it (the table says so)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override an RRPOConfig field (e.g. learning_rate=1e-4); repeatable")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/learning")
    p.add_argument("--results", default=None, help="append the tables to this RESULTS.md")
    p.add_argument("--notes", default="", help="a line for the results section (e.g. machine load)")
    p.add_argument("--sft-from", default=None, help="reuse a relevance-SFT model this script trained before (OUT/sft/model)")
    return p


def _start(start: str, train, out: Path, device: str, sft_from: str | None = None):
    from rrpo import Reranker
    from rrpo.synthetic import relevance_labels
    from rrpo.train import SFTConfig, SFTTrainer

    base = Reranker.from_pretrained("minilm-l6", device=device, scoring="cross_encoder")  # a fresh head
    if start == "fresh":
        return base
    if start != "sft":
        raise SystemExit(f"unknown start {start!r}: choose sft or fresh")
    if sft_from:
        return Reranker.from_pretrained(sft_from, device=device)
    config = SFTConfig(out_dir=str(out / "sft"), device=device, progress=False, overwrite=True)
    return SFTTrainer(base, train, config, label_fn=relevance_labels).train()


def _run(policy, reader, train, held_out, steps: int, args, out_dir: Path) -> list[dict]:
    from rrpo.train import RRPOConfig, RRPOTrainer

    config = RRPOConfig(max_steps=steps, out_dir=str(out_dir), device=args.device, progress=False,
                        checkpoint_every=0, seed=args.seed, overwrite=True, **config_overrides(args.set))  # fmt: skip
    trainer = RRPOTrainer(policy, reader, train, config)
    rows = [{"step": 0, **_held_out(trainer, held_out), "kl": 0.0, "reader_calls": 0, "seconds": 0.0}]
    started = time.perf_counter()
    budget = None if args.minutes is None else 60 * args.minutes
    for step in range(1, steps + 1):
        row = trainer.train_step()
        if step % args.eval_every == 0 or step == steps:
            rows.append({"step": step, **_held_out(trainer, held_out), "kl": row["kl"],
                         "reader_calls": trainer.reader.calls, "seconds": time.perf_counter() - started})  # fmt: skip
            print(f"[{out_dir.name}] step {step}: {rows[-1]}", flush=True)
            if budget is not None and rows[-1]["seconds"] > budget and step < steps:
                rows[-1]["stopped_by_budget"] = True
                break
    trainer.policy.release_frozen_layers()
    return rows


def config_overrides(pairs: list[str]) -> dict:
    """``--set field=value`` pairs as RRPOConfig keyword arguments (see
    :func:`rrpo.train.config.parse_overrides`)."""
    from rrpo.train import RRPOConfig
    from rrpo.train.config import parse_overrides

    try:
        return parse_overrides(pairs, RRPOConfig)
    except ValueError as err:
        raise SystemExit(f"--set: {err}") from None


def _held_out(trainer, held_out) -> dict:
    """Greedy decisions of the current policy on held-out questions, and their reward
    under the same reader and context cost as training."""
    from rrpo.prompts import build_prompt, context_words

    cfg = trainer.config
    policy = trainer.policy
    sels = policy.rerank_batch([e.query for e in held_out], [e.candidates for e in held_out], top_n=cfg.max_k)
    contexts = [s.select(e.candidates) for e, s in zip(held_out, sels)]
    prompts = [build_prompt(e.query, c, cfg.max_words) for e, c in zip(held_out, contexts)]
    logliks = trainer.reader.reader.loglik(prompts, [e.answers[0] for e in held_out])
    rewards = [q - cfg.context_cost * context_words(c, cfg.max_words) for q, c in zip(logliks, contexts)]
    n = len(held_out)
    return {
        "gold@1": sum(bool(e.gold[s.order[0]]) for e, s in zip(held_out, sels)) / n,
        "greedy_k": sum(s.k for s in sels) / n,
        "reward": sum(rewards) / n,
    }


def _curve_table(start: str, rows: list[dict]) -> str:
    cut = [r["step"] for r in rows if r.get("stopped_by_budget")]
    title = f"### from {start}: held-out curve" + (f" (stopped by --minutes at step {cut[0]})" if cut else "")
    lines = [title, "",
             "| step | gold@1 | mean greedy k | greedy reward | KL to reference | reader calls | seconds |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['step']} | {r['gold@1']:.2f} | {r['greedy_k']:.2f} | {r['reward']:.2f} | {r['kl']:.3f} "
                     f"| {r['reader_calls']:,} | {r['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def _first_step(rows: list[dict], target: dict) -> int | None:
    for r in rows:
        if r["gold@1"] >= target.get("gold@1", -1) and r["greedy_k"] <= target.get("greedy_k", 1e9):
            return r["step"]
    return None


def _summary(runs: dict) -> str:
    lines = ["| start | steps | gold@1 start -> end | greedy k start -> end | KL at end | target | first step meeting it | reader calls then |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for start, rows in runs.items():
        target = TARGETS.get(start, {})
        first = _first_step(rows, target)
        calls = next((r["reader_calls"] for r in rows if r["step"] == first), None)
        text = ", ".join(f"{k} {'>=' if k == 'gold@1' else '<='} {v}" for k, v in target.items())
        lines.append(
            f"| {start} | {rows[-1]['step']} | {rows[0]['gold@1']:.2f} -> {rows[-1]['gold@1']:.2f} "
            f"| {rows[0]['greedy_k']:.2f} -> {rows[-1]['greedy_k']:.2f} | {rows[-1]['kl']:.3f} | {text} "
            f"| {first if first is not None else 'not reached'} | {calls if calls is not None else '-'} |"
        )
    return "\n".join(lines)


def _plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("gold@1", "held-out gold@1"), ("greedy_k", "mean greedy k"), ("reward", "greedy reward"), ("kl", "KL to reference")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.3))
    for ax, (key, title) in zip(axes, keys):
        for start, rows in runs.items():
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=f"from {start}")
        ax.set_title(title)
        ax.set_xlabel("RRPO step (8 queries)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("RRPO at its defaults, generated world, scripted reader")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _notes(args, out: Path) -> str:
    return (
        f"- world: `generate_examples({args.train + args.held_out}, seed={args.seed}, candidates=({args.candidates}, {args.candidates}))`, "
        f"first {args.train} train, last {args.held_out} held out; reader `AnswerPassageReader()` (-1 answer passage in context, "
        "-5 otherwise, -0.3 per passage) and the default context cost; RRPO at `RRPOConfig()` defaults"
        + (f", except {', '.join(args.set)} (--set).\n" if args.set else ".\n")
        + f"- curves: `{out / 'learning.png'}` (not committed; rerun the command).\n" + (f"- {args.notes}\n" if args.notes else "")
    )


if __name__ == "__main__":
    raise SystemExit(main())
