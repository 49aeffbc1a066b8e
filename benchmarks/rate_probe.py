#!/usr/bin/env python
"""Rate probe (issue 17 diagnosis). Does the default rate move a trained SFT ranking away from gold on real data? RRPO from
the quality run's SFT model, 12 steps x 16 HotpotQA train questions (train[0:192], as the
run's first steps), at learning_rate 5e-4 (default) and 5e-5; gold recall@3 of the
greedy order on 300 *train* questions neither model trained on (train[768:1068]).

    python benchmarks/rate_probe.py bench-out/quality-cpu3/hotpotqa/sft/model   # ~15 min on 2 cores"""
import json, sys, time
from rrpo import Reranker
from rrpo.data import load_examples, shared_data_dir
from rrpo.evaluate import gold_recall
from rrpo.readers import get_reader, CachedReader
from rrpo.train import RRPOConfig, RRPOTrainer

SFT = sys.argv[1] if len(sys.argv) > 1 else "bench-out/quality-cpu3/hotpotqa/sft/model"  # a quality run's SFT model
train = load_examples(shared_data_dir() / "hotpotqa-distractor.train.jsonl.gz", limit=1068)
held = [e for e in train[768:1068] if e.gold and any(e.gold)]
reader = CachedReader(get_reader("smollm2-135m"))

def recall(model):
    sels = model.rerank_batch([e.query for e in held], [e.candidates for e in held], dynamic_k=False)
    return sum(gold_recall(s.order[:3], e.gold) for s, e in zip(sels, held)) / len(held)

out = {"sft": recall(Reranker.from_pretrained(SFT, device="cpu"))}
print(out, flush=True)
for lr in (5e-4, 5e-5):
    policy = Reranker.from_pretrained(SFT, device="cpu")
    cfg = RRPOConfig(max_steps=48, queries_per_step=16, learning_rate=lr, out_dir=f"runs/lr-probe-{lr:g}",
                     overwrite=True, progress=False, checkpoint_every=0, seed=0)
    trainer = RRPOTrainer(policy, reader, train[:768], cfg)
    rows = []
    for step in range(12):
        t = time.time(); row = trainer.train_step()
        rows.append({k: row[k] for k in ("step", "kl", "clip_frac", "greedy_k")})
        print(lr, rows[-1], f"{time.time()-t:.0f}s", flush=True)
    trainer.policy.release_frozen_layers()
    out[f"lr {lr:g}"] = recall(trainer.policy)
    print(out, flush=True)
json.dump(out, open("runs/lr-probe.json", "w"))
