"""The reranker: a scorer (cross-encoder or bi-encoder) plus a STOP head (dynamic k).

``Reranker`` is both the inference object users drop into their pipelines and the
policy that RRPO trains. Scoring a query's candidates yields one score and one hidden
state per (query, passage) pair; greedy decoding, sampling and log-probabilities
all work from those two tensors (see :mod:`rrpo.plackett_luce`). A cross-encoder reads
each pair jointly; a bi-encoder (:mod:`rrpo.bi_encoder`, the default for plain sentence
embedding models) embeds query and passage apart - ``settings.scoring`` names which.
"""

from __future__ import annotations

import json
import logging
import numbers
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import bi_encoder
from ._version import __version__
from .models import best_device, resolve_reranker
from .plackett_luce import StopHead, greedy_k, sample_picks, selection_limit, step_log_probs
from .tokenize import PairTokenizer
from .types import Candidate, Selection, as_candidates, check_text

logger = logging.getLogger(__name__)

SETTINGS_FILE = "rrpo_config.json"
STOP_HEAD_FILE = "rrpo_stop_head.safetensors"
FORMAT_VERSION = 1
# Encoders pool the first token; decoder-style rerankers pool the last real token.
FIRST_TOKEN_MODEL_TYPES = {
    "bert", "roberta", "xlm-roberta", "electra", "deberta", "deberta-v2", "distilbert",
    "modernbert", "camembert", "albert", "mpnet", "new", "nomic_bert", "xlm", "ernie",
}  # fmt: skip


@dataclass
class RerankerSettings:
    """rrpo's own settings, saved as ``rrpo_config.json`` beside the weights."""

    max_length: int = 512
    max_k: int = 10  # normaliser of the step feature; also the default cap when sampling
    batch_size: int = 64
    pooling: str = "first"  # "first" (encoders) or "last" (decoder rerankers)
    include_title: bool = True
    stop_inner_size: int = 64
    stop_init_bias: float = 0.0
    # "relative": the STOP head gives the log-odds of stopping (P(stop|t) = sigmoid);
    # "absolute": round-1 models, whose STOP logit competes like one more candidate.
    # Settings files without this key are round-1 models and load as "absolute".
    stop_parametrization: str = "relative"
    stop_init_k: float = 3.0  # a fresh relative STOP head starts with greedy k here
    # The k cap the model was trained with: rerank's default top_n (None: no cap).
    default_top_n: int | None = None
    # "cross_encoder" (one forward per pair) or "bi_encoder" (rrpo.bi_encoder). Settings
    # files without this key were saved by cross-encoders and load as one.
    scoring: str = "cross_encoder"
    # bi-encoder only: "query" trains the query tower, the passage tower stays frozen
    # (its embeddings cached); "both" trains both towers.
    bi_encoder_train: str = "query"
    # bi-encoder only: use Candidate.metadata["embedding"] as the passage embedding (it
    # must come from this model's passage tower, e.g. a vector store built with it).
    use_candidate_embeddings: bool = False
    version: str = ""
    base_model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scored:
    """Scores and pooled states of one query's candidates (tensors on the model's device)."""

    scores: torch.Tensor  # (n,) float32
    hidden: torch.Tensor  # (n, H)


