"""What both framework adapters share, so that each adapter only converts objects.

Plain Python, no framework imports: ``llama_index_rrpo`` and ``langchain_rrpo`` keep
their own pydantic fields and call these for

* the checks on their settings (limits, misspelled option names);
* the rerank itself: options with per-call overrides, ``dedupe``, unique ids, the
  calibrated ``relevance_score``, opt-in micro-batching;
* the reranker, loaded lazily (once, even when many threads ask at the same time),
  named by a version that identifies its weights, and pickled faithfully or not at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import difflib
import hashlib
import json
import math
import pickle
import sys
import threading
import weakref
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Iterable, Iterator, Sequence

from .types import Candidate, Selection

# -- settings ------------------------------------------------------------------------------


def check_adapter_limits(min_k: int, top_n: int | None, batch_size: int) -> None:
    if min_k < 0:
        raise ValueError(f"min_k must be >= 0, got {min_k}")
    if top_n is not None and top_n < max(min_k, 1):
        raise ValueError(f"top_n ({top_n}) must be >= 1 and >= min_k ({min_k})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def check_batching(batch_wait_ms: float | None, max_batch_queries: int) -> None:
    if batch_wait_ms is not None and not 0 <= batch_wait_ms <= 10_000:
        raise ValueError(f"batch_wait_ms must be None (off) or between 0 and 10000, got {batch_wait_ms}")
    if max_batch_queries < 1:
        raise ValueError(f"max_batch_queries must be >= 1, got {max_batch_queries}")


def reject_unknown_options(owner: str, data: Any, known: Iterable[str]) -> None:
    """A misspelled option (``top_k=2``, ``topn=2``) is an error naming the right one,
    not a setting silently ignored."""
    if not isinstance(data, dict):
        return
    known = set(known)
    unknown = [key for key in data if key not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
        close = close or (["top_n"] if key in {"k", "top_k", "topk", "n", "max_k"} else [])
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"{owner} got unknown option(s) {', '.join(hints)}")


def injected_model_name(reranker: Any) -> str:
    """The ``model`` field's value for an injected reranker object."""
    return str(getattr(reranker, "name_or_path", "") or type(reranker).__name__)


# -- options and per-call overrides -------------------------------------------------------

OVERRIDABLE = ("top_n", "min_k", "dynamic_k")


@dataclass(frozen=True)
class RerankOptions:
    """How one rerank call keeps candidates (the adapter's fields, maybe overridden)."""

    top_n: int | None = 5
    min_k: int = 1
    dynamic_k: bool = True
    batch_size: int = 32
    dedupe: bool = False

    @classmethod
    def of(cls, adapter: Any) -> "RerankOptions":
        """The options an adapter's fields say."""
        return cls(top_n=adapter.top_n, min_k=adapter.min_k, dynamic_k=adapter.dynamic_k,
                   batch_size=adapter.batch_size, dedupe=adapter.dedupe)

    def updated(self, changes: dict[str, Any]) -> "RerankOptions":
        unknown = sorted(set(changes) - set(OVERRIDABLE))
        if unknown:
            raise ValueError(f"cannot override {unknown}; per-call options: {list(OVERRIDABLE)}")
        options = replace(self, **changes)
        check_adapter_limits(options.min_k, options.top_n, options.batch_size)
        return options


_OVERRIDES: contextvars.ContextVar[dict[int, dict[str, Any]]] = contextvars.ContextVar(
    "rrpo_rerank_overrides", default={}
)


@contextlib.contextmanager
def override_options(owner: Any, **changes: Any) -> Iterator[None]:
    """Within this block (this thread or task, and what it starts), ``owner``'s reranks
    use ``changes`` (top_n, min_k, dynamic_k). A context variable, so a query engine or
    chain that calls the adapter deep inside sees it, and concurrent requests do not."""
    unknown = sorted(set(changes) - set(OVERRIDABLE))
    if unknown:  # values are checked against the adapter's own settings at rerank time
        raise ValueError(f"cannot override {unknown}; per-call options: {list(OVERRIDABLE)}")
    current = _OVERRIDES.get()
    merged = {**current, id(owner): {**current.get(id(owner), {}), **changes}}
    token = _OVERRIDES.set(merged)
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def resolve_options(owner: Any, base: RerankOptions, call: dict[str, Any] | None = None) -> RerankOptions:
    """``base`` with the overrides in context for ``owner`` and then this call's."""
    changes = {**_OVERRIDES.get().get(id(owner), {}), **(call or {})}
    return base.updated(changes) if changes else base


