"""``rrpo demo --size tiny`` end to end through the real CLI, trainers, reader and
evaluation. The reranker and reader are the suite's tiny random models (passed with
--reranker / --reader) so the run stays within seconds on a 2-core CPU; everything
else (data generation, SFT, RRPO, evaluation, table, plot) is the real code path."""

from __future__ import annotations

import json

import pytest

from rrpo.cli import build_parser, main
from rrpo.commands.demo import SIZES
from rrpo.data import load_examples

ROWS = ["none", "sft-top3", "rrpo-top3", "rrpo-dynamic-k", "oracle"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_cross_encoder_dir, tiny_causal_lm_dir):
    out = tmp_path_factory.mktemp("demo")
    argv = [
        "demo", "--size", "tiny", "--out", str(out), "--device", "cpu", "--seed", "3",
        "--reranker", str(tiny_cross_encoder_dir), "--reader", str(tiny_causal_lm_dir),
    ]
    assert main(argv) == 0
    return out


def test_demo_writes_data_models_and_results(demo_run, capsys):
    out = demo_run
    train = load_examples(out / "data" / "train.jsonl")
    held_out = load_examples(out / "data" / "held_out.jsonl")
    assert len(train) == SIZES["tiny"].train_questions
    assert len(held_out) == SIZES["tiny"].eval_questions
    assert not {e.query for e in train} & {e.query for e in held_out}
    assert all(sum(e.gold) == 1 and e.answers for e in train + held_out)

    from rrpo import Reranker

    for name in ("sft", "rrpo"):
        model = Reranker.from_pretrained(out / "models" / name, device="cpu")
        selection = model.rerank(held_out[0].query, held_out[0].candidates)
        assert 1 <= selection.k <= {"sft": 3, "rrpo": 5}[name]  # top_n defaults to the trained k cap
    assert (out / "runs" / "rrpo" / "metrics.jsonl").read_text().strip()

    table = (out / "results.md").read_text()
    for row in ROWS:
        assert f"| {row} |" in table, row
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ROWS
    assert results["n_questions"] == len(held_out)
    # The fixed-k rows keep exactly 3, the dynamic row between 1 and MAX_K (5).
    by_name = {r["name"]: r for r in results["rows"]}
    assert by_name["sft-top3"]["means"]["k"] == 3
    assert 1 <= by_name["rrpo-dynamic-k"]["means"]["k"] <= 5
    assert by_name["oracle"]["means"]["recall"] == 1.0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["size"] == "tiny" and run_info["seed"] == 3


def test_demo_same_seed_same_data(demo_run, tmp_path):
    """The generated data is reproducible: a second run's data equals the first's."""
    from rrpo.commands.demo import _make_data

    train, held_out = _make_data(SIZES["tiny"], 3, tmp_path)
    assert (tmp_path / "data" / "train.jsonl").read_text() == (demo_run / "data" / "train.jsonl").read_text()
    assert (tmp_path / "data" / "held_out.jsonl").read_text() == (
        demo_run / "data" / "held_out.jsonl"
    ).read_text()


def test_demo_arguments():
    parser = build_parser()
    args = parser.parse_args(["demo"])
    assert (args.size, args.out, args.seed, args.device) == ("default", "./rrpo-demo", 0, None)
    assert (args.reranker, args.reader) == ("minilm-l6", "smollm2-135m")
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--size", "huge"])


def test_sizes_grow_and_tiny_stays_tiny():
    order = ["tiny", "small", "default", "large"]
    assert list(SIZES) == order
    for smaller, larger in zip(order, order[1:]):
        assert SIZES[smaller].train_questions < SIZES[larger].train_questions
        assert SIZES[smaller].eval_questions < SIZES[larger].eval_questions
    assert SIZES["tiny"].rrpo_steps <= 2 and SIZES["tiny"].eval_questions <= 5
