"""Synthetic tasks (rule110, depo, gsm_inf), the trainer and evaluation."""

from .tasks import TASKS, Depo, Example, GsmInf, Rule110, make_task
from .trainer import TrainConfig, evaluate, load_checkpoint, plot_accuracy, train

__all__ = [
    "TASKS",
    "Depo",
    "Example",
    "GsmInf",
    "Rule110",
    "TrainConfig",
    "evaluate",
    "load_checkpoint",
    "make_task",
    "plot_accuracy",
    "train",
]
