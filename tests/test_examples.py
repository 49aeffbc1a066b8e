"""The runnable examples, end to end and offline, in their --quick form."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", ["llama_index_pipeline.py", "langchain_pipeline.py"])
def test_example_runs_and_reports(script, tmp_path, shared_data_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RRPO_SHARED_DATA": str(shared_data_dir)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "indexed 60 HotpotQA passages" in out
    assert out.count("[before]") == 6 and out.count("[after]") == 2
    assert "store: 6 records, 4 rated" in out
    assert "trained 3 RRPO steps on 4 rated records" in out
    assert (tmp_path / "feedback.db").is_file() and (tmp_path / "rrpo").is_dir()

    from rrpo.feedback import FeedbackStore

    with FeedbackStore(tmp_path / "feedback.db", create=False) as store:
        assert len(store) == 8 and store.integrity_check() == "ok"
        records = store.records()
        assert all(r.answer is not None and r.candidates and r.kept_ids for r in records)
        assert len({r.reranker for r in records}) == 2  # before and after training
