"""The README's Python blocks run as pasted (one script, in order), and the CLI reference
in docs/cli.md is the parsers' own help."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_python_blocks_run(tmp_path):
    blocks = python_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 4  # quickstart, LlamaIndex, LangChain, training
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "rrpo-readme-run" / "model" / "rrpo_config.json").is_file()


def test_quickstart_puts_the_answer_passage_first():
    """The quickstart, run as written with the offline default, ranks the one passage
    that answers the question first (and the example does not list it first)."""
    quickstart = python_blocks((REPO / "README.md").read_text())[0]
    namespace: dict = {}
    exec(compile(quickstart, "README.md quickstart", "exec"), namespace)
    passages, selection = namespace["passages"], namespace["selection"]
    answer = [i for i, p in enumerate(passages) if "Aster" in p]
    assert answer != [0] and len(answer) == 1
    assert selection.order[0] == answer[0], selection


def test_cli_reference_is_generated_from_the_parsers():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_cli_docs.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
