"""What both framework adapters share: the checks on their settings and the reranker
they load lazily (once, even when many threads ask at the same time).

Plain Python, no framework imports: ``llama_index_rrpo`` and ``langchain_rrpo`` keep
their own pydantic fields and call these.
"""

from __future__ import annotations

import threading
from typing import Any


def check_adapter_limits(min_k: int, top_n: int | None, batch_size: int) -> None:
    if min_k < 0:
        raise ValueError(f"min_k must be >= 0, got {min_k}")
    if top_n is not None and top_n < max(min_k, 1):
        raise ValueError(f"top_n ({top_n}) must be >= 1 and >= min_k ({min_k})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def injected_model_name(reranker: Any) -> str:
    """The ``model`` field's value for an injected reranker object."""
    return str(getattr(reranker, "name_or_path", "") or type(reranker).__name__)


class LazyReranker:
    """An injected reranker, or one loaded from ``model`` on first use."""

    def __init__(self, reranker: Any = None) -> None:
        self._reranker = reranker
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._reranker is not None

    def version(self, model: str) -> str:
        """The loaded reranker's version (for feedback records); ``model`` before it loads."""
        return str(getattr(self._reranker, "version", None) or model)

    def get(self, model: str, device: str | None) -> Any:
        if self._reranker is None:
            with self._lock:
                if self._reranker is None:
                    from .policy import Reranker

                    self._reranker = Reranker.from_pretrained(model, device=device)
        return self._reranker

    def __deepcopy__(self, memo: dict) -> "LazyReranker":
        return self  # the model is shared, never copied (pydantic copies components)
