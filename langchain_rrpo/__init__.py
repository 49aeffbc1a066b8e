"""LangChain integration for rrpo: a reranking document compressor and a feedback handler.

    from langchain_rrpo import RRPORerank, FeedbackCallbackHandler

Needs ``pip install 'rrpo[langchain]'``.
"""

try:
    import langchain_core  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("langchain_rrpo needs langchain-core: pip install 'rrpo[langchain]'") from err

from .compressor import RERANK_EVENT, RRPORerank
from .feedback import FeedbackCallbackHandler

__all__ = ["FeedbackCallbackHandler", "RRPORerank", "RERANK_EVENT"]