# -- the rerank ----------------------------------------------------------------------------


def relevance(score: float) -> float:
    """The calibrated relevance of a raw cross-encoder score: the sigmoid of its logit,
    in [0, 1]. For a head trained with binary cross-entropy (``rrpo train-sft``, most
    published cross-encoders) this is the model's probability that the passage is
    relevant, so one threshold means the same for every query."""
    score = float(score)
    if math.isnan(score):
        return score
    if score >= 0:
        return 1.0 / (1.0 + math.exp(-score))
    z = math.exp(score)
    return z / (1.0 + z)


def unique_ids(ids: Sequence[str]) -> list[str]:
    """``ids`` with repeats made unique (``"x"``, ``"x#2"``, ``"x#3"``): one record must
    never hold two candidates with one id."""
    taken = set(ids)
    counts: dict[str, int] = {}
    out = []
    for value in ids:
        n = counts.get(value, 0) + 1
        if n > 1:
            while f"{value}#{n}" in taken:  # never collide with a real id
                n += 1
            taken.add(f"{value}#{n}")
        counts[value] = n
        out.append(value if n == 1 else f"{value}#{n}")
    return out


def copy_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A deep copy when possible: edits to a returned node or document, nested values
    included, must not reach the caller's input (or a vector store's stored copy)."""
    try:
        return copy.deepcopy(dict(metadata))
    except Exception:  # an uncopyable value (a lock, a client): copy what can be copied
        out = {}
        for key, value in metadata.items():
            try:
                out[key] = copy.deepcopy(value)
            except Exception:
                out[key] = value
        return out


def _first_occurrences(candidates: Sequence[Candidate]) -> list[int]:
    """Indices of the first copy of each passage (same text, whitespace ignored)."""
    seen: set[tuple[str, str]] = set()
    keep = []
    for i, c in enumerate(candidates):
        key = _dedupe_key(c)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def _expand(inner: Selection, keep: list[int], n: int, twin_of: list[int]) -> Selection:
    """A selection over the deduplicated list, mapped back to the full list: dropped
    copies get their twin's score and go last, never kept."""
    order = [keep[i] for i in inner.order]
    kept_set = set(keep)
    dropped = [i for i in range(n) if i not in kept_set]
    scores = [inner.scores[twin_of[i]] for i in range(n)]
    return Selection(order=order + dropped, k=inner.k, scores=scores, log_prob=inner.log_prob, stopped=inner.stopped)


def select(run: Any, query: str, candidates: list[Candidate], options: RerankOptions) -> Selection:
    """Rerank ``candidates`` with ``run(query, candidates, options) -> Selection``,
    dropping duplicate passages first when ``options.dedupe`` (so k counts distinct ones)."""
    if not options.dedupe:
        return run(query, candidates, options)
    keep = _first_occurrences(candidates)
    if len(keep) == len(candidates):
        return run(query, candidates, options)
    position = {key: j for j, key in enumerate(_dedupe_key(candidates[i]) for i in keep)}
    twin_of = [position[_dedupe_key(c)] for c in candidates]
    inner = run(query, [candidates[i] for i in keep], options)
    return _expand(inner, keep, len(candidates), twin_of)


def _dedupe_key(c: Candidate) -> tuple[str, str]:
    return (" ".join(c.title.split()), " ".join(c.text.split()))


def rerank_call(reranker: Any, query: str, candidates: list[Candidate], options: RerankOptions) -> Selection:
    """One query through ``rerank_batch`` (which takes a batch size) when the reranker
    has it, else through ``rerank``."""
    kw = dict(top_n=options.top_n, min_k=min(options.min_k, len(candidates)), dynamic_k=options.dynamic_k)
    if hasattr(reranker, "rerank_batch"):
        return reranker.rerank_batch([query], [candidates], batch_size=options.batch_size, **kw)[0]
    return reranker.rerank(query, candidates, **kw)


# -- versions: which weights ranked --------------------------------------------------------

_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[Any, str]]" = weakref.WeakKeyDictionary()
_FINGERPRINT_LOCK = threading.Lock()


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _is_rrpo_reranker(obj: Any) -> bool:
    policy = sys.modules.get("rrpo.policy")
    return policy is not None and isinstance(obj, policy.Reranker)


def _weights_key(module: Any) -> tuple | None:
    """Cheap identity of the current weights: storage and in-place version counter of
    every tensor (an optimizer step or ``load_state_dict`` bumps the counters)."""
    try:
        return tuple((t.data_ptr(), t._version) for t in module.state_dict(keep_vars=True).values())
    except RuntimeError:  # inference tensors keep no version counter: never cache
        return None


