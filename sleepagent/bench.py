"""Benchmarks behind ``sleepagent bench``: ratios against a baseline run in the same process.

Wall-clock numbers depend on the machine; the ratios are what the targets are stated in:

- ``kernels``: the chunked GDN kernel vs the token-by-token recurrent reference (forward, and
  forward + backward), ratio = recurrent time / chunked time.
- ``wake``: per-token decode latency for several sleep-loop counts N. Sleep runs between wake
  steps, never inside one, so the ratio N=8 / N=1 should stay ~1.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from .model import SleepHybridConfig, SleepModel
from .model.ops import fla_available, fla_backward_ok, gated_delta_rule

__all__ = ["bench_kernels", "bench_wake", "timeit"]


def _pct(xs: list[float], q: float) -> float:
    """The q-quantile of seconds ``xs``, in milliseconds (0 for no samples)."""
    return 1e3 * sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], *, repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_kernels(
    lengths: tuple[int, ...] = (512, 2048, 8192),
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    fast_backend: str = "auto",
) -> dict:
    """Chunked (or fla, on CUDA with backend auto) vs recurrent, forward and forward+backward."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    cases = []
    for T in lengths:
        shape = (batch, T, heads, head_dim)

        def rand(*s, scale=1.0):
            return (torch.randn(*s, generator=gen) * scale).to(device).requires_grad_()

        q, k, v = rand(*shape), rand(*shape), rand(*shape)
        g = (-torch.rand(batch, T, heads, generator=gen) * 0.1).to(device).requires_grad_()
        beta = torch.rand(batch, T, heads, generator=gen).to(device).requires_grad_()
        S0 = rand(batch, heads, head_dim, head_dim, scale=0.1)
        inputs = (q, k, v, g, beta)

        def run(backend: str, backward: bool):
            def fn():
                with torch.set_grad_enabled(backward):
                    o, S = gated_delta_rule(
                        *inputs, initial_state=S0, output_final_state=True, use_qk_l2norm=True, backend=backend
                    )
                    if backward:
                        (o.sum() + S.sum()).backward()

            return fn

        row = {"T": T}
        for name, backend in (("chunk", fast_backend), ("recurrent", "torch_recurrent")):
            row[f"{name}_fwd_s"] = timeit(run(backend, False), repeats=repeats, device=device)
            row[f"{name}_fwdbwd_s"] = timeit(run(backend, True), repeats=repeats, device=device)
        row["fwd_ratio"] = row["recurrent_fwd_s"] / row["chunk_fwd_s"]
        row["fwdbwd_ratio"] = row["recurrent_fwdbwd_s"] / row["chunk_fwdbwd_s"]
        cases.append(row)
    backend = fast_backend if fast_backend != "auto" else "torch_chunk"
    if device.type == "cuda" and fast_backend == "auto" and fla_available():
        # "auto" trains with torch_chunk where fla's backward is known wrong (see fla_backward_ok)
        backend = "fla" if fla_backward_ok(device) else "fla forward, torch_chunk forward+backward"
    return {"device": str(device), "backend": backend, "heads": heads, "head_dim": head_dim, "cases": cases}


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
                _sync(device)
                t0 = time.perf_counter()
                model.step(ids[t : t + 1], states[n])
                _sync(device)
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


