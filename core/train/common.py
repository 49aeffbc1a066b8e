"""Pieces both trainers share: optimiser, schedule, autocast, metrics log, curves plot,
and resumable checkpoints.

A checkpoint is a directory written under a temporary name and renamed into place, so a
process killed mid-save leaves either the previous checkpoint or the new one, never half
of one. It holds the model as a plain Hugging Face directory (safetensors) and the
trainer state (optimiser, scheduler, RNG, step) in ``trainer_state.pt``, which is read
back with ``torch.load(weights_only=True)``: tensors and plain Python values only.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import torch

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.pt"


def make_optimizer(policy: Any, lr: float, stop_head_lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with two groups: the cross-encoder, and the fresh STOP head at a larger rate."""
    stop_ids = {id(p) for p in policy.stop_head.parameters()}
    encoder = [p for p in policy.parameters() if p.requires_grad and id(p) not in stop_ids]
    head = [p for p in policy.stop_head.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": encoder, "lr": lr, "weight_decay": weight_decay},
            {"params": head, "lr": stop_head_lr, "weight_decay": 0.0},
        ]
    )


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
    out_dir: Path, step: int, policy: Any, trainer_state: dict[str, Any], save_model: Any, keep: int = 2
) -> Path:
    """``save_model(dir)`` writes the usable reranker (merged, when LoRA is on);
    ``policy_state.safetensors`` keeps the exact training parameters for ``--resume``."""
    from safetensors.torch import save_model as save_tensors

    final = out_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = out_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(tmp / "model")
    save_tensors(policy, str(tmp / POLICY_STATE_FILE))
    torch.save(trainer_state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for _, old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


def load_checkpoint(checkpoint: Path, policy: Any) -> dict[str, Any]:
    """Restore the policy's parameters in place and return the trainer state."""
    from safetensors.torch import load_model

    load_model(policy, str(checkpoint / POLICY_STATE_FILE), device=str(next(policy.parameters()).device))
    return torch.load(checkpoint / STATE_FILE, weights_only=True, map_location="cpu")


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
