"""rrpo: rerankers that learn from the LLM that reads their output.

ReRanking Preference Optimization (RRPO) trains a cross-encoder reranker with
reinforcement learning from the reader's answer quality, and a STOP action lets it keep
as many passages as each query needs (dynamic k).

Heavy parts (torch, transformers) load when ``Reranker`` is first used, so
``import rrpo`` stays cheap for the CLI and the adapters.
"""

from ._version import __version__
from .types import Candidate, Example, FeedbackRecord, Selection

__all__ = ["Candidate", "Example", "FeedbackRecord", "Reranker", "Selection", "__version__"]


def __getattr__(name: str):
    if name == "Reranker":
        from .policy import Reranker

        return Reranker
    raise AttributeError(f"module 'rrpo' has no attribute {name!r}")