def weights_fingerprint(module: Any) -> str:
    """A short hash of a torch reranker's weights and settings (cached until they change)."""
    key = _weights_key(module)
    with _FINGERPRINT_LOCK:
        cached = _FINGERPRINTS.get(module)
        if cached is not None and key is not None and cached[0] == key:
            return cached[1]
    digest = hashlib.blake2b(digest_size=6)
    settings = getattr(module, "settings", None)
    if is_dataclass(settings):
        kept = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name != "version"}
        digest.update(json.dumps(kept, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(data.view(_uint8()).numpy())
    value = digest.hexdigest()
    with _FINGERPRINT_LOCK:
        _FINGERPRINTS[module] = (key, value)
    return value


def _uint8() -> Any:
    import torch

    return torch.uint8


def reranker_version(reranker: Any) -> str:
    """What records and events call the reranker: its own version (the saved model's id,
    or its name), and for torch rerankers ``@`` a fingerprint of the weights that ranked,
    so a reranker trained in memory is never reported as its base model."""
    base = str(getattr(reranker, "version", None) or injected_model_name(reranker))
    if _is_torch_module(reranker):
        return f"{base}@{weights_fingerprint(reranker)}"
    return base


# -- the reranker an adapter holds ---------------------------------------------------------


@dataclass(frozen=True)
class _ReloadSpec:
    """How to load the same weights again: where from, and the load arguments."""

    source: str
    device: str | None
    dtype: str | None
    max_length: int | None
    fingerprint: str | None


def _load(spec: _ReloadSpec) -> Any:
    from .policy import Reranker

    return Reranker.from_pretrained(spec.source, device=spec.device, dtype=spec.dtype, max_length=spec.max_length)


def _spec_of(reranker: Any, source: str) -> _ReloadSpec:
    dtype = str(next(reranker.scorer.parameters()).dtype).replace("torch.", "")
    settings = getattr(reranker, "settings", None)
    return _ReloadSpec(
        source=source,
        device=str(reranker.device),
        dtype=dtype,
        max_length=getattr(settings, "max_length", None),
        fingerprint=weights_fingerprint(reranker),
    )


class LazyReranker:
    """An injected reranker, or one loaded from ``model`` on first use; pickles as a
    recipe to load the very same weights again, or refuses to pickle."""

    def __init__(self, reranker: Any = None, source: str | None = None) -> None:
        self._reranker = reranker
        self._source = source  # where the weights can be loaded from again
        self._spec: _ReloadSpec | None = None  # set when unpickled: load this, check it
        self._reproducible: str | None = None  # fingerprint known to reload from source
        self._lock = threading.Lock()
        self._batcher: Any = None

    @property
    def loaded(self) -> bool:
        return self._reranker is not None

    def version(self, model: str) -> str:
        """The loaded reranker's version (for feedback records); ``model`` before it loads."""
        return model if self._reranker is None else reranker_version(self._reranker)

    def get(self, model: str, device: str | None) -> Any:
        if self._reranker is None:
            with self._lock:
                if self._reranker is None:
                    self._reranker = self._load(model, device)
        return self._reranker

    def _load(self, model: str, device: str | None) -> Any:
        if self._spec is None:
            from .policy import Reranker

            reranker = Reranker.from_pretrained(model, device=device)
            self._source = model
            self._reproducible = weights_fingerprint(reranker)  # loaded from there, unchanged
            return reranker
        reranker = _load(self._spec)
        self._source = self._spec.source
        found = weights_fingerprint(reranker)
        if self._spec.fingerprint is not None and found != self._spec.fingerprint:
            raise RuntimeError(
                f"the reranker at {self._spec.source!r} is not the one this adapter was pickled "
                f"with (weights {found}, expected {self._spec.fingerprint}): the files changed "
                "since. Pickle the adapter again, or point it at the saved weights."
            )
        self._reproducible = found
        return reranker

    # -- rerank ---------------------------------------------------------------------------

    def select(self, reranker: Any, query: str, candidates: list[Candidate], options: RerankOptions,
               batch_wait_ms: float | None = None, max_batch_queries: int = 16) -> Selection:
        """Rerank one query, through the micro-batcher when ``batch_wait_ms`` is set."""
        if batch_wait_ms is None or not hasattr(reranker, "rerank_batch"):
            return select(lambda q, c, o: rerank_call(reranker, q, c, o), query, candidates, options)
        batcher = self._batcher_for(reranker, batch_wait_ms, max_batch_queries)

        def run(q: str, c: list[Candidate], o: RerankOptions) -> Selection:
            return batcher.rerank(q, c, top_n=o.top_n, min_k=o.min_k, dynamic_k=o.dynamic_k, batch_size=o.batch_size)

        return select(run, query, candidates, options)

    def select_logged(self, reranker: Any, query: str, candidates: list[Candidate], options: RerankOptions,
                      exploration: Any = None, batch_wait_ms: float | None = None,
                      max_batch_queries: int = 16) -> tuple[Selection, Any]:
        """:meth:`select`, plus how the selection was chosen (an
        :class:`rrpo.offpolicy.Propensity`, None for a reranker that is not rrpo's).
        Exploring, or logging the policy's own log-prob, needs the scores: such a query
        skips the micro-batcher; a greedy micro-batched one logs ``mu = 1`` only."""
        from .offpolicy import Exploration, greedy_propensity, logged_rerank

        exploration = exploration or Exploration()
        if not _is_rrpo_reranker(reranker):
            return self.select(reranker, query, candidates, options, batch_wait_ms, max_batch_queries), None
        if batch_wait_ms is not None and not exploration.active:
            selection = self.select(reranker, query, candidates, options, batch_wait_ms, max_batch_queries)
            return selection, greedy_propensity(selection, options, len(candidates))
        found: list[Any] = []

        def run(q: str, c: list[Candidate], o: RerankOptions) -> Selection:
            selection, propensity = logged_rerank(
                reranker, q, c, top_n=o.top_n, min_k=min(o.min_k, len(c)), dynamic_k=o.dynamic_k,
                exploration=exploration, randomness=self._randomness_for(exploration), batch_size=o.batch_size,
            )  # fmt: skip
            found.append(propensity)
            return selection

        selection = select(run, query, candidates, options)
        propensity = found[0]
        propensity.version = reranker_version(reranker)
        return selection, propensity

    def _randomness_for(self, exploration: Any) -> Any:
        """One coin and generator per adapter and seed (a seeded adapter replays its traffic)."""
        from .offpolicy import ExplorationRandomness

        if not exploration.active:
            return None
        with self._lock:
            current = getattr(self, "_randomness", None)
            if current is None or current[0] != exploration.seed:
                current = self._randomness = (exploration.seed, ExplorationRandomness(exploration.seed))
        return current[1]

    def _batcher_for(self, reranker: Any, wait_ms: float, max_queries: int) -> Any:
        from .microbatch import MicroBatcher

        with self._lock:
            batcher = self._batcher
            if batcher is None or batcher.reranker is not reranker or batcher.max_wait_s != wait_ms / 1000.0 \
                    or batcher.max_queries != max_queries:
                batcher = self._batcher = MicroBatcher(reranker, wait_ms / 1000.0, max_queries)
        return batcher

    # -- copies and pickles ---------------------------------------------------------------

    def __deepcopy__(self, memo: dict) -> "LazyReranker":
        return self  # the model is shared, never copied (pydantic copies components)

    def __getstate__(self) -> dict[str, Any]:
        reranker = self._reranker
        if reranker is None:
            return {"spec": self._spec}  # nothing loaded: load from the model field later
        if not _is_rrpo_reranker(reranker):
            return {"reranker": reranker}  # another object pickles (or fails) as itself
        return {"spec": self._reload_spec(reranker)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.get("reranker"))
        self._spec = state.get("spec")

    def _reload_spec(self, reranker: Any) -> _ReloadSpec:
        """A recipe that loads these very weights again; PicklingError when none does."""
        source = self._source or injected_model_name(reranker)
        spec = _spec_of(reranker, source)
        if spec.fingerprint != self._reproducible:
            try:
                again = weights_fingerprint(_load(spec))
            except Exception as err:
                raise pickle.PicklingError(_not_reloadable(reranker, source, f"loading it fails: {err}")) from err
            if again != spec.fingerprint:
                raise pickle.PicklingError(_not_reloadable(reranker, source, "its weights differ from those files"))
            self._reproducible = spec.fingerprint
        return spec


def _not_reloadable(reranker: Any, source: str, why: str) -> str:
    return (
        f"cannot pickle this RRPORerank: its reranker (version {reranker_version(reranker)}) cannot be "
        f"reloaded from {source!r}: {why} (trained or changed in memory?). Save it first with "
        "reranker.save_pretrained(DIR) and build the adapter with RRPORerank(model=DIR) or "
        "RRPORerank(reranker=reranker, model=DIR); a pickle never swaps in other weights."
    )
