"""Fast CPU inference for a trained reranker: int8 Linear layers (``backend="int8"``).

``Reranker.from_pretrained(path, backend="int8")`` (or :func:`quantize_int8` on a
loaded reranker) swaps the cross-encoder's Linear layers for int8 ones: weights
quantized once, per output channel; activations quantized on the fly, per call (torch's
dynamic quantization, fbgemm/oneDNN kernels, no extra dependency). The STOP head, the
embeddings, the LayerNorms and the scoring head stay in fp32, so dynamic k works as
before. It is an inference backend: training refuses it (train the fp32 model, then
quantize).

Naive dynamic int8 (every Linear, one scale per weight tensor) reorders rankings. What
keeps them, measured on an SFT MiniLM over HotpotQA (``benchmarks/speed.py``):

- one weight scale per output channel instead of one per tensor;
- the pooler and classifier in fp32 (they see one token per pair: free);
- 8-bit activations instead of torch's default 7 (``reduce_range``), where the CPU has
  VNNI/AMX int8 dot products, which cannot saturate (AVX2's can: 7 bits stay there);
- optionally, SmoothQuant on real pairs (``calibration=``): per input channel, move the
  activations' outliers into the weights, which quantize per channel anyway.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import warnings
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .policy import Reranker
from .types import Candidate

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "int8")
# Module names (fnmatch patterns) kept in fp32 by default: the scoring head sees one
# token per pair, so int8 would save nothing there and only add error to the score.
KEEP_FP32 = ("*pooler*", "*classifier*", "score")

_TRAINING_REFUSED = (
    "this reranker runs the int8 inference backend and cannot be trained: train the fp32 "
    "model (Reranker.from_pretrained(path) without backend=), save it, and load it with "
    "backend='int8' for inference"
)


def check_backend(backend: str) -> str:
    """``backend`` if rrpo knows it; a ValueError naming the choices otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(map(repr, BACKENDS))}")
    return backend


def backend_device(backend: str, device: str | None) -> str | None:
    """The device a backend runs on: int8 kernels exist on the CPU only."""
    if backend == "torch":
        return device
    if device is not None and not str(device).startswith("cpu"):
        raise ValueError(f"backend={backend!r} runs on the CPU only, got device={device!r}")
    return "cpu"


def apply_backend(reranker: Reranker, backend: str, **options: Any) -> Reranker:
    """``reranker`` as ``backend`` runs it (``"torch"``: unchanged)."""
    if check_backend(backend) == "torch":
        return reranker
    return quantize_int8(reranker, **options)


