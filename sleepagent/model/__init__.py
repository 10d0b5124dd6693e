"""The sleep-enabled hybrid LM: config, kernels, layers, wake/sleep model and its state."""

from .algorithm1 import LMOutput, training_forward
from .config import SleepHybridConfig
from .hybrid import SleepHybridLM, SleepJob
from .ops import gated_delta_rule
from .pretrained import SleepModel
from .state import FastState, HybridState

__all__ = [
    "FastState",
    "HybridState",
    "LMOutput",
    "SleepHybridConfig",
    "SleepHybridLM",
    "SleepJob",
    "SleepModel",
    "gated_delta_rule",
    "training_forward",
]
