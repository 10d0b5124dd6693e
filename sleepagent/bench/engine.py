"""``sleepagent bench engine``: concurrent sessions' decode throughput, batched against serial;
with ``model="hf"``, on a transformers GDN hybrid, plus sleep reusing the wake pass."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..model import SleepHybridConfig, SleepModel

__all__ = ["HF_BENCH_SIZES", "HF_SECTION", "bench_engine", "hf_markdown"]

HF_SECTION = "## Transformers hybrids: batched wake, sleep reusing wake"
# a ~27M-parameter qwen3_5 text model (6 GDN + 2 attention layers, d = 512), built in-process
HF_BENCH_LAYERS = ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"]
HF_BENCH_SIZES = dict(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=2,
                      head_dim=64, linear_num_value_heads=8, linear_num_key_heads=4, linear_key_head_dim=64,
                      linear_value_head_dim=64)


def _hf_model(root: Path, window: int, device: str) -> SleepModel:
    from ..model.hf_tiny import save_tiny_hybrid

    path = save_tiny_hybrid(root / "qwen3_5", "qwen3_5_text", seed=0, layer_types=HF_BENCH_LAYERS,
                            sizes=HF_BENCH_SIZES)
    return SleepModel.from_pretrained(path, window=window, loops=2, device=device)


def bench_engine(
    *, sessions: int = 10, tokens: int = 64, device: str = "cpu", config: SleepHybridConfig | None = None,
    model: str = "native", sleep_window: int = 256, repeats: int = 3, sleep_repeats: int = 7, threads: int = 1,
) -> dict:
    """Throughput of concurrent sessions' decode on one engine, batched vs one step at a time.

    ``model``: "native" (a SleepHybridLM from ``config``) or "hf" (a ~27M-parameter transformers
    qwen3_5 hybrid built in-process, no download); for "hf" also the sleep of a ``sleep_window``-
    token window at N = 2 against one pass over it (median of ``sleep_repeats``; the engine's
    serial/batched runs alternate ``repeats`` times), reusing wake's pass 1
    and recomputing it; the "hf" run uses ``threads`` torch threads."""
    if model not in ("native", "hf"):
        raise ValueError(f"model must be 'native' or 'hf', got {model!r}")
    if model == "hf":
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                sm = _hf_model(Path(tmp), window=max(1024, sleep_window), device=device)
                hf: Any = sm.model
                out = {"model": "hf-qwen3_5-27M", "params": sum(p.numel() for p in hf.parameters()),
                       "threads": threads, **_engine(sm, sessions, tokens, device, rounds=repeats)}
                return {**out, "sleep": _sleep_reuse(sm, sleep_window, sleep_repeats)}
        finally:
            torch.set_num_threads(prev)
    config = config or SleepHybridConfig(
        vocab_size=268, d_model=256, n_layers=4, n_heads=4, gdn_heads=4, window=512
    )
    return _engine(SleepModel.from_config(config, seed=0, device=device), sessions, tokens, device)


def _engine(sm: SleepModel, sessions: int, tokens: int, device: str, rounds: int = 1) -> dict:
    """Serial and batched runs, alternated ``rounds`` times (a shared host's load then weighs on
    both alike); throughputs from the totals, the speedup each round's and their median."""
    import anyio

    from ..engine import Engine
    from ..policy import SleepPolicy

    async def run(batch: bool) -> float:
        with Engine(sm, batch_wake=batch) as engine:
            ss = [engine.session(policy=SleepPolicy(loops=1, when="full")) for _ in range(sessions)]
            for i, s in enumerate(ss):
                await engine.prefill(s, list(range(1, 20 + i)))

            async def decode(s) -> None:
                for t in range(tokens):
                    await engine.decode(s, (t * 31) % 256)

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for s in ss:
                    tg.start_soon(decode, s)
            return time.perf_counter() - t0

    async def main() -> dict:
        await run(True)  # warm-up
        pairs = [(await run(False), await run(True)) for _ in range(rounds)]
        serial, batched = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        n = sessions * tokens * rounds
        out: dict[str, Any] = {"sessions": sessions, "tokens_per_session": tokens,
               "serial_tok_s": n / serial, "batched_tok_s": n / batched, "speedup": serial / batched}
        if rounds > 1:
            ratios = [a / b for a, b in pairs]
            out |= {"rounds": rounds, "speedup": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)]}
        return out

    return {"device": str(device), **anyio.run(main)}


