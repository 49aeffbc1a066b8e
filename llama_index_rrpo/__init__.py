"""LlamaIndex integration for rrpo: a reranking node postprocessor and a feedback collector.

    from llama_index_rrpo import RRPORerank, FeedbackCollector

Needs ``pip install 'rrpo[llama-index]'``.
"""

try:
    import llama_index.core  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "llama_index_rrpo needs llama-index-core: pip install 'rrpo[llama-index]'"
    ) from err

from .feedback import RECORD_ID_KEY, FeedbackCollector
from .postprocessor import RRPORerank

__all__ = ["FeedbackCollector", "RRPORerank", "RECORD_ID_KEY"]
