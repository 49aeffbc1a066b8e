"""Pair tokenisation for cross-encoders, with document token ids cached.

A reranker sees the same passages again and again (every query of a training run, every
rollout, every evaluation). Tokenising a passage costs more than scoring it on a GPU, so
passages are tokenised once, without special tokens, and the pair ``[CLS] q [SEP] d
[SEP]`` (or the model's own template) is assembled from cached ids. The template is read
off the tokenizer by encoding a probe pair, and checked against the tokenizer's own pair
encoding; tokenizers whose template cannot be read this way fall back to encoding each
pair directly (correct, just uncached).
"""

from __future__ import annotations

import sys
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

_PROBE_A = "alpha"
_PROBE_B = "omega"
_CHECK_Q = "who founded the northern river company"
_CHECK_D = "The Northern River Company was founded in 1911 by Ada Lind, a shipping clerk."


@dataclass(frozen=True)
class PairTemplate:
    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    # token type ids of each part (None when the model takes no token types)
    types: tuple[int, int, int, int, int] | None  # prefix, query, middle, doc, suffix

    @property
    def special_count(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def _find(seq: list[int], sub: list[int], start: int = 0) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return -1


def read_template(tokenizer: Any) -> PairTemplate | None:
    """Infer the pair template from a probe encoding; None if it cannot be read."""
    a = tokenizer(_PROBE_A, add_special_tokens=False)["input_ids"]
    b = tokenizer(_PROBE_B, add_special_tokens=False)["input_ids"]
    enc = tokenizer(_PROBE_A, _PROBE_B)
    ids = list(enc["input_ids"])
    i = _find(ids, a)
    j = _find(ids, b, i + len(a)) if i >= 0 else -1
    if i < 0 or j < 0:
        return None
    types = None
    if "token_type_ids" in enc:
        tt = list(enc["token_type_ids"])
        types = (
            tt[0] if i > 0 else 0,
            tt[i],
            tt[i + len(a)] if j > i + len(a) else tt[i],
            tt[j],
            tt[j + len(b)] if j + len(b) < len(ids) else tt[j],
        )
    template = PairTemplate(tuple(ids[:i]), tuple(ids[i + len(a) : j]), tuple(ids[j + len(b) :]), types)
    return template if _template_matches(tokenizer, template) else None


def _template_matches(tokenizer: Any, template: PairTemplate) -> bool:
    q = tokenizer(_CHECK_Q, add_special_tokens=False)["input_ids"]
    d = tokenizer(_CHECK_D, add_special_tokens=False)["input_ids"]
    ids, types = assemble(template, q, d)
    enc = tokenizer(_CHECK_Q, _CHECK_D)
    if list(enc["input_ids"]) != ids:
        return False
    return types is None or "token_type_ids" not in enc or list(enc["token_type_ids"]) == types


def assemble(template: PairTemplate, q: Sequence[int], d: Sequence[int]) -> tuple[list[int], list[int] | None]:
    ids = [*template.prefix, *q, *template.middle, *d, *template.suffix]
    if template.types is None:
        return ids, None
    tp, tq, tm, td, ts = template.types
    types = (
        [tp] * len(template.prefix)
        + [tq] * len(q)
        + [tm] * len(template.middle)
        + [td] * len(d)
        + [ts] * len(template.suffix)
    )
    return ids, types


class PairTokenizer:
    """Turns (query, documents) into model inputs; truncates the document side only.

    Document ids are cached least-recently-used, bounded by entries (``cache_size``) and
    by bytes (``cache_bytes``, ids and keys counted): ids are kept as 4-byte arrays,
    not lists of Python ints (36 bytes a token). One lock guards the cache, so threads
    may share a reranker; tokenising runs outside it.
    """

    def __init__(self, tokenizer: Any, max_length: int, cache_size: int = 200_000, cache_bytes: int = 256 * 2**20):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.template = read_template(tokenizer)
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._doc_cache: OrderedDict[tuple[str, str], array] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    def __getstate__(self) -> dict:
        # A lock cannot be copied or pickled; a copy (the trainer's frozen reference is a
        # deepcopy of the policy) gets a lock of its own.
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def cached_bytes(self) -> int:
        """What the cached entries hold (their ids and keys), in bytes."""
        return self._cached_bytes

    @staticmethod
    def _entry_bytes(key: tuple[str, str], ids: array) -> int:
        return sys.getsizeof(ids) + sys.getsizeof(key[0]) + sys.getsizeof(key[1]) + 64  # + the dict slot

    def doc_ids(self, keys: Sequence[tuple[str, str]]) -> list[list[int]]:
        """Token ids of documents keyed by (candidate id, text); tokenises misses in one batch."""
        found: dict[tuple[str, str], array] = {}
        with self._lock:
            for key in dict.fromkeys(keys):
                ids = self._doc_cache.get(key)
                if ids is not None:
                    self._doc_cache.move_to_end(key)
                    found[key] = ids
            missing = [key for key in dict.fromkeys(keys) if key not in found]
            self.cache_misses += len(missing)
            self.cache_hits += len(keys) - len(missing)
        if missing:
            encoded = self.tokenizer([text for _, text in missing], add_special_tokens=False)["input_ids"]
            # Keep only what can ever be used, so one huge passage cannot bloat the cache.
            fresh = {key: array("i", ids[: self.max_length]) for key, ids in zip(missing, encoded)}
            found.update(fresh)
            self._store(fresh)
        # Answered from ``found``, not the cache: another thread may evict meanwhile.
        return [list(found[key]) for key in keys]

    def _store(self, fresh: dict[tuple[str, str], array]) -> None:
        with self._lock:
            for key, ids in fresh.items():
                if key not in self._doc_cache:
                    self._doc_cache[key] = ids
                    self._cached_bytes += self._entry_bytes(key, ids)
            while self._doc_cache and (
                len(self._doc_cache) > self.cache_size or self._cached_bytes > self.cache_bytes
            ):
                old_key, old_ids = self._doc_cache.popitem(last=False)
                self._cached_bytes -= self._entry_bytes(old_key, old_ids)

    def query_ids(self, query: str) -> list[int]:
        ids = self.tokenizer(query, add_special_tokens=False)["input_ids"]
        # A query may use at most half the window; documents keep the rest.
        return list(ids[: max(1, (self.max_length - self._special_count()) // 2)])

    def _special_count(self) -> int:
        return self.template.special_count if self.template else 4

    def encode_pairs(
        self, query: str, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[list[int], list[int] | None]]:
        """(input_ids, token_type_ids) for each (query, document) pair."""
        if self.template is None:
            return self._encode_directly(query, [text for _, text in keys])
        q = self.query_ids(query)
        room = self.max_length - self.template.special_count - len(q)
        return [assemble(self.template, q, d[:room]) for d in self.doc_ids(keys)]

    def _encode_directly(self, query: str, docs: list[str]) -> list[tuple[list[int], list[int] | None]]:
        enc = self.tokenizer(
            [query] * len(docs), docs, truncation="only_second", max_length=self.max_length
        )
        types = enc.get("token_type_ids")
        return [(list(ids), list(types[i]) if types is not None else None) for i, ids in enumerate(enc["input_ids"])]
