"""Training: RRPO (reinforcement learning from the reader) and the relevance-SFT baseline."""

from .config import RRPOConfig, SFTConfig
from .rrpo import RRPOTrainer
from .sft import SFTTrainer, gold_labels

__all__ = ["RRPOConfig", "RRPOTrainer", "SFTConfig", "SFTTrainer", "gold_labels"]