class Reranker(nn.Module):
    """Cross-encoder or bi-encoder reranker whose STOP head decides how many candidates to keep."""

    def __init__(
        self,
        scorer: nn.Module,
        tokenizer: Any,
        settings: RerankerSettings | None = None,
        stop_head: StopHead | None = None,
        name_or_path: str = "",
    ):
        super().__init__()
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.settings = settings or RerankerSettings()
        hidden_size = int(scorer.config.hidden_size)
        self.stop_head = stop_head or _new_stop_head(hidden_size, self.settings)
        self.name_or_path = name_or_path
        model_max = getattr(scorer.config, "max_position_embeddings", None) or self.settings.max_length
        self.pairs = PairTokenizer(tokenizer, min(self.settings.max_length, int(model_max)))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._accepts_token_types = "token_type_ids" in _forward_arg_names(scorer)
        if bi_encoder.is_bi_encoder(scorer):
            self.settings.scoring = "bi_encoder"
            scorer.configure(tokenizer, self.pairs.max_length, self.settings)
        self.fresh_parameters: set[str] = set()  # names of freshly initialised parameters
        self.frozen_lower: Any = None  # a FrozenLowerLayers while only the top layers train

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = "minilm-l6",
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        max_length: int | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
        scoring: str | None = None,
        backend: str = "torch",
    ) -> "Reranker":
        """Load a reranker (local dir, packaged alias like ``"minilm-l6"``, or hub id).

        ``scoring=None`` decides by the checkpoint: a directory rrpo saved reloads as
        what it was; a ``*ForSequenceClassification`` checkpoint is a cross-encoder; a
        plain encoder (e.g. all-MiniLM-L6-v2, sentence-embedding models) is a
        bi-encoder (:mod:`rrpo.bi_encoder`), which ranks well before any training.
        ``scoring="cross_encoder"`` on a plain encoder adds a fresh one-logit head,
        initialised from ``seed`` so the same call always gives the same model.
        Weights load as safetensors only; remote code runs only when the caller opts in
        (``trust_remote_code``). ``device=None`` picks CUDA when present; ``dtype=None``
        means bf16 on CUDA, fp32 elsewhere. ``backend="int8"``: int8 Linear layers for
        fast CPU inference, same STOP head (:mod:`rrpo.quantize`); such a model is not trained.
        """
        from transformers import AutoConfig, AutoTokenizer

        from .quantize import apply_backend, backend_device, check_backend

        device = backend_device(check_backend(backend), device)  # a bad backend fails before loading

        if scoring not in (None, "cross_encoder", "bi_encoder"):
            raise ValueError(f"scoring must be None, 'cross_encoder' or 'bi_encoder', got {scoring!r}")
        resolved = resolve_reranker(name_or_path)
        path = resolved.path
        device = best_device(device)
        torch_dtype = _pick_dtype(dtype, device)
        settings = _read_settings(path) if resolved.is_local else None
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        is_classifier = any("ForSequenceClassification" in a for a in (config.architectures or []))
        mode = scoring or (settings.scoring if settings else None) or ("cross_encoder" if is_classifier else "bi_encoder")
        if settings is not None and settings.scoring != mode:
            # Another scoring than the one saved: its STOP head saw other hidden states.
            logger.warning("%s was saved as a %s; loading it as a %s with fresh rrpo settings", path, settings.scoring, mode)
            settings = None
        if mode == "bi_encoder":  # which tower trains comes from the settings (Reranker.__init__)
            scorer, fresh = bi_encoder.load_bi_encoder(path, trust_remote_code)
        else:
            scorer, fresh = _load_cross_encoder(path, is_classifier, trust_remote_code, seed)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        saved = settings is not None  # an rrpo directory, loaded as what it was saved as
        if settings is None:
            settings = _fresh_settings(path, config, mode, resolved.alias or str(name_or_path))
        if max_length is not None:
            settings.max_length = max_length
        if saved and (Path(path) / STOP_HEAD_FILE).is_file():
            stop_head = _load_stop_head(Path(path), scorer.config.hidden_size, settings)
        else:  # a fresh head, seeded like the fresh scoring head: same call, same model
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                stop_head = _new_stop_head(scorer.config.hidden_size, settings)
        model = cls(scorer, tokenizer, settings, stop_head, name_or_path=resolved.alias or str(name_or_path))
        # Weights the checkpoint did not have (a fresh scoring head): trainers give them
        # a larger learning rate, since a near-zero head leaves Plackett-Luce uniform.
        model.fresh_parameters = fresh
        model.scorer.to(dtype=torch_dtype)
        model.eval()
        return apply_backend(model.to(device), backend)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Save as a plain Hugging Face directory (safetensors) + rrpo's STOP head and settings."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.scorer.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.stop_head.state_dict().items()}
        save_file(state, str(directory / STOP_HEAD_FILE))
        self.settings.version = f"{directory.name}-{uuid.uuid4().hex[:8]}"
        payload = {"rrpo_format": FORMAT_VERSION, "rrpo_version": __version__, **asdict(self.settings)}
        tmp = directory / (SETTINGS_FILE + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(directory / SETTINGS_FILE)  # atomic: a crash never leaves half a config
        return directory

    def train_top_layers(self, n: int) -> None:
        """Train only the top ``n`` encoder layers (0: all): the layers below freeze and
        their outputs are computed once per (query, passage) pair and reused."""
        from .frozen_layers import FrozenLowerLayers, encoder_layers

        self.release_frozen_layers()
        if bi_encoder.is_bi_encoder(self.scorer):  # its towers freeze their own lower layers
            self.scorer.train_top_layers(n)
            return
        if not n:
            return
        layers = encoder_layers(self.scorer)
        if layers is None:
            logger.warning("%s has no BERT-like encoder.layer list: training all layers", type(self.scorer).__name__)
        elif n < len(layers):  # n >= the depth: everything trains anyway
            self.frozen_lower = FrozenLowerLayers(self.scorer, n)

    def release_frozen_layers(self) -> None:
        if bi_encoder.is_bi_encoder(self.scorer):
            self.scorer.release_frozen_layers()
        if self.frozen_lower is not None:
            self.frozen_lower.release()
            self.frozen_lower = None

    @property
    def version(self) -> str:
        """A short id of these weights, for feedback records and reports."""
        return self.settings.version or self.name_or_path

    @property
    def device(self) -> torch.device:
        return next(self.scorer.parameters()).device

    # ------------------------------------------------------------------ scoring
    def _doc_text(self, candidate: Candidate) -> str:
        if self.settings.include_title and candidate.title:
            return f"{candidate.title}: {candidate.text}"
        return candidate.text

    def _check(self, query: Any, candidates: Sequence[Candidate | str]) -> list[Candidate]:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("query is empty")
        check_text(query, "query")
        cands = as_candidates(candidates)  # a str, None or a bad Candidate fails here, by name
        for i, c in enumerate(cands):
            if not isinstance(c.text, str):
                raise TypeError(f"candidate {i} text must be a str, got {type(c.text).__name__}")
        return cands

    def _model_inputs(self, input_ids: list[list[int]], types: list[list[int] | None]) -> tuple[dict, torch.Tensor]:
        """Right-padded model inputs for a batch of pairs, and the (CPU) attention mask."""
        device = self.device
        width = max(len(ids) for ids in input_ids)
        pad = self.tokenizer.pad_token_id or 0
        ids_t = torch.full((len(input_ids), width), pad, dtype=torch.long)
        mask_t = torch.zeros((len(input_ids), width), dtype=torch.long)
        types_t = torch.zeros((len(input_ids), width), dtype=torch.long)
        for row, (ids, tt) in enumerate(zip(input_ids, types)):
            ids_t[row, : len(ids)] = torch.as_tensor(ids)
            mask_t[row, : len(ids)] = 1
            if tt is not None:
                types_t[row, : len(tt)] = torch.as_tensor(tt)
        inputs = {"input_ids": ids_t.to(device), "attention_mask": mask_t.to(device)}
        if self._accepts_token_types:
            inputs["token_type_ids"] = types_t.to(device)
        return inputs, mask_t

    def _forward(self, input_ids: list[list[int]], types: list[list[int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """One padded batch through the scorer -> (scores (B,), pooled (B, H))."""
        device = self.device  # the pooled row indices live beside the states
        inputs, mask_t = self._model_inputs(input_ids, types)
        if self.frozen_lower is not None:
            out = self.frozen_lower.forward(self.scorer, inputs, input_ids, types)
        else:
            out = self.scorer(**inputs, output_hidden_states=True)
        last = out.hidden_states[-1]
        if self.settings.pooling == "first":
            pooled = last[:, 0].clone()  # a copy: a view would keep the whole (B, L, H) state alive
        else:
            pooled = last[torch.arange(len(input_ids), device=device), mask_t.sum(1).to(device) - 1]
        return _logits_to_scores(out.logits), pooled

    def score_pairs(
        self, queries: Sequence[str], candidate_lists: Sequence[Sequence[Candidate]], batch_size: int | None = None
    ) -> list[Scored]:
        """Scores and pooled states for many queries at once (no inference_mode: callers
        decide; training calls this with gradients on).

        Pairs from all queries are sorted by length and cut into batches, so padding is
        small and many short queries share one forward pass.
        """
        batch_size = batch_size or self.settings.batch_size
        if bi_encoder.is_bi_encoder(self.scorer):
            return self._score_bi_encoder(queries, candidate_lists, batch_size)
        pairs: list[tuple[int, int, list[int], list[int] | None]] = []
        for qi, (query, cands) in enumerate(zip(queries, candidate_lists)):
            keys = [(c.id, self._doc_text(c)) for c in cands]
            for ci, (ids, tt) in enumerate(self.pairs.encode_pairs(query, keys)):
                pairs.append((qi, ci, ids, tt))
        if self.frozen_lower is not None:  # the frozen lower layers, once per query's pairs
            groups: list[list[tuple[list[int], list[int] | None]]] = [[] for _ in queries]
            for qi, _, ids, tt in pairs:
                groups[qi].append((ids, tt))
            self.frozen_lower.prefill(groups, lambda ids, tt: self._model_inputs(ids, tt)[0])
        pairs.sort(key=lambda p: len(p[2]), reverse=True)
        parts = [
            self._forward([p[2] for p in pairs[i : i + batch_size]], [p[3] for p in pairs[i : i + batch_size]])
            for i in range(0, len(pairs), batch_size)
        ]
        if parts:
            all_scores = torch.cat([s for s, _ in parts])
            all_hidden = torch.cat([h for _, h in parts])
        else:  # no candidates at all
            all_scores = torch.empty(0, device=self.device)
            all_hidden = torch.empty(0, int(self.scorer.config.hidden_size), device=self.device)
        # Gather back to (query, candidate) order; indexing keeps gradients flowing.
        rows_of = [[0] * len(cands) for cands in candidate_lists]
        for row, (qi, ci, _, _) in enumerate(pairs):
            rows_of[qi][ci] = row
        out: list[Scored] = []
        for rows in rows_of:
            index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
            out.append(Scored(all_scores[index], all_hidden[index]))
        return out

    def _score_bi_encoder(self, queries: Sequence[str], candidate_lists: Sequence[Sequence[Candidate]],
                          batch_size: int) -> list[Scored]:  # fmt: skip
        """Queries and passages embedded apart; passages keyed like the pair tokenizer's
        cache, (id, text), with the vector store's embedding when a candidate has one."""
        keys = [[(c.id, self._doc_text(c), c.metadata.get("embedding")) for c in cands] for cands in candidate_lists]
        return [Scored(scores, hidden) for scores, hidden in self.scorer.score(queries, keys, batch_size)]

    @property
    def is_bi_encoder(self) -> bool:
        return bi_encoder.is_bi_encoder(self.scorer)

    @torch.inference_mode()
    def score(self, query: str, candidates: Sequence[Candidate | str]) -> list[float]:
        """Relevance scores of the candidates (higher = better), in input order."""
        cands = self._check(query, candidates)
        return self.score_pairs([query], [cands])[0].scores.float().tolist()

    # ------------------------------------------------------------------ decisions
    def _limits(self, n: int, top_n: int | None, min_k: int) -> tuple[int, int | None]:
        min_k = _count_arg("min_k", min_k, 0)
        top_n = None if top_n is None else _count_arg("top_n", top_n, 0)
        if top_n is not None and top_n < min_k:
            raise ValueError(f"top_n ({top_n}) must be >= min_k ({min_k})")
        return min(min_k, n), top_n

    @torch.inference_mode()
    def rerank(
        self,
        query: str,
        candidates: Sequence[Candidate | str],
        top_n: int | None = None,
        min_k: int = 1,
        dynamic_k: bool = True,
    ) -> Selection:
        """Greedy ranking; keeps candidates until STOP wins (within [min_k, top_n]).

        ``top_n=None`` means the cap the model was trained with (``settings.default_top_n``;
        no cap for an untrained model). With ``dynamic_k=False`` it keeps exactly
        ``top_n`` (all when ``top_n`` is None).
        """
        return self.rerank_batch([query], [candidates], top_n=top_n, min_k=min_k, dynamic_k=dynamic_k)[0]

    @torch.inference_mode()
    def rerank_batch(
        self,
        queries: Sequence[str],
        candidate_lists: Sequence[Sequence[Candidate | str]],
        top_n: int | None = None,
        min_k: int = 1,
        dynamic_k: bool = True,
        batch_size: int | None = None,
    ) -> list[Selection]:
        """:meth:`rerank` for many queries, scored together in length-sorted batches."""
        if top_n is None and dynamic_k:
            top_n = self.settings.default_top_n  # the cap training used: STOP was never trained past it
        # Bad arguments fail here, by name, before any scoring.
        queries = _list_arg("queries", queries)
        candidate_lists = _list_arg("candidate_lists", candidate_lists)
        if batch_size is not None:
            _count_arg("batch_size", batch_size, 1)
        self._limits(0, top_n, min_k)
        if len(queries) != len(candidate_lists):
            raise ValueError(f"{len(queries)} queries but {len(candidate_lists)} candidate lists")
        checked = [self._check(q, c) for q, c in zip(queries, candidate_lists)]
        scored = self.score_pairs(list(queries), checked, batch_size)
        return [self._greedy(s, top_n, min_k, dynamic_k) for s in scored]

    def _greedy(self, scored: Scored, top_n: int | None, min_k: int, dynamic_k: bool) -> Selection:
        n = scored.scores.shape[0]
        min_k, top_n = self._limits(n, top_n, min_k)
        scores = _finite(scored.scores.float())
        order = torch.argsort(scores, descending=True, stable=True)
        limit = selection_limit(n, top_n)
        if dynamic_k:
            k = greedy_k(scores, scored.hidden, self.stop_head, order, min_k=min_k, max_k=top_n, norm_k=self.settings.max_k)
        else:
            k = limit
        return Selection(order=order.tolist(), k=k, scores=scores.tolist(), stopped=k < limit)

    def sample(
        self,
        query: str,
        candidates: Sequence[Candidate | str],
        n: int,
        generator: torch.Generator | None = None,
        top_n: int | None = None,
        min_k: int = 1,
    ) -> list[Selection]:
        """Draw ``n`` selections from the Plackett-Luce-with-stop policy.

        ``top_n`` caps k (default: the reranker's ``max_k`` setting). Each selection's
        ``log_prob`` is filled in.
        """
        _count_arg("n", n, 1)
        self._limits(0, top_n, min_k)
        cands = self._check(query, candidates)
        with torch.no_grad():
            scored = self.score_pairs([query], [cands])[0]
        return self.sample_scored(scored, n, generator=generator, top_n=top_n, min_k=min_k)

    @torch.no_grad()
    def sample_scored(
        self, scored: Scored, n: int, generator: torch.Generator | None = None, top_n: int | None = None, min_k: int = 1
    ) -> list[Selection]:
        """:meth:`sample` from already computed scores (the trainer scores many queries at once)."""
        size = _finite(scored.scores).shape[0]
        top_n = self.settings.max_k if top_n is None else top_n
        min_k, top_n = self._limits(size, top_n, min_k)
        picks = sample_picks(
            scored.scores, scored.hidden, self.stop_head, n,
            min_k=min_k, max_k=top_n, norm_k=self.settings.max_k, generator=generator,
        )  # fmt: skip
        logp = step_log_probs(
            scored.scores, scored.hidden, self.stop_head, picks, min_k=min_k, max_k=top_n, norm_k=self.settings.max_k
        ).total()
        scores = scored.scores.float().tolist()
        limit = selection_limit(size, top_n)
        return [
            Selection(
                order=_complete_order(p, scores), k=len(p), scores=scores, log_prob=float(lp), stopped=len(p) < limit
            )
            for p, lp in zip(picks, logp)
        ]

    def log_prob(
        self,
        query: str,
        candidates: Sequence[Candidate | str],
        selections: Sequence[Selection],
        top_n: int | None = None,
        min_k: int = 1,
    ) -> torch.Tensor:
        """Differentiable log-probabilities (one per selection) of the kept prefixes and
        their stop decisions under the current policy."""
        cands = self._check(query, candidates)
        scored = self.score_pairs([query], [cands])[0]
        return self.step_log_probs(scored, selections, top_n=top_n, min_k=min_k).total()

    def step_log_probs(self, scored: Scored, selections: Sequence[Selection], top_n: int | None = None, min_k: int = 1,
                       stop_grad: bool = True):
        """Per-step log-probabilities (:class:`rrpo.plackett_luce.StepLogProbs`) of selections
        (``stop_grad``: see :func:`rrpo.plackett_luce.step_log_probs`)."""
        size = scored.scores.shape[0]
        top_n = self.settings.max_k if top_n is None else top_n
        min_k, top_n = self._limits(size, top_n, min_k)
        limit = selection_limit(size, top_n)
        for i, sel in enumerate(selections):
            if sel.k < min_k and sel.k != limit:
                raise ValueError(f"selection {i} keeps {sel.k} < min_k ({min_k}) candidates")
            if sel.k > limit:
                raise ValueError(f"selection {i} keeps {sel.k} > the limit ({limit}) candidates")
        return step_log_probs(
            scored.scores, scored.hidden, self.stop_head, [s.kept for s in selections],
            min_k=min_k, max_k=top_n, norm_k=self.settings.max_k, stop_grad=stop_grad,
        )  # fmt: skip


# ---------------------------------------------------------------------- helpers
def _count_arg(name: str, value: Any, low: int) -> int:
    """``value`` as an int >= ``low``; 2.5, "3" and True are not counts."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r:.40}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _list_arg(name: str, value: Any) -> list:
    """A list of ``value``'s items; a str (which would split into characters), None or a
    non-iterable is a TypeError naming the argument."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a list, got {type(value).__name__}")
    return list(value)


def _finite(scores: torch.Tensor) -> torch.Tensor:
    """``scores``, or a ValueError when one is NaN/inf (a broken model must not slip
    silently into a selection or a feedback record)."""
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"the reranker scored candidate {i} as {float(scores[i])}: its weights hold NaN/inf "
            "or its dtype overflowed (try dtype='float32')"
        )
    return scores


def _complete_order(picks: list[int], scores: list[float]) -> list[int]:
    chosen = set(picks)
    rest = sorted((i for i in range(len(scores)) if i not in chosen), key=lambda i: -scores[i])
    return list(picks) + rest


def _logits_to_scores(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:
        return logits[:, 0].float()
    if logits.shape[-1] == 2:  # (not relevant, relevant) classifiers
        return (logits[:, 1] - logits[:, 0]).float()
    raise ValueError(f"a cross-encoder needs 1 or 2 output logits, this one has {logits.shape[-1]}")


def _forward_arg_names(module: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(module.forward).parameters)


def _pick_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        return value
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def _load_cross_encoder(path: str, is_classifier: bool, trust_remote_code: bool, seed: int) -> tuple[nn.Module, set[str]]:
    """A sequence classifier, with a fresh one-logit head (seeded) on a plain encoder;
    and the names of the parameters the checkpoint did not have."""
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if not is_classifier:
        kwargs["num_labels"] = 1
        logger.info("%s is a plain encoder: adding a fresh one-logit head (seed %d)", path, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scorer, loading = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True, **kwargs)
    return scorer, {f"scorer.{name}" for name in loading.get("missing_keys", [])}


def _fresh_settings(path: str, config: Any, mode: str, name: str) -> RerankerSettings:
    """Settings for a checkpoint rrpo did not save: pooling and length from the model."""
    settings = RerankerSettings(
        pooling="first" if config.model_type in FIRST_TOKEN_MODEL_TYPES else "last",
        version=name, base_model=name, scoring=mode,
    )  # fmt: skip
    if mode == "bi_encoder":  # sentence-transformers' own pooling and length, when it says
        settings.pooling, length = bi_encoder.sentence_transformer_defaults(path)
        settings.max_length = length or settings.max_length
    return settings


def _read_settings(path: str) -> RerankerSettings | None:
    file = Path(path) / SETTINGS_FILE
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    fmt = data.pop("rrpo_format", None)
    data.pop("rrpo_version", None)
    if fmt != FORMAT_VERSION:
        raise ValueError(f"{file}: unsupported rrpo_format {fmt!r} (this rrpo reads {FORMAT_VERSION})")
    data.setdefault("stop_parametrization", "absolute")  # saved before the key existed
    data.setdefault("scoring", "cross_encoder")  # saved before bi-encoders existed
    known = RerankerSettings.__dataclass_fields__
    return RerankerSettings(**{k: v for k, v in data.items() if k in known})


def _new_stop_head(hidden_size: int, settings: RerankerSettings) -> StopHead:
    if settings.stop_parametrization not in {"relative", "absolute"}:
        raise ValueError(f"unknown stop_parametrization {settings.stop_parametrization!r}")
    relative = settings.stop_parametrization == "relative"
    return StopHead(
        hidden_size, settings.stop_inner_size, settings.stop_init_bias,
        relative=relative, init_k=settings.stop_init_k if relative else None,
    )  # fmt: skip


def _load_stop_head(path: Path, hidden_size: int, settings: RerankerSettings) -> StopHead:
    from safetensors.torch import load_file

    head = _new_stop_head(hidden_size, settings)
    head.load_state_dict(load_file(str(path / STOP_HEAD_FILE)))
    return head
