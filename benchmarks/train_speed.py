"""RRPO training throughput with the real reader: this checkout against an older rrpo.

Each side runs in its own subprocess (a fresh interpreter, its own rrpo) in the same
invocation, on the same HotpotQA train questions and the same number of steps; after
both have taken their warm-up step, the timed steps alternate (new, old, then old, new,
...), one process at a time, so a shift in a shared machine's load hits both sides alike: ``LocalReader("smollm2-135m")`` at its defaults, MiniLM-L6 as a cross-encoder
with a fresh head, ``RRPOConfig`` at each side's defaults except the workload (reward
``gold_loglik``, per-prefix rewards, G, max_k, queries per step). One warm-up step, then
the timed steps. Per training query it reports the reader's likelihood rows (reader
calls past the response cache), the tokens the reader's model ran (a forward hook on
the model: padding included, cached prefixes not), the response-cache hit rate, and the
seconds spent inside the reader against the rest (the policy side).

The older side is a git worktree: ``git worktree add /tmp/rrpo-old d82dc3e``; its
``core/`` is put on ``PYTHONPATH`` as ``rrpo`` through a symlink in a temp folder::

    python benchmarks/train_speed.py --old-tree /tmp/rrpo-old --results benchmarks/RESULTS.md
    python benchmarks/train_speed.py --sides new --steps 1          # this checkout only
    python benchmarks/train_speed.py --sides new,bf16,old --old-tree /tmp/rrpo-old

Side ``bf16`` is this checkout with the reader loaded in bf16 (``LocalReader(dtype=
"bfloat16")``) and the policy under bf16 autocast (``RRPOConfig(bf16=True)``): the policy
part is an option. The reader part is side ``new``'s default too on a CPU with bf16
matrix units (AMX, AVX512-BF16); elsewhere ``new`` reads in fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _results.py beside this file
from _results import append_results, command_line  # noqa: E402

TRAIN_DATA = "hotpotqa-distractor.train.jsonl.gz"


# --------------------------------------------------------------------------- worker
class ReaderMeter:
    """Counts the tokens a reader's model runs and the seconds spent in ``loglik``."""

    def __init__(self, reader: Any):
        self.tokens = 0
        self.seconds = 0.0
        reader.model.register_forward_pre_hook(self._count, with_kwargs=True)
        inner = reader.loglik

        def timed(prompts: list[str], targets: list[str]) -> list[float]:
            start = time.perf_counter()
            try:
                return inner(prompts, targets)
            finally:
                self.seconds += time.perf_counter() - start

        reader.loglik = timed  # the instance attribute shadows the method: only this reader

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens += int(ids.numel())


def _config(args: argparse.Namespace, out_dir: str) -> Any:
    from dataclasses import fields

    from rrpo.train import RRPOConfig

    wanted = dict(
        reward="gold_loglik", reward_mode="per_prefix", group_size=args.group_size, max_k=args.max_k,
        queries_per_step=args.queries, max_steps=args.steps + 1, warmup_steps=0, checkpoint_every=0,
        progress=False, device="cpu", out_dir=out_dir, seed=args.seed, overwrite=True,
    )  # fmt: skip
    if args.bf16:
        wanted["bf16"] = True
    known = {f.name for f in fields(RRPOConfig)}  # the older rrpo has fewer fields (no overwrite)
    return RRPOConfig(**{k: v for k, v in wanted.items() if k in known})


def _policy(args: argparse.Namespace) -> Any:
    import inspect

    from rrpo import Reranker

    options: dict[str, Any] = {"device": "cpu"}
    if "scoring" in inspect.signature(Reranker.from_pretrained).parameters:
        options["scoring"] = "cross_encoder"  # what the older rrpo trains: like for like
    return Reranker.from_pretrained(args.model, **options)


MARK = "@@train_speed "  # worker lines the driver reads; anything else is passed through


def _say(payload: dict[str, Any]) -> None:
    print(MARK + json.dumps(payload), flush=True)


