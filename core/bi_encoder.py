"""Bi-encoder scoring: query and passage embedded apart, score = scale * cosine + bias.

A sentence-embedding model (all-MiniLM-L6-v2, the packaged default) has no trained
cross-encoder head, but its embeddings already rank passages well. :class:`BiEncoder`
is the ``scorer`` of a :class:`~rrpo.Reranker` in that mode: the reranker's API, the
STOP head, Plackett-Luce and the trainers see the same ``(scores, hidden)`` per
candidate as with a cross-encoder.

- Embeddings: the encoder's last hidden states pooled over the attention mask (mean by
  default, as sentence-transformers does; CLS or last token when the model's
  ``1_Pooling/config.json`` says so), L2-normalised.
- Score: ``scale * cos(q, p) + bias + w * z(BM25)``, all three learned and saved with
  the model (``rrpo_bi_encoder.safetensors``); ``z(BM25)`` is the passage's BM25 for the
  query standardised over the query's candidates (:mod:`rrpo.lexical`), a constant
  feature: the lexical matches a small embedding model misses. A fresh model starts at
  ``w = 1`` (chosen on HotpotQA and SQuAD train questions: gold recall@3 0.787 / 0.926
  against 0.740 / 0.874 for the cosine alone); a model saved before the weight existed
  loads with ``w = 0``, scoring as it did. Set ``scorer.lexical_weight`` to 0 for the
  cosine alone. The scale starts at 20 (sentence-transformers'
  contrastive scale), so scores differ by a few logits and Plackett-Luce is neither
  uniform nor one-hot. The bias does not change any ranking or Plackett-Luce
  probability; it puts ``sigmoid(score) = 0.5`` near the cosine that separates
  relevant from not (the adapters report ``sigmoid(score)`` as relevance, and SFT's BCE
  needs the threshold to learn something other than "push every cosine down").
- Hidden state for the STOP head: ``H * (q * p)``, the elementwise product of the two
  unit vectors, times the width H. It sums to ``H * cos``, carries the query through
  the mean over candidates, needs no new weights, and the factor H gives entries of
  order one like a cross-encoder's pooled state (unit vectors' products are ~1/H).
- Two towers: the query tower trains; the passage tower is a frozen copy by default
  (``bi_encoder_train="query"``, R3's retriever setting), so each passage is embedded
  once and its embedding cached by candidate (id, text) - or taken from the user's
  vector store (``Candidate.metadata["embedding"]``) when
  ``settings.use_candidate_embeddings`` says the store used this passage tower.
  ``bi_encoder_train="both"`` trains the passage tower too (no cache while it trains).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

HEAD_FILE = "rrpo_bi_encoder.safetensors"  # scale, bias and lexical weight
PASSAGE_DIR = "passage_encoder"  # the passage tower, saved only when it differs from the query tower
INIT_SCALE = 20.0
# The cosine at which a fresh model's sigmoid(score) is 0.5: all-MiniLM-L6-v2 on 100
# HotpotQA dev questions gives gold passages 0.53 on average, distractors 0.37.
INIT_THRESHOLD = 0.45
LEXICAL_INIT = 1.0  # a fresh model's weight of z(BM25), in logits (rrpo.lexical: why 1)
TRAIN_MODES = ("query", "both")
POOLINGS = ("mean", "first", "last")

PassageKey = tuple[str, str, Any]  # (candidate id, text as embedded, a given embedding or None)


def is_bi_encoder(scorer: Any) -> bool:
    return isinstance(scorer, BiEncoder)


class PassageEmbeddingCache:
    """Normalised passage embeddings by (candidate id, text), least recently used out
    first, bounded by bytes. Entries belong to one set of passage-tower weights: a
    change of weights (an optimiser step, ``.to()``) empties the cache."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._rows: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._weights: Any = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __getstate__(self) -> dict:  # the trainer deep-copies the policy; a lock cannot be copied
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def lookup(self, weights: Any, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], torch.Tensor]:
        with self._lock:
            if weights != self._weights:  # other weights: every entry is stale
                self._rows.clear()
                self._bytes = 0
                self._weights = weights
            found = {}
            for key in keys:
                row = self._rows.get(key)
                if row is not None:
                    self._rows.move_to_end(key)
                    found[key] = row
            self.hits += len(found)
            self.misses += len(keys) - len(found)
            return found

    def store(self, weights: Any, rows: dict[tuple[str, str], torch.Tensor]) -> None:
        with self._lock:
            if weights != self._weights:
                return  # the weights changed while these were computed
            for key, row in rows.items():
                if key not in self._rows:
                    self._rows[key] = row
                    self._bytes += row.numel() * row.element_size()
            while self._rows and self._bytes > self.max_bytes:
                _, old = self._rows.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()


