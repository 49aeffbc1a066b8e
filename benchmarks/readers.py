"""Reader throughput and reward quality on real HotpotQA dev prompts.

Measures, for LocalReader (default: the packaged SmolLM2-135M-Instruct GGUF) on CPU and,
when available, CUDA:

- likelihoods/s: ``reader.loglik`` of the gold answer after the 2 gold passages;
- answers/s: ``reader.generate`` (greedy, ``--max-new-tokens``);
- the share of dev questions where gold_loglik(2 gold passages) > gold_loglik(2
  distractors), on ``--n`` questions with the fastest device (DESIGN: 89.7% on 863).

Prints a Markdown table; ``--out FILE`` also writes it there, and ``--results
benchmarks/RESULTS.md`` appends it with the command, machine and date. Example::

    python benchmarks/readers.py                 # CPU (+ CUDA if present); n=100 with CUDA, else 30
    python benchmarks/readers.py --devices cpu --n 30 --prompts 16
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from rrpo import Example
from rrpo.data import gold_pair_examples, split_gold
from rrpo.evaluate import gold_pair_preference
from rrpo.prompts import build_prompt
from rrpo.readers import LocalReader

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hotpotqa-distractor.dev.jsonl.gz"


def gold_prompt(example: Example, max_words: int) -> str:
    return build_prompt(example.query, split_gold(example)[0], max_words)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def throughput(reader: LocalReader, rows: list[Example], max_words: int) -> dict:
    prompts = [gold_prompt(r, max_words) for r in rows]
    targets = [r.answers[0] for r in rows]
    reader.loglik(prompts[: reader.batch_size], targets[: reader.batch_size])  # warm-up
    tokens = [len(ids) for ids in reader._encode([reader._chat_text(p) for p in prompts])]
    loglik_s = timed(reader.loglik, prompts, targets)
    gen_s = timed(reader.generate, prompts)
    return {
        "prompts": len(prompts),
        "mean_tokens": sum(tokens) / len(tokens),
        "likelihoods_per_s": len(prompts) / loglik_s,
        "answers_per_s": len(prompts) / gen_s,
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="reader model (default: packaged SmolLM2)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HotpotQA distractor dev JSONL.gz")
    parser.add_argument("--devices", default=None, help="comma list (default: cpu, plus cuda when available)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per throughput measurement")
    parser.add_argument("--n", type=int, default=None,
                        help="questions for the gold-vs-distractor share (default 100 with CUDA, 30 on CPU only: "
                             "a 2-core CPU scores ~0.5-1 likelihoods/s)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-words", type=int, default=120, help="words kept per passage")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--results", type=Path, default=None, help="append the table to this RESULTS.md")
    parser.add_argument("--notes", default="", help="notes to record with --results (e.g. machine load)")
    args = parser.parse_args(argv)

    import torch

    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.n is None:
        args.n = 100 if "cuda" in devices else 30
    rows = gold_pair_examples(args.data, max(args.n, args.prompts))
    lines = [
        f"Reader `{args.model}` on HotpotQA dev prompts (2 gold passages, <= {args.max_words} words each), "
        f"batch {args.batch_size}, {args.max_new_tokens} new tokens; {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads.",
        "",
        "| device | dtype | prompts | mean prompt tokens | likelihoods/s | answers/s |",
        "|---|---|---|---|---|---|",
    ]
    reader = None
    for device in devices:
        reader = LocalReader(args.model, device=device, batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens, progress=False)
        m = throughput(reader, rows[: args.prompts], args.max_words)
        dtype = str(reader.dtype).removeprefix("torch.")
        lines.append(
            f"| {device} | {dtype} | {m['prompts']} | {m['mean_tokens']:.0f} | "
            f"{m['likelihoods_per_s']:.2f} | {m['answers_per_s']:.2f} |"
        )
        print(lines[-1], flush=True)
    if args.n > 0 and reader is not None:  # the last device is the fastest one
        start = time.perf_counter()
        share, gold, distractor = gold_pair_preference(reader, rows[: args.n], args.max_words)
        lines += [
            "",
            f"gold_loglik(2 gold passages) > gold_loglik(2 distractors) for **{share:.1%}** of "
            f"{min(args.n, len(rows))} dev questions (mean log-lik {gold:.2f} vs {distractor:.2f}; "
            f"{reader.device}, {time.perf_counter() - start:.0f} s).",
        ]
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    if args.results:
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results.py beside this file
        from _results import append_results, command_line

        append_results(args.results, f"Readers: {args.model}", command_line(argv), table, args.notes)
    return table


if __name__ == "__main__":
    main()
