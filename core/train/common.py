"""Pieces both trainers share: optimiser, schedule, autocast, metrics log, curves plot,
and resumable checkpoints.

A checkpoint is a directory written under a temporary name and renamed into place, so a
process killed mid-save leaves either the previous checkpoint or the new one, never half
of one. It holds the model as a plain Hugging Face directory (safetensors) and the
trainer state (optimiser, scheduler, RNG, step) in ``trainer_state.pt``, which is read
back with ``torch.load(weights_only=True)``: tensors and plain Python values only.

``checkpoint.json`` is written last: the run's id and a SHA-256 of every file. Resume
takes the newest checkpoint that matches it and skips a damaged one (a disk that lost
the tail of a file), naming the bad file; retention deletes only the current run's
older checkpoints. A fresh run refuses an ``out_dir`` that holds another run's
checkpoints or metrics unless told to overwrite them (:func:`claim_out_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import torch

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.pt"
MARKER_FILE = "checkpoint.json"  # written last: run id and checksums
METRICS_FILE = "metrics.jsonl"
READER_CACHE_FILE = "reader_cache.sqlite"  # the trainer's response cache, kept with the run

logger = logging.getLogger(__name__)


def make_optimizer(
    policy: Any, lr: float, stop_head_lr: float, weight_decay: float, head_lr: float | None = None
) -> torch.optim.AdamW:
    """AdamW with up to three groups: the cross-encoder; freshly initialised scoring-head
    weights (``policy.fresh_parameters``) at ``head_lr``; the STOP head at its own rate.

    A fresh one-logit head gives near-equal scores, so Plackett-Luce is uniform and the
    encoder's small rate cannot leave that plateau: the fresh weights need a larger one.
    """
    stop_ids = {id(p) for p in policy.stop_head.parameters()}
    fresh_names = getattr(policy, "fresh_parameters", set()) if head_lr is not None else set()
    fresh = [p for n, p in policy.named_parameters() if n in fresh_names and p.requires_grad]
    fresh_ids = {id(p) for p in fresh}
    encoder = [p for p in policy.parameters() if p.requires_grad and id(p) not in stop_ids | fresh_ids]
    head = [p for p in policy.stop_head.parameters() if p.requires_grad]
    groups = [
        {"params": encoder, "lr": lr, "weight_decay": weight_decay},
        {"params": head, "lr": stop_head_lr, "weight_decay": 0.0},
    ]
    if fresh:
        groups.append({"params": fresh, "lr": head_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: torch.device, bf16: bool | None) -> contextlib.AbstractContextManager:
    use = (device.type == "cuda") if bf16 is None else bf16
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_float32(policy: Any) -> None:
    """Training keeps master weights in fp32 (bf16 only under autocast)."""
    if next(policy.scorer.parameters()).dtype != torch.float32:
        policy.scorer.float()


class MetricsLog:
    """Appends one JSON line per step and flushes it, so a crash loses no finished step."""

    def __init__(self, path: Path, resume: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and path.exists():
            path.unlink()
        self.rows: list[dict[str, Any]] = read_metrics(path) if resume else []

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows of steps after the checkpoint (they will be redone)."""
        self.rows = [r for r in self.rows if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash: everything before it is intact
    return rows


def plot_curves(rows: list[dict[str, Any]], keys: Iterable[str], path: Path, title: str) -> Path | None:
    """A PNG with one panel per metric against the step (None when matplotlib is absent)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = [k for k in keys if any(k in r for r in rows)]
    if not rows or not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", linewidth=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- RNG and checkpoints
def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "sampler": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


POLICY_STATE_FILE = "policy_state.safetensors"


def save_checkpoint(
    out_dir: Path, step: int, policy: Any, trainer_state: dict[str, Any], save_model: Any, keep: int = 2,
    run_id: str = "",
) -> Path:
    """``save_model(dir)`` writes the usable reranker (merged, when LoRA is on);
    ``policy_state.safetensors`` keeps the exact training parameters for ``--resume``.
    Of the checkpoints marked with ``run_id``, the newest ``keep`` stay."""
    from safetensors.torch import save_model as save_tensors

    final = out_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = out_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(tmp / "model")
    save_tensors(policy, str(tmp / POLICY_STATE_FILE))
    torch.save(trainer_state, tmp / STATE_FILE)
    _write_marker(tmp, step, run_id)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    mine = [path for _, path in list_checkpoints(out_dir) if checkpoint_run(path) == run_id]
    for old in mine[:-keep]:  # another run's checkpoints are never this run's to delete
        shutil.rmtree(old, ignore_errors=True)
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_marker(directory: Path, step: int, run_id: str) -> None:
    files = {p.relative_to(directory).as_posix(): _sha256(p) for p in sorted(directory.rglob("*")) if p.is_file()}
    (directory / MARKER_FILE).write_text(json.dumps({"step": step, "run_id": run_id, "files": files}, indent=1))


def _read_marker(checkpoint: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((checkpoint / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def checkpoint_run(checkpoint: Path) -> str | None:
    """The id of the run that wrote ``checkpoint`` (None without a readable marker)."""
    marker = _read_marker(checkpoint)
    return None if marker is None else marker.get("run_id")


def verify_checkpoint(checkpoint: Path) -> str | None:
    """None when every file matches the marker's checksum; else what is wrong, naming
    the file. A checkpoint from before markers existed is not checked here (loading it
    is the check)."""
    if not (checkpoint / MARKER_FILE).exists():
        return None
    marker = _read_marker(checkpoint)
    if marker is None or not isinstance(marker.get("files"), dict):
        return f"{MARKER_FILE} is unreadable"
    for name, digest in marker["files"].items():
        file = checkpoint / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file) != digest:
            return f"{name} does not match its checksum (truncated or changed after the save)"
    return None


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in out_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit() and (path / STATE_FILE).is_file() and (path / POLICY_STATE_FILE).is_file():
            found.append((int(suffix), path))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read back."""


def load_checkpoint(checkpoint: Path, policy: Any) -> dict[str, Any]:
    """Restore the policy's parameters in place and return the trainer state."""
    from safetensors.torch import load_model

    try:
        load_model(policy, str(checkpoint / POLICY_STATE_FILE), device=str(next(policy.parameters()).device))
    except Exception as exc:  # safetensors and torch raise many types for a damaged file
        raise CheckpointError(f"{POLICY_STATE_FILE} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    try:
        return torch.load(checkpoint / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"{STATE_FILE} cannot be loaded: {type(exc).__name__}: {exc}") from exc


def load_latest_checkpoint(out_dir: Path, policy: Any) -> tuple[Path, dict[str, Any]] | None:
    """Restore the newest checkpoint that verifies and loads; a damaged newer one is
    skipped with a warning naming the bad file. None when ``out_dir`` holds none; a
    :class:`CheckpointError` listing the problems when none of them is usable."""
    problems = []
    for _, checkpoint in reversed(list_checkpoints(out_dir)):
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            try:
                return checkpoint, load_checkpoint(checkpoint, policy)
            except CheckpointError as exc:
                problem = str(exc)
        logger.warning("checkpoint %s is damaged (%s): trying an older one", checkpoint, problem)
        problems.append(f"{checkpoint.name}: {problem}")
    if problems:
        raise CheckpointError(f"no usable checkpoint in {out_dir}: " + "; ".join(problems))
    return None


def claim_out_dir(out_dir: Path, overwrite: bool, remove: bool = True) -> None:
    """Check that a fresh run may write into ``out_dir``: one that holds another run's
    checkpoints or metrics is refused (a ValueError saying what to do), unless
    ``overwrite``, when those files and the run's reader cache are deleted (by the
    process with ``remove``: rank 0)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} is a file, not a folder")
    if not out_dir.is_dir():
        return
    used = sorted(out_dir.glob(f"{CHECKPOINT_PREFIX}*"))
    metrics = out_dir / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size:
        used.append(metrics)
    if not used:
        return
    if not overwrite:
        names = ", ".join(p.name for p in used[:3]) + (", ..." if len(used) > 3 else "")
        raise ValueError(
            f"{out_dir} already holds a training run ({names}); resume it (--resume, resume=True), "
            "start over (--overwrite, overwrite=True: deletes its checkpoints, metrics and reader "
            "cache) or choose another --out"
        )
    if not remove:
        return
    logger.warning("overwrite: deleting the earlier run's checkpoints, metrics and reader cache in %s", out_dir)
    for path in used + sorted(out_dir.glob(f".tmp-{CHECKPOINT_PREFIX}*")):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for suffix in ("", "-wal", "-shm"):
        (out_dir / (READER_CACHE_FILE + suffix)).unlink(missing_ok=True)


class Throughput:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def rate(self, count: float) -> float:
        return count / max(1e-9, time.perf_counter() - self.start)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


# ---------------------------------------------------------------- data parallel
# Both trainers call the policy through its methods, not ``forward``, so DDP's hooks would
# not see it: gradients are averaged by an explicit all-reduce, and the batch statistics
# that a single process would take over the whole batch (means of the loss terms, the
# advantages' scale) are reduced over the ranks, so N processes over a global batch take
# the same step as one process over it.
def distributed_rank() -> tuple[int, int]:
    """(rank, world size) under ``accelerate launch`` / ``torchrun``: one process per device."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def sync_gradients(module: Any, world: int) -> None:
    """Average the gradients of every trainable parameter over the ranks, in one
    all-reduce. A parameter without a gradient on this rank (no sample reached it, or the
    rank had nothing to learn from) counts as zero: every rank must reduce the same
    tensors, or the collective hangs or mixes them up."""
    if world <= 1:
        return
    import torch.distributed as dist

    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def global_mean(terms: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of ``terms`` over the whole batch, as a loss whose gradient, once averaged
    over the ranks by :func:`sync_gradients`, is the single-process gradient: this rank's
    sum times ``world`` over the count on all ranks. Ranks hold different numbers of
    steps (k differs), so a per-rank mean would weight their steps unequally. 0 when no
    rank has a term; every rank must call it (it all-reduces the count)."""
    if world <= 1:
        return terms.mean() if terms.numel() else torch.zeros((), device=terms.device)
    import torch.distributed as dist

    count = torch.tensor([float(terms.numel())], dtype=torch.float64, device=terms.device)
    dist.all_reduce(count)
    if count.item() == 0:
        return torch.zeros((), device=terms.device)
    return terms.sum() * (world / count.item())


def _global_moments(values: torch.Tensor, world: int) -> tuple[float, float, float]:
    """(count, sum, sum of squares) of ``values`` over all ranks, in one all-reduce."""
    v = values.detach().double()
    stats = torch.stack([torch.tensor(float(v.numel()), dtype=torch.float64, device=v.device), v.sum(), (v * v).sum()])
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(stats)
    n, total, squares = stats.tolist()
    return n, total, squares


def global_average(values: torch.Tensor, world: int) -> float:
    """The plain mean of ``values`` over all ranks (0.0 when no rank has any), no
    gradient; every rank must call it."""
    n, total, _ = _global_moments(values, world)
    return total / n if n else 0.0


def global_std(values: torch.Tensor, world: int) -> torch.Tensor | None:
    """The sample standard deviation of ``values`` over all ranks (None when fewer than 2
    values in all); every rank must call it. One rank alone: ``values.std()``."""
    if world <= 1:
        return values.std() if values.numel() > 1 else None
    n, total, squares = _global_moments(values, world)
    if n < 2:
        return None
    return torch.tensor(math.sqrt(max(0.0, (squares - total * total / n) / (n - 1))), dtype=values.dtype, device=values.device)


def global_value(value: torch.Tensor | float, world: int) -> float:
    """A logged number as the whole batch's: the mean over the ranks of a per-rank value
    that :func:`global_mean` scaled by ``world``."""
    tensor = value.detach().float().reshape(()) if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    if world <= 1:
        return float(tensor)
    import torch.distributed as dist

    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return float(tensor) / world
