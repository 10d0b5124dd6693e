"""The GSM-Infinite preset: symbolic problems whose statements were evicted before the question."""

from __future__ import annotations

from ..study import Study
from .common import CPU_TRAIN

__all__ = ["PRESETS"]

PRESETS: tuple[Study, ...] = (
    Study(
        name="gsm-inf",
        summary="GSM-Infinite-style symbolic problems of 1, 2 and 4 operations, "
        "read across evicted windows of 64 bytes",
        task="gsm_inf",
        task_kwargs=dict(ops=(1, 2, 4), filler=4, window=64, digits=2),
        train=dict(CPU_TRAIN, steps=1000, batch_size=16, optimizer="muon", lr=3e-3),
        eval_n=300,
        deep=(2, 4),
        notes_from=("gsm-inf",),
    ),
)
