"""``sleepagent bench train``: one training step of the demo model against the machine's limit.

A step of the docqa recipe (the training forward of Algorithm 1 over whole sessions, N passes
per window, backward, Muon) is timed in a few configurations, and each is put against the same
process's own measure of the machine: the FLOP/s of one large float32 matrix product on the same
threads (the arithmetic a CPU can deliver at best). The step's FLOPs are counted by torch
(``FlopCounterMode``: matrix products; elementwise work is left out, so achieved/peak is an
upper bound on how busy the arithmetic units are). Configurations: the threads (two runs of one
thread each, the recipe's default on two cores, against one run of two threads) and float32
against bfloat16 autocast for the projections.
"""

from __future__ import annotations

import random
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..train.run import build_optimizers
from ..train.tasks import make_task
from ..train.trainer import TrainConfig, build_model, loss_of_batch, sample_batch

__all__ = ["CONFIGS", "bench_train", "bench_train_step", "matmul_peak"]

DOCQA = dict(task="docqa", task_kwargs=dict(n_places=[2, 16], hops=[1, 2], questions=8, window=256, name_len=1,
                                             page_chars=112, documents=[1, 2], varied=True),
             loops=4, batch_size=8, optimizer="muon", conv_size=12)


def matmul_peak(threads: int, size: int = 1536, repeats: int = 5) -> float:
    """FLOP/s of a ``size``-cubed float32 matrix product on ``threads`` threads (best of repeats)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def bench_train_step(*, steps: int = 4, threads: int = 1, autocast: bool = False,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time ``steps`` training steps (after one warm-up) of the docqa recipe; FLOPs, tokens and
    achieved FLOP/s against :func:`matmul_peak` on the same threads."""
    torch.set_num_threads(threads)
    cfg = TrainConfig(**{**DOCQA, **(overrides or {})})
    task = make_task(cfg.task, **cfg.task_kwargs)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    opts = build_optimizers(cfg, model)
    batches = [sample_batch(task, random.Random(f"bench-{i}"), cfg.batch_size) for i in range(steps + 1)]

    def step(batch) -> int:
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, tokens = loss_of_batch(model, task, batch, cfg)
        loss.backward()
        for opt in opts:
            opt.step()
        return tokens

    step(batches[0])
    with FlopCounterMode(display=False) as counter:
        step(batches[0])
    flops_per_token = counter.get_total_flops() / sum(len(ex.ids) for ex in batches[0])
    t0 = time.perf_counter()
    tokens = sum(step(b) for b in batches[1:])
    seconds = time.perf_counter() - t0
    peak = matmul_peak(threads)
    achieved = flops_per_token * tokens / seconds
    return {"threads": threads, "autocast": autocast, "steps": steps, "s_per_step": seconds / steps,
            "tokens_per_s": tokens / seconds, "flops_per_token": flops_per_token, "achieved_flops": achieved,
            "peak_flops": peak, "fraction_of_peak": achieved / peak, "loops": cfg.loops}


# (label, threads, bfloat16 autocast): the recipe as it trains (one thread a run, two runs side by
# side on two cores) first, the baseline every ratio is against
CONFIGS: tuple[tuple[str, int, bool], ...] = (
    ("float32, 1 thread (the recipe)", 1, False),
    ("float32, 2 threads", 2, False),
    ("bfloat16 autocast, 1 thread", 1, True),
)


def bench_train(*, steps: int = 3) -> dict[str, Any]:
    """Every configuration of :data:`CONFIGS` in this process, each as a ratio of tokens/s to the
    first; the machine's float32 matmul peak per thread count beside it."""
    rows = []
    for label, threads, autocast in CONFIGS:
        r = bench_train_step(steps=steps, threads=threads, autocast=autocast)
        rows.append({"config": label, **r})
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / base
    return {"steps": steps, "rows": rows}
