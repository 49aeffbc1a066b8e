"""The ``rrpo`` command line: ``rrpo demo | train | train-sft | eval | rerank | feedback``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from ._version import __version__
from .commands import COMMAND_MODULES


def _load(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"rrpo.commands.{module_name}")
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("rrpo.commands"):
            return None  # not built yet in this version
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrpo",
        description="Rerankers that learn from the LLM that reads their output "
        "(RRPO training, dynamic k, LlamaIndex and LangChain adapters).",
    )
    parser.add_argument("--version", action="version", version=f"rrpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = _load(module_name)
        if module is None:
            continue
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from .readers import ReaderError

    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, ReaderError) as err:
        # Bad input (a config value, a file or model that is not there, a folder given
        # for a file, a missing extra, an endpoint that does not answer): one clear line,
        # no traceback; any other exception is a bug and keeps its traceback.
        # RRPO_DEBUG=1 shows it always.
        if os.environ.get("RRPO_DEBUG"):
            raise
        print(f"rrpo {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