def worker(args: argparse.Namespace) -> None:
    """Set up one side, take the warm-up step, then one timed step per ``step`` line on
    stdin (so the driver can interleave the two sides), each answered with a JSON line."""
    import torch

    import rrpo
    from rrpo.data import load_examples, shared_data_dir
    from rrpo.readers import LocalReader
    from rrpo.train import RRPOTrainer

    torch.manual_seed(args.seed)
    examples = load_examples(shared_data_dir() / TRAIN_DATA, limit=args.queries * (args.steps + 1))
    reader = LocalReader(args.reader, device="cpu", progress=False, **({"dtype": "bfloat16"} if args.bf16 else {}))
    meter = ReaderMeter(reader)
    with tempfile.TemporaryDirectory(prefix="rrpo-train-speed-") as out_dir:
        trainer = RRPOTrainer(_policy(args), reader, examples, _config(args, out_dir))
        trainer.train_step()  # warm-up: first-call costs
        _say({"ready": True, "rrpo": getattr(rrpo, "__version__", "?"),
              "rrpo_path": str(Path(rrpo.__file__).resolve().parent)})  # fmt: skip
        for line in sys.stdin:
            if line.strip() != "step":
                break
            tokens0, reader_s0 = meter.tokens, meter.seconds
            start = time.perf_counter()
            row = trainer.train_step()
            seconds = time.perf_counter() - start
            _say({
                "seconds": seconds, "queries": args.queries, "reader_calls": row["reader_calls"],
                "cache_hit_rate": row["cache_hit_rate"], "tokens": meter.tokens - tokens0,
                "reader_seconds": meter.seconds - reader_s0, "reward_mean": row["reward_mean"],
            })  # fmt: skip


