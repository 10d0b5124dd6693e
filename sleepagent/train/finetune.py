"""Teach a pretrained transformers hybrid to sleep: ``sleepagent train --base DIR``.

A local qwen3_5 / qwen3_next / olmo_hybrid checkpoint is loaded through the adapter
(:mod:`sleepagent.model.hf`) and trained with the same Algorithm-1 forward as the native model
(:meth:`HFHybridLM.forward`: windows as the runtime splits them, N passes over the looped span,
hidden states and linear-attention/conv states chained, masked cross-entropy, backprop through
every pass). The data is the project's docqa task rendered in the model's own chat format (its
tokenizer and template), gsm_inf's problems rendered through its tokenizer, or rule110 and depo
fed as raw token ids inside its vocabulary (the paper's fine-tuning experiments at a size a CPU
can train: docs/guides/finetune.md). Full fine-tuning, or LoRA with ``lora=R`` (peft); a GDN-only warm-up
first with ``warmup_gdn_steps``, as the paper does ("first train just the SSM layers"); float32 on
the CPU, bfloat16 on a GPU.

The run directory is a transformers checkpoint (``config.json``, ``model.safetensors``, the
tokenizer: ``AutoModelForCausalLM.from_pretrained`` loads it as the base architecture; LoRA
weights are merged into it) plus ``sleepagent.json`` (window, loops, looped layers, eviction),
``prompt.json`` (the system prompt it was trained with), ``train.json`` and the optimizer state,
so ``SleepModel.from_pretrained`` loads it with its sleep settings and the run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ConfigError
from ..model import SleepModel
from ..model.hf import is_transformers_checkpoint
from ..model.pretrained import write_prompt
from ..tokenizer import PromptConventions
from .docqa import DOCQA_SYSTEM
from .example import Example
from .run import (
    Run,
    TrainConfig,
    build_optimizers,
    load_optimizers,
    resume_meta,
    save_optimizers,
)
from .tasks import make_task

__all__ = ["load_base", "load_run", "prepare_base"]


def load_base(cfg: TrainConfig, path: str | Path):
    """The base checkpoint (or a run directory) as a SleepModel with the run's sleep settings."""
    path = Path(path)
    if not is_transformers_checkpoint(path):
        raise CheckpointError(f"--base {path}: not a local transformers checkpoint (no config.json with a model_type)")
    dtype = torch.bfloat16 if cfg.device.startswith("cuda") else torch.float32
    window = cfg.window or _task_window(cfg)
    sm = SleepModel.from_pretrained(path, device=cfg.device if cfg.device != "cpu" else None, window=window,
                                    loops=cfg.loops, loop_layers=cfg.loop_layers, dtype=dtype)
    sm.model.config.evict, sm.model.config.keep = cfg.evict, cfg.keep
    if cfg.evict == "sliding" and not 0 < cfg.keep < window:
        raise ConfigError(
            f"sliding eviction keeps 0 < keep < window={window} tokens, got keep={cfg.keep}", field="keep"
        )
    return sm


def _task_window(cfg: TrainConfig) -> int:
    """The attention window a task is laid out for (docqa: its ``window`` setting, else 1024)."""
    if cfg.task == "docqa":
        return int(cfg.task_kwargs.get("window", 1024))
    return int(make_task(cfg.task, **cfg.task_kwargs).window)


class TokenizedTask:
    """A byte-level text task (gsm_inf) rendered through a transformers model's own tokenizer, as
    a real checkpoint must read it: the prompt and the answer are encoded apart, so the loss and
    the exact-match span are the answer's tokens (a tokenizer that merged across the boundary
    would blur them)."""

    def __init__(self, task: Any, tokenizer: Any) -> None:
        self.task, self.tokenizer = task, tokenizer
        self.name, self.window = task.name, task.window
        self.vocab_size, self.pad_id = tokenizer.vocab_size, tokenizer.pad_id

    def sample(self, rng, difficulty: int | None = None):
        return self.render(self.task.sample(rng, difficulty))

    def render(self, ex):
        start = ex.answers[0][0]
        prompt = self.tokenizer.encode(bytes(ex.ids[:start]).decode(), specials=False)
        answer = self.tokenizer.encode(bytes(ex.ids[start:]).decode(), specials=False)
        return Example(prompt + answer, [False] * len(prompt) + [True] * len(answer),
                       [list(range(len(prompt), len(prompt) + len(answer)))], ex.difficulty, dict(ex.meta))

    def from_record(self, *record: Any):
        """An externally written problem (``eval --data``), laid out by the task, then tokenised."""
        return self.render(self.task.from_record(*record))

    def test_difficulties(self) -> list[int]:
        return self.task.test_difficulties()


def base_task(name: str, kwargs: dict, tokenizer: Any, window: int, vocab_size: int) -> Any:
    """The task a ``train --base`` run reads: docqa in the model's chat format, gsm_inf's text
    through its tokenizer, rule110 and depo (no text form) as raw token ids inside its vocabulary."""
    if name == "docqa":
        return make_task("docqa", **{**kwargs, "window": window}, tokenizer=tokenizer)
    task = make_task(name, **kwargs)
    if name == "gsm_inf":
        return TokenizedTask(task, tokenizer)
    if task.vocab_size > vocab_size:
        raise ConfigError(f"task {name} uses token ids up to {task.vocab_size - 1}, beyond the model's vocabulary "
                          f"of {vocab_size}", field="task")
    return task


