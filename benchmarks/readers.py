"""Reader throughput and reward quality on real HotpotQA dev prompts.

Measures, for LocalReader (default: the packaged SmolLM2-135M-Instruct GGUF) on CPU and,
when available, CUDA:

- likelihoods/s: ``reader.loglik`` of the gold answer after the 2 gold passages;
- answers/s: ``reader.generate`` (greedy, ``--max-new-tokens``);
- the share of dev questions where gold_loglik(2 gold passages) > gold_loglik(2
  distractors), on ``--n`` questions with the fastest device (DESIGN: 89.7% on 863);
- prefix sharing, side by side: the per-prefix reward workload of one RRPO step (for
  each of ``--prefix-questions`` questions, ``--samples`` Plackett-Luce rankings of up to
  ``--max-k`` of the 10 passages plus the greedy order, every prefix 0..k, the gold
  answer as target; distinct rows only, as the cached reader sends them) scored with
  ``prefix_sharing=True`` and ``False``: likelihoods/s, tokens run, speed-up, max |diff|.

Prints a Markdown table; ``--out FILE`` also writes it there, and ``--results
benchmarks/RESULTS.md`` appends it with the command, machine and date. Example::

    python benchmarks/readers.py                 # CPU (+ CUDA if present); n=100 with CUDA, else 30
    python benchmarks/readers.py --devices cpu --n 30 --prompts 16
    python benchmarks/readers.py --devices cpu --n 0 --prompts 16 --prefix-questions 6
    python benchmarks/readers.py --devices cpu --n 0 --prompts 16 --prefix-questions 0 --cpu-bf16 6

``--cpu-bf16 N``: the same per-prefix workload on N questions with the CPU reader in fp32
(the default) and in bf16, side by side: likelihoods/s, and how far bf16 moves the
reward (max and mean |diff|; the share of same-question row pairs whose order it keeps,
over pairs that differ by more than 0.05 nats in fp32).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

from rrpo import Example
from rrpo.data import gold_pair_examples, load_examples, split_gold
from rrpo.evaluate import gold_pair_preference
from rrpo.prompts import build_prompt
from rrpo.readers import LocalReader

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hotpotqa-distractor.dev.jsonl.gz"


def gold_prompt(example: Example, max_words: int) -> str:
    return build_prompt(example.query, split_gold(example)[0], max_words)


def load_average() -> str:
    """The 1-minute load average: timings on a machine shared with other jobs say so."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


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


def plackett_luce_rankings(n: int, samples: int, max_k: int, rng: random.Random) -> list[list[int]]:
    """The greedy order and ``samples`` sampled rankings of a policy over ``n`` passages.

    Scores are drawn once per question and sharp enough (std 2) that samples often start
    alike, as a policy's do after some training; a sample's length k is uniform in
    1..max_k, as if STOP were drawn. Gumbel-perturbed argsort is exact Plackett-Luce."""
    scores = [rng.gauss(0.0, 2.0) for _ in range(n)]
    greedy = sorted(range(n), key=lambda i: -scores[i])[:max_k]
    rankings = [greedy]
    for _ in range(samples):
        noisy = [s - math.log(-math.log(rng.random() or 1e-12)) for s in scores]
        rankings.append(sorted(range(n), key=lambda i: -noisy[i])[: rng.randint(1, max_k)])
    return rankings