def summarise(steps: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """Totals over the timed steps, per training query."""
    seconds = sum(r["seconds"] for r in steps)
    queries = sum(r["queries"] for r in steps)
    reader_s = sum(r["reader_seconds"] for r in steps)
    return {
        **info, "per_step": steps, "steps": len(steps), "seconds": seconds, "queries": queries, "queries_per_s": queries / seconds,
        "reader_calls_per_query": sum(r["reader_calls"] for r in steps) / queries,
        "cache_hit_rate": sum(r["cache_hit_rate"] for r in steps) / len(steps),
        "tokens_per_query": sum(r["tokens"] for r in steps) / queries,
        "reader_s_per_query": reader_s / queries, "policy_s_per_query": (seconds - reader_s) / queries,
        "reward_mean": sum(r["reward_mean"] for r in steps) / len(steps),
    }  # fmt: skip


# --------------------------------------------------------------------------- driver
def _env_for(side: str, old_tree: Path | None, scratch: Path) -> dict[str, str]:
    from rrpo.data import shared_data_dir

    # The older rrpo looks for the data beside its own checkout: name the folder.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               RRPO_SHARED_DATA=str(shared_data_dir()))  # fmt: skip
    if side == "old":
        if old_tree is None or not (old_tree / "core" / "__init__.py").is_file():
            raise SystemExit(f"--old-tree {old_tree}: not an rrpo checkout (git worktree add /tmp/rrpo-old d82dc3e)")
        link_dir = scratch / "old-path"
        link_dir.mkdir(exist_ok=True)
        (link_dir / "rrpo").symlink_to(old_tree.resolve() / "core")  # the package dir is core/, imported as rrpo
        env["PYTHONPATH"] = os.pathsep.join([str(link_dir), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class Side:
    """One side's worker process, driven step by step over its stdin/stdout."""

    def __init__(self, name: str, args: argparse.Namespace, scratch: Path):
        self.name = name
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *_workload_flags(args)]
        if name == "bf16":
            cmd.append("--bf16")
        print(f"[{name}] starting: {' '.join(cmd)}", flush=True)
        # From a folder without an rrpo in it, so the old side cannot import this checkout.
        self.proc = subprocess.Popen(cmd, env=_env_for(name, args.old_tree, scratch), cwd=scratch,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.steps: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
            print(f"[{self.name}] {line}", end="", flush=True)
        raise SystemExit(f"[{self.name}] worker exited with status {self.proc.wait()}")

    def step(self) -> None:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        row = self.read()
        row["load"] = _load_average()
        self.steps.append(row)
        print(f"[{self.name}] step {len(self.steps)}: {json.dumps(row)}", flush=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def run_sides(names: list[str], args: argparse.Namespace, scratch: Path) -> dict[str, dict[str, Any]]:
    """Start every side, wait for their warm-ups, then interleave the timed steps
    (A B, B A, ...) so a change in the machine's background load hits both alike."""
    sides = [Side(name, args, scratch) for name in names]
    try:
        for side in sides:
            side.info = side.read()  # set up and warmed up (they warm up concurrently)
        for i in range(args.steps):
            for side in sides if i % 2 == 0 else sides[::-1]:
                side.step()
    finally:
        for side in sides:
            side.close()
    return {side.name: summarise(side.steps, side.info) for side in sides}


def _workload_flags(args: argparse.Namespace) -> list[str]:
    return ["--steps", str(args.steps), "--queries", str(args.queries), "--group-size", str(args.group_size),
            "--max-k", str(args.max_k), "--seed", str(args.seed), "--model", args.model, "--reader", args.reader]  # fmt: skip


SIDE_LABELS = {"new": "this checkout (defaults)", "bf16": "this checkout, reader and policy in bf16"}


def table(results: dict[str, dict[str, Any]], old_label: str) -> str:
    header = ["rrpo", "queries/s", "s/step", "speed-up", "reader calls/query", "reader tokens/query",
              "cache hit rate", "reader s/query", "policy s/query", "mean reward"]  # fmt: skip
    base = results.get("old", {}).get("queries_per_s")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for side, r in results.items():
        name = SIDE_LABELS.get(side) or f"{old_label} (today's path)"
        cells = [
            name, f"{r['queries_per_s']:.3f}", f"{r['seconds'] / r['steps']:.1f}",
            f"{r['queries_per_s'] / base:.2f}x" if base else "-", f"{r['reader_calls_per_query']:.1f}",
            f"{r['tokens_per_query']:,.0f}", f"{r['cache_hit_rate']:.2f}", f"{r['reader_s_per_query']:.1f}",
            f"{r['policy_s_per_query']:.1f}", f"{r['reward_mean']:.3f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-tree", type=Path, default=None, help="checkout of the older rrpo (a git worktree)")
    p.add_argument("--old-label", default="d82dc3e", help="how the older side is named in the table")
    p.add_argument("--sides", default="new,old", help="comma list of new, bf16, old (default: new,old)")
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step (default: 2)")
    p.add_argument("--queries", type=int, default=8, help="training queries per step (default: 8)")
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="minilm-l6", help="the policy's starting reranker")
    p.add_argument("--reader", default="smollm2-135m", help="LocalReader model (default: the packaged SmolLM2-135M)")
    p.add_argument("--results", type=Path, default=None, help="append the table to this Markdown file")
    p.add_argument("--notes", default="", help="extra notes for the results section")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: run one side
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)  # internal: the bf16 side's worker
    args = p.parse_args(argv)
    unknown = {s.strip() for s in args.sides.split(",") if s.strip()} - {"new", "bf16", "old"}
    if unknown:
        p.error(f"--sides: unknown side(s) {', '.join(sorted(unknown))}; choose from new, bf16, old")
    for name in ("steps", "queries", "group_size", "max_k"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="rrpo-train-speed-") as tmp:
        results = run_sides(sides, args, Path(tmp))
    text = table(results, args.old_label)
    notes = _notes(args, results, load_before)
    print(f"\n{text}\n\n{notes}")
    if args.results:
        append_results(args.results, "RRPO training throughput with the real reader (CPU)", command_line(), text, notes)
        print(f"\nappended to {args.results}")
    return 0


def _notes(args: argparse.Namespace, results: dict[str, Any], load_before: str) -> str:
    lines = [
        f"- workload: the first {args.queries * (args.steps + 1)} questions of `{TRAIN_DATA}` (10 passages each), "
        f"{args.queries} queries/step, G={args.group_size}, max_k={args.max_k}, reward `gold_loglik`, per-prefix; "
        f"policy `{args.model}` as a cross-encoder with a fresh head; reader `LocalReader({args.reader!r})` on the CPU "
        f"at each side's defaults; one warm-up step, then {args.steps} timed steps; every other setting at each "
        "side's `RRPOConfig` defaults.",
        "- reader calls/query: likelihood rows the reader computed (past the response cache); reader tokens/query: "
        "tokens through the reader model's forward (padding included, cached key/value prefixes not); "
        "reader s/query: time inside `loglik`; policy s/query: the rest of the step.",
        "- sides: " + "; ".join(f"{side}: rrpo {r['rrpo']} from `{r['rrpo_path']}`" for side, r in results.items()) + ".",
        "- load average (1/5/15 min) after each timed step: " + "; ".join(
            f"{side} " + ", ".join(step["load"] for step in r["per_step"]) for side, r in results.items()) + ".",
        f"- load average before: {load_before}; after: {_load_average()}.",
    ]
    if args.notes:
        lines.append(f"- {args.notes}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