def bench_agent(
    *,
    latency: float = 0.2,
    loops: int = 4,
    page_chars: int = 300,
    pages: int = 12,
    device: str = "cpu",
    config: SleepHybridConfig | None = None,
) -> dict:
    """An agent reads a long document through the paged reader (each page takes ``latency``
    seconds to arrive), under three schedules: sleep in pauses, sleep only when the window is
    full, and no extra passes (N = 1, full). Reports time and exposed vs hidden sleep."""
    import anyio

    from .agent import Agent
    from .policy import SleepPolicy
    from .testing import FunctionModel, tool_call
    from .tools import END_MARKER, DocumentReader

    config = config or SleepHybridConfig(
        vocab_size=268, d_model=256, n_layers=4, n_heads=4, gdn_heads=4, window=512
    )
    sm = SleepModel.from_config(config, seed=0, device=device)
    line = "Record {i}: the courier left depot {a} at {b} o'clock carrying parcel {c}.\n"
    text = "".join(line.format(i=i, a=i * 37 % 101, b=i % 12 + 1, c=i * 7919 % 10007) for i in range(10_000))
    text = text[: pages * page_chars]

    def script(messages, info) -> str:
        last = messages[-1]
        if last.role == "tool" and END_MARKER in last.content:
            return "I have read the whole document."
        return "Reading on." + tool_call("next_page")

    schedules = {
        "pause": SleepPolicy(loops=loops, when="pause", min_fill=0.3),
        "full": SleepPolicy(loops=loops, when="full"),
        "none": SleepPolicy(loops=1, when="full"),
    }

    async def one(policy: SleepPolicy, doc: str) -> dict:
        reader = DocumentReader.from_text(doc, page_chars=page_chars, latency=latency)
        agent = Agent(FunctionModel(script, base=sm), tools=reader.tools, sleep=policy, max_steps=10_000,
                      system_prompt="Read the document.")
        async with agent.session() as session:
            t0 = time.perf_counter()
            result = await session.run("Read the document, page by page.")
            total = time.perf_counter() - t0
        agent.close()
        s = result.sleep
        return {
            "total_s": total,
            "sleep_s": s.sleep_s_total,
            "hidden_s": s.sleep_s_hidden,
            "exposed_s": s.sleep_s_exposed,
            "hidden_fraction": s.hidden_fraction,
            "sleeps": s.sleeps,
            "forced_sleeps": s.forced_sleeps,
            "tool_wait_s": reader.pages_read * latency,
            "wake_ms_per_token": s.wake_ms_per_token,
            "tokens": result.usage.total_tokens,
        }

    async def main() -> dict:
        await one(schedules["pause"], text[: 2 * page_chars])  # warm-up, untimed
        return {name: await one(policy, text) for name, policy in schedules.items()}

    results = anyio.run(main)
    return {
        "device": str(device),
        "latency_s": latency,
        "loops": loops,
        "pages": pages,
        "window": config.window,
        "schedules": results,
        "pause_over_full_total": results["pause"]["total_s"] / results["full"]["total_s"],
    }


def bench_engine(
    *, sessions: int = 10, tokens: int = 64, device: str = "cpu", config: SleepHybridConfig | None = None
) -> dict:
    """Throughput of concurrent sessions' decode on one engine, batched vs one step at a time."""
    import anyio

    from .engine import Engine
    from .policy import SleepPolicy

    config = config or SleepHybridConfig(
        vocab_size=268, d_model=256, n_layers=4, n_heads=4, gdn_heads=4, window=512
    )
    sm = SleepModel.from_config(config, seed=0, device=device)

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
        serial, batched = await run(False), await run(True)
        n = sessions * tokens
        return {"sessions": sessions, "tokens_per_session": tokens,
                "serial_tok_s": n / serial, "batched_tok_s": n / batched, "speedup": serial / batched}

    return {"device": str(device), **anyio.run(main)}


def _two_b_class_state():
    """A 2B-class fast state (24 GDN layers x 12 heads x 96 x 256 float32), computed, not downloaded."""
    from .model import HybridState

    cfg = SleepHybridConfig(
        vocab_size=268, d_model=1536, n_layers=24, layer_types=("gdn",) * 24, gdn_heads=12,
        gdn_head_k_dim=96, gdn_head_v_dim=256, window=16,
    )
    state = HybridState.empty(cfg, 1)
    gen = torch.Generator().manual_seed(0)
    from .model.state import FastState

    fast = FastState(
        S=tuple(torch.randn(s.shape, generator=gen) for s in state.fast.S),
        conv=tuple(torch.randn(c.shape, generator=gen) for c in state.fast.conv),
    )
    state.fast = state.working = fast
    return cfg, state