class BiEncoder(nn.Module):
    """Query tower + passage tower + learned scale and bias (see the module docstring)."""

    def __init__(self, query_encoder: nn.Module, passage_encoder: nn.Module | None = None,
                 scale: float = INIT_SCALE, bias: float | None = None,
                 lexical_weight: float = LEXICAL_INIT):  # fmt: skip
        super().__init__()
        self.query_encoder = query_encoder
        # Always a module of its own: the query tower's updates must not move passages.
        self.passage_encoder = passage_encoder if passage_encoder is not None else copy.deepcopy(query_encoder)
        self.logit_scale = nn.Parameter(torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.tensor(-float(scale) * INIT_THRESHOLD if bias is None else float(bias)))
        self.lexical_weight = nn.Parameter(torch.tensor(float(lexical_weight)))
        self.config = query_encoder.config  # Reranker reads hidden_size / max_position_embeddings here
        self.cache = PassageEmbeddingCache()
        self.frozen_lower: dict[str, Any] = {}  # tower name -> FrozenLowerLayers while training the top layers
        self.tokenizer: Any = None
        self.max_length = 512
        self.pooling = "mean"
        self.use_candidate_embeddings = False
        self.train_mode = "query"
        self.set_train_mode("query")

    # ------------------------------------------------------------------ configuration
    def configure(self, tokenizer: Any, max_length: int, settings: Any) -> None:
        """Take tokenizer, length and the saved choices from the reranker's settings."""
        if settings.pooling not in POOLINGS:
            raise ValueError(f"bi-encoder pooling must be one of {POOLINGS}, got {settings.pooling!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = settings.pooling
        self.use_candidate_embeddings = bool(settings.use_candidate_embeddings)
        self.set_train_mode(settings.bi_encoder_train)

    def set_train_mode(self, mode: str) -> None:
        """``"query"``: the passage tower is frozen (cached embeddings); ``"both"``: it trains too."""
        if mode not in TRAIN_MODES:
            raise ValueError(f"bi_encoder_train must be one of {TRAIN_MODES}, got {mode!r}")
        self.train_mode = mode
        self.passage_encoder.requires_grad_(mode == "both")
        self.train(self.training)

    def train(self, mode: bool = True) -> "BiEncoder":
        super().train(mode)
        if self.train_mode == "query":
            self.passage_encoder.eval()  # cached embeddings must never carry dropout noise
        return self

    # ------------------------------------------------------------------ layers
    def train_top_layers(self, n: int) -> None:
        """Freeze all but the top ``n`` layers of each trained tower (their lower
        layers' outputs computed once per text); a frozen passage tower stays frozen."""
        from .frozen_layers import FrozenLowerLayers, encoder_layers

        self.release_frozen_layers()
        if not n:
            return
        towers = ["query_encoder"] + (["passage_encoder"] if self.train_mode == "both" else [])
        for name in towers:
            layers = encoder_layers(getattr(self, name))
            if layers is None:
                logger.warning("%s has no BERT-like encoder.layer list: training all its layers", name)
            elif n < len(layers):
                self.frozen_lower[name] = FrozenLowerLayers(getattr(self, name), n)

    def release_frozen_layers(self) -> None:
        for frozen in self.frozen_lower.values():
            frozen.release()
        self.frozen_lower = {}
        self.set_train_mode(self.train_mode)  # release() unfreezes what it froze: re-assert which tower trains

    # ------------------------------------------------------------------ embedding
    def embed(self, tower: str, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        """Normalised embeddings (n, H) float32 of ``texts`` by one tower, in length-sorted batches."""
        encoder = getattr(self, tower)
        device = self.logit_scale.device
        if not texts:
            return torch.empty(0, int(self.config.hidden_size), device=device)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        parts = [self._forward(tower, encoder, [ids[i] for i in order[s : s + batch_size]])
                 for s in range(0, len(order), batch_size)]  # fmt: skip
        sorted_rows = torch.cat(parts)
        back = torch.empty(len(order), dtype=torch.long, device=device)
        back[torch.as_tensor(order, device=device)] = torch.arange(len(order), device=device)
        return sorted_rows[back]  # indexing keeps gradients flowing

    def _forward(self, tower: str, encoder: nn.Module, rows: list[list[int]]) -> torch.Tensor:
        device = self.logit_scale.device
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(r)
            mask[i, : len(r)] = 1
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        frozen = self.frozen_lower.get(tower)
        if frozen is not None:
            last = frozen.forward(encoder, inputs, rows, [None] * len(rows)).hidden_states[-1]
        else:
            last = encoder(**inputs).last_hidden_state
        return nn.functional.normalize(pool(last.float(), inputs["attention_mask"], self.pooling), dim=-1)

    def passage_embeddings(self, keys: Sequence[PassageKey], batch_size: int) -> torch.Tensor:
        """Embeddings (len(keys), H) of passages; from the cache (or the candidates' own
        embeddings) when the passage tower is not training right now."""
        if torch.is_grad_enabled() and self.train_mode == "both":
            return self.embed("passage_encoder", [text for _, text, _ in keys], batch_size)
        weights = _weights_id(self.passage_encoder)
        unique = list(dict.fromkeys((cid, text) for cid, text, _ in keys))
        found = self.cache.lookup(weights, unique)
        given = {(cid, text): emb for cid, text, emb in keys if emb is not None}
        missing = [key for key in unique if key not in found]
        fresh = {}
        if self.use_candidate_embeddings:
            fresh.update(self._given_rows([k for k in missing if k in given], given))
        todo = [key for key in missing if key not in fresh]
        with torch.no_grad():
            rows = self.embed("passage_encoder", [text for _, text in todo], batch_size)
        fresh.update(zip(todo, rows))
        self.cache.store(weights, fresh)
        found.update(fresh)
        # stack() makes rows cached under inference_mode usable by a later backward pass.
        return torch.stack([found[(cid, text)] for cid, text, _ in keys]) if keys else rows

    def _given_rows(self, keys: list[tuple[str, str]], given: dict) -> dict[tuple[str, str], torch.Tensor]:
        """The vector store's embeddings, normalised; one of the wrong width is skipped."""
        out = {}
        width = int(self.config.hidden_size)
        for key in keys:
            row = torch.as_tensor(given[key], dtype=torch.float32, device=self.logit_scale.device).flatten()
            if row.numel() != width:
                logger.warning("candidate %r: its embedding has %d values, this model %d: embedding it here",
                               key[0], row.numel(), width)  # fmt: skip
                continue
            out[key] = nn.functional.normalize(row, dim=0)
        return out

    # ------------------------------------------------------------------ scoring
    def score(self, queries: Sequence[str], passages: Sequence[Sequence[PassageKey]],
              batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        """(scores (n,), STOP-head states (n, H)) per query; differentiable through the
        query tower (and the passage tower in ``"both"`` mode) when gradients are on."""
        q = self.embed("query_encoder", list(queries), batch_size)
        flat = [key for keys in passages for key in keys]
        p = self.passage_embeddings(flat, batch_size)
        scale, bias, lexical = self.logit_scale.float(), self.bias.float(), self.lexical_weight.float()
        width = float(self.config.hidden_size)
        # w = 0 (a model saved before the feature) skips BM25 unless w is training; read
        # once per call, not per query (on a GPU each read is a sync)
        use_lexical = float(lexical.detach()) != 0.0 or (torch.is_grad_enabled() and lexical.requires_grad)
        out, start = [], 0
        for qi, keys in enumerate(passages):
            rows = p[start : start + len(keys)]
            start += len(keys)
            scores = scale * (rows @ q[qi]) + bias
            if use_lexical:
                scores = scores + lexical * self.lexical_features(queries[qi], keys, scores.device)
            out.append((scores, width * rows * q[qi]))
        return out

    @staticmethod
    def lexical_features(query: str, keys: Sequence[PassageKey], device: Any) -> torch.Tensor:
        """z(BM25) of each passage for the query, over these passages (no gradient)."""
        from .lexical import bm25_scores, standardised

        values = standardised(bm25_scores(query, [text for _, text, _ in keys]))
        return torch.tensor(values, dtype=torch.float32, device=device)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path, safe_serialization: bool = True) -> None:
        """The query tower as the directory's plain Hugging Face model; the passage tower
        in ``passage_encoder/`` only when it differs; scale and bias beside them."""
        from safetensors.torch import save_file

        directory = Path(directory)
        self.query_encoder.save_pretrained(directory, safe_serialization=True)
        passage_dir = directory / PASSAGE_DIR
        if passage_dir.exists():
            shutil.rmtree(passage_dir)  # an older save's tower must not reload with these weights
        if not _same_weights(self.query_encoder, self.passage_encoder):
            self.passage_encoder.save_pretrained(passage_dir, safe_serialization=True)
        head = {"logit_scale": self.logit_scale.detach().float().cpu().reshape(1),
                "bias": self.bias.detach().float().cpu().reshape(1),
                "lexical_weight": self.lexical_weight.detach().float().cpu().reshape(1)}  # fmt: skip
        save_file(head, str(directory / HEAD_FILE))


def pool(last: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool (B, T, H) states over the attention mask: mean, first token or last real token."""
    if how == "first":
        return last[:, 0]
    if how == "last":
        return last[torch.arange(last.shape[0], device=last.device), mask.sum(1) - 1]
    weights = mask.unsqueeze(-1).to(last.dtype)
    return (last * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def load_bi_encoder(path: str, trust_remote_code: bool) -> tuple[BiEncoder, set[str]]:
    """A BiEncoder from a directory or hub id, and the names of its fresh parameters
    (scale and bias when the directory has none saved)."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    kwargs = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    query = AutoModel.from_pretrained(path, **kwargs)
    local = Path(path)
    passage = AutoModel.from_pretrained(local / PASSAGE_DIR, **kwargs) if (local / PASSAGE_DIR).is_dir() else None
    if (local / HEAD_FILE).is_file():
        head = load_file(str(local / HEAD_FILE))
        # saved before the lexical weight existed: 0, so the model scores as it did
        lexical = float(head["lexical_weight"]) if "lexical_weight" in head else 0.0
        return BiEncoder(query, passage, float(head["logit_scale"]), float(head["bias"]), lexical), set()
    logger.info("%s: bi-encoder with a fresh scale (%.0f), bias and lexical weight (%.1f)", path, INIT_SCALE, LEXICAL_INIT)
    return BiEncoder(query, passage), {"scorer.logit_scale", "scorer.bias", "scorer.lexical_weight"}


def sentence_transformer_defaults(path: str) -> tuple[str, int | None]:
    """(pooling, max length) from a sentence-transformers model's own files, if any
    (``1_Pooling/config.json``, ``sentence_bert_config.json``); else (mean, None)."""
    pooling_cfg = _read_model_json(path, "1_Pooling/config.json") or {}
    pooling = "mean"
    if pooling_cfg.get("pooling_mode_cls_token") and not pooling_cfg.get("pooling_mode_mean_tokens"):
        pooling = "first"
    elif pooling_cfg.get("pooling_mode_lasttoken"):
        pooling = "last"
    length = (_read_model_json(path, "sentence_bert_config.json") or {}).get("max_seq_length")
    return pooling, int(length) if length else None


def _read_model_json(path: str, name: str) -> dict | None:
    local = Path(path) / name
    if Path(path).is_dir():
        return json.loads(local.read_text()) if local.is_file() else None
    try:  # a hub id: the file from the local cache or the hub, if it exists
        from transformers.utils import cached_file

        found = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    return json.loads(Path(found).read_text()) if found else None


def _weights_id(module: nn.Module) -> tuple:
    """Changes whenever the module's weights do: storage, device, dtype, in-place updates."""
    return tuple((p.data_ptr(), p.device, p.dtype, p._version) for p in module.parameters())


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
