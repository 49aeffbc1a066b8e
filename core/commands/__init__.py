"""One module per ``rrpo`` subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
``rrpo.cli`` imports them lazily, so ``rrpo --help`` stays fast and a subcommand whose
optional dependency is missing fails with a message naming the extra to install.
"""

# Order here is the order in ``rrpo --help``.
COMMAND_MODULES = ["demo", "train", "train_sft", "eval", "rerank", "feedback"]


def load_reranker(name: str, device: str | None = None):
    """``Reranker.from_pretrained`` for a command: a name that is neither a folder, a
    packaged alias nor a loadable hub id fails in one line that names it."""
    from ..policy import Reranker

    try:
        return Reranker.from_pretrained(name, device=device)
    except FileNotFoundError:
        raise  # already names the path
    except OSError as err:  # transformers: "couldn't connect to huggingface.co ..." (multi-line, unnamed)
        raise OSError(f"cannot load the reranker {str(name)!r}: {_first_line(err)}") from None


def load_reader(spec: str, device: str | None = None):
    """``get_reader`` for a command (``device`` reaches local readers only), with the
    same one-line error for a model that cannot be loaded."""
    from ..readers import get_reader

    try:
        return get_reader(spec, device=device)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise OSError(f"cannot load the reader {spec!r}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