def bench_store(
    *, url: str | None = None, postgres: bool = True, repeats: int = 5, writers: int = 8, writes_per_writer: int = 10
) -> dict:
    """Snapshot write / restore latency and bytes, for the small model's state and a 2B-class state,
    on SQLite (and PostgreSQL: ``url`` or a temporary server); plus throughput of ``writers``
    concurrent writers."""
    import tempfile
    import threading
    from contextlib import ExitStack

    from .model import HybridState
    from .policy import MemoryPolicy
    from .storage import SnapshotStore
    from .storage.pgtemp import create_database, postgres_bindir, temporary_postgres

    small = SleepModel.from_config(
        SleepHybridConfig(vocab_size=268, d_model=256, n_layers=4, n_heads=4, gdn_heads=4, window=512)
    )
    lm = small.model
    st = lm.new_state()
    lm.prefill(torch.randint(0, 256, (1, 300), generator=torch.Generator().manual_seed(0)), st)
    small_state = lm.consolidate(st, loops=2)
    big_cfg, big_state = _two_b_class_state()
    states = {
        "small": (small.config, small_state, small.fingerprint),
        "2b-class": (big_cfg, big_state, "f" * 64),
    }
    results: dict[str, dict] = {}
    with ExitStack() as stack:
        backends = {}
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        backends["sqlite"] = f"sqlite:///{tmp}/bench.db"
        if url:
            backends["postgresql"] = url
        elif postgres and postgres_bindir() is not None:
            server = stack.enter_context(temporary_postgres())
            backends["postgresql"] = create_database(server)
        for backend, db_url in backends.items():
            store = SnapshotStore(db_url)
            row: dict[str, dict] = {}
            for name, (cfg, state, fp) in states.items():
                sid = f"bench-{name}"
                store.open_session(sid, tenant="bench", fingerprint=fp, policy=MemoryPolicy(retention="persistent", max_snapshots=2))
                blob = state.to_bytes(fp)
                write = timeit(lambda: store.save(sid, state.to_bytes(fp), tenant="bench", loops=2),
                               repeats=repeats, device=torch.device("cpu"))
                restore = timeit(
                    lambda: HybridState.from_bytes(store.latest(sid, tenant="bench")[1], cfg=cfg, fingerprint=fp),
                    repeats=repeats, device=torch.device("cpu"),
                )
                row[name] = {"bytes": len(blob), "write_ms": 1000 * write, "restore_ms": 1000 * restore}
            # the bf16 option: half the bytes, and the error it costs (measured on the restored S)
            cfg, state, fp = states["2b-class"]
            sid = "bench-bf16"
            store.open_session(sid, tenant="bench", fingerprint=fp, policy=MemoryPolicy(retention="persistent", max_snapshots=2))
            blob = state.to_bytes(fp, torch.bfloat16)
            write = timeit(lambda: store.save(sid, state.to_bytes(fp, torch.bfloat16), tenant="bench", loops=2),
                           repeats=repeats, device=torch.device("cpu"))
            restored: list[HybridState] = []
            restore = timeit(lambda: restored.append(HybridState.from_bytes(store.latest(sid, tenant="bench")[1], cfg=cfg,
                                                                          fingerprint=fp)),
                             repeats=repeats, device=torch.device("cpu"))
            err = max(float(((a - b).abs() / b.abs().clamp_min(1e-12)).max()) for a, b in
                      zip(restored[-1].fast.S, state.fast.S, strict=True))
            row["2b-class bf16"] = {"bytes": len(blob), "write_ms": 1000 * write, "restore_ms": 1000 * restore,
                                    "max_relative_error": err}
            # concurrent writers, each with its own store (connection pool), small state
            cfg, state, fp = states["small"]
            blob = state.to_bytes(fp)
            pool = [SnapshotStore(db_url) for _ in range(writers)]
            for i, s in enumerate(pool):
                s.open_session(f"w{i}", tenant="bench", fingerprint=fp, policy=MemoryPolicy(retention="persistent", max_snapshots=3))

            def work(i: int) -> None:
                for _ in range(writes_per_writer):
                    pool[i].save(f"w{i}", blob, tenant="bench", loops=2)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            dt = time.perf_counter() - t0
            n = writers * writes_per_writer
            row["concurrent"] = {"writers": writers, "snapshots_per_s": n / dt, "mb_per_s": n * len(blob) / dt / 1e6}
            for s in pool:
                s.close()
            store.close()
            results[backend] = row
    return {"backends": results}


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
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_case(kind: str, tokens: int, run: bool = True) -> dict:
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
        row = {"tokens": T}
        for kind in ("sleep", "full"):
            run = kind == "sleep" or T <= run_full_up_to
            code = f"import json; from sleepagent.bench import _memory_case; print(json.dumps(_memory_case({kind!r}, {T}, {run})))"
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


