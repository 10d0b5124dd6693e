"""``sleepagent bench decode``: one decode step against the per-matrix floor, op by op.

A decode step of a small model is dispatch-bound: its weight matrices take tens of microseconds
to read, and every op around them costs a few microseconds of overhead. The floor is what no step
can beat: one ``torch.mv`` per weight matrix of the model (the embedding is a row lookup, not a
matrix-vector product). Each variant of the step is timed against it in the same rounds (floor,
then each variant, each many times in a row: a shared machine's load drifts between rounds), and
its ops are counted twice:
the ops the dispatcher runs (``TorchDispatchMode``: what a step asks for) and the ``aten::`` events
of ``torch.profiler`` (those plus the ops composite ops expand into).

Variants: ``prefill`` (a step as a one-token prefill, the path before this benchmark),
``decode`` (:attr:`SleepHybridLM.fast_decode`: prepared weights, in-place KV writes, the fused
GDN step) and ``compiled`` (:attr:`SleepHybridLM.compile_decode`), with its compile time and the
graphs it compiled over a run that crosses window lengths and a sleep. The fused GDN kernel is
also timed alone against its reference on the model's shapes.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["DECODE_SECTION", "bench_decode", "decode_markdown"]

DECODE_SECTION = "## Decode step: ops and time against the per-matrix floor (`sleepagent bench decode`)"


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def count_ops(
    fn: Callable[[Any], object], setup: Callable[[], Any] = lambda: None, *, dispatched: bool = True
) -> dict[str, int | None]:
    """Ops of one call ``fn(setup())`` (``setup`` uncounted): dispatched (what it asks for; None
    with ``dispatched=False``: a compiled graph refuses to run under a dispatch mode) and
    profiler ``aten::`` events (for a compiled graph: the aten ops its wrapper still calls, such
    as the matrix products; its own fused kernels are not aten ops)."""
    from torch.profiler import ProfilerActivity, profile

    n = None
    if dispatched:
        arg = setup()
        with _CountOps() as c:
            fn(arg)
        n = c.n
    arg = setup()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(arg)
    events = sum(1 for e in prof.events() if e.name.startswith("aten::"))
    return {"dispatched": n, "profiler_aten": events}


def _paired(
    floor: Callable[[], object],
    variants: dict[str, tuple[Callable[[], Any], Callable[[Any], object]]],
    rounds: int,
    per_round: int,
) -> dict[str, dict[str, Any]]:
    """Median seconds of the floor and of each variant, in rounds: each round times the floor
    ``per_round`` times in a row, then each variant as many times in a row (so each runs with its
    own weights warm in the caches, as in a decode loop), and a variant's ratio is the median over
    rounds of its median / the floor's median in that round (a shared machine's load drifts
    between rounds, not within one). A variant's ``setup()`` (untimed, once per block) makes the
    state its calls step, one token after another."""
    floor_t: list[float] = []
    times: dict[str, list[float]] = {k: [] for k in variants}
    ratios: dict[str, list[float]] = {k: [] for k in variants}
    # the same from each block's 10th percentile: a step interrupted by another process's time
    # slice lands in the upper tail, so on a busy machine this ratio moves less than the median's
    low_ratios: dict[str, list[float]] = {k: [] for k in variants}

    def p10(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 10]

    def block(setup: Callable[[], Any], fn: Callable[[Any], object]) -> list[float]:
        out = []
        arg = setup()  # once per block: a decode loop steps one state
        for _ in range(per_round):
            t0 = time.perf_counter()
            fn(arg)
            out.append(time.perf_counter() - t0)
        return out

    for _ in range(rounds):
        f_round = block(lambda: None, lambda _: floor())
        floor_t += f_round
        for name, (setup, fn) in variants.items():
            v_round = block(setup, fn)
            times[name] += v_round
            ratios[name].append(statistics.median(v_round) / statistics.median(f_round))
            low_ratios[name].append(p10(v_round) / p10(f_round))
    out: dict[str, dict[str, Any]] = {"floor": {"ms": 1e3 * statistics.median(floor_t)}}
    for name in variants:
        out[name] = {"ms": 1e3 * statistics.median(times[name]), "ratio": statistics.median(ratios[name]),
                     "ratio_range": [min(ratios[name]), max(ratios[name])],
                     "p10_ratio": statistics.median(low_ratios[name])}
    return out


def bench_decode(
    model: str = "docqa-small",
    *,
    fill: int = 128,
    rounds: int = 7,
    per_round: int = 100,
    threads: int = 1,
    compiled: bool = True,
) -> dict[str, Any]:
    """Time a decode step of ``model`` (window holding ``fill`` tokens) against the floor.

    ``rounds`` x ``per_round`` samples per variant (a block of ``per_round`` steps decodes one
    state from ``fill`` tokens on, so ``fill + per_round`` must fit the window); the ratio is the
    median over rounds of (variant median / floor median in that round). ``compiled=False`` leaves out torch.compile
    (its first call compiles the graph: tens of seconds on a small CPU)."""
    from ..model.hybrid import SleepHybridLM
    from ..model.ops import gdn_decode_step, naive_gdn_decode_step
    from ..model.pretrained import SleepModel

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        lm = SleepModel.from_pretrained(model).model
        if not isinstance(lm, SleepHybridLM):
            raise TypeError(f"bench decode needs a sleepagent checkpoint, {model!r} is {type(lm).__name__}")
        cfg = lm.config
        if fill + per_round > cfg.window:
            raise ValueError(f"fill + per_round = {fill + per_round} tokens do not fit the window of {cfg.window}")
        gen = torch.Generator().manual_seed(0)
        base = lm.new_state()
        lm.prefill(torch.randint(0, cfg.vocab_size, (1, fill), generator=gen), base)
        token = torch.randint(0, cfg.vocab_size, (1,), generator=gen)

        mats = [p.detach() for name, p in lm.named_parameters() if p.dim() == 2 and not name.startswith("tok_emb")]
        xs = [torch.randn(w.shape[1], generator=gen) for w in mats]

        def floor() -> None:
            for w, x in zip(mats, xs, strict=True):
                torch.mv(w, x)

        def stepper(fast: bool, compile_: bool) -> Callable[[Any], object]:
            def step(state):
                lm.fast_decode, lm.compile_decode = fast, compile_
                try:
                    return lm.step(token, state)
                finally:
                    lm.fast_decode, lm.compile_decode = True, False

            return step

        def fresh():
            return base.clone()

        variants: dict[str, tuple[Callable[[], Any], Callable[[Any], object]]] = {
            "prefill": (fresh, stepper(False, False)),
            "decode": (fresh, stepper(True, False)),
        }
        result: dict[str, Any] = {"model": model, "window": cfg.window, "fill": fill, "threads": threads,
                                  "matrices": len(mats), "rounds": rounds, "per_round": per_round}
        if compiled:
            import torch._inductor.config as inductor_config

            torch._dynamo.reset()
            t0 = time.perf_counter()
            # cold: what the first step costs on a machine that never compiled this graph
            with inductor_config.patch(force_disable_caches=True):
                stepper(True, True)(fresh())
            result["compile_s"] = time.perf_counter() - t0
            variants["compiled"] = (fresh, stepper(True, True))
            # a run across window lengths, a sleep and the consolidated state after it
            st = fresh()
            run = stepper(True, True)
            for _ in range(cfg.window - fill + 8):
                if st.window_len == st.window:
                    st = lm.consolidate(st)
                run(st)
            result["compiled_graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
            result["compiled_steps_checked"] = cfg.window - fill + 8

        for setup, fn in variants.values():  # warm: the decode path prepares its weights on its first step
            fn(setup())
        ops = {name: count_ops(fn, setup, dispatched=name != "compiled") for name, (setup, fn) in variants.items()}
        ops["floor"] = count_ops(lambda _: floor())
        load_before = os.getloadavg()[0]
        result.update(_paired(floor, variants, rounds, per_round))
        # the machine's 1-minute load around the timing: on a shared machine, the spread of the
        # rounds' ratios grows with it
        result["load_avg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        result["cpus"] = os.cpu_count()
        for name, counts in ops.items():
            result[name].update(counts)

        # the GDN kernel alone, on the model's shapes: the fused step against its reference
        H, HV, K, V = cfg.gdn_heads, cfg.v_heads, cfg.head_k_dim, cfg.head_v_dim
        qk, v = torch.randn(1, 2, H, K, generator=gen), torch.randn(1, HV, V, generator=gen)
        a, b = torch.randn(1, HV, generator=gen), torch.randn(1, HV, generator=gen)
        S, neg_A, dt_bias = torch.randn(1, HV, K, V, generator=gen) * 0.1, -torch.ones(HV), torch.zeros(HV)
        kernels: dict[str, Any] = {}
        for name, kernel in (("reference", naive_gdn_decode_step), ("fused", gdn_decode_step)):
            def call(_: object = None, kernel=kernel) -> object:
                return kernel(qk, v, a, b, S, neg_A, dt_bias, K**-0.5)

            call()
            samples = []
            for _ in range(rounds * per_round):
                t0 = time.perf_counter()
                call()
                samples.append(time.perf_counter() - t0)
            kernels[name] = {"us": 1e6 * statistics.median(samples), **count_ops(call)}
        result["gdn_kernel"] = kernels
        return result
    finally:
        torch.set_num_threads(prev_threads)


def decode_markdown(r: dict[str, Any], command: str) -> str:
    """The section of docs/benchmarks.md for one run of :func:`bench_decode`."""
    rows = [("floor", f"one `torch.mv` per weight matrix ({r['matrices']})"),
            ("prefill", "before: a step as a one-token prefill"),
            ("decode", "`fast_decode` (default): prepared weights, in-place KV, fused GDN step"),
            ("compiled", "`compile_decode` (opt-in): the blocks as one torch.compile graph")]
    lines = [
        f"Produced by `{command}`: {r['model']}, window {r['window']} holding {r['fill']} tokens, "
        f"{r['threads']} torch thread(s). Each round times the floor, then each variant, {r['per_round']} times "
        f"in a row (a variant decodes {r['per_round']} tokens on from one state), {r['rounds']} rounds; a ratio "
        "is the median over rounds of the variant's median over the floor's median in that round "
        f"(1-minute load average {r['load_avg'][0]:g} before the timing, {r['load_avg'][1]:g} after, on "
        f"{r['cpus']} CPUs; the 10th-percentile ratio, from each block's fastest tenth, is the one another "
        "process's time slices move least). "
        "Ops: those the dispatcher runs for one step, and the `aten::` events torch.profiler records "
        "(composite ops expanded).",
        "",
        "| variant | | ms / step | x floor | rounds' range | x floor, 10th percentiles | ops dispatched "
        "| profiler aten ops |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, what in rows:
        if key not in r:
            continue
        row = r[key]
        ratio = "1.0x" if key == "floor" else f"**{row['ratio']:.1f}x**"
        spread = "" if key == "floor" else f"{row['ratio_range'][0]:.1f} to {row['ratio_range'][1]:.1f}"
        low = "1.0x" if key == "floor" else f"{row['p10_ratio']:.1f}x"
        n = "-" if row["dispatched"] is None else row["dispatched"]
        lines.append(f"| {key} | {what} | {row['ms']:.3f} | {ratio} | {spread} | {low} | {n} "
                     f"| {row['profiler_aten']} |")
    lines.append("")
    if "compiled" in r:
        lines += [f"torch.compile (inductor, C++ on CPU) took {r['compile_s']:.1f} s on the first step (caches "
                  f"disabled: a machine's first run) and compiled "
                  f"{r['compiled_graphs']} graph(s) over {r['compiled_steps_checked']} steps that crossed window "
                  "lengths and a sleep (shapes never depend on the window length). It stays opt-in "
                  "(`sleepagent serve --compile-decode`, which compiles at startup, or "
                  "`model.warm_compiled_decode()`): the compiler must be on the machine, and batched steps "
                  "(several sessions at once) stay eager.", ""]
    k = r["gdn_kernel"]
    lines += [f"The GDN decode kernel alone, on the model's shapes: reference {k['reference']['us']:.1f} us "
              f"({k['reference']['dispatched']} ops), fused `gdn_decode_step` {k['fused']['us']:.1f} us "
              f"({k['fused']['dispatched']} ops).", ""]
    return "\n".join(lines).rstrip("\n")
