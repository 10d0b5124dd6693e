"""``sleepagent bench`` with no subcommand: every benchmark, written as one markdown report.

Each section states its ratio against the baseline measured in the same process, and the report
starts with the machine it ran on, so figures from different machines are never mixed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from . import agent, bounded, engine, fairness, kernels, memory, serve, store, wake

__all__ = ["machine", "run_all", "to_markdown", "write_report"]

QUICK: dict[str, dict[str, Any]] = {
    "kernels": dict(lengths=(256, 1024), repeats=1),
    "wake": dict(loops=(1, 4), tokens=64, rounds=1),
    "agent": dict(latency=0.05, pages=4, page_chars=200),
    "engine": dict(sessions=4, tokens=16),
    "store": dict(repeats=1, writers=2, postgres=False),
    "memory": dict(tokens=(1000, 10_000), run_full_up_to=1000),
    "bounded": dict(read_mb=0.05, steps=20),
    "fairness": dict(sleepers=2, turns=3, tokens=4),
    "serve": dict(conversations=2, rounds=1, tool_s=0.05, think_s=0.05),
}


def machine() -> dict[str, Any]:
    """The machine the figures come from, printed at the top of the report so runs are never mixed."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d")}


def run_all(*, quick: bool = False, device: str = "cpu", plot: str | None = None, progress=print) -> dict[str, Any]:
    """Run every benchmark in turn; ``quick`` shrinks every size (tests)."""
    kw = QUICK if quick else {k: {} for k in QUICK}
    out: dict[str, Any] = {"machine": machine(), "quick": quick}
    steps = [
        ("kernels", lambda: kernels.bench_kernels(device=device, **kw["kernels"])),
        ("wake", lambda: wake.bench_wake(device=device, **kw["wake"])),
        ("agent", lambda: agent.bench_agent(device=device, **kw["agent"])),
        ("engine", lambda: engine.bench_engine(device=device, **kw["engine"])),
        ("store", lambda: store.bench_store(**kw["store"])),
        ("memory", lambda: memory.bench_memory(plot=plot, **kw["memory"])),
        ("bounded", lambda: bounded.bench_bounded(device=device, **kw["bounded"])),
        ("fairness", lambda: fairness.bench_fairness(device=device, **kw["fairness"])),
        ("serve", lambda: serve.bench_serve(**kw["serve"])),
    ]
    for name, fn in steps:
        progress(f"bench {name} ...")
        t0 = time.perf_counter()
        out[name] = fn()
        out[name]["bench_s"] = round(time.perf_counter() - t0, 1)
    return out


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return [_row(*header), _row(*["---:"] * len(header)), *(_row(*r) for r in rows), ""]