def bench_bounded(*, read_mb: float = 2.0, steps: int = 200, model: str = "docqa-small", device: str = "cpu") -> dict:
    """Bounded work, on the shipped model: (1) a 1 MB task against ``input_tokens_limit=10_000``:
    seconds until it raises; (2) an active session's decode-step latency while another session on
    the same engine reads a ``read_mb`` tool output, against the same steps with nobody reading
    (ratio of p99s); (3) the read is then cancelled: tokens the engine read after the cancel."""
    import anyio

    from .agent import Agent
    from .engine import Engine
    from .errors import UsageLimitExceeded
    from .messages import UsageLimits
    from .policy import SleepPolicy

    sm = SleepModel.from_pretrained(model, device=device if device != "cpu" else None)
    agent = Agent(sm, max_input_chars=2_000_000, sleep=SleepPolicy(loops=1, when="full"))
    t0 = time.perf_counter()
    try:
        agent.run_sync("x" * 1_000_000, usage_limits=UsageLimits(input_tokens_limit=10_000))
        refused_s = None
    except UsageLimitExceeded:
        refused_s = time.perf_counter() - t0
    agent.close()

    async def main() -> dict:
        with Engine(sm) as engine:
            talker = engine.session(policy=SleepPolicy(loops=4, when="full"))
            await engine.prefill(talker, sm.tokenizer.encode("hello there"))

            async def decode_steps() -> list[float]:
                out = []
                for i in range(steps):
                    if talker.state.window_len >= talker.state.window - 1:  # keep sleeps out of the timing
                        await engine.consolidate(talker)
                    t = time.perf_counter()
                    await engine.decode(talker, 65 + i % 26)
                    out.append(time.perf_counter() - t)
                return out

            await decode_steps()  # warm-up
            idle = await decode_steps()
            reader = engine.session(policy=SleepPolicy(loops=4, when="full"))
            n_read = int(read_mb * 1_000_000)
            loaded: list[float] = []
            stopped_after: int = 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.prefill, reader, [113] * n_read)
                while reader.state.tokens_seen == 0:
                    await anyio.sleep(0.001)
                loaded = await decode_steps()
                read_when_done = reader.state.tokens_seen
                tg.cancel_scope.cancel()
            at_cancel = reader.state.tokens_seen
            await anyio.sleep(0.5)
            stopped_after = reader.state.tokens_seen - at_cancel
            engine.close_session(reader)

        return {
            "idle_p50_ms": _pct(idle, 0.5), "idle_p99_ms": _pct(idle, 0.99),
            "reading_p50_ms": _pct(loaded, 0.5), "reading_p99_ms": _pct(loaded, 0.99),
            "p99_ratio": _pct(loaded, 0.99) / _pct(idle, 0.99),
            "read_tokens": n_read, "read_while_measuring": read_when_done,
            "read_after_cancel": stopped_after, "prefill_chunk": engine.prefill_chunk,
        }

    return {"model": model, "device": str(device), "refused_1mb_s": refused_s, "steps": steps, **anyio.run(main)}