# ---------------------------------------------------------------------- the model
class QuantizedReranker(Reranker):
    """A :class:`Reranker` whose cross-encoder runs int8 Linear layers: inference only."""

    backend = "int8"

    def train(self, mode: bool = True) -> "QuantizedReranker":
        if mode:
            raise RuntimeError(_TRAINING_REFUSED)
        return super().train(False)

    def train_top_layers(self, n: int) -> None:
        raise RuntimeError(_TRAINING_REFUSED)

    def save_pretrained(self, directory: Any) -> Any:
        raise RuntimeError(
            "an int8 reranker is not saved: save the fp32 model and load it with backend='int8' "
            "(quantizing at load time takes about a second)"
        )

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "QuantizedReranker":
        # .to()/.cuda()/.half() all land here. The int8 kernels are CPU-only, and a dtype
        # cast would hit the fp32 parts only; let moves to the CPU through.
        probe = fn(torch.zeros(1))
        if probe.device.type != "cpu" or probe.dtype != torch.float32:
            raise RuntimeError(f"an int8 reranker stays on the CPU in fp32 (asked for {probe.device.type}/{probe.dtype})")
        return super()._apply(fn, *args, **kwargs)


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with int8 weights and activations quantized on every call.

    ``inv_smooth`` (optional, per input channel) divides the input before quantization;
    the weight was multiplied by the same factors, so the product is unchanged.
    """

    def __init__(self, linear: nn.Linear, per_channel: bool, reduce_range: bool, smooth: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        if smooth is not None:
            weight = weight * smooth[None, :]
        self.register_buffer("inv_smooth", None if smooth is None else (1.0 / smooth).contiguous())
        bias = None if linear.bias is None else linear.bias.detach().float()
        self._packed = _LinearPacked(_quantize_weight(weight, per_channel), bias)
        self.reduce_range = reduce_range
        self.per_channel = per_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        y = torch.ops.quantized.linear_dynamic(x.float(), self._packed.packed, reduce_range=self.reduce_range)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, per_channel={self.per_channel}, "
                f"reduce_range={self.reduce_range}, smoothed={self.inv_smooth is not None}")  # fmt: skip


class _LinearPacked(nn.Module):
    """Holds fbgemm's packed weight; deep-copies (the trainers copy models) by re-packing."""

    def __init__(self, qweight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.qweight, self.bias = qweight, bias
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def __deepcopy__(self, memo: dict) -> "_LinearPacked":
        return _LinearPacked(self.qweight, self.bias)


def _quantize_weight(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Symmetric int8 weights: one scale per output row, or one for the whole tensor."""
    absmax = weight.abs().amax(dim=1) if per_channel else weight.abs().max().expand(weight.shape[0])
    scales = (absmax / 127.0).clamp_min(1e-12).double()
    with warnings.catch_warnings():  # torch 2.10+ marks quantized tensors deprecated; still the fbgemm path
        warnings.simplefilter("ignore")
        if per_channel:
            zeros = torch.zeros(weight.shape[0], dtype=torch.long)
            return torch.quantize_per_channel(weight, scales, zeros, axis=0, dtype=torch.qint8)
        return torch.quantize_per_tensor(weight, float(scales[0]), 0, torch.qint8)


# ---------------------------------------------------------------------- converting
def quantize_int8(
    reranker: Reranker,
    keep_fp32: Sequence[str] = KEEP_FP32,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    calibration: Iterable[tuple[str, Sequence[Candidate]]] | None = None,
    smooth_alpha: float = 0.5,
) -> QuantizedReranker:
    """An int8 copy of ``reranker`` (which is left as it is) for CPU inference.

    ``keep_fp32``: fnmatch patterns of the scorer's module names that stay fp32.
    ``reduce_range=None``: 7-bit activations unless the CPU has VNNI/AMX int8.
    ``calibration``: (query, candidates) pairs like the ones to be ranked; when given,
    each quantized Linear is smoothed with ``smooth_alpha`` (SmoothQuant).
    """
    _require_quantized_engine()
    if calibration is not None and getattr(reranker.settings, "scoring", "cross_encoder") != "cross_encoder":
        raise ValueError("calibration= is implemented for cross-encoders; quantize this reranker without it")
    if reduce_range is None:
        reduce_range = not cpu_has_int8_dot()
    scorer = copy.deepcopy(reranker.scorer).float().cpu().eval()
    targets = {name: m for name, m in scorer.named_modules() if _quantizable(name, m, keep_fp32)}
    if not targets:
        raise ValueError(f"{type(scorer).__name__} has no nn.Linear layers outside keep_fp32={tuple(keep_fp32)}")
    smooth = _smooth_factors(reranker, scorer, targets, calibration, smooth_alpha) if calibration is not None else {}
    for name, linear in targets.items():
        _set_module(scorer, name, Int8Linear(linear, per_channel, reduce_range, smooth.get(name)))
    model = QuantizedReranker(
        scorer, reranker.tokenizer, copy.deepcopy(reranker.settings), copy.deepcopy(reranker.stop_head).float().cpu(),
        name_or_path=reranker.name_or_path,
    )  # fmt: skip
    return model.eval()


def _quantizable(name: str, module: nn.Module, keep_fp32: Sequence[str]) -> bool:
    return type(module) is nn.Linear and not any(fnmatch.fnmatch(name, pattern) for pattern in keep_fp32)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def cpu_has_int8_dot() -> bool:
    """True when the CPU multiplies u8 x s8 into int32 without saturating (VNNI, AMX);
    an unknown CPU gets False: 7-bit activations are safe everywhere."""
    from .models import cpu_flags

    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def _require_quantized_engine() -> None:
    engines = torch.backends.quantized.supported_engines
    if not {"fbgemm", "x86", "onednn"} & set(engines) or not hasattr(torch.ops.quantized, "linear_dynamic"):
        raise RuntimeError(f"backend='int8' needs torch's fbgemm/x86 quantized kernels; this torch has {engines}")


# ---------------------------------------------------------------------- SmoothQuant
@torch.inference_mode()
def _smooth_factors(
    reranker: Reranker, scorer: nn.Module, targets: dict[str, nn.Linear],
    calibration: Iterable[tuple[str, Sequence[Candidate]]], alpha: float,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per Linear, s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) over real pairs' inputs.

    Dividing input channel j by s_j and multiplying the weight's column j by it leaves
    the product unchanged but flattens the activation outliers that one per-tensor
    activation scale cannot represent (SmoothQuant, arXiv 2211.10438).
    """
    absmax = _input_absmax(reranker, scorer, targets, calibration)
    factors = {}
    for name, linear in targets.items():
        if name not in absmax:
            continue
        w = linear.weight.detach().float().abs().amax(dim=0).clamp_min(1e-5)
        a = absmax[name].clamp_min(1e-5)
        factors[name] = (a.pow(alpha) / w.pow(1 - alpha)).clamp(1e-2, 1e2)
    return factors


def _input_absmax(
    reranker: Reranker, scorer: nn.Module, targets: dict[str, nn.Linear],
    calibration: Iterable[tuple[str, Sequence[Candidate]]],
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Largest |input| per channel of each target Linear, over the real tokens of the
    calibration pairs (padding excluded: it is never scored)."""
    absmax: dict[str, torch.Tensor] = {}
    mask: list[torch.Tensor] = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].float()
            x = x[mask[0]] if x.dim() == 3 else x.reshape(-1, x.shape[-1])  # (real tokens, in_features)
            seen = x.abs().amax(dim=0)
            absmax[name] = seen if name not in absmax else torch.maximum(absmax[name], seen)
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in targets.items()]
    fp32 = Reranker(scorer, reranker.tokenizer, reranker.settings, reranker.stop_head)  # our copy, fp32
    try:
        for query, candidates in calibration:
            keys = [(c.id, fp32._doc_text(c)) for c in candidates]
            rows = fp32.pairs.encode_pairs(query, keys)
            lengths = torch.as_tensor([len(ids) for ids, _ in rows])
            mask[:] = [torch.arange(int(lengths.max()))[None, :] < lengths[:, None]]
            fp32._forward([ids for ids, _ in rows], [tt for _, tt in rows])
    finally:
        for h in handles:
            h.remove()
    if not absmax:
        raise ValueError("calibration: no (query, candidates) pairs were given")
    return absmax
