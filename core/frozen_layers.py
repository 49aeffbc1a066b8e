"""Train only the top encoder layers; compute the frozen lower layers once per pair.

RRPO visits the same (query, passage) pairs again and again: every PPO epoch, every
epoch over the data, and the rollout before them. When only the top ``N`` layers of the
cross-encoder train, the embeddings and the layers below are a fixed function of the
pair's tokens, so their output is computed once (no gradient), kept, and the forward
and backward passes of later visits run through the top layers only.

Works for encoders laid out as ``base_model.embeddings`` + ``base_model.encoder.layer``
(BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, ...); other layouts get a clear error. The
kept states are bounded by bytes and evicted least recently used.
"""

from __future__ import annotations

import contextlib
from array import array
from collections import OrderedDict
from typing import Any, Iterator

import torch
from torch import nn


def encoder_layers(scorer: nn.Module) -> nn.ModuleList | None:
    """The encoder's layer list when the model is laid out BERT-style, else None."""
    base = getattr(scorer, "base_model", scorer)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    return layers if hasattr(base, "embeddings") and isinstance(layers, nn.ModuleList) else None


class FrozenLowerLayers:
    """Freezes everything below the top ``top_layers`` encoder layers of ``scorer`` and
    caches those layers' outputs by the pair's token ids."""

    def __init__(self, scorer: nn.Module, top_layers: int, max_bytes: int = 2 * 2**30):
        base = getattr(scorer, "base_model", scorer)
        layers = encoder_layers(scorer)
        if layers is None:
            raise ValueError(
                f"train_top_layers needs an encoder with embeddings + encoder.layer (BERT-like); "
                f"{type(scorer).__name__} is laid out differently: use train_top_layers=0"
            )
        if not 1 <= top_layers <= len(layers):
            raise ValueError(f"train_top_layers must be in [1, {len(layers)}] for this model, got {top_layers}")
        self.base = base
        self.layers = layers
        self.split = len(layers) - top_layers
        self.max_bytes = max_bytes
        self._states: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        base.embeddings.requires_grad_(False)
        for layer in layers[: self.split]:
            layer.requires_grad_(False)

    def release(self) -> None:
        """Unfreeze and drop the kept states (training is over)."""
        self.base.embeddings.requires_grad_(True)
        for layer in self.layers[: self.split]:
            layer.requires_grad_(True)
        self._states.clear()
        self._bytes = 0

    # ------------------------------------------------------------------ forward
    def forward(self, scorer: nn.Module, inputs: dict[str, torch.Tensor], rows: list[list[int]],
                types: list[list[int] | None]) -> Any:  # fmt: skip
        """``scorer(**inputs, output_hidden_states=True)``, with the lower layers' output
        taken from the cache (computed now for pairs not seen before)."""
        keys = [_key(ids, tt) for ids, tt in zip(rows, types)]
        self._fill([i for i, k in enumerate(keys) if k not in self._states], keys, rows, inputs)
        width = inputs["input_ids"].shape[1]
        lower = torch.zeros(len(rows), width, self._hidden_size(), device=inputs["input_ids"].device)
        for i, key in enumerate(keys):
            state = self._states[key]
            self._states.move_to_end(key)
            lower[i, : state.shape[0]] = state
        with self._only(self.layers[self.split :]), self._embeddings_return(lower):
            return scorer(**inputs, output_hidden_states=True)

    def prefill(self, groups: list[list[tuple[list[int], list[int] | None]]], make_inputs: Any) -> None:
        """Compute the missing states one group (one query's candidates) at a time.

        A pair's kept state must not depend on which training batch (and so which
        padding) it first came in, or a resumed run would differ from an uninterrupted
        one in the last bits: a query's pairs are always computed together, padded to
        that query's longest pair, whatever else the step holds. ``make_inputs(ids,
        types)`` builds the padded model inputs.
        """
        with torch.no_grad(), self._only(self.layers[: self.split]):
            for group in groups:
                todo = [(ids, tt) for ids, tt in group if _key(ids, tt) not in self._states]
                if not todo:
                    continue
                states = self.base(**make_inputs([i for i, _ in todo], [t for _, t in todo])).last_hidden_state
                for j, (ids, tt) in enumerate(todo):
                    self._put(_key(ids, tt), states[j, : len(ids)].float().clone())

    def _fill(self, missing: list[int], keys: list[bytes], rows: list[list[int]], inputs: dict[str, torch.Tensor]) -> None:
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if not missing:
            return
        # Pairs that prefill did not cover (evicted since): one at a time, unpadded.
        with torch.no_grad(), self._only(self.layers[: self.split]):
            for i in missing:
                one = {name: value[i : i + 1, : len(rows[i])] for name, value in inputs.items()}
                self._put(keys[i], self.base(**one).last_hidden_state[0].float().clone())

    def _put(self, key: bytes, state: torch.Tensor) -> None:
        self._states[key] = state
        self._bytes += state.numel() * state.element_size()
        while self._bytes > self.max_bytes and len(self._states) > 1:
            _, old = self._states.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def _hidden_size(self) -> int:
        return int(self.base.config.hidden_size)

    @contextlib.contextmanager
    def _only(self, layers: Any) -> Iterator[None]:
        """Run the encoder over a slice of its layers (restored afterwards)."""
        encoder = self.base.encoder
        encoder.layer = nn.ModuleList(list(layers))
        try:
            yield
        finally:
            encoder.layer = self.layers

    @contextlib.contextmanager
    def _embeddings_return(self, states: torch.Tensor) -> Iterator[None]:
        """Make the embeddings module hand ``states`` to the layers above it."""
        handle = self.base.embeddings.register_forward_hook(lambda module, args, output: states.to(output.dtype))
        try:
            yield
        finally:
            handle.remove()


def _key(ids: list[int], types: list[int] | None) -> bytes:
    return array("i", ids).tobytes() + b"|" + (array("b", types).tobytes() if types is not None else b"")
