"""``sleepagent bench memory``: a session's memory, sleep hybrid against a KV cache that keeps everything.

Each case runs in a fresh process (``python -c``), because a peak RSS means something only for a
process that did nothing else first.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..model import SleepHybridConfig, SleepModel

__all__ = ["bench_memory", "memory_case"]


def _reset_peak_rss() -> None:
    """Reset this process's peak-RSS mark (Linux: ``5`` > /proc/self/clear_refs); else a no-op."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_case(kind: str, tokens: int, run: bool = True) -> dict:
    """One session of ``tokens`` tokens: the sleep hybrid (window 512, sleeping when full) or the
    same model without eviction (window = tokens, the KV grows). Reports the state's bytes and the
    process's peak RSS (run it in a fresh process to make the peak mean something)."""
    _reset_peak_rss()  # a forked child starts with its parent's high-water mark
    base = dict(vocab_size=268, d_model=128, n_layers=4, n_heads=4, gdn_heads=4)
    window = 512 if kind == "sleep" else tokens
    sm = SleepModel.from_config(SleepHybridConfig(**base, window=window), seed=0)
    lm = sm.model
    rss0 = _peak_rss_mb()
    state = lm.new_state()
    t0 = time.perf_counter()
    if run:
        ids = torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(0))
        for chunk in ids.split(512, dim=1):
            if state.window_len + chunk.shape[1] > window:
                state = lm.consolidate(state, loops=1)
            lm.prefill(chunk, state)
    return {
        "kind": kind, "tokens": tokens, "ran": run, "state_bytes": state.nbytes,
        "peak_rss_mb": _peak_rss_mb(), "model_rss_mb": rss0, "seconds": time.perf_counter() - t0,
    }


def bench_memory(tokens: tuple[int, ...] = (1000, 10_000, 100_000), *, run_full_up_to: int = 10_000,
                 plot: str | None = None) -> dict:
    """Per-session memory of the sleep hybrid vs the same model with a KV cache that keeps
    everything, each case in a fresh process. Full attention beyond ``run_full_up_to`` tokens is
    allocated but not run (its quadratic prefill takes too long on a CPU)."""
    import json as _json
    import subprocess
    import sys

    rows = []
    for T in tokens:
        row: dict[str, Any] = {"tokens": T}
        for kind in ("sleep", "full"):
            run = kind == "sleep" or T <= run_full_up_to
            code = ("import json; from sleepagent.bench.memory import memory_case; "
                    f"print(json.dumps(memory_case({kind!r}, {T}, {run})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            row[kind] = _json.loads(out.stdout.strip().splitlines()[-1])
        row["state_ratio"] = row["full"]["state_bytes"] / row["sleep"]["state_bytes"]
        rows.append(row)
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        for kind, label in (("sleep", "sleep hybrid (window 512)"), ("full", "no eviction (KV grows)")):
            ax.plot([r["tokens"] for r in rows], [r[kind]["state_bytes"] / 1e6 for r in rows], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens in the session")
        ax.set_ylabel("session state (MB)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot)
        plt.close(fig)
    return {"rows": rows, "plot": plot}
