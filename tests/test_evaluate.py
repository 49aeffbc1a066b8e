"""rrpo.evaluate and `rrpo eval`: metrics, bootstrap, report outputs, end to end."""

from __future__ import annotations

import json
import math
import random

import pytest

from rrpo import Candidate, Example, Selection
from rrpo.commands.eval import parse_reranker_spec
from rrpo.evaluate import (
    RerankerSpec,
    evaluate,
    gold_recall,
    ndcg_at_k,
    paired_bootstrap,
    percentile,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- metric functions on hand-made cases ----


def test_gold_recall():
    gold = [False, True, False, True]
    assert gold_recall([1, 3], gold) == 1.0
    assert gold_recall([1, 0], gold) == 0.5
    assert gold_recall([0, 2], gold) == 0.0
    assert gold_recall([0], None) is None
    assert gold_recall([0], [False, False]) is None  # nothing to recall


def test_ndcg_at_k():
    gold = [False, True, False, True]
    assert ndcg_at_k([1, 3, 0, 2], gold) == pytest.approx(1.0)
    # gold at ranks 2 and 4: (1/log2 3 + 1/log2 5) / (1 + 1/log2 3)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k([0, 1, 2, 3], gold) == pytest.approx(expected)
    assert ndcg_at_k([0, 2, 1, 3], gold, k=2) == 0.0
    assert ndcg_at_k([0, 1], None) is None


def test_percentile():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert percentile([], 50) is None


# ---- paired bootstrap on a known difference ----


def test_paired_bootstrap_recovers_a_known_difference():
    rng = random.Random(1)
    b = [rng.random() for _ in range(400)]
    a = [x + 0.1 + rng.gauss(0, 0.05) for x in b]
    diff, lo, hi = paired_bootstrap(a, b, n=1000, seed=0)
    assert diff == pytest.approx(0.1, abs=0.01)
    assert lo < diff < hi and lo > 0.08 and hi < 0.12
    # deterministic for a seed; the interval covers zero when there is no difference
    assert paired_bootstrap(a, b, n=1000, seed=0) == (diff, lo, hi)
    noise = [rng.gauss(0, 1) for _ in range(400)]
    _, lo0, hi0 = paired_bootstrap(noise, [0.0] * 400, n=500)
    assert lo0 < 0 < hi0


def test_paired_bootstrap_skips_missing_pairs_and_checks_lengths():
    assert paired_bootstrap([1.0, None, 3.0], [0.0, 5.0, None]) == (1.0, 1.0, 1.0)
    assert all(math.isnan(x) for x in paired_bootstrap([None], [1.0]))
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap([1.0], [1.0, 2.0])


# ---- spec parsing and validation ----


def test_parse_reranker_spec():
    p = parse_reranker_spec("minilm-l6:top3")
    assert (p.label, p.model, p.top_n, p.dynamic_k) == ("minilm-l6:top3", "minilm-l6", 3, False)
    p = parse_reranker_spec("out/rrpo:dynamic", max_k=5)
    assert (p.model, p.top_n, p.dynamic_k) == ("out/rrpo", 5, True)
    p = parse_reranker_spec("RRPO=out/rrpo:dynamic4")
    assert (p.label, p.model, p.top_n, p.dynamic_k) == ("RRPO", "out/rrpo", 4, True)
    p = parse_reranker_spec("C:/models/ce", top_n=2)  # a ':' that is not a mode stays in the path
    assert (p.model, p.top_n, p.dynamic_k) == ("C:/models/ce", 2, False)
    assert parse_reranker_spec("none").model == "none"
    with pytest.raises(ValueError, match="reserved"):
        parse_reranker_spec("oracle")
    with pytest.raises(ValueError, match="cannot choose k"):
        parse_reranker_spec("none:dynamic")
    with pytest.raises(ValueError, match="k must be"):
        parse_reranker_spec("x:top0")


def test_reranker_spec_validation():
    with pytest.raises(ValueError, match="top_n"):
        RerankerSpec("a", top_n=0)
    with pytest.raises(ValueError, match="min_k"):
        RerankerSpec("a", top_n=2, min_k=3)
    with pytest.raises(ValueError, match="dynamic k needs a reranker"):
        RerankerSpec("a", dynamic_k=True)
    assert RerankerSpec.oracle().is_oracle and not RerankerSpec.none().is_oracle


# ---- evaluate() with a fake reader and a fake reranker ----


class KeywordReader:
    """Follows the Reader protocol: answers right exactly when the gold passage
    (marked by its answer word) is in the prompt, and is more confident then."""

    identity = "keyword-reader"

    def __init__(self):
        self.generate_calls = 0

    def generate(self, prompts):
        self.generate_calls += len(prompts)
        return ["paris" if "Paris" in p else "london" for p in prompts]

    def loglik(self, prompts, targets):
        return [-1.0 if t in p else -5.0 for p, t in zip(prompts, targets)]


class KeywordReranker:
    """Scores a passage 1 when it mentions 'capital', keeps k=1 when dynamic."""

    name_or_path = "keyword-reranker"

    def rerank(self, query, candidates, top_n=None, min_k=1, dynamic_k=True):
        scores = [1.0 if "capital" in c.text else 0.0 for c in candidates]
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])
        k = max(min_k, 1) if dynamic_k else min(top_n, len(candidates))
        return Selection(order=order, k=k, scores=scores)


