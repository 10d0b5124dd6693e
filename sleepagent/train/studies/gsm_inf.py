"""The GSM-Infinite presets: ``gsm-inf`` (the earlier chain task, not GSM-Infinite) and ``gsm-infinite``
(:mod:`sleepagent.train.gsm_infinite`, GSM-Infinite's semantics), statements evicted before the answer."""

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
    Study(
        name="gsm-infinite",
        summary="GSM-Infinite's semantics (a dependency DAG mod 5, unmarked distractor graphs, "
        "'which variables equal v?' answered by a list) at 2, 4 and 6 operations, over evicted 64-byte windows",
        task="gsm_infinite",
        task_kwargs=dict(ops=(2, 4, 6), filler=2, window=64, digits=2, question="symbolic"),
        train=dict(CPU_TRAIN, steps=1000, batch_size=16, optimizer="muon", lr=3e-3),
        eval_n=300,
        deep=(4, 6),
        notes_from=("gsm-infinite",),
    ),
)
