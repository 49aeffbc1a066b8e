"""Training configuration: small dataclasses whose field help is also the CLI help.

Every field carries ``metadata={"help": ...}``; :func:`add_config_arguments` turns the
fields into ``--flag`` options, and :func:`config_from_args` reads them back (a JSON or
TOML config file first, then flags given on the command line win). :meth:`validate`
runs before any work, so a bad value fails in a second with the field's name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RRPOConfig:
    """RRPO: PPO on Plackett-Luce-with-stop rankings, rewarded by the reader."""

    reward: str = _f("gold_loglik", "reward name: gold_loglik, token_f1, exact_match, contains_answer, llm_judge, user_rating")
    reward_mode: str = _f("per_prefix", "per_prefix: the reader scores every prefix (dense credit); terminal: only the kept set")
    context_cost: float = _f(3e-3, "lambda: reward cost per context word the reader sees (holds k down): at 3e-3 a 100-word passage must raise the gold answer's log-likelihood by 0.3 nats to be kept")
    group_size: int = _f(4, "G: rankings sampled per training query")
    min_k: int = _f(1, "fewest passages a selection keeps")
    max_k: int = _f(5, "most passages a selection keeps")
    queries_per_step: int = _f(8, "training queries per optimisation step")
    max_steps: int = _f(100, "optimisation steps (rollout + PPO epochs each)")
    ppo_epochs: int = _f(2, "passes over each rollout")
    clip_eps: float = _f(0.2, "PPO clip range")
    kl_beta: float = _f(0.02, "weight of the KL penalty to the frozen initial reranker")
    gamma: float = _f(1.0, "discount over selection steps")
    gae_lambda: float = _f(1.0, "GAE lambda over selection steps (baseline 'reference'; below 1 biases the first picks)")
    baseline: str = _f("group", "group: leave-one-out mean of the group's returns from the same step; reference: the frozen reranker's greedy prefix of the same length (the paper's anchor)")
    stop_loss_weight: float = _f(1.0, "weight of the STOP objective fitted on per-prefix curves (see stop_labels): stop where stopping beats going on (0 = policy gradient only)")
    stop_labels: str = _f("greedy", "greedy: STOP is fitted on the policy's own greedy ranking (what rerank keeps), stopping at t against the best of the next stop_lookahead greedy prefixes, and the policy gradient trains the ranking only; sampled: on each sample's own continuation, and the policy gradient trains STOP too (biased to stop early: a sampled next pick is worse than the greedy one)")
    stop_lookahead: int = _f(1, "greedy STOP labels: greedy prefixes scored past the policy's current greedy k (reader calls per query: up to greedy k + this + 1, shared with the samples' prefixes)")
    ranking: str = _f("sampled", "what trains the ranking. sampled: PPO on the G sampled rankings per query (credit from each sample's per-prefix rewards against the group's); greedy: no sampling: at each of the first rank_depth steps of the policy's greedy ranking the reader scores every remaining candidate appended to the greedy prefix, and the ranking takes the exact gradient of the expected reward of that step's pick (no sampling noise; needs a reward that scores any context, not user_rating alone)")
    rank_depth: int = _f(2, "ranking 'greedy': greedy steps whose every alternative the reader scores (reader calls per query: about rank_depth x candidates, shared with the STOP labels' prefixes)")
    importance_clip: float = _f(1.0, "c: a logged production selection (a rated feedback record) counts min(pi/mu, c) times, pi the rollout policy's and mu the serving policy's probability of it (clipped importance sampling)")
    learning_rate: float = _f(5e-4, "AdamW learning rate of the trained encoder layers (sized for train_top_layers=2; use ~1e-4 for all layers)")
    head_lr: float = _f(5e-3, "AdamW learning rate of a freshly initialised scoring head (a plain encoder's new one-logit head)")
    stop_head_lr: float = _f(1e-2, "AdamW learning rate of the STOP head (small, so larger)")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    max_step_kl: float = _f(0.0, "trust region: one optimizer step may move the policy by at most this KL (over the batch's sampled steps); a longer step is shortened along its direction (0 = off: at 0.05 it slowed the learning benchmark and did not bind on HotpotQA, see docs/architecture.md)")
    warmup_steps: int = _f(5, "linear warm-up steps")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    max_words: int = _f(120, "words of each passage the reader sees")
    train_top_layers: int = _f(2, "train only the top N encoder layers and the heads (0, or N >= the depth: all layers); the layers below are frozen and their outputs computed once per (query, passage) and reused")
    lora: bool = _f(False, "train LoRA adapters (peft) instead of the full cross-encoder")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    validation_queries: int = _f(32, "training queries held out to validate the policy: the reward of its greedy selections on them at the start, every validate_every steps and at the end; the saved model is the best validated one, so training never ends below where it started on questions it did not train on (held out only when the data has at least 4x as many; 0 = off)")
    validate_every: int = _f(8, "steps between validations")
    validation_z: float = _f(1.0, "a validated policy replaces the kept one only when its mean paired gain on the held-out queries exceeds this many standard errors")
    checkpoint_every: int = _f(50, "save a resumable checkpoint every N steps (0 = only the final one)")
    seed: int = _f(0, "random seed (data order, sampling, initialisation)")
    device: str | None = _f(None, "cpu, cuda, cuda:1, mps; default: the best available")
    bf16: bool | None = _f(None, "bf16 autocast; default: on for CUDA")
    out_dir: str = _f("rrpo-out", "where checkpoints, metrics.jsonl, curves.png and the final model go")
    overwrite: bool = _f(False, "start over in an out_dir that holds an earlier run (deletes its checkpoints, metrics and reader cache); without it such a folder is refused")
    progress: bool = _f(True, "show a progress bar")

    def validate(self) -> "RRPOConfig":
        _positive(self, "group_size", "queries_per_step", "max_steps", "ppo_epochs", "max_k", "max_words", "validate_every")
        _non_negative(self, "min_k", "context_cost", "kl_beta", "warmup_steps", "checkpoint_every", "stop_loss_weight",
                      "train_top_layers", "importance_clip", "max_step_kl", "validation_queries", "validation_z")  # fmt: skip
        if self.stop_labels not in ("greedy", "sampled"):
            raise ValueError(f"stop_labels must be 'greedy' or 'sampled', not {self.stop_labels!r}")
        if self.stop_lookahead < 1:
            raise ValueError(f"stop_lookahead must be >= 1, not {self.stop_lookahead}")
        if self.min_k > self.max_k:
            raise ValueError(f"min_k ({self.min_k}) must be <= max_k ({self.max_k})")
        _choice(self, "reward_mode", {"per_prefix", "terminal"})
        _choice(self, "ranking", {"sampled", "greedy"})
        _positive(self, "rank_depth")
        if self.ranking == "greedy" and self.reward_mode != "per_prefix":
            raise ValueError("ranking 'greedy' scores prefixes of the greedy ranking: it needs reward_mode 'per_prefix'")
        if self.lora and self.train_top_layers:
            raise ValueError("lora and train_top_layers exclude each other: set train_top_layers=0 to train LoRA adapters")
        _choice(self, "baseline", {"reference", "group"})
        if self.baseline == "group" and self.group_size < 2:
            raise ValueError("baseline 'group' needs group_size >= 2")
        _range(self, "gamma", 0.0, 1.0)
        _range(self, "gae_lambda", 0.0, 1.0)
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        return self


@dataclass
class SFTConfig:
    """The relevance baseline: pointwise BCE on gold / relevant labels."""

    epochs: float = _f(2.0, "passes over the training examples (fractions allowed)")
    examples_per_step: int = _f(8, "examples per optimisation step (all their candidates)")
    learning_rate: float = _f(3e-5, "AdamW learning rate of the cross-encoder")
    head_lr: float = _f(5e-3, "AdamW learning rate of a freshly initialised scoring head (a plain encoder's new one-logit head)")
    stop_head_lr: float = _f(1e-3, "AdamW learning rate of the STOP head")
    stop_loss_weight: float = _f(0.5, "weight of the STOP head's loss: stop right after the relevant passages")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    warmup_ratio: float = _f(0.1, "share of steps for linear warm-up")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    max_k: int = _f(5, "cap on k for the STOP head's target")
    seed: int = _f(0, "random seed")
    device: str | None = _f(None, "cpu, cuda, mps; default: the best available")
    bf16: bool | None = _f(None, "bf16 autocast; default: on for CUDA")
    out_dir: str = _f("rrpo-sft", "where metrics.jsonl and the final model go")
    overwrite: bool = _f(False, "start over in an out_dir that holds an earlier run's metrics; without it such a folder is refused")
    progress: bool = _f(True, "show a progress bar")

    def validate(self) -> "SFTConfig":
        _positive(self, "epochs", "examples_per_step", "max_k")
        _non_negative(self, "stop_loss_weight", "warmup_ratio")
        return self


# ---------------------------------------------------------------- validation helpers
def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None or value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _non_negative(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def _choice(cfg: Any, name: str, allowed: set[str]) -> None:
    if getattr(cfg, name) not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {getattr(cfg, name)!r}")


def _range(cfg: Any, name: str, lo: float, hi: float) -> None:
    if not lo <= getattr(cfg, name) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {getattr(cfg, name)}")


# ---------------------------------------------------------------- CLI glue
C = TypeVar("C", RRPOConfig, SFTConfig)


def _parse_optional_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


FLAG_NAMES = {"out_dir": "--out"}  # shorter spellings on the command line


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` option per config field, help from the field's metadata."""
    hints = get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (also settable in --config)")
    for f in fields(cls):
        flag = FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        kind = hints[f.name]
        text = f"{f.metadata['help']} (default: {f.default})"
        if kind in (bool, bool | None):
            # "--overwrite" alone means true; "--progress false" still works.
            group.add_argument(flag, dest=f.name, type=_parse_optional_bool, nargs="?", const=True, default=None,
                               metavar="BOOL", help=text)  # fmt: skip
        else:
            base = {int: int, float: float}.get(kind, str)
            group.add_argument(flag, dest=f.name, type=base, default=None, help=text)


def parse_overrides(pairs: list[str], cls: type) -> dict[str, Any]:
    """``FIELD=VALUE`` strings as keyword arguments of ``cls``, each value parsed by the
    same per-field option as the command line's (:func:`add_config_arguments`), so a
    benchmark's ``--set`` takes what ``rrpo train`` takes; an unknown field is an error."""
    known = {f.name for f in fields(cls)}
    argv: list[str] = []
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in known:
            raise ValueError(f"{pair!r}: expected FIELD=VALUE with FIELD one of {cls.__name__}'s fields")
        argv += [FLAG_NAMES.get(name, "--" + name.replace("_", "-")), text]
    parser = argparse.ArgumentParser(prog="--set", add_help=False)
    add_config_arguments(parser, cls)
    return {name: value for name, value in vars(parser.parse_args(argv)).items() if value is not None}


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(path.read_text())
    return json.loads(path.read_text())


def config_from_args(cls: type[C], args: argparse.Namespace, config_file: str | None = None) -> C:
    """File values, then explicit flags; unknown keys in the file are an error."""
    values: dict[str, Any] = {}
    if config_file:
        values = load_config_file(config_file)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{config_file}: unknown {cls.__name__} fields {unknown}")
    for f in fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return cls(**values).validate()


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