def run_task(model: Any, cfg: dict) -> Any:
    """The task a trained run is scored on, from its ``train.json`` config: as it was trained
    (a fine-tuned transformers model reads it through :func:`base_task`)."""
    name, kwargs = cfg.get("task", "depo"), cfg.get("task_kwargs", {})
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return make_task(name, **kwargs)
    return base_task(name, kwargs, tokenizer, model.config.window, model.config.vocab_size)


def load_run(path: str | Path, device: str = "cpu") -> tuple[Any, dict]:
    """A run directory written by ``train --base`` as (its :class:`HFHybridLM`, its ``train.json``),
    with the sleep settings it was trained with, for scoring (``eval``, studies, probes)."""
    path = Path(path)
    sm = SleepModel.from_pretrained(path, device=device if device != "cpu" else None)
    try:
        meta = json.loads((path / "train.json").read_text()) if (path / "train.json").exists() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path / 'train.json'}: {e}") from None
    # the run's task reads text through it (see run_task): an attribute of this HFHybridLM alone
    lm: Any = sm.model
    lm.tokenizer = sm.tokenizer
    return lm, meta


def prepare_base(cfg: TrainConfig, out: Path, resume: bool) -> Run:
    """The training run of a base model (see module docstring); resumes from ``out``."""
    if cfg.base is None:  # the trainer comes here for --base runs only
        raise ConfigError("prepare_base needs a base model (train --base DIR)", field="base")
    meta = resume_meta(cfg, out) if resume else None
    # a resumed run reloads its own weights (LoRA: the base's, and then its adapter)
    sm = load_base(cfg, out if meta is not None and not cfg.lora else cfg.base)
    lm = sm.model
    task = base_task(cfg.task, cfg.task_kwargs, sm.tokenizer, lm.config.window, lm.config.vocab_size)
    if cfg.lora:
        _add_lora(lm, cfg.lora, out if meta is not None else None)
    opts = build_optimizers(cfg, lm)
    warmup = {id(p) for m in lm.gdn.values() for p in m.parameters()}

    def save(step: int, history: list, evals: list) -> None:
        _save(out, sm, cfg, step, history, evals, opts)

    run = Run(lm, task, opts, save, warmup)
    if meta is not None:
        load_optimizers(opts, out / "optimizer.safetensors", meta.get("optimizer_scalars", {}))
        run.step, run.history, run.evals = meta["step"], meta["history"], meta.get("evals", [])
    return run


def _lora_targets(lm) -> list[str]:
    """Every linear layer inside the decoder blocks (attention, GDN projections, MLPs)."""
    names = set()
    for name, module in lm.decoder.layers.named_modules():
        if isinstance(module, torch.nn.Linear):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _add_lora(lm, rank: int, resume_from: Path | None) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    except ImportError as e:
        raise ConfigError(f"--lora needs peft: pip install 'sleepagent[finetune]' ({e})", field="lora") from None
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=_lora_targets(lm), lora_dropout=0.0)
    inject_adapter_in_model(config, lm.decoder)
    for name, p in lm.named_parameters():
        p.requires_grad = "lora_" in name
    if resume_from is not None and (resume_from / "adapter.safetensors").exists():
        set_peft_model_state_dict(lm.decoder, load_file(str(resume_from / "adapter.safetensors")))


def _save(out: Path, sm, cfg: TrainConfig, step: int, history: list, evals: list, opts) -> None:
    """Write the run directory (see module docstring); file by file through a temporary folder,
    so a crash mid-save leaves a loadable checkpoint."""
    lm = sm.model
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".tmp"
    tmp.mkdir(exist_ok=True)
    if cfg.lora:
        from peft import (
            get_peft_model_state_dict,  # an optional dependency (the finetune extra)
        )

        save_file({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(lm.decoder).items()},
                  str(tmp / "adapter.safetensors"))
    lm.hf.save_pretrained(tmp, state_dict=_merged_state_dict(lm) if cfg.lora else None)
    sm.tokenizer.tok.save_pretrained(tmp)
    c = lm.config
    (tmp / "sleepagent.json").write_text(json.dumps(
        {"window": c.window, "loops": c.loops, "loop_layers": list(c.span), "evict": c.evict,
         "keep": c.keep}, indent=2) + "\n")
    if cfg.task == "docqa" or sm.prompt.system_prompt:  # a raw-token task model has no chat prompt
        write_prompt(tmp, PromptConventions(system_prompt=sm.prompt.system_prompt or _task_prompt()))
    scalars = save_optimizers(opts, tmp / "optimizer.safetensors")
    (tmp / "train.json").write_text(json.dumps(
        {"config": cfg.model_dump(mode="json"), "step": step, "history": history, "evals": evals,
         "optimizer_scalars": scalars}, indent=1) + "\n")
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()


def _task_prompt() -> str:
    return DOCQA_SYSTEM


def _merged_state_dict(lm) -> dict[str, Any]:
    """The base architecture's weights with the LoRA deltas added (what transformers loads)."""
    state = {}
    for name, module in lm.hf.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and module.lora_A:
            base = module.base_layer.weight.detach()
            delta = module.get_delta_weight("default").detach()
            state[f"{name}.weight"] = (base + delta).contiguous()
            if module.base_layer.bias is not None:
                state[f"{name}.bias"] = module.base_layer.bias.detach()
    for name, p in lm.hf.state_dict().items():
        if "lora_" in name or "base_layer" in name:
            continue
        state.setdefault(name, p.detach())
    return state
