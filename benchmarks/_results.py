"""Append benchmark results to ``benchmarks/RESULTS.md``.

Every number in RESULTS.md comes from :func:`append_results` (never edited by hand), and
every section says what produced it: the exact command line, the machine (CPU model,
cores, torch version, GPU if CUDA) and the date in UTC.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

HEADER = """# rrpo benchmark results

Every section below was appended by a benchmark script through
`benchmarks/_results.py` (`--results benchmarks/RESULTS.md`), with the command that
produced it, the machine and the date. Numbers here are never edited by hand;
benchmarks/README.md says what each benchmark measures.
"""


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (``python`` + ``sys.argv``), shell-quoted so it can be re-run."""
    return shlex.join(["python", *(sys.argv if argv is None else argv)])


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """One line: CPU model, cores, torch version, and the GPU when CUDA is available."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"CPU: {cpu_model()} ({cores} cores)", f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
        else:
            parts.append("GPU: none")
    except ImportError:
        parts.append("torch not installed")
    return ", ".join(parts)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def format_section(title: str, command: str, table_markdown: str, notes: str = "") -> str:
    lines = [
        f"## {title}",
        "",
        f"- command: `{command}`",
        f"- machine: {machine_description()}",
        f"- date: {utc_now()}",
        "",
        table_markdown.strip(),
        "",
    ]
    if notes.strip():
        lines += [notes.strip(), ""]
    return "\n".join(lines)


def append_results(path: str | os.PathLike, title: str, command: str, table_markdown: str, notes: str = "") -> Path:
    """Append one section (title, command, machine, date, table, notes) to ``path``.

    Creates the file with a short header when it does not exist yet.
    """
    if not title.strip():
        raise ValueError("append_results: title is empty")
    if not table_markdown.strip():
        raise ValueError(f"append_results: the table for {title!r} is empty")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or not path.read_text(encoding="utf-8").strip():
        path.write_text(HEADER, encoding="utf-8")
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n" + format_section(title, command, table_markdown, notes))
    return path