def bench_fairness(*, sleepers: int = 8, turns: int = 20, tokens: int = 24, pause_s: float = 0.03, loops: int = 4,
                   model: str = "docqa-small", device: str = "cpu") -> dict:
    """An active session's latency while ``sleepers`` other sessions on the same engine sleep
    (N = ``loops``, each over a full window), against the same run with those sessions idle. The active session works in turns, as a conversation does: a
    short message read, ``tokens`` tokens written, then a pause of ``pause_s`` (the client's round
    trip) in which the sleepers run. Reported: time to first token (read + first step) and the
    inter-token step latency, p50/p99, and the sleep passes the others got done meanwhile.
    Public :class:`Engine` API, the shipped model."""
    import anyio

    from .engine import Engine
    from .policy import SleepPolicy

    sm = SleepModel.from_pretrained(model, device=device if device != "cpu" else None)
    W = sm.config.window
    tok = sm.tokenizer
    filler = tok.encode("The road from K leads to M. " * (W // 28 + 1))[: W - 8]
    message = tok.render_turn("user", "Where does 1 road from K lead?") + tok.generation_prompt()

    async def run(sleeping: bool) -> tuple[list[float], list[float], int, int]:
        with Engine(sm) as engine:
            # the active session's own sleeps are kept out of its timings (consolidated between
            # turns, untimed): what is measured is what the others' sleep costs it
            active = engine.session(policy=SleepPolicy(loops=loops, when="full"))
            others = [engine.session(policy=SleepPolicy(loops=loops, min_fill=0.1)) for _ in range(sleepers)]
            for s in others:
                await engine.prefill(s, filler)
            if sleeping:  # their windows are full: they all go to sleep, with nothing else to do
                for s in others:
                    engine.pause(s)
            ttft: list[float] = []
            itl: list[float] = []
            during = 0
            for turn in range(turns):
                during += any(s.sleeping for s in others)
                if active.state.window_len + len(message) + tokens > W:
                    await engine.consolidate(active)
                await anyio.sleep(pause_s)  # the client's round trip: sleepers run now
                t0 = time.perf_counter()
                logits = await engine.prefill(active, message)
                logits = await engine.decode(active, int(logits.argmax()))
                ttft.append(time.perf_counter() - t0)
                for _ in range(tokens - 1):
                    t1 = time.perf_counter()
                    logits = await engine.decode(active, int(logits.argmax()))
                    itl.append(time.perf_counter() - t1)
            passes = sum(s.stats.passes for s in others)
        return ttft, itl, passes, during

    async def main() -> dict:
        await run(False)  # warm-up
        idle_ttft, idle_itl, _, _ = await run(False)
        ttft, itl, passes, during = await run(True)
        return {
            "idle_ttft_p50_ms": _pct(idle_ttft, 0.5), "idle_ttft_p99_ms": _pct(idle_ttft, 0.99),
            "sleeping_ttft_p50_ms": _pct(ttft, 0.5), "sleeping_ttft_p99_ms": _pct(ttft, 0.99),
            "idle_step_p50_ms": _pct(idle_itl, 0.5), "idle_step_p99_ms": _pct(idle_itl, 0.99),
            "sleeping_step_p50_ms": _pct(itl, 0.5), "sleeping_step_p99_ms": _pct(itl, 0.99),
            "step_p99_ratio": _pct(itl, 0.99) / _pct(idle_itl, 0.99),
            "ttft_p99_ratio": _pct(ttft, 0.99) / _pct(idle_ttft, 0.99),
            "sleep_passes_meanwhile": passes, "turns_while_others_slept": during,
        }

    return {"model": model, "sleepers": sleepers, "loops": loops, "turns": turns, "tokens": tokens,
            "pause_s": pause_s, **anyio.run(main)}


def bench_serve(*, conversations: int = 8, concurrency: int | None = None, rounds: int = 2, tool_s: float = 0.3,
                think_s: float = 0.3, model: str = "docqa-small", replicas: tuple[int, ...] = ()) -> dict:
    """``K`` simulated conversations against a real ``sleepagent serve`` on a free port, over HTTP
    with streaming: read a document through a tool call (the tool takes ``tool_s``), then
    ``rounds`` questions with ``think_s`` of user think time before each. Reports throughput, time
    to first token and inter-token latency (p50/p99, from the SSE chunks), and the share of sleep
    hidden in the pauses (from the server's metrics).

    ``replicas``: also run the same load on Ray Serve with each number of engine replicas (a local
    Ray, a temporary PostgreSQL store), and time a failover: the replica holding a conversation is
    killed, and the next request's first token is timed (kill to first token)."""
    import httpx

    from .serve import ServeConfig, serve_in_background

    with serve_in_background(ServeConfig(model=model, no_auth=True, max_in_flight=max(64, conversations))) as url:
        out = _drive(url, model, conversations, concurrency, rounds, tool_s, think_s)
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text

    def metric(name: str) -> float:
        return next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))

    hidden, exposed = metric("sleepagent_sleep_hidden_seconds_total"), metric("sleepagent_sleep_exposed_seconds_total")
    out.update({"sleeps": metric("sleepagent_sleeps_total"), "sleep_hidden_s": hidden, "sleep_exposed_s": exposed,
                "hidden_share": hidden / (hidden + exposed) if hidden + exposed else 1.0})
    if replicas:
        out["ray"] = {str(k): _bench_ray(k, model, conversations, concurrency, rounds, tool_s, think_s) for k in replicas}
    return out


