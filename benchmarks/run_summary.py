"""Summarise an RRPO training folder (``RRPOConfig.out_dir``): the per-step training
metrics and the held-out validation curve, as markdown tables.

For a run that was stopped before its benchmark wrote its own tables (or any
``rrpo train`` run), from the files the trainer wrote as it went::

    python benchmarks/run_summary.py bench-out/quality-cpu5/hotpotqa-fullwiki/rrpo
    python benchmarks/run_summary.py OUT --results benchmarks/RESULTS.md --title "..." --notes "..."
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STEP_COLUMNS = [  # (metrics.jsonl key, header, format)
    ("step", "step", "{}"), ("reward_mean", "sampled reward", "{:.2f}"), ("mean_k", "sampled k", "{:.2f}"),
    ("greedy_k", "greedy k", "{:.2f}"), ("kl", "KL to reference", "{:.3f}"), ("clip_frac", "clip fraction", "{:.2f}"),
    ("stop_loss", "STOP loss", "{:.3f}"), ("reader_calls", "reader calls", "{}"), ("queries_per_s", "queries/s", "{:.3f}"),
]  # fmt: skip


def step_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in STEP_COLUMNS) + " |", "|" + "---|" * len(STEP_COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "" for key, _, fmt in STEP_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validation_table(record: dict) -> str:
    lines = ["| step | held-out greedy reward | mean k | paired gain over the kept policy (± s.e.) |", "|---|---|---|---|"]
    for v in record["validations"]:
        gain = v.get("gain_vs_kept")
        said = f"{gain['mean']:+.3f} ± {gain['se']:.3f} (vs step {gain['kept_step']}, {gain['n']} questions)" if gain else ""
        lines.append(f"| {v['step']} | {v['reward']:.3f} | {v['mean_k']:.2f} | {said} |")
    lines.append(f"\nKept (saved) model: step {record['best_step']}'s; {len(record['queries'])} held-out training questions.")
    return "\n".join(lines)


def summary(out_dir: Path) -> str:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    parts = [f"Training steps ({len(rows)}), from `{out_dir / 'metrics.jsonl'}`:\n\n" + step_table(rows)]
    validation = out_dir / "validation.json"
    if validation.exists():
        parts.append(f"Validation, from `{validation}`:\n\n" + validation_table(json.loads(validation.read_text())))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="an RRPO out_dir (metrics.jsonl, validation.json)")
    p.add_argument("--results", default=None, help="append the tables to this RESULTS.md")
    p.add_argument("--title", default="RRPO run summary")
    p.add_argument("--notes", default="")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    if not (out_dir / "metrics.jsonl").exists():
        raise SystemExit(f"{out_dir}: no metrics.jsonl here (is it an RRPO out_dir?)")
    text = summary(out_dir)
    print(text)
    if args.results:
        from _results import append_results, command_line

        append_results(args.results, args.title, command_line(argv), text, args.notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
