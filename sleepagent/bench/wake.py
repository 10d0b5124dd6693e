"""``sleepagent bench wake``: per-token decode latency for several sleep-loop counts N.

Sleep runs between wake steps, never inside one, so the ratio N = 8 / N = 1 should stay near 1;
the N values are interleaved token by token so drift in the machine's speed hits them alike.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..model import SleepHybridConfig, SleepModel
from .timing import sync

__all__ = ["bench_wake"]


def bench_wake(
    loops: tuple[int, ...] = (1, 2, 4, 8),
    *,
    tokens: int = 256,
    rounds: int = 3,
    device: str | torch.device = "cpu",
    config: SleepHybridConfig | None = None,
) -> dict:
    """Per-token decode latency (ms) per N; sleeps run between steps, as the engine does.

    The N values are interleaved round-robin token by token (one state per N, each step of each
    state in turn, the order rotating), so drift in the machine's speed hits every N alike; each
    N's median comes with the spread of its per-round medians. A wake step does not depend on N:
    differences within that spread are noise, not a property."""
    device = torch.device(device)
    config = config or SleepHybridConfig(
        vocab_size=268, d_model=128, n_layers=4, n_heads=4, gdn_heads=4, window=64
    )
    sm = SleepModel.from_config(config, seed=0, device=device)
    model = sm.model
    ids = torch.randint(0, config.vocab_size, (tokens,), generator=torch.Generator().manual_seed(0)).to(device)
    warm = model.new_state(1, device=device)
    for t in range(min(tokens, config.window)):  # warm up allocator and kernels, untimed
        model.step(ids[t : t + 1], warm)
    per_round: dict[int, list[float]] = {n: [] for n in loops}
    all_times: dict[int, list[float]] = {n: [] for n in loops}
    for r in range(rounds):
        states = {n: model.new_state(1, device=device) for n in loops}
        times: dict[int, list[float]] = {n: [] for n in loops}
        for t in range(tokens):
            order = list(loops[(t + r) % len(loops):]) + list(loops[: (t + r) % len(loops)])
            for n in order:
                if states[n].window_len == config.window:
                    states[n] = model.consolidate(states[n], loops=n)  # off the decode path
                sync(device)
                t0 = time.perf_counter()
                model.step(ids[t : t + 1], states[n])
                sync(device)
                times[n].append(time.perf_counter() - t0)
        for n in loops:
            per_round[n].append(1000 * statistics.median(times[n]))
            all_times[n] += times[n]
    ms = {str(n): 1000 * statistics.median(v) for n, v in all_times.items()}
    spread = {str(n): [min(v), max(v)] for n, v in per_round.items()}
    result = {"device": str(device), "tokens": tokens, "rounds": rounds, "window": config.window, "ms_per_token": ms,
              "round_medians_ms": spread}
    if "1" in ms and str(max(loops)) in ms:
        result[f"ratio_{max(loops)}_over_1"] = ms[str(max(loops))] / ms["1"]
    return result