def to_markdown(r: dict[str, Any], command: str = "sleepagent bench") -> str:
    m = r["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {m['date']}. Machine: {m['cpu']}, {m['cores']} cores "
        f"({m['torch_threads']} torch threads), GPU: {m['gpu'] or 'none'}; Python {m['python']}, "
        f"torch {m['torch']}. Every ratio compares two runs in the same process, on this machine.",
        "",
    ]
    k = r["kernels"]
    lines += [f"## Kernels: gated delta rule, {k['backend']} vs the token-by-token reference ({k['device']})", ""]
    lines += _table(
        [
            "T",
            "chunked fwd ms",
            "recurrent fwd ms",
            "fwd speed-up",
            "chunked fwd+bwd ms",
            "recurrent fwd+bwd ms",
            "fwd+bwd speed-up",
        ],
        [
            [
                c["T"],
                f"{1e3 * c['chunk_fwd_s']:.1f}",
                f"{1e3 * c['recurrent_fwd_s']:.1f}",
                f"{c['fwd_ratio']:.1f}x",
                f"{1e3 * c['chunk_fwdbwd_s']:.1f}",
                f"{1e3 * c['recurrent_fwdbwd_s']:.1f}",
                f"{c['fwdbwd_ratio']:.1f}x",
            ]
            for c in k["cases"]
        ],
    )
    w = r["wake"]
    base = w["ms_per_token"].get("1")
    lines += [f"## Wake latency vs sleep passes N (window {w['window']})", "",
              "Sleep runs between wake steps, never inside one: per-token latency should not grow with N. The N values",
              f"are interleaved token by token over {w['rounds']} rounds; a difference within the spread of the round",
              "medians is noise.", ""]
    lines += _table(["N", "median ms / token", "vs N=1", "round medians"],
                    [[n, f"{ms:.3f}", f"{ms / base:.3f}" if base else "-",
                      f"{w['round_medians_ms'][n][0]:.3f} to {w['round_medians_ms'][n][1]:.3f}"]
                     for n, ms in w["ms_per_token"].items()])
    a = r["agent"]
    lines += [f"## Agent: sleep hidden in tool latency (window {a['window']})", ""]
    lines += _table(
        ["schedule", "total s", "sleep s", "hidden s", "exposed s", "hidden %", "forced sleeps", "wake ms/token"],
        [[name, f"{s['total_s']:.2f}", f"{s['sleep_s']:.3f}", f"{s['hidden_s']:.3f}", f"{s['exposed_s']:.3f}",
          f"{100 * s['hidden_fraction']:.0f}", s["forced_sleeps"], f"{s['wake_ms_per_token']:.2f}"]
         for name, s in a["schedules"].items()],
    )
    lines += [
        f"User-visible time, sleeping in pauses / sleeping only when full: **{a['pause_over_full_total']:.2f}**",
        "",
    ]
    e = r["engine"]
    lines += ["## Engine: concurrent sessions", "",
              f"Batched wake steps vs one session at a time: {e['serial_tok_s']:.0f} → {e['batched_tok_s']:.0f} "
              f"tokens/s, **{e['speedup']:.2f}x**.", ""]
    s = r["store"]
    lines += ["## Snapshot store", ""]
    lines += _table(
        ["backend", "state", "MB", "write ms", "restore ms"],
        [[b, name, f"{row[name]['bytes'] / 1e6:.2f}", f"{row[name]['write_ms']:.1f}", f"{row[name]['restore_ms']:.1f}"]
         for b, row in s["backends"].items() for name in ("small", "2b-class", "2b-class bf16")],
    )
    if "postgresql" in s["backends"]:
        pg, lite = s["backends"]["postgresql"]["2b-class"], s["backends"]["sqlite"]["2b-class"]
        lines += [f"2B-class state, PostgreSQL / SQLite: write **{pg['write_ms'] / lite['write_ms']:.2f}x**, restore "
                  f"**{pg['restore_ms'] / lite['restore_ms']:.2f}x** (payloads read in binary, stored without TOAST "
                  "compression: float fast weights do not compress).", ""]
    err = max(row["2b-class bf16"]["max_relative_error"] for row in s["backends"].values())
    lines += [f"bf16 snapshots (`MemoryPolicy(snapshot_dtype=\"bfloat16\")`): half the bytes; the largest relative "
              f"error of a restored fast weight was {err:.1e}.", ""]
    lines += [f"- {b}: {row['concurrent']['writers']} concurrent writers, "
              f"{row['concurrent']['snapshots_per_s']:.0f} snapshots/s" for b, row in s["backends"].items()]
    lines += [""]
    mem = r["memory"]
    lines += ["## Session memory: sleep vs a KV cache that keeps everything", ""]
    lines += ["Each case in a fresh process: the state a session holds between calls, and the process's",
              "peak RSS while reading the tokens (no-eviction beyond the longest run length is allocated,",
              "not run: its prefill is quadratic).", ""]
    lines += _table(
        [
            "tokens",
            "sleep state MB",
            "sleep peak RSS MB",
            "no-eviction state MB",
            "no-eviction peak RSS MB",
            "state ratio",
        ],
        [
            [
                f"{row['tokens']:,}",
                f"{row['sleep']['state_bytes'] / 1e6:.2f}",
                f"{row['sleep']['peak_rss_mb']:.0f}",
                f"{row['full']['state_bytes'] / 1e6:.2f}",
                f"{row['full']['peak_rss_mb']:.0f}" + ("" if row["full"]["ran"] else " (allocated only)"),
                f"{row['state_ratio']:.1f}x",
            ]
            for row in mem["rows"]
        ],
    )
    if mem.get("plot"):
        lines += [f"![session memory]({Path(mem['plot']).name})", ""]
    b = r["bounded"]
    lines += [
        f"## Bounded work ({b['model']}, prefill chunk {b['prefill_chunk']} tokens)",
        "",
        f"A 1 MB task with `UsageLimits(input_tokens_limit=10_000)` is refused, unread, after "
        f"**{1e3 * b['refused_1mb_s']:.0f} ms**. An active session's decode step while another session on the "
        f"same engine reads a {b['read_tokens'] / 1e6:g} MB tool output (its reads and forced sleeps run a chunk "
        f"or a block at a time, between the other session's steps), against the same steps with nobody reading:",
        "",
    ]
    lines += _table(["case", "p50 ms", "p99 ms"],
                    [["nobody reading", f"{b['idle_p50_ms']:.2f}", f"{b['idle_p99_ms']:.2f}"],
                     ["another session reading", f"{b['reading_p50_ms']:.2f}", f"{b['reading_p99_ms']:.2f}"]])
    lines += [f"p99 ratio **{b['p99_ratio']:.2f}x**. The read was then cancelled: the engine read "
              f"{b['read_after_cancel']} more tokens after the cancel.", ""]
    f = r["fairness"]
    lines += [f"## Fairness: an active session while {f['sleepers']} others sleep (N = {f['loops']})", "",
              f"The active session works in turns ({f['tokens']} tokens, then a {1e3 * f['pause_s']:.0f} ms round trip "
              f"in which the others sleep); the same run with the others idle is the baseline. The others ran "
              f"{f['sleep_passes_meanwhile']} sleep passes meanwhile ({f['turns_while_others_slept']} of {f['turns']} "
              f"turns measured while they slept).", ""]
    lines += _table(
        ["ms", "others idle p50", "p99", "others sleeping p50", "p99", "p99 ratio"],
        [
            [
                "wake step",
                f"{f['idle_step_p50_ms']:.2f}",
                f"{f['idle_step_p99_ms']:.2f}",
                f"{f['sleeping_step_p50_ms']:.2f}",
                f"{f['sleeping_step_p99_ms']:.2f}",
                f"**{f['step_p99_ratio']:.2f}x**",
            ],
            [
                "time to first token",
                f"{f['idle_ttft_p50_ms']:.2f}",
                f"{f['idle_ttft_p99_ms']:.2f}",
                f"{f['sleeping_ttft_p50_ms']:.2f}",
                f"{f['sleeping_ttft_p99_ms']:.2f}",
                f"{f['ttft_p99_ratio']:.2f}x",
            ],
        ],
    )
    v = r["serve"]
    lines += [f"## Serving: {v['conversations']} conversations over HTTP (`sleepagent serve`, streaming)", "",
              f"Each reads a document through a tool call (the tool takes {v['tool_s']} s), then asks {v['rounds']} "
              f"question(s) after {v['think_s']} s of think time. {v['requests']} requests, {v['lost']} lost, "
              f"{v['requests_per_s']:.1f} requests/s, {v['tokens_per_s']:.0f} tokens/s; time to first token p50 "
              f"{v['ttft_p50_ms']:.1f} / p99 {v['ttft_p99_ms']:.1f} ms; inter-token p50 {v['itl_p50_ms']:.2f} / p99 "
              f"{v['itl_p99_ms']:.2f} ms. {v['sleeps']:.0f} sleeps: **{100 * v['hidden_share']:.0f}% of sleep time "
              f"hidden** in the tool calls and think time ({v['sleep_exposed_s']:.2f} s exposed).", ""]
    return "\n".join(lines)


def write_report(path: str | Path, *, quick: bool = False, device: str = "cpu", progress=print) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot = str(path.with_name("memory.png"))
    result = run_all(quick=quick, device=device, plot=plot, progress=progress)
    command = (
        "sleepagent bench"
        + (" --quick" if quick else "")
        + (f" --out {path}" if str(path) != "docs/benchmarks.md" else "")
    )
    path.write_text(to_markdown(result, command) + "\n")
    path.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    return path
