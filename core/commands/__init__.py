"""One module per ``rrpo`` subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
``rrpo.cli`` imports them lazily, so ``rrpo --help`` stays fast and a subcommand whose
optional dependency is missing fails with a message naming the extra to install.
"""

# Order here is the order in ``rrpo --help``.
COMMAND_MODULES = ["demo", "train", "train_sft", "eval", "rerank", "feedback"]