def _examples(n=6):
    out = []
    for i in range(n):
        cands = [Candidate(f"{i}-d{j}", f"filler text number {j} about nothing") for j in range(4)]
        gold_at = 3 if i % 2 else 2  # never first, so retrieval order misses it at k=1
        cands[gold_at] = Candidate(f"{i}-g", "Paris is the capital of France.", "France")
        out.append(
            Example(
                id=f"q{i}",
                query="What is the capital of France?",
                candidates=cands,
                answers=["Paris"],
                gold=[j == gold_at for j in range(4)],
            )
        )
    return out


def test_evaluate_compares_rows_and_writes_outputs(tmp_path):
    examples = _examples()
    ranker = KeywordReranker()
    specs = [
        RerankerSpec.none(top_n=2),
        RerankerSpec("kw:top2", ranker, top_n=2),
        RerankerSpec("kw:dynamic", ranker, top_n=3, dynamic_k=True),
        RerankerSpec.oracle(),
    ]
    reader = KeywordReader()
    report = evaluate(examples, specs, reader, baseline="none", n_bootstrap=200, progress=False)

    none, top2, dyn, oracle = (report.row(s.name) for s in specs)
    assert none["f1"] == 0.0 and none["em"] == 0.0 and none["recall"] == 0.0
    assert top2["f1"] == 1.0 and top2["contains"] == 1.0 and top2["recall"] == 1.0
    assert top2["loglik"] == -1.0 and none["loglik"] == -5.0
    assert dyn["k"] == 1.0 and dyn.k_distribution == {1: 6}
    assert top2.k_distribution == {2: 6} and none["k"] == 2.0
    assert oracle["ndcg10"] == 1.0 and top2["ndcg10"] == 1.0
    # ranks 3 and 4 in retrieval order: mean of 1/log2(4) and 1/log2(5)
    assert none["ndcg10"] == pytest.approx((0.5 + 1 / math.log2(5)) / 2)
    # words = title + text words actually shown
    assert dyn["words"] == 1 + 6 and oracle["words"] == 1 + 6
    assert top2.latency_p50_ms is not None and none.latency_p50_ms is None
    # the dynamic row keeps exactly the oracle's passage in the same order, so the
    # oracle's prompts are all cache hits: no extra reader calls
    assert oracle.reader_calls == 0 and oracle.cache_hits > 0 and dyn.reader_calls > 0
    # differences to the baseline with intervals
    d, lo, hi = top2.diffs["f1"]
    assert d == 1.0 and lo == 1.0 and hi == 1.0
    assert none.diffs == {}

    md = report.to_markdown()
    for name in ("none", "kw:top2", "kw:dynamic", "oracle"):
        assert f"| {name} |" in md
    assert "+100.0 [+100.0, +100.0]" in md  # ΔF1 of kw:top2 against none

    data = json.loads(report.to_json(tmp_path / "r" / "eval.json").read_text())
    assert data["n_questions"] == 6 and data["baseline"] == "none"
    assert [r["name"] for r in data["rows"]] == ["none", "kw:top2", "kw:dynamic", "oracle"]
    assert data["rows"][1]["per_question"]["f1"] == [1.0] * 6
    assert data["rows"][1]["predictions"] == ["paris"] * 6
    png = report.plot(tmp_path / "r" / "eval.png")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000


def test_evaluate_rejects_bad_specs():
    examples = _examples(2)
    with pytest.raises(ValueError, match="unique"):
        evaluate(examples, [RerankerSpec.none(), RerankerSpec.none()], KeywordReader(), progress=False)
    with pytest.raises(ValueError, match="baseline 'x'"):
        evaluate(examples, [RerankerSpec.none()], KeywordReader(), baseline="x", progress=False)
    no_gold = [Example("a", "q", [Candidate("c", "t")], ["x"])]
    with pytest.raises(ValueError, match="oracle row needs gold flags"):
        evaluate(no_gold, [RerankerSpec.oracle()], KeywordReader(), progress=False)


