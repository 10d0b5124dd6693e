"""The capacity study: which knob buys long-document 2-hop accuracy fastest, per CPU-hour.

Every arm starts from the shipped ``docqa-small`` weights, grown (:mod:`sleepagent.train.grow`)
into a larger shape that starts out computing the same function, and trains for the same number
of CPU seconds (``time_budget``) on the same task (stage 3's long documents, the varied paging
conventions) at N = 4. Equal time, not equal steps: a larger arm takes fewer, slower steps, which
is the trade a user of one machine faces. Each arm is then scored through the Agent API on
held-out 16-place documents (:mod:`sleepagent.train.docqa_eval`), free-running, with 95%
intervals, at N = 4 and with the same weights at N = 1.

``sleepagent study capacity`` runs it (resumable: an arm that has spent its budget is only
scored); it writes ``docs/studies/capacity.{json,md,png}``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from .trainer import TrainConfig, train

__all__ = ["Arm", "ARMS", "BASE", "run_capacity", "arm_config"]

SHIPPED = str(Path(__file__).resolve().parent.parent / "checkpoints" / "docqa-small")

# Stage 3's task (long documents, one or two per session) with every paging convention; N = 4.
BASE: dict[str, Any] = dict(
    task="docqa",
    task_kwargs=dict(n_places=[2, 16], hops=[1, 2], questions=8, window=256, name_len=1, page_chars=112,
                     documents=[1, 2], varied=True),
    loops=4, steps=100_000, batch_size=8, lr=2e-3, adam_lr=2e-3, optimizer="muon", warmup_steps=20,
    d_model=128, n_layers=4, n_heads=4, conv_size=12, min_fill=0.5, save_every=25, seed=3,
)


@dataclass(frozen=True)
class Arm:
    """One shape of the model: TrainConfig updates on top of :data:`BASE`, and what it adds."""

    name: str
    change: str
    updates: dict[str, Any] = field(default_factory=dict)


ARMS: tuple[Arm, ...] = (
    Arm("same", "the shipped shape (4 GDN heads of 32 x 32 in 2 GDN layers): more training only"),
    Arm("kv64", "GDN key and value dims 32 -> 64 (4x the fast weights)",
        dict(gdn_head_k_dim=64, gdn_head_v_dim=64)),
    Arm("vheads8", "GDN value heads 4 -> 8, two per key head (2x the fast weights)", dict(gdn_v_heads=8)),
    Arm("heads8", "GDN heads 4 -> 8 of 32 x 32 (2x the fast weights)", dict(gdn_heads=8, gdn_head_k_dim=32)),
    Arm("gdn3", "a third GDN layer, after the second (1.5x the fast weights, one more lookup per pass)",
        dict(n_layers=5, layer_types=["gdn", "attn", "gdn", "gdn", "attn"])),
)


def arm_config(arm: Arm, budget_s: float, init_from: str = SHIPPED, **overrides: Any) -> TrainConfig:
    return TrainConfig(**{**BASE, **arm.updates, "init_from": init_from, "time_budget": budget_s, **overrides})


def _train_arm(args: tuple[dict, str, int]) -> str:
    cfg_json, out, threads = args
    torch.set_num_threads(threads)
    train(TrainConfig(**cfg_json), out, progress=False)
    return out


def _score(run: Path, sessions: int, threads: int) -> dict[str, Any]:
    from ..model import SleepModel
    from .docqa_eval import held_out_sessions, run_agent_eval, summarize

    torch.set_num_threads(threads)
    sm = SleepModel.from_pretrained(str(run))
    held_out = held_out_sessions(sessions, 16, 1, seed=0)
    out = {}
    for n in (4, 1):
        out[str(n)] = summarize(run_agent_eval(sm, held_out, n, concurrency=32))
    return out


def run_capacity(
    out: str | Path = "runs/capacity",
    docs: str | Path = "docs/studies",
    *,
    budget_min: float = 40.0,
    arms: tuple[Arm, ...] = ARMS,
    jobs: int = 2,
    threads: int = 1,
    sessions: int = 100,
    init_from: str = SHIPPED,
) -> dict[str, Any]:
    """Train every arm to its budget (resuming), score each, write the page."""
    out, docs = Path(out), Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    budget_s = budget_min * 60
    work = [(arm_config(a, budget_s, init_from).model_dump(mode="json"), str(out / a.name), threads) for a in arms]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        list(pool.map(_train_arm, work))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        scores = list(pool.map(_score, [out / a.name for a in arms], [sessions] * len(arms),
                               [threads] * len(arms)))
    report: dict[str, Any] = {
        "study": "capacity", "budget_s": budget_s, "base": BASE, "init_from": "docqa-small",
        "machine": f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
                   f"{threads} thread(s) per arm, torch {torch.__version__}",
        "sessions": sessions, "wall_s": round(time.perf_counter() - t0, 1), "arms": {},
    }
    for arm, score in zip(arms, scores, strict=True):
        meta = json.loads((out / arm.name / "train.json").read_text())
        cfg = json.loads((out / arm.name / "config.json").read_text())
        report["arms"][arm.name] = {
            "change": arm.change, "updates": arm.updates, "steps": meta["step"],
            "train_s": next((h["train_s"] for h in reversed(meta["history"]) if "train_s" in h), None),
            "history": meta["history"], "config": cfg, "scores": score,
            "fast_weight_floats": _fast_floats(cfg),
            "parameters": sum(v.numel() for v in _weights(out / arm.name).values()),
        }
    (docs / "capacity.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _fast_floats(cfg: dict[str, Any]) -> int:
    heads = cfg.get("gdn_v_heads") or cfg["gdn_heads"]
    k = cfg.get("gdn_head_k_dim") or cfg["d_model"] // cfg["gdn_heads"]
    v = cfg.get("gdn_head_v_dim") or k
    return sum(t == "gdn" for t in cfg["layer_types"]) * heads * k * v


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))
