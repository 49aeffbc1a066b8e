#!/usr/bin/env python
"""Ranking probe (issue 17, item 4): does RRPO from a relevance-SFT reranker beat it on
HotpotQA *train* questions it never trained on? A check to run before the quality
benchmark, on training data only, so no dev question shapes the method.

RRPO (``--set FIELD=VALUE`` overrides of RRPOConfig) from the SFT model for ``--steps``
steps of 16 questions drawn from train[0:768]; then, on ``--held-out`` train questions
from train[768:] (neither model trained on them), the reward the trainer optimises
(gold-answer log-lik minus the context cost) of the greedy selections, log-lik, k, words
and gold recall@3, for SFT top-3, SFT dynamic k, RRPO top-3 and RRPO dynamic k, with
paired differences against SFT top-3 (mean +- standard error).

    python benchmarks/ranking_probe.py SFT_DIR --set ranking=greedy --out runs/probe-greedy
    python benchmarks/ranking_probe.py SFT_DIR --out runs/probe-greedy --table-only --results benchmarks/RESULTS.md

``--table-only`` appends the table an earlier run saved in OUT/probe.json (with that
run's own command) instead of training again. The SFT model: ``SFTTrainer`` defaults
with ``epochs=1, max_k=5`` on train[0:768], as ``benchmarks/quality.py --size cpu`` trains it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    from learning import config_overrides
    from rrpo import Reranker
    from rrpo.data import load_examples, shared_data_dir
    from rrpo.evaluate import gold_recall
    from rrpo.prompts import build_prompt, context_words
    from rrpo.readers import CachedReader, get_reader
    from rrpo.rewards import gold_loglik
    from rrpo.train import RRPOConfig, RRPOTrainer
    from rrpo.train.rrpo import paired_gain

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sft", help="relevance-SFT model directory (trained on train[0:768])")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--held-out", type=int, default=150)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--out", default="runs/ranking-probe")
    p.add_argument("--results", default=None, help="append the table to this RESULTS.md")
    p.add_argument("--notes", default="", help="a line for the results section")
    p.add_argument("--table-only", action="store_true", help="append OUT/probe.json's table; train nothing")
    args = p.parse_args(argv)
    if args.table_only:
        saved = json.loads(Path(args.out, "probe.json").read_text())
        return _append(args, saved.get("command", "(not recorded)"), saved["table"])
    from _results import command_line

    train = load_examples(shared_data_dir() / "hotpotqa-distractor.train.jsonl.gz", limit=768 + args.held_out)
    held = train[768:]
    reader = CachedReader(get_reader("smollm2-135m"))
    cfg = RRPOConfig(max_steps=args.steps, queries_per_step=16, out_dir=args.out, overwrite=True, progress=False,
                     checkpoint_every=0, seed=0, validation_queries=0, **config_overrides(args.set))  # fmt: skip
    started = time.time()
    trainer = RRPOTrainer(Reranker.from_pretrained(args.sft, device="cpu"), reader, train[:768], cfg)
    for _ in range(args.steps):
        row = trainer.train_step()
        print({k: round(row[k], 3) if isinstance(row[k], float) else row[k]
               for k in ("step", "reward_mean", "greedy_k", "kl", "reader_calls", "queries_per_s")}, flush=True)
    trainer.policy.release_frozen_layers()
    train_s = time.time() - started

    def rows(model, name):
        sels = model.rerank_batch([e.query for e in held], [e.candidates for e in held], top_n=cfg.max_k)
        out = {}
        for label, ks in ((f"{name}:top3", [3] * len(held)), (f"{name}:dynamic", [s.k for s in sels])):
            ctx = [[e.candidates[i] for i in s.order[:k]] for e, s, k in zip(held, sels, ks)]
            ll = gold_loglik(queries=[e.query for e in held], contexts=ctx, answers=[list(e.answers) for e in held],
                             reader=reader, prompts=[build_prompt(e.query, c, cfg.max_words) for e, c in zip(held, ctx)])
            words = [context_words(c, max_words=cfg.max_words) for c in ctx]
            out[label] = {"loglik": ll, "reward": [v - cfg.context_cost * w for v, w in zip(ll, words)], "words": words,
                          "k": ks, "recall3": [gold_recall(s.order[:3], e.gold) for s, e in zip(sels, held)]}
        return out

    results = {**rows(Reranker.from_pretrained(args.sft, device="cpu"), "sft"), **rows(trainer.policy, "rrpo")}
    base = results["sft:top3"]
    mean = lambda xs: sum(xs) / len(xs)
    lines = [f"{len(held)} held-out train questions (train[768:{768 + len(held)}]); RRPO {args.steps} steps x 16, "
             f"overrides {args.set or 'none'}; training {train_s:.0f} s",
             "| row | reward | Δ reward vs sft:top3 (± s.e.) | log-lik | Δ log-lik (± s.e.) | mean k | words | recall@3 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        dr, se_r, _ = paired_gain(r["reward"], base["reward"])
        dl, se_l, _ = paired_gain(r["loglik"], base["loglik"])
        lines.append(f"| {name} | {mean(r['reward']):.3f} | {dr:+.3f} ± {se_r:.3f} | {mean(r['loglik']):.3f} | "
                     f"{dl:+.3f} ± {se_l:.3f} | {mean(r['k']):.2f} | {mean(r['words']):.0f} | {mean([x for x in r['recall3'] if x is not None]):.3f} |")
    print("\n".join(lines))
    Path(args.out, "probe.json").write_text(json.dumps({"args": vars(args), "command": command_line(argv),
                                                        "table": lines, "results": results}))  # fmt: skip
    return _append(args, command_line(argv), lines)


def _append(args, command: str, lines: list[str]) -> int:
    if args.results:
        from _results import append_results

        append_results(args.results, "Ranking probe: RRPO from relevance SFT on held-out HotpotQA train questions",
                       command, "\n".join(lines[1:]), "\n".join(["- " + lines[0], *(["- " + args.notes] if args.notes else [])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
