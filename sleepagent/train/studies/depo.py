"""Depo presets: k-hop questions over a directed cycle whose edges were evicted before the questions.

A wake pass reads the fast weights once per GDN layer, so with one GDN layer (first) a question
can look up one edge; a deeper answer must have been composed during sleep.
"""

from __future__ import annotations

from dataclasses import replace

from ..study import Study
from .common import CPU_TRAIN, compute_matched

__all__ = ["PRESETS"]

DEPO = Study(
    name="depo",
    summary="k-hop queries over a 12-node cycle whose edges fill one window, evicted before the queries",
    task="depo",
    task_kwargs=dict(n_max=12, k_max=2, m=16, max_len=1, window=32, edge_windows=1, queries=8),
    # one GDN layer, first: a wake pass can look up the fast weights once, so 2 hops need sleep
    train=dict(CPU_TRAIN, steps=6000, adam_lr=1e-3, eval_every=500, save_every=500, n_layers=3,
               layer_types=("gdn", "attn", "attn")),
    deep=(2,),
    extend=dict(steps=18000, schedule="constant", seed=100),
    first_answer=True,
    notes_from=("depo",),
)


def _deep(k: int, suffix: str) -> Study:
    """The GPU presets: 1 to ``k`` hops, d = 128, batch 256, run with ``--time-limit``."""
    return Study(
        name=f"depo-deep-gpu{suffix}",
        summary=f"queries of 1 to {k} hops over a 12-node cycle whose edges fill one window, evicted before the "
                "queries (GPU)",
        task="depo",
        task_kwargs=dict(n_max=12, k_max=k, m=16, max_len=1, window=32, edge_windows=1, queries=8),
        train=dict(steps=20000, batch_size=256, d_model=128, n_layers=3, n_heads=4, adam_lr=1e-3, warmup_steps=200,
                   schedule="constant", eval_every=250, eval_n=200, save_every=1000,
                   layer_types=("gdn", "attn", "attn")),
        deep=(k // 2, k),
        first_answer=True,
        notes_from=("depo-deep", f"depo-deep-gpu{suffix}"),
    )


DEEP, DEEP_K8 = _deep(4, ""), _deep(8, "-k8")

PRESETS: tuple[Study, ...] = (
    DEPO,
    DEEP,
    DEEP_K8,
    *compute_matched(DEEP, "depo-deep-gpu"),
    replace(
        DEPO,  # the same task and model; N = 1 to 4, one phase at the second phase's constant lr
        name="depo-sweep",
        summary="2-hop queries over a 12-node cycle whose edges fill one window; N = 1 to 4 (CPU, hours)",
        train={**DEPO.train, "steps": 24000, "schedule": "constant", "eval_every": 1000},
        loops=(1, 2, 3, 4),
        extend=None,
        notes_from=("depo-sweep",),
    ),
    replace(
        DEEP,
        name="depo-sweep-gpu",
        summary="queries of 1 to 4 hops over a 12-node cycle whose edges fill one window; N = 1 to 4 (GPU)",
        loops=(1, 2, 3, 4),
        notes_from=("depo-deep", "depo-sweep-gpu"),
    ),
    replace(
        DEPO,  # the one-window preset's model and optimiser; the edges over two windows, N = 1 to 4
        name="depo-windows",
        summary="queries of 1 and 2 hops over a 12-node cycle whose edges span two evicted windows; N = 1 to 4 "
                "(CPU)",
        task_kwargs={**DEPO.task_kwargs, "window": 16, "edge_windows": 2, "hop_counts": "all"},
        train={**DEPO.train, "steps": 6000, "schedule": "constant"},
        loops=(1, 2, 3, 4),
        deep=(1, 2),
        extend=None,
        notes_from=("depo-windows-gpu", "depo-windows"),
    ),
    replace(
        DEEP,
        name="depo-windows-gpu",
        summary="queries of 1 to 4 hops over a 12-node cycle whose edges span two evicted windows; N = 1 to 4 (GPU)",
        task_kwargs={**DEEP.task_kwargs, "window": 16, "edge_windows": 2},
        loops=(1, 2, 3, 4),
        notes_from=("depo-windows-gpu",),
    ),
    replace(
        DEEP,
        name="depo-windows3-gpu",
        summary="queries of every k in 1..4 hops over a 12-node cycle whose edges span three evicted windows; "
                "N = 1 to 4 (GPU)",
        task_kwargs={**DEEP.task_kwargs, "window": 16, "edge_windows": 3, "hop_counts": "all"},
        loops=(1, 2, 3, 4),
        deep=(3, 4),
        notes_from=("depo-windows-gpu", "depo-windows3-gpu"),
    ),
)
