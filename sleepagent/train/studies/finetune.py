"""Fine-tuning presets: the paper's pretrained-model experiments at CPU size, transformers modules only.

A random ``qwen3_5``-architecture model is first trained as an ordinary model (N = 1); every run
then fine-tunes that checkpoint to sleep (``train --base``), against an N = 1 control.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..study import Study

__all__ = ["PRESETS"]

# a qwen3_5-architecture model laid out as the rule110 preset's: one GDN layer first, then attention
TINY_QWEN: dict[str, Any] = dict(
    model_type="qwen3_5", layer_types=["linear_attention", "full_attention", "full_attention", "full_attention"],
    sizes=dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, head_dim=32,
               linear_num_value_heads=4, linear_num_key_heads=4, linear_key_head_dim=32, linear_value_head_dim=32,
               # every head dimension rotated (Qwen3.5 rotates a quarter): attention must find a row's cells
               # 22, 23, 0, 1, 2 by position
               rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=1.0)),
)
TRAIN: dict[str, Any] = dict(steps=400, batch_size=64, adam_lr=1e-3, warmup_steps=50, schedule="constant",
                             warmup_gdn_steps=50, eval_every=50, eval_n=100, save_every=100)
# the "pretraining" stage of both fine-tuning presets: an ordinary model, hard eviction, N = 1
PRETRAIN: dict[str, Any] = dict(steps=400, warmup_steps=100, warmup_gdn_steps=0, evict="hard", keep=0)

HARD = Study(
    name="finetune-rule110",
    summary="a transformers qwen3_5 hybrid pretrained as an ordinary model (N = 1), then fine-tuned to sleep "
            "(N = 4) against an N = 1 control; Rule 110, t = 2, hard eviction",
    task="rule110",
    task_kwargs=dict(rows=2, width=24, steps=(2,)),
    train=TRAIN,
    deep=(2,),
    base_model=TINY_QWEN,
    pretrain=PRETRAIN,
    notes_from=("finetune", "finetune-rule110"),
)

PRESETS: tuple[Study, ...] = (
    HARD,
    replace(
        HARD,
        name="finetune-rule110-sliding",
        summary="`finetune-rule110` with sliding eviction in the fine-tuning: each sleep evicts 16 tokens and keeps "
                "the newest 8 in the window",
        train={**TRAIN, "evict": "sliding", "keep": 8},
        notes_from=("finetune", "finetune-rule110-sliding"),
    ),
)