_PAGE = "The road from K leads to M. The road from M leads to Q. The road from Q leads to K.\n[end of document]"
_TOOLS = [{"type": "function", "function": {"name": "next_page", "description": "Read the next page of the document.",
                                            "parameters": {"type": "object", "properties": {}}}}]


async def _stream_turn(client, url: str, model: str, messages: list, session: str | None, record=None) -> tuple[dict, str]:
    """One streamed request; returns (the assistant message, the session id). ``record(kind, s)``
    gets "ttft" and "itl" times and "tokens" counts."""
    import json as _json

    body = {"model": model, "messages": messages, "tools": _TOOLS, "stream": True,
            "stream_options": {"include_usage": True}}
    headers = {"X-Session-Id": session} if session else {}
    t0 = time.perf_counter()
    first = last = None
    content, calls = "", []
    async with client.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        sid = r.headers.get("x-session-id", session)
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = _json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(data["error"]["message"])
            if data.get("usage") and record:
                record("tokens", data["usage"]["completion_tokens"])
            for ch in data.get("choices", []):
                delta = ch.get("delta", {})
                if delta.get("content") or delta.get("tool_calls"):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                        record and record("ttft", now - t0)
                    elif delta.get("content"):
                        record and record("itl", now - last)
                    last = now
                    content += delta.get("content") or ""
                    calls += delta.get("tool_calls") or []
    message = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [{k: c[k] for k in ("id", "type", "function")} for c in calls]
    return message, sid


