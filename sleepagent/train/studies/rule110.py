"""Rule 110 presets: rows of cellular automata, one per evicted window; a bit of each t steps later.

A row's label depends on 2t + 1 of its cells, which one wake pass cannot compute from fast weights
written token by token; sleep passes over a whole row can. Variants change one thing each (N, the
optimiser, the eviction, the layers) against ``rule110``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..study import Study
from .common import compute_matched

__all__ = ["PRESETS"]

# model and optimiser shared by the GPU presets and their CPU twin (which differ in batch and steps)
MODEL: dict[str, Any] = dict(d_model=128, n_layers=4, n_heads=4, adam_lr=1e-3, warmup_steps=200,
                             schedule="constant", eval_n=200, layer_types=("gdn", "attn", "attn", "attn"))


def _gpu(t: int, suffix: str) -> Study:
    return Study(
        name=f"rule110-gpu{suffix}",
        summary=f"rows of 2 Rule 110 automata, one per evicted window; the first bit of each {t} steps later (GPU)",
        task="rule110",
        task_kwargs=dict(rows=2, width=24, steps=(t,)),
        train=dict(MODEL, steps=20000, batch_size=256, eval_every=250, save_every=1000),
        deep=(t,),
        notes_from=("rule110-gpu",),
    )


GPU, GPU_T2 = _gpu(4, ""), _gpu(2, "-t2")

RULE110 = Study(
    name="rule110",
    summary="rows of 2 Rule 110 automata, one per evicted window; the first bit of each 2 steps later",
    task="rule110",
    task_kwargs=dict(rows=2, width=24, steps=(2,)),
    train=dict(MODEL, steps=1000, batch_size=64, eval_every=125, save_every=250),
    deep=(2,),
    notes_from=("rule110",),
)

MUON = replace(
    RULE110,  # the same task, model, steps and N; only the optimiser differs
    name="rule110-muon",
    summary="the `rule110` preset trained with Muon (the paper's optimiser) instead of AdamW",
    train={**RULE110.train, "optimizer": "muon", "lr": 1e-3},
    notes_from=("rule110-muon",),
)

T4 = replace(
    MUON,  # the same model, optimiser (Muon), batch and steps; t = 4 and N = 1 to 4
    name="rule110-t4",
    summary="rows of 2 Rule 110 automata, one per evicted window; the first bit of each 4 steps later; N = 1 to 4",
    task_kwargs=dict(rows=2, width=24, steps=(4,)),
    loops=(1, 2, 3, 4),
    deep=(4,),
    notes_from=("rule110-t4",),
)


def _attention_only(suffix: str, update: dict[str, Any], what: str) -> Study:
    """The paper's attention-only baseline: every GDN layer replaced by attention, so N cannot matter."""
    return replace(
        RULE110,
        name=f"rule110-attn{suffix}",
        summary=f"attention-only baseline for `rule110` (4 attention layers, no GDN): {what}",
        train={**RULE110.train, "layer_types": ("attn",) * 4, **update},
        loops=(1,),
        notes_from=("rule110-attn",),
    )


PRESETS: tuple[Study, ...] = (
    GPU,
    GPU_T2,
    RULE110,
    replace(
        RULE110,  # the same task, model, optimiser and steps; only N and the page differ
        name="rule110-sweep",
        summary="the `rule110` preset with N = 1, 2, 3 and 4: the paper's accuracy-against-N figure at t = 2",
        loops=(1, 2, 3, 4),
        notes_from=("rule110-sweep",),
    ),
    MUON,
    replace(
        RULE110,  # the same task, model, optimiser, steps and N; only the eviction differs
        name="rule110-sliding",
        summary="the `rule110` preset with sliding eviction: each sleep evicts 16 tokens and keeps the newest 8",
        train={**RULE110.train, "evict": "sliding", "keep": 8},
        notes_from=("rule110-sliding",),
    ),
    T4,
    replace(
        T4,  # the same task, model, steps and seeds; AdamW instead of Muon, N = 4 only
        name="rule110-t4-adamw",
        summary="the AdamW row for `rule110-t4`: the same N = 4 runs trained with AdamW instead of Muon",
        train=RULE110.train,
        loops=(4,),
        notes_from=("rule110-t4-adamw",),
    ),
    replace(
        GPU,  # the GPU model and batch; Muon, t = 8, N = 1 to 4
        name="rule110-t8-gpu",
        summary="rows of 2 Rule 110 automata, one per evicted window; the first bit of each 8 steps later; "
                "N = 1 to 4, Muon (GPU)",
        task_kwargs=dict(rows=2, width=24, steps=(8,)),
        train={**GPU.train, "optimizer": "muon", "lr": 1e-3},
        loops=(1, 2, 3, 4),
        deep=(8,),
        notes_from=("rule110-t8-gpu",),
    ),
    *compute_matched(GPU, "rule110-gpu"),
    _attention_only("", {}, "rows evicted as in `rule110`, nothing carried across windows"),
    _attention_only("-full", {"window": 64}, "a 64-token window holding the whole example: no eviction"),
)
