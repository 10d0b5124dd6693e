"""Settings several preset families share."""

from __future__ import annotations

from typing import Any

__all__ = ["CPU_TRAIN"]

# the CPU studies' small model and schedule (each run well under an hour on a 2-core CPU)
CPU_TRAIN: dict[str, Any] = dict(steps=2000, batch_size=32, d_model=64, n_layers=4, n_heads=4, adam_lr=3e-3,
                                 warmup_steps=100, schedule="cosine", eval_every=250, eval_n=50, save_every=250)