def prefix_workload(examples: list[Example], samples: int, max_k: int, max_words: int,
                    seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Per question, the distinct (prompt, gold answer) rows of every prefix 0..k of every
    ranking: what one RRPO step asks the (cached) reader for that question."""
    rng = random.Random(seed)
    groups = []
    for example in examples:
        pairs: dict[tuple[str, str], None] = {}
        for ranking in plackett_luce_rankings(len(example.candidates), samples, max_k, rng):
            for t in range(len(ranking) + 1):
                passages = [example.candidates[i] for i in ranking[:t]]
                pairs[(build_prompt(example.query, passages, max_words), example.answers[0])] = None
        groups.append(([p for p, _ in pairs], [a for _, a in pairs]))
    return groups


def prefix_sharing_side_by_side(readers: dict[str, LocalReader], groups: list[tuple[list[str], list[str]]]) -> dict:
    """Time each reader on the same rows, one question's rows per call, alternating which
    reader goes first: on a machine shared with other jobs, both see the same load."""
    for reader in readers.values():
        reader.loglik(*groups[0])  # warm-up: first-call allocations
        reader.reset_stats()
    out = {name: {"values": [], "seconds": 0.0} for name in readers}
    for g, (prompts, targets) in enumerate(groups):
        for name in list(readers)[:: 1 if g % 2 == 0 else -1]:
            start = time.perf_counter()
            out[name]["values"] += readers[name].loglik(prompts, targets)
            out[name]["seconds"] += time.perf_counter() - start
    for name, reader in readers.items():
        out[name].update(reader.stats)
    return out


def prefix_sharing_lines(device: str, dtype: str, threads: int, m: dict) -> list[str]:
    shared, padded = m["prefix sharing"], m["padded batches"]
    diff = max(abs(a - b) for a, b in zip(shared["values"], padded["values"]))
    lines = []
    for name, r in m.items():
        lines.append(
            f"| {device} | {dtype} | {threads} | {name} | {r['rows']} | {r['rows'] / r['seconds']:.2f} | "
            f"{r['tokens_evaluated']:,} | {r['tokens_evaluated'] / r['tokens_requested']:.2f} | "
            f"{padded['seconds'] / r['seconds']:.2f}x | {diff:.1e} |"
        )
    return lines


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
    parser.add_argument("--prefix-questions", type=int, default=6,
                        help="questions for the prefix-sharing side by side (0: skip it)")
    parser.add_argument("--samples", type=int, default=4, help="sampled rankings per question (G)")
    parser.add_argument("--max-k", type=int, default=5, help="longest sampled ranking")
    parser.add_argument("--cpu-bf16", type=int, default=0, metavar="N",
                        help="compare the CPU reader in bf16 against fp32 on N questions' per-prefix rows")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--prefix-threads", default=None,
                        help="comma list of CPU thread counts for the prefix-sharing side by side (default: --threads)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--results", type=Path, default=None, help="append the table to this RESULTS.md")
    parser.add_argument("--notes", default="", help="notes to record with --results (e.g. machine load)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.n is None:
        args.n = 100 if "cuda" in devices else 30
    load_at_start = load_average()
    rows = gold_pair_examples(args.data, max(args.n, args.prompts))
    lines = [
        f"Reader `{args.model}` on HotpotQA dev prompts (2 gold passages, <= {args.max_words} words each), "
        f"likelihoods with prefix sharing (the default), answers in batches of {args.batch_size}, "
        f"{args.max_new_tokens} new tokens; {platform.processor() or platform.machine()}, "
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
    if args.prefix_questions > 0:
        lines += prefix_sharing_section(args, devices)
    if args.cpu_bf16 > 0:
        lines += cpu_bf16_section(args)
    if args.n > 0 and reader is not None:  # the last device is the fastest one
        start = time.perf_counter()
        share, gold, distractor = gold_pair_preference(reader, rows[: args.n], args.max_words)
        lines += [
            "",
            f"gold_loglik(2 gold passages) > gold_loglik(2 distractors) for **{share:.1%}** of "
            f"{min(args.n, len(rows))} dev questions (mean log-lik {gold:.2f} vs {distractor:.2f}; "
            f"{reader.device}, {time.perf_counter() - start:.0f} s).",
        ]
    lines += ["", f"Load average (1 min) at start / end: {load_at_start} / {load_average()}."]
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    if args.results:
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results.py beside this file
        from _results import append_results, command_line

        append_results(args.results, f"Readers: {args.model}", command_line(argv), table, args.notes)
    return table


def prefix_sharing_section(args: argparse.Namespace, devices: list[str]) -> list[str]:
    import torch

    examples = [e for e in load_examples(args.data, limit=4 * args.prefix_questions) if e.answers]
    groups = prefix_workload(examples[: args.prefix_questions], args.samples, args.max_k, args.max_words)
    threads = [int(t) for t in args.prefix_threads.split(",")] if args.prefix_threads else [torch.get_num_threads()]
    lines = [
        "",
        f"Prefix sharing on the per-prefix reward workload: {len(groups)} dev questions x "
        f"(greedy + {args.samples} Plackett-Luce rankings of <= {args.max_k} of "
        f"{len(examples[0].candidates)} passages) x prefixes 0..k = {sum(len(p) for p, _ in groups)} "
        f"distinct likelihoods of the gold answer, one call per question, the same rows for both "
        f"paths. Token ratio: tokens run / tokens in the rows (padding counts as run); max diff: "
        f"max |prefix sharing - padded batches| over the rows.",
        "",
        "| device | dtype | CPU threads | loglik path | likelihoods | likelihoods/s | tokens run | token ratio | speed-up | max diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    default_threads = torch.get_num_threads()
    for device in devices:
        readers = {
            name: LocalReader(args.model, device=device, batch_size=args.batch_size,
                              max_new_tokens=args.max_new_tokens, progress=False, prefix_sharing=sharing)
            for name, sharing in (("padded batches", False), ("prefix sharing", True))
        }
        dtype = str(readers["padded batches"].dtype).removeprefix("torch.")
        for n in threads if device == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(n)
            rows = prefix_sharing_lines(device, dtype, n, prefix_sharing_side_by_side(readers, groups))
            print("\n".join(rows), flush=True)
            lines += rows
    torch.set_num_threads(default_threads)
    return lines


def cpu_bf16_section(args: argparse.Namespace) -> list[str]:
    examples = [e for e in load_examples(args.data, limit=4 * args.cpu_bf16) if e.answers]
    groups = prefix_workload(examples[: args.cpu_bf16], args.samples, args.max_k, args.max_words)
    readers = {
        dtype: LocalReader(args.model, device="cpu", batch_size=args.batch_size, dtype=dtype,
                           max_new_tokens=args.max_new_tokens, progress=False)
        for dtype in ("float32", "bfloat16")
    }
    m = prefix_sharing_side_by_side(readers, groups)
    fp32, bf16 = m["float32"]["values"], m["bfloat16"]["values"]
    diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
    kept = total = 0
    start = 0
    for prompts, _ in groups:  # row pairs of the same question: what a group baseline compares
        a, b = fp32[start : start + len(prompts)], bf16[start : start + len(prompts)]
        start += len(prompts)
        for i in range(len(a)):
            for j in range(i + 1, len(a)):
                if abs(a[i] - a[j]) > 0.05:
                    total += 1
                    kept += (a[i] - a[j]) * (b[i] - b[j]) > 0
    rate = {name: r["rows"] / r["seconds"] for name, r in m.items()}
    return [
        "",
        f"The CPU reader in bf16 against fp32 (both with prefix sharing) on the per-prefix reward workload of "
        f"{len(groups)} dev questions ({len(fp32)} likelihoods, one call per question, alternating which goes first):",
        "",
        "| dtype | likelihoods/s | speed-up | max abs diff | mean abs diff | same-question order kept |",
        "|---|---|---|---|---|---|",
        f"| float32 | {rate['float32']:.2f} | 1.00x | - | - | - |",
        f"| bfloat16 | {rate['bfloat16']:.2f} | {rate['bfloat16'] / rate['float32']:.2f}x | {max(diffs):.3f} | "
        f"{sum(diffs) / len(diffs):.3f} | {kept / max(1, total):.1%} of {total} pairs |",
    ]


if __name__ == "__main__":
    main()