def test_questions_without_answers_or_gold_give_no_scores():
    examples = [Example("a", "q?", [Candidate("c0", "Paris"), Candidate("c1", "x")], answers=[])]
    report = evaluate(examples, [RerankerSpec.none(top_n=1)], KeywordReader(), progress=False)
    row = report.row("none")
    assert row["f1"] is None and row["loglik"] is None and row["recall"] is None
    assert row["k"] == 1.0 and row.predictions == ["paris"]


# ---- real parts: the tiny models through the real loading code ----


@pytest.fixture(scope="module")
def hotpot_file():
    from rrpo.data import shared_data_dir

    return shared_data_dir() / "hotpotqa-distractor.dev.jsonl.gz"


def test_rrpo_eval_end_to_end_with_tiny_models(
    tmp_path, capsys, hotpot_file, tiny_cross_encoder_dir, tiny_causal_lm_dir
):
    import shutil

    from rrpo.cli import main

    # a trainer's out_dir keeps its model in out_dir/model; `rrpo eval` accepts either
    trainer_out = tmp_path / "trainer-out"
    shutil.copytree(tiny_cross_encoder_dir, trainer_out / "model")
    out = tmp_path / "eval"
    code = main([
        "eval", "--data", str(hotpot_file), "--limit", "10",
        "--reader", str(tiny_causal_lm_dir),
        "--reranker", "none",
        "--reranker", f"ce={tiny_cross_encoder_dir}:top3",
        "--reranker", f"ce-dyn={trainer_out}:dynamic4",
        "--device", "cpu", "--out", str(out), "--bootstrap", "100", "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| ce |" in printed and "| oracle |" in printed and "Difference to `none`" in printed
    data = json.loads((out / "eval.json").read_text())
    assert data["n_questions"] == 10
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"none", "ce", "ce-dyn", "oracle"}
    assert rows["ce"]["k_distribution"] == {"3": 10}
    assert 1 <= rows["ce-dyn"]["means"]["k"] <= 4
    assert rows["oracle"]["means"]["recall"] == 1.0 and rows["oracle"]["means"]["k"] == 2.0
    for row in rows.values():
        assert len(row["per_question"]["f1"]) == 10
        assert all(isinstance(v, float) and v < 0 for v in row["per_question"]["loglik"])
    assert rows["ce"]["latency_p95_ms"] > 0
    assert (out / "eval.md").read_text().startswith("10 questions")
    assert (out / "eval.png").read_bytes()[:8] == PNG_MAGIC


def test_rrpo_eval_reports_bad_input(tmp_path, capsys):
    from rrpo.cli import main

    code = main(["eval", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])
    assert code == 2
    assert "missing.jsonl" in capsys.readouterr().err
    code = main(["eval", "--data", str(tmp_path / "x.jsonl"), "--reranker", "oracle"])
    assert code == 2
    assert "reserved" in capsys.readouterr().err


def test_rows_asked_together_equal_rows_asked_one_by_one(tiny_reranker):
    """share_prompts (all rows' prompts per chunk in one reader call, one scoring per
    reranker and query) gives the numbers and the per-row reader calls of the row-by-row
    evaluation."""
    examples = _examples(5)
    ranker = KeywordReranker()
    specs = [RerankerSpec.none(top_n=2)]
    specs += [RerankerSpec(f"tiny:top{k}", tiny_reranker, top_n=k) for k in (1, 2, 3)]
    specs += [RerankerSpec("tiny:dynamic", tiny_reranker, top_n=3, dynamic_k=True),
              RerankerSpec("kw:top2", ranker, top_n=2), RerankerSpec.oracle()]
    kw = dict(baseline="tiny:top2", n_bootstrap=50, progress=False, batch_size=2)
    together = evaluate(examples, specs, KeywordReader(), share_prompts=True, **kw)
    apart = evaluate(examples, specs, KeywordReader(), share_prompts=False, **kw)
    for a, b in zip(together.rows, apart.rows):
        assert a.name == b.name
        assert {m: v for m, v in a.per_question.items() if m != "latency_ms"} == \
               {m: v for m, v in b.per_question.items() if m != "latency_ms"}
        assert a.predictions == b.predictions and a.k_distribution == b.k_distribution
        assert a.reader_calls == b.reader_calls, a.name
        assert a.diffs == b.diffs
    # one scoring per query serves every k of the tiny reranker: one latency for all
    assert together.row("tiny:top1").per_question["latency_ms"] == together.row("tiny:dynamic").per_question["latency_ms"]
