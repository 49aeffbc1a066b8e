"""Benchmark the live loop: does a pipeline's own feedback make its reranker better?

examples/feedback_loop.py at benchmark size: rated traffic on SQuAD train-split
questions, ``rrpo train --feedback``, then the same LlamaIndex pipeline before vs after
on held-out dev-split questions: the simulated users' thumbs-up rate, answer F1,
context words and latency, each with a paired 95% bootstrap interval of after - before;
and the learning curve (the trainer's reward per step, the traffic's running thumbs-up
rate) as a PNG. Results go to benchmarks/RESULTS.md through ``_results.py``::

    python benchmarks/feedback_loop.py --init runs/sft-minilm-hotpot/model --traffic 400 --dev 200 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

METRICS = (("thumbs_up", "thumbs-up rate", 1.0), ("f1", "answer F1", 1.0), ("words", "context words", 1.0),
           ("latency_ms", "latency (ms)", 1.0), ("k", "passages kept", 1.0))  # fmt: skip


def load_example():
    """examples/feedback_loop.py (same file name as this one: loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("feedback_loop_example", HERE.parent / "examples" / "feedback_loop.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def table(before: list[dict], after: list[dict]) -> str:
    from rrpo.evaluate import paired_bootstrap

    lines = ["| metric (dev questions) | before | after | after - before [95% CI] |", "|---|---|---|---|"]
    for key, name, _ in METRICS:
        a, b = [r[key] for r in after], [r[key] for r in before]
        diff, lo, hi = paired_bootstrap(a, b, n=2000)
        lines.append(f"| {name} | {sum(b) / len(b):.3f} | {sum(a) / len(a):.3f} | {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [json.loads(line) for line in Path(result["metrics"]).read_text().splitlines() if line.strip()]
    traffic = [r["thumbs_up"] for r in result["traffic"]]
    running = [sum(traffic[: i + 1]) / (i + 1) for i in range(len(traffic))]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(range(1, len(running) + 1), running)
    axes[0].set(title="traffic: running thumbs-up rate", xlabel="rated queries")
    axes[1].plot([s["step"] for s in steps], [s["reward_mean"] for s in steps], label="reward")
    axes[1].plot([s["step"] for s in steps], [s["greedy_k"] for s in steps], label="greedy k")
    axes[1].set(title="rrpo train --feedback", xlabel="step")
    axes[1].legend()
    labels = ["before", "after"]
    axes[2].bar(labels, [sum(r["thumbs_up"] for r in result[x]) / len(result[x]) for x in labels])
    axes[2].set(title="held-out thumbs-up rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", required=True, help="the relevance-SFT reranker the pipeline starts with")
    p.add_argument("--out", type=Path, default=Path("runs/feedback-loop"))
    p.add_argument("--traffic", type=int, default=400, help="rated train-split queries (<= 400 is the target)")
    p.add_argument("--dev", type=int, default=200, help="held-out dev-split questions")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--top-k", type=int, default=10, help="BM25 candidates per query")
    p.add_argument("--top-n", type=int, default=4, help="the reranker keeps at most this many")
    p.add_argument("--explore", type=float, default=0.0, help="exploration epsilon while serving traffic")
    p.add_argument("--results", default=None, help="append the section to this RESULTS.md")
    p.add_argument("--notes", default="", help="a note for the section (e.g. the machine's load)")
    args = p.parse_args(argv)

    loop = load_example()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.time()
    result = loop.run_loop(args.init, args.out, args.traffic, args.dev, args.steps, top_k=args.top_k,
                           top_n=args.top_n, explore=args.explore)  # fmt: skip
    minutes = (time.time() - started) / 60
    png = args.out / "feedback_loop.png"
    plot(result, png)
    markdown = table(result["before"], result["after"])
    up = sum(r["thumbs_up"] for r in result["traffic"]) / len(result["traffic"])
    notes = (
        f"- {len(result['traffic'])} rated traffic queries (SQuAD dev, train-split articles; thumbs-up rate while "
        f"serving {up:.3f}), {args.steps} RRPO steps (reward `{loop.REWARD}`, pseudo-gold = rated-good answers), "
        f"{len(result['before'])} held-out dev-split questions; BM25 top {args.top_k}, RRPORerank top_n {args.top_n}, "
        f"exploration epsilon {args.explore}; init `{args.init}`; reader SmolLM2-135M-Instruct via llama-cpp-python's "
        f"server and LlamaIndex OpenAILike (greedy, {loop.ANSWER_TOKENS} tokens); whole loop {minutes:.1f} min.\n"
        f"- the simulated user's rule (thumbs up when the answer contains a gold answer) is never shown to the trainer.\n"
        f"- learning curve: `{png}` (not committed: runs/ is ignored).\n"
        f"- load average at the start: {load_start}; at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}."
    )
    if args.notes:
        notes += f"\n- {args.notes}"
    print(markdown)
    print(notes)
    if args.results:
        from _results import append_results, command_line

        append_results(args.results, "Feedback loop: a pipeline's own ratings retrain its reranker", command_line(),
                       markdown, notes)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