def _sleep_reuse(sm: SleepModel, window: int, repeats: int) -> dict:
    """Sleep at N = 2 over a full ``window``-token window, against one pass over it (the decoder
    once over the window, as :meth:`HFHybridLM.blocks`): reusing wake's pass 1, and recomputing it."""
    from ..model.hf import HFHybridLM

    lm = sm.model
    assert isinstance(lm, HFHybridLM)
    st = lm.new_state()
    ids = torch.randint(0, 256, (1, window), generator=torch.Generator().manual_seed(0))
    lm.prefill(ids, st)
    assert st.window_h is not None

    recompute = copy.deepcopy(st)
    recompute.window_h = None

    def one_pass() -> None:
        with torch.no_grad():
            lm.blocks(lm.embed(ids), st.fast, 0, lm.config.n_layers)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    fns = (one_pass, lambda: lm.consolidate(st, 2), lambda: lm.consolidate(recompute, 2))
    for fn in fns:  # warm-up
        fn()
    runs = [[timed(fn) for fn in fns] for _ in range(repeats)]  # interleaved: load weighs on all three
    one, reuse, again = (statistics.median(r[i] for r in runs) for i in range(3))
    reuse_ratio = [r[1] / r[0] for r in runs]
    again_ratio = [r[2] / r[0] for r in runs]
    return {"window": window, "repeats": repeats, "one_pass_s": one, "sleep_n2_s": reuse,
            "sleep_n2_recompute_s": again, "n2_over_one_pass": statistics.median(reuse_ratio),
            "n2_over_one_pass_range": [min(reuse_ratio), max(reuse_ratio)],
            "n2_recompute_over_one_pass": statistics.median(again_ratio),
            "n2_recompute_over_one_pass_range": [min(again_ratio), max(again_ratio)]}


def hf_markdown(r: dict, command: str) -> str:
    """The transformers section of docs/benchmarks.md."""
    s = r["sleep"]

    def rng(v: list[float]) -> str:
        return f" ({v[0]:.2f}-{v[1]:.2f}x)"

    return "\n".join([
        f"`{command}` ({r['device']}, {r['threads']} torch thread(s)): a {r['params'] / 1e6:.1f}M-parameter "
        "qwen3_5 hybrid (6 GDN + 2 attention layers, d = 512) built in-process from a config, through the "
        "transformers adapter (`sleepagent.model.hf`). Each ratio is the median of interleaved rounds "
        f"({r.get('rounds', 1)} for the engine, {s['repeats']} for sleep), their range in brackets (a noisy "
        "shared host).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| engine decode, {r['sessions']} sessions x {r['tokens_per_session']} tokens, serial | "
        f"{r['serial_tok_s']:.0f} tok/s |",
        f"| the same, batched (one forward over the sessions' stacked caches) | {r['batched_tok_s']:.0f} tok/s |",
        f"| batched / serial | **{r['speedup']:.2f}x**{rng(r['speedup_range']) if 'speedup_range' in r else ''} |",
        f"| sleep at N = 2 over a {s['window']}-token window / one pass over it (pass 1 is wake's) | "
        f"**{s['n2_over_one_pass']:.2f}x**{rng(s['n2_over_one_pass_range'])} |",
        f"| the same, recomputing pass 1 (a window whose wake h was not kept) | "
        f"{s['n2_recompute_over_one_pass']:.2f}x{rng(s['n2_recompute_over_one_pass_range'])} |",
        "",
        f"One pass {1000 * s['one_pass_s']:.0f} ms; sleep at N = 2 {1000 * s['sleep_n2_s']:.0f} ms reusing wake, "
        f"{1000 * s['sleep_n2_recompute_s']:.0f} ms recomputing (medians).",
    ])
