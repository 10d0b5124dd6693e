"""A training run's definition and the parts both kinds of model train with.

:class:`TrainConfig` is everything that defines a run (stored in ``train.json``); :class:`Run` is
what the training loop (:mod:`sleepagent.train.trainer`) needs of a prepared run, whether it
trains a native model or a transformers hybrid (:mod:`sleepagent.train.finetune`); optimizers
and their state on disk (safetensors, never pickle) are built and read the same way for both.
Both of those modules import this one, which imports neither.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

__all__ = [
    "RESUMABLE",
    "Run",
    "TrainConfig",
    "build_optimizers",
    "load_optimizers",
    "lr_factor",
    "resume_meta",
    "save_optimizers",
]


class TrainConfig(BaseModel):
    """Everything that defines a training run (stored in ``train.json`` for resume/reproduction)."""

    model_config = ConfigDict(extra="forbid")

    task: str = "depo"
    task_kwargs: dict[str, Any] = Field(default_factory=dict)
    loops: int = Field(default=4, ge=1)
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    adam_lr: float = Field(default=1e-3, gt=0, description="AdamW lr for non-matrix params (and all, with adamw)")
    optimizer: Literal["adamw", "muon"] = "adamw"
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_gdn_steps: int = Field(default=0, ge=0, description="first steps train only the GDN layers")
    grad_clip: float = Field(default=1.0, gt=0)
    schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="lr after warm-up: constant, or cosine decay to 10% at the last step"
    )
    warmup_steps: int = Field(default=0, ge=0, description="linear lr warm-up from 0")
    checkpoint: bool = Field(default=False, description="activation checkpointing per window")
    detach_every: int | None = Field(default=None, ge=1)
    seed: int = 0
    d_model: int = Field(default=128, gt=0)
    n_layers: int = Field(default=4, gt=0)
    n_heads: int = Field(default=4, gt=0)
    layer_types: tuple[str, ...] | None = None
    gdn_heads: int | None = Field(default=None, ge=1, description="GDN key heads (default n_heads)")
    gdn_v_heads: int | None = Field(default=None, ge=1, description="GDN value heads (default gdn_heads)")
    gdn_head_k_dim: int | None = Field(
        default=None, ge=1, description="GDN key dim per head (default d_model // heads)"
    )
    gdn_head_v_dim: int | None = Field(default=None, ge=1, description="GDN value dim per head (default the key dim)")
    conv_size: int = Field(
        default=4, ge=1, description="GDN short-convolution width (docqa: 12 spans a fact's two names)"
    )
    min_fill: float = Field(default=0.5, ge=0, le=1, description="pause sleeps: as SleepPolicy.min_fill")
    save_every: int = Field(default=200, ge=1)
    eval_every: int | None = Field(
        default=None, ge=1, description="score a fixed test set every k steps (kept in train.json's 'evals')"
    )
    eval_n: int = Field(default=100, ge=1, description="test examples per difficulty for eval_every")
    eval_loops: tuple[int, ...] | None = Field(
        default=None, description="N values scored by eval_every; default (1, loops)"
    )
    eval_teacher_forced: bool = Field(
        default=False, description="eval_every scores teacher-forced (cheaper; labelled so) instead of free-running"
    )
    init_from: str | None = Field(
        default=None, description="start from this checkpoint's weights (same architecture; fresh optimizer)"
    )
    device: str = "cpu"
    base: str | None = Field(default=None, description="fine-tune this local transformers hybrid (a directory)")
    window: int | None = Field(
        default=None,
        ge=2,
        description="the model's attention window (default: the task's); a native model with a window that holds "
        "the whole example never evicts (a plain transformer baseline)",
    )
    loop_layers: tuple[int, int] | None = Field(default=None, description="--base: the decoder layers the sleep loops")
    evict: Literal["hard", "sliding"] = "hard"
    keep: int = Field(default=0, ge=0, description="sliding eviction: tokens kept in the window after a sleep")
    lora: int | None = Field(default=None, ge=1, description="--base: LoRA rank (peft); default full fine-tuning")
    time_limit: float | None = Field(
        default=None, gt=0, description="stop (and save) after this many seconds of this invocation; resumable"
    )
    time_budget: float | None = Field(
        default=None, gt=0, description="stop (and save) once the run's training CPU seconds (process time, every "
        "thread, over every invocation) reach this: equal-budget comparisons that other load does not skew; resumable"
    )


# Settings that do not change what is learned: a run may be resumed with other values.
RESUMABLE = {"steps", "save_every", "device", "eval_every", "eval_n", "eval_loops", "time_limit", "eval_teacher_forced",
              "base", "time_budget"}


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rates at ``step`` (0-based): linear warm-up, then constant
    or cosine decay to 10%. A function of the step alone, so a resumed run follows the same curve."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizers(cfg: TrainConfig, model: torch.nn.Module) -> list[torch.optim.Optimizer]:
    """Muon for the hidden matrices, AdamW for embeddings, the output head and everything else
    (or AdamW for all). Frozen parameters (LoRA's base weights) are left out."""
    def hidden(name: str, p: torch.nn.Parameter) -> bool:
        return p.dim() == 2 and not any(k in name for k in ("tok_emb", "embed_tokens", "lm_head"))

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [p for n, p in trainable if hidden(n, p)]
    others = [p for n, p in trainable if not hidden(n, p)]
    if cfg.optimizer == "muon":
        return [opt for opt in (
            torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")
            if matrices else None,
            torch.optim.AdamW(others, lr=cfg.adam_lr, weight_decay=0.0) if others else None,
        ) if opt is not None]
    return [torch.optim.AdamW([p for _, p in trainable], lr=cfg.adam_lr, weight_decay=cfg.weight_decay)]


def save_optimizers(opts: list[torch.optim.Optimizer], path: Path) -> dict:
    tensors, scalars = {}, {}
    for i, opt in enumerate(opts):
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{i}.{pid}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars[f"{i}.{pid}.{k}"] = v
    save_file(tensors, str(path))
    return scalars


def load_optimizers(opts: list[torch.optim.Optimizer], path: Path, scalars: dict) -> None:
    tensors = load_file(str(path))
    for i, opt in enumerate(opts):
        sd = opt.state_dict()
        state: dict[int, dict[str, Any]] = {}
        for key, v in {**tensors, **scalars}.items():
            oi, pid, name = key.split(".", 2)
            if int(oi) == i:
                state.setdefault(int(pid), {})[name] = v
        sd["state"] = state
        opt.load_state_dict(sd)


@dataclass
class Run:
    """What the training loop needs, whichever kind of model it trains."""

    model: Any
    task: Any
    opts: list[torch.optim.Optimizer]
    save: Any  # save(step, history, evals): writes the checkpoint directory
    warmup_params: set[int]  # ids of the parameters a GDN-only warm-up trains
    step: int = 0
    history: list = field(default_factory=list)
    evals: list = field(default_factory=list)


def resume_meta(cfg: TrainConfig, out: Path) -> dict | None:
    if not (out / "train.json").exists():
        return None
    meta = json.loads((out / "train.json").read_text())
    saved = TrainConfig(**meta["config"])
    if saved.model_dump(exclude=RESUMABLE) != cfg.model_dump(exclude=RESUMABLE):
        raise CheckpointError(f"{out} holds a run with another config; use another --out or the same settings")
    return meta
