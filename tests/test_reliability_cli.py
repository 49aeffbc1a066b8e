"""The command line on user errors (issue #11, item 7): one line naming the problem,
exit status 2, no traceback; a bug still shows its traceback."""

from __future__ import annotations

import json

import pytest

from rrpo import Candidate, Example
from rrpo.cli import main
from rrpo.data import save_examples


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    cands = [Candidate(f"p{j}", f"passage {j} about the harbour") for j in range(3)]
    save_examples([Example(id="q0", query="what about the harbour?", candidates=cands, answers=["x"])], path)
    return path


def _write_rows(path, **changes):
    row = {"id": "q0", "question": "what about the harbour?", "answers": ["x"],
           "passages": [{"id": "a", "text": "the harbour"}, {"id": "b", "text": "the road"}]}  # fmt: skip
    row.update(changes)
    path.write_text(json.dumps(row) + "\n")  # json escapes a lone surrogate as \\ud800
    return path


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"rrpo {command}: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--device", "bogus"], "unknown device 'bogus'"),
        (["--batch-queries", "0"], "--batch-queries must be >= 1"),
        (["--batch-queries", "-1"], "--batch-queries must be >= 1"),
        (["--model", "no-such-org/no-such-model"], "'no-such-org/no-such-model'"),
    ],
    ids=["bogus-device", "zero-batch", "negative-batch", "unknown-model"],
)
def test_rerank_user_errors_are_one_line_exit_2(data, capsys, args, says):
    assert main(["rerank", "--data", str(data), "--out", "-"] + args) == 2
    assert says in one_line_error(capsys, "rerank")


def test_out_pointing_at_a_folder(data, tmp_path, capsys):
    assert main(["rerank", "--data", str(data), "--out", str(tmp_path)]) == 2
    assert "--out" in one_line_error(capsys, "rerank")


def test_a_model_folder_with_pickled_weights_only(data, tmp_path, capsys):
    model = tmp_path / "bin-only"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForSequenceClassification"]}))
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    assert main(["rerank", "--data", str(data), "--model", str(model), "--device", "cpu"]) == 2
    assert "pytorch_model.bin" in one_line_error(capsys, "rerank")


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"passages": [{"id": "a", "text": "bad \ud800 text"}]}, "lone surrogate"),
        ({"question": "bad \udc80 question"}, "lone surrogate"),
        ({"question": ["a", "b"]}, "'question' must be a string, got list"),
    ],
    ids=["surrogate-passage", "surrogate-question", "list-question"],
)
def test_bad_data_is_one_line_naming_the_line(tmp_path, capsys, changes, says):
    path = _write_rows(tmp_path / "bad.jsonl", **changes)
    assert main(["rerank", "--data", str(path), "--device", "cpu"]) == 2
    line = one_line_error(capsys, "rerank")
    assert says in line and "line 1" in line


def test_train_user_errors_are_one_line_exit_2(data, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path)]) == 2
    assert "exactly one of --data or --feedback" in one_line_error(capsys, "train")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert main(["train", "--data", str(data), "--out", str(a_file)]) == 2
    assert "is a file" in one_line_error(capsys, "train")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "x"), "--resume", "--overwrite"]) == 2
    assert "exclude" in one_line_error(capsys, "train")


def test_a_bug_still_shows_its_traceback(data, monkeypatch):
    import rrpo.commands.rerank as rerank

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(rerank, "run", broken)
    with pytest.raises(KeyError):
        main(["rerank", "--data", str(data)])