def _drive(url: str, model: str, conversations: int, concurrency: int | None, rounds: int, tool_s: float,
           think_s: float) -> dict:
    """The simulated conversations of :func:`bench_serve` against ``url``."""
    import anyio
    import httpx

    times: dict[str, list[float]] = {"ttft": [], "itl": []}
    counts = {"tokens": 0, "requests": 0, "lost": 0}

    def record(kind: str, value: float) -> None:
        if kind == "tokens":
            counts["tokens"] += int(value)
        else:
            times[kind].append(value)

    async def conversation(limiter: anyio.CapacityLimiter) -> None:
        async with limiter, httpx.AsyncClient(timeout=300) as client:
            try:
                messages = [{"role": "user", "content": "Read the document."}]
                reply, sid = await _stream_turn(client, url, model, messages, None, record)
                counts["requests"] += 1
                messages.append(reply)
                for call in reply.get("tool_calls", []):
                    await anyio.sleep(tool_s)  # the tool runs: the server sleeps meanwhile
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": _PAGE})
                if reply.get("tool_calls"):
                    reply, sid = await _stream_turn(client, url, model, messages, sid, record)
                    counts["requests"] += 1
                    messages.append(reply)
                for q in range(rounds):
                    await anyio.sleep(think_s)  # the user reads and thinks
                    messages.append({"role": "user", "content": f"Where does 1 road from {'KMQ'[q % 3]} lead?"})
                    reply, sid = await _stream_turn(client, url, model, messages, sid, record)
                    counts["requests"] += 1
                    messages.append(reply)
            except (RuntimeError, httpx.HTTPError):
                counts["lost"] += 1

    async def main() -> float:
        limiter = anyio.CapacityLimiter(concurrency or conversations)
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(conversations):
                tg.start_soon(conversation, limiter)
        return time.perf_counter() - t0

    wall = anyio.run(main)

    return {"model": model, "conversations": conversations, "concurrency": concurrency or conversations,
            "rounds": rounds, "tool_s": tool_s, "think_s": think_s, "wall_s": wall, "requests": counts["requests"],
            "lost": counts["lost"], "requests_per_s": counts["requests"] / wall, "tokens_per_s": counts["tokens"] / wall,
            "ttft_p50_ms": _pct(times["ttft"], 0.5), "ttft_p99_ms": _pct(times["ttft"], 0.99),
            "itl_p50_ms": _pct(times["itl"], 0.5), "itl_p99_ms": _pct(times["itl"], 0.99)}


def _bench_ray(replicas: int, model: str, conversations: int, concurrency: int | None, rounds: int, tool_s: float,
               think_s: float) -> dict:
    """The same load on Ray Serve with ``replicas`` engines, then a timed failover."""
    import socket

    import anyio
    import httpx
    import ray
    from ray import serve

    from .serve import ServeConfig
    from .serve.ray_serve import build_app
    from .storage.pgtemp import create_database, temporary_postgres

    with temporary_postgres() as server, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        ray.init(num_cpus=max(2, replicas), include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            cfg = ServeConfig(model=model, no_auth=True, store=create_database(server), persist_window=True)
            serve.run(build_app(cfg, replicas=replicas, num_cpus=max(2, replicas) / (replicas + 0.5)),
                      name="sleepagent", route_prefix="/")
            url = f"http://127.0.0.1:{port}/v1"
            out = _drive(url, model, conversations, concurrency, rounds, tool_s, think_s)
            if replicas > 1:
                out["failover_s"] = anyio.run(_failover, url, model)
        finally:
            serve.shutdown()
            ray.shutdown()
    return out


async def _failover(url: str, model: str) -> float:
    """Seconds from killing the replica that holds a conversation to the first token of its next
    reply (resumed on another replica from the store)."""
    import anyio
    import httpx
    import ray

    async with httpx.AsyncClient(timeout=300) as client:
        messages = [{"role": "user", "content": "Read the document."}]
        r = await client.post(f"{url}/chat/completions", json={"model": model, "messages": messages, "tools": _TOOLS})
        sid, replica = r.headers["x-session-id"], r.json()["session"]["replica"]
        messages += [r.json()["choices"][0]["message"], {"role": "tool", "tool_call_id": "c", "content": _PAGE}]
        name = next(a for a in ray.util.list_named_actors(all_namespaces=True) if replica in a["name"])
        t0 = time.perf_counter()
        ray.kill(ray.get_actor(name["name"], namespace=name["namespace"]), no_restart=True)
        first: list[float] = []
        while not first:
            try:
                await _stream_turn(client, url, model, messages, sid,
                                   lambda kind, v: first.append(time.perf_counter()) if kind == "ttft" else None)
            except (RuntimeError, httpx.HTTPError):
                await anyio.sleep(0.05)  # Ray is still routing around the dead replica
        return first[0] - t0
