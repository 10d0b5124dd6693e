"""``sleepagent bench``: each benchmark as a subcommand, and all of them as one markdown report.

Every figure is a ratio against a baseline run in the same process (:mod:`sleepagent.bench`), so
the tables compare like with like on whatever machine printed them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ._common import check_device, console, fail, new_file, positive_ints

__all__ = ["app"]

app = typer.Typer(
    help="Benchmarks, printed as ratios against a baseline run in the same process. "
    "With no subcommand: all of them, written to docs/benchmarks.md.",
    invoke_without_command=True,
)


@app.callback()
def bench_all(
    ctx: typer.Context,
    out: Annotated[str, typer.Option(help="markdown report to write")] = "docs/benchmarks.md",
    quick: Annotated[bool, typer.Option(help="small sizes (a smoke run, not figures to quote)")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
) -> None:
    """Run every benchmark (kernels, wake, agent, engine, store, memory) and write a markdown table."""
    if ctx.invoked_subcommand is not None:
        return
    from ..bench.report import write_report

    check_device(device)
    new_file(out, create_parents=True)  # checked now: the benchmarks take minutes
    path = write_report(out, quick=quick, device=device, progress=lambda m: console.print(f"[dim]{m}[/]"))
    console.print(f"wrote {path} (and {path.with_name('memory.png')})")


@app.command("kernels")
def bench_kernels_cmd(
    lengths: Annotated[str, typer.Option(help="sequence lengths T, comma-separated")] = "512,2048,8192",
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    batch: Annotated[int, typer.Option(min=1, help="sequences B")] = 1,
    heads: Annotated[int, typer.Option(min=1, help="heads H (Qwen3.5's linear attention: 16 key heads)")] = 4,
    head_dim: Annotated[int, typer.Option(min=1, help="head dimension K = V (Qwen3.5's: 128)")] = 64,
    backend: Annotated[str, typer.Option(help="the chunked side: auto (fla on CUDA when installed), "
                                              "torch_chunk or fla")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Chunked GDN kernel vs the recurrent reference: forward and forward+backward time and ratio."""
    from ..bench import bench_kernels

    check_device(device)
    if backend not in ("auto", "torch_chunk", "fla"):
        raise fail(f"--backend must be auto, torch_chunk or fla, not {backend!r}")
    result = bench_kernels(positive_ints(lengths), repeats=repeats, device=device, batch=batch, heads=heads,
                           head_dim=head_dim, fast_backend=backend)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"gated delta rule on {result['device']} ({result['backend']} vs torch_recurrent)")
    for col in ("T", "chunk fwd ms", "recurrent fwd ms", "fwd ratio", "chunk f+b ms", "recurrent f+b ms", "f+b ratio"):
        table.add_column(col, justify="right")
    for c in result["cases"]:
        table.add_row(
            str(c["T"]),
            f"{1000 * c['chunk_fwd_s']:.1f}", f"{1000 * c['recurrent_fwd_s']:.1f}", f"{c['fwd_ratio']:.1f}x",
            f"{1000 * c['chunk_fwdbwd_s']:.1f}", f"{1000 * c['recurrent_fwdbwd_s']:.1f}", f"{c['fwdbwd_ratio']:.1f}x",
        )
    console.print(table)


@app.command("wake")
def bench_wake_cmd(
    loops: Annotated[str, typer.Option(help="sleep-loop counts N, comma-separated")] = "1,2,4,8",
    tokens: Annotated[int, typer.Option(min=1)] = 256,
    rounds: Annotated[int, typer.Option(min=1)] = 3,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Per-token decode latency for each N (sleep runs between steps, never on the decode path)."""
    from ..bench import bench_wake

    check_device(device)
    result = bench_wake(positive_ints(loops), tokens=tokens, rounds=rounds, device=device)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"wake decode latency on {result['device']} (window {result['window']}; N interleaved "
                        f"token by token, {result['rounds']} rounds)")
    table.add_column("N", justify="right")
    table.add_column("median ms / token", justify="right")
    table.add_column("vs N=1", justify="right")
    table.add_column("round medians (spread)", justify="right")
    base = result["ms_per_token"].get("1")
    for n, ms in result["ms_per_token"].items():
        lo, hi = result["round_medians_ms"][n]
        table.add_row(n, f"{ms:.3f}", f"{ms / base:.3f}" if base else "-", f"{lo:.3f} to {hi:.3f}")
    console.print(table)


@app.command("agent")
def bench_agent_cmd(
    latency: Annotated[float, typer.Option(min=0.0, help="seconds each page takes to arrive")] = 0.2,
    loops: Annotated[int, typer.Option(min=1, help="sleep passes N")] = 4,
    pages: Annotated[int, typer.Option(min=1)] = 12,
    page_chars: Annotated[int, typer.Option(min=1)] = 300,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    busy: Annotated[int, typer.Option(min=0, help="other processes keeping a core each busy meanwhile")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """An agent reads a document page by page: sleep in pauses vs only when full vs N = 1."""
    from ..bench import bench_agent

    check_device(device)
    result = bench_agent(latency=latency, loops=loops, pages=pages, page_chars=page_chars, device=device, busy=busy)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"agent reading {pages} pages, tool latency {latency}s, N={loops}, window {result['window']}"
                  + (f", {busy} core(s) kept busy by other processes" if busy else ""))
    for col in ("schedule", "total s", "sleep s", "hidden s", "exposed s", "hidden %", "forced", "wake ms/token"):
        table.add_column(col, justify="right")
    for name, r in result["schedules"].items():
        table.add_row(
            name, f"{r['total_s']:.2f}", f"{r['sleep_s']:.3f}", f"{r['hidden_s']:.3f}", f"{r['exposed_s']:.3f}",
            f"{100 * r['hidden_fraction']:.1f}", str(r["forced_sleeps"]), f"{r['wake_ms_per_token']:.2f}",
        )
    console.print(table)
    console.print(f"user-visible time, pause / full: {result['pause_over_full_total']:.3f}")


@app.command("engine")
def bench_engine_cmd(
    sessions: Annotated[int, typer.Option(min=1)] = 10,
    tokens: Annotated[int, typer.Option(min=1)] = 64,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    model: Annotated[str, typer.Option(help="native (a SleepHybridLM) or hf (a ~27M-parameter transformers qwen3_5 "
                                            "hybrid built in-process; adds sleep at N = 2 / one pass)")] = "native",
    out: Annotated[Path | None, typer.Option(help="--model hf: write its section into this markdown file "
                                                  "(docs/benchmarks.md) and its JSON beside it")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Concurrent sessions' decode throughput: batched wake steps vs one session at a time."""
    from ..bench import bench_engine

    check_device(device)
    if model not in ("native", "hf"):
        raise typer.BadParameter("--model must be native or hf")
    result = bench_engine(sessions=sessions, tokens=tokens, device=device, model=model)
    if model == "hf":
        from ..bench.engine import HF_SECTION, hf_markdown
        from ..bench.sections import write_section

        given = {"--sessions": (sessions, 10), "--tokens": (tokens, 64), "--device": (device, "cpu")}
        command = "sleepagent bench engine --model hf" + "".join(
            f" {k} {v}" for k, (v, default) in given.items() if v != default) + (f" --out {out}" if out else "")
        markdown = hf_markdown(result, command)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_section(out, HF_SECTION, markdown)
            out.with_name(out.stem + "_engine_hf.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result) if as_json else markdown)
        return
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"{sessions} sessions × {tokens} tokens on {result['device']}: serial {result['serial_tok_s']:.0f} tok/s, "
        f"batched {result['batched_tok_s']:.0f} tok/s, speedup {result['speedup']:.2f}x"
    )


@app.command("store")
def bench_store_cmd(
    url: Annotated[str | None, typer.Option(help="a PostgreSQL URL to use instead of a temporary server")] = None,
    postgres: Annotated[bool, typer.Option(help="also bench PostgreSQL (temporary local server)")] = True,
    repeats: Annotated[int, typer.Option(min=1)] = 5,
    writers: Annotated[int, typer.Option(min=1)] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Snapshot write/restore latency and bytes (small model, 2B-class state) and concurrent writes."""
    from ..bench import bench_store

    result = bench_store(url=url, postgres=postgres, repeats=repeats, writers=writers)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title="snapshot store")
    for col in ("backend", "state", "MB", "write ms", "restore ms"):
        table.add_column(col, justify="right")
    for backend, row in result["backends"].items():
        for name in ("small", "2b-class", "2b-class bf16"):
            r = row[name]
            table.add_row(backend, name, f"{r['bytes'] / 1e6:.2f}", f"{r['write_ms']:.1f}", f"{r['restore_ms']:.1f}")
    console.print(table)
    errs = {b: row["2b-class bf16"]["max_relative_error"] for b, row in result["backends"].items()}
    console.print("bf16 snapshots: largest relative error of a restored fast weight: "
                  + ", ".join(f"{b} {e:.2e}" for b, e in errs.items()))
    for backend, row in result["backends"].items():
        c = row["concurrent"]
        console.print(
            f"{backend}: {c['writers']} concurrent writers, {c['snapshots_per_s']:.0f} snapshots/s "
            f"({c['mb_per_s']:.1f} MB/s)"
        )


@app.command("bounded")
def bench_bounded_cmd(
    read_mb: Annotated[float, typer.Option(min=0.01, help="MB of tool output one session reads")] = 2.0,
    steps: Annotated[int, typer.Option(min=10, help="decode steps timed per case")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Bounded work: a 1 MB task against an input limit, and an active session's decode latency
    while another session reads a huge tool output (then cancelled), on the shipped model."""
    from ..bench import bench_bounded

    r = bench_bounded(read_mb=read_mb, steps=steps)
    if as_json:
        print(json.dumps(r))
        return
    console.print(f"1 MB task, input_tokens_limit=10_000: refused after {r['refused_1mb_s'] * 1e3:.0f} ms, unread")
    console.print(
        f"decode step of an active session: idle p50 {r['idle_p50_ms']:.2f} / p99 {r['idle_p99_ms']:.2f} ms; "
        f"while another reads {read_mb:g} MB: p50 {r['reading_p50_ms']:.2f} / p99 {r['reading_p99_ms']:.2f} ms "
        f"(p99 {r['p99_ratio']:.2f}x); tokens read after the cancel: {r['read_after_cancel']}"
    )


@app.command("fairness")
def bench_fairness_cmd(
    sleepers: Annotated[int, typer.Option(min=1, help="other sessions sleeping meanwhile")] = 8,
    loops: Annotated[int, typer.Option(min=1, max=64, help="their sleep passes N")] = 4,
    turns: Annotated[int, typer.Option(min=2)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """An active session's wake latency while other sessions sleep, against the same with them idle."""
    from ..bench import bench_fairness

    r = bench_fairness(sleepers=sleepers, loops=loops, turns=turns)
    if as_json:
        print(json.dumps(r))
        return
    table = Table(title=f"active session while {sleepers} others sleep (N={loops}); ms")
    for col in ("", "others idle", "others sleeping", "p99 ratio"):
        table.add_column(col, justify="right")
    table.add_row("wake step p50 / p99", f"{r['idle_step_p50_ms']:.2f} / {r['idle_step_p99_ms']:.2f}",
                  f"{r['sleeping_step_p50_ms']:.2f} / {r['sleeping_step_p99_ms']:.2f}", f"{r['step_p99_ratio']:.2f}x")
    table.add_row("time to first token p50 / p99", f"{r['idle_ttft_p50_ms']:.2f} / {r['idle_ttft_p99_ms']:.2f}",
                  f"{r['sleeping_ttft_p50_ms']:.2f} / {r['sleeping_ttft_p99_ms']:.2f}", f"{r['ttft_p99_ratio']:.2f}x")
    console.print(table)
    console.print(f"sleep passes the others ran meanwhile: {r['sleep_passes_meanwhile']}; "
                  f"turns measured while they slept: {r['turns_while_others_slept']}/{turns}")


@app.command("serve")
def bench_serve_cmd(
    conversations: Annotated[int, typer.Option(min=1, help="simulated conversations")] = 8,
    concurrency: Annotated[str | None, typer.Option(
        help="at a time (default: all); several, e.g. 1,4,8,16: a sweep on one server, each against 1")] = None,
    per_slot: Annotated[int, typer.Option(min=1, help="a sweep's conversations per concurrent slot")] = 2,
    baseline: Annotated[int, typer.Option(min=1, help="a sweep's conversations at concurrency 1, the row every "
                                                      "ratio divides by (at least --per-slot)")] = 8,
    model: Annotated[str, typer.Option(help="a sweep's model: a shipped name or a checkpoint directory "
                                            "(a transformers hybrid too), or hf: a 27M qwen3_5 hybrid "
                                            "built here")] = "docqa-small",
    max_tokens: Annotated[int | None, typer.Option(min=1, help="a sweep's completion budget per request")] = None,
    ramp: Annotated[float, typer.Option(min=0.0, help="a sweep: the levels again, each level's first conversations "
                                                      "starting evenly over this many seconds (0: not run)")] = 0.0,
    rounds: Annotated[int, typer.Option(min=0, help="questions after the document")] = 2,
    tool_latency: Annotated[float, typer.Option(min=0.0, help="seconds the tool takes")] = 0.3,
    think: Annotated[float, typer.Option(min=0.0, help="user think time before each question")] = 0.3,
    replicas: Annotated[str | None, typer.Option(help="also on Ray Serve with these replica counts, e.g. 1,2")] = None,
    out: Annotated[Path | None, typer.Option(help="a sweep: write its section into this markdown file "
                                                  "(docs/benchmarks.md) and its JSON beside it")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Concurrent conversations against a real `sleepagent serve` over HTTP (streaming); with
    --replicas, the same on Ray Serve and a timed failover; with several --concurrency values, a
    sweep against one server in its own process, each level's ratios against concurrency 1."""
    from ..bench import bench_serve

    levels = positive_ints(concurrency, "--concurrency") if concurrency else ()
    if len(levels) > 1:
        _bench_serve_sweep(levels, per_slot, baseline, rounds, tool_latency, think, model, max_tokens, ramp, out,
                           as_json)
        return
    r = bench_serve(conversations=conversations, concurrency=levels[0] if levels else None, rounds=rounds,
                    tool_s=tool_latency, think_s=think, replicas=positive_ints(replicas) if replicas else ())
    if as_json:
        print(json.dumps(r))
        return
    console.print(f"{r['conversations']} conversations ({r['concurrency']} at a time): {r['requests']} requests, "
                  f"{r['lost']} lost, {r['requests_per_s']:.1f} requests/s, {r['tokens_per_s']:.0f} tokens/s")
    console.print(f"time to first token p50 {r['ttft_p50_ms']:.1f} / p99 {r['ttft_p99_ms']:.1f} ms; "
                  f"inter-token p50 {r['itl_p50_ms']:.2f} / p99 {r['itl_p99_ms']:.2f} ms")
    console.print(f"{r['sleeps']:.0f} sleeps; hidden {r['sleep_hidden_s']:.2f} s, exposed {r['sleep_exposed_s']:.2f} s "
                  f"({100 * r['hidden_share']:.0f}% hidden)")
    for k, row in r.get("ray", {}).items():
        fail = f", failover {row['failover_s']:.2f} s (kill to first token)" if "failover_s" in row else ""
        console.print(f"Ray Serve, {k} replica(s): {row['requests']} requests, {row['lost']} lost, "
                      f"{row['requests_per_s']:.1f} requests/s, time to first token p50 {row['ttft_p50_ms']:.1f} / "
                      f"p99 {row['ttft_p99_ms']:.1f} ms{fail}")


def _bench_serve_sweep(levels: tuple[int, ...], per_slot: int, baseline: int, rounds: int, tool_s: float,
                       think_s: float, model: str, max_tokens: int | None, ramp: float, out: Path | None,
                       as_json: bool) -> None:
    from ..bench.sections import write_section
    from ..bench.serve import SWEEP_HF_SECTION, SWEEP_SECTION, bench_serve_sweep, sweep_markdown

    r = bench_serve_sweep(levels, per_slot=per_slot, rounds=rounds, tool_s=tool_s, think_s=think_s, model=model,
                          max_tokens=max_tokens, ramp_s=ramp, baseline=baseline)
    given = {"--per-slot": (per_slot, 2), "--baseline": (baseline, 8), "--rounds": (rounds, 2),
             "--tool-latency": (tool_s, 0.3), "--think": (think_s, 0.3), "--model": (model, "docqa-small"),
             "--max-tokens": (max_tokens, None), "--ramp": (ramp, 0.0)}
    command = f"sleepagent bench serve --concurrency {','.join(map(str, r['levels']))}" + "".join(
        f" {k} {v}" for k, (v, default) in given.items() if v != default) + (f" --out {out}" if out else "")
    markdown = sweep_markdown(r, command)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        hf = model == "hf"  # its own section: the shipped model's stays
        write_section(out, SWEEP_HF_SECTION if hf else SWEEP_SECTION, markdown)
        out.with_name(out.stem + ("_serve_sweep_hf.json" if hf else "_serve_sweep.json")).write_text(
            json.dumps(r, indent=1) + "\n")
    print(json.dumps(r) if as_json else markdown)


@app.command("decode")
def bench_decode_cmd(
    model: Annotated[str, typer.Option(help="a shipped checkpoint's name or a checkpoint directory")] = "docqa-small",
    fill: Annotated[int, typer.Option(min=0, help="tokens in the window before the timed step")] = 128,
    rounds: Annotated[int, typer.Option(min=1)] = 7,
    per_round: Annotated[int, typer.Option(min=5, help="steps per variant and round")] = 100,
    threads: Annotated[int, typer.Option(min=1, help="torch threads during the run")] = 1,
    compiled: Annotated[bool, typer.Option(help="also the torch.compile variant (compiles first: slow)")] = True,
    out: Annotated[Path | None, typer.Option(help="write the figures into this markdown file's decode section "
                                                  "(docs/benchmarks.md) and its JSON beside it")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """One decode step against the per-matrix floor (a torch.mv per weight matrix): ms, ratio to
    the floor and ops per step for a step as a one-token prefill, the decode path, and compiled."""
    from ..bench.decode import DECODE_SECTION, bench_decode, decode_markdown
    from ..bench.sections import write_section

    r = bench_decode(model, fill=fill, rounds=rounds, per_round=per_round, threads=threads, compiled=compiled)
    given = {"--model": (model, "docqa-small"), "--fill": (fill, 128), "--rounds": (rounds, 7),
             "--per-round": (per_round, 100), "--threads": (threads, 1)}
    command = "sleepagent bench decode" + "".join(f" {k} {v}" for k, (v, d) in given.items() if v != d) + (
        "" if compiled else " --no-compiled") + (f" --out {out}" if out else "")
    markdown = decode_markdown(r, command)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_section(out, DECODE_SECTION, markdown)
        out.with_name(out.stem + "_decode.json").write_text(json.dumps(r, indent=1) + "\n")
    print(json.dumps(r) if as_json else markdown)


@app.command("constrained")
def bench_constrained_cmd(
    model: Annotated[str, typer.Option(help="a shipped checkpoint's name or a checkpoint directory")] = "docqa-small",
    tokens: Annotated[int, typer.Option(min=1, help="tokens written per round")] = 256,
    max_tokens: Annotated[int, typer.Option(min=8, help="each value's token budget")] = 96,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    threads: Annotated[int, typer.Option(min=1, help="torch threads during the run")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Per-token cost of the JSON-schema mask: constrained vs plain greedy decoding, same segments."""
    from ..bench import bench_constrained

    r = bench_constrained(model, tokens=tokens, max_tokens=max_tokens, repeats=repeats, threads=threads)
    if as_json:
        print(json.dumps(r))
        return
    table = Table(title=f"schema mask on {r['model']} ({r['engine']}; {r['tokens']} tokens x {r['repeats']}, "
                        f"{r['threads']} thread(s))")
    for col in ("plain ms/token", "constrained ms/token", "ratio", "mask ms/token (median / mean / p99)", "build ms"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{r['plain_ms_per_token']:.3f}",
        f"{r['constrained_ms_per_token']:.3f}",
        f"{r['ratio']:.3f}",
        f"{r['mask_ms_per_token']:.3f} / {r['mask_ms_per_token_mean']:.3f} / {r['mask_ms_per_token_p99']:.3f}",
        f"{r['build_ms']:.2f}",
    )
    console.print(table)


@app.command("memory")
def bench_memory_cmd(
    tokens: Annotated[str, typer.Option(help="session lengths, comma-separated")] = "1000,10000,100000",
    run_full_up_to: Annotated[int, typer.Option(help="run the no-eviction model up to this length")] = 10_000,
    plot: Annotated[str | None, typer.Option(help="write a PNG plot here")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Per-session memory: the sleep hybrid vs the same model whose KV cache keeps everything."""
    from ..bench import bench_memory

    if plot:
        new_file(plot, "--plot")
    result = bench_memory(positive_ints(tokens), run_full_up_to=run_full_up_to, plot=plot)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title="session memory (d=128, 4 layers; state = what a session holds between calls)")
    for col in (
        "tokens",
        "sleep state MB",
        "sleep peak RSS MB",
        "no-eviction state MB",
        "no-eviction peak RSS MB",
        "state ratio",
    ):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        full = r["full"]
        table.add_row(
            str(r["tokens"]),
            f"{r['sleep']['state_bytes'] / 1e6:.2f}",
            f"{r['sleep']['peak_rss_mb']:.0f}",
            f"{full['state_bytes'] / 1e6:.2f}",
            f"{full['peak_rss_mb']:.0f}" + ("" if full["ran"] else " (allocated only)"),
            f"{r['state_ratio']:.1f}x",
        )
    console.print(table)


@app.command("soak")
def bench_soak_cmd(
    conversations: Annotated[int, typer.Option(min=2, help="short conversations in all")] = 2000,
    concurrency: Annotated[int, typer.Option(min=1, help="at a time")] = 4,
    abandon: Annotated[float, typer.Option(min=0.0, max=0.5, help="share abandoned after the tool call")] = 0.2,
    every: Annotated[int, typer.Option(min=1, help="record RSS and sessions every this many conversations")] = 250,
    max_sessions: Annotated[int, typer.Option(min=1, help="the server's live-session cap")] = 256,
    idle_release: Annotated[float, typer.Option(min=0.1, help="the server's idle release, seconds")] = 30.0,
    store: Annotated[bool, typer.Option(help="release to a SQLite store (else drop)")] = True,
    max_state_mb: Annotated[float | None, typer.Option(
        min=0.001, help="the server's live-state budget, MiB (default: its own, a quarter of memory)")] = None,
    out: Annotated[str | None, typer.Option(help="write the figures into this markdown file's soak section")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Thousands of short conversations against a real `sleepagent serve` (its own process): its
    RSS, live sessions and p99 latency against conversations; bounded = a plateau, nothing lost."""
    from ..bench.sections import write_section
    from ..bench.soak import SECTION, bench_soak, report

    r = bench_soak(conversations=conversations, concurrency=concurrency, abandon=abandon, every=every,
                   max_sessions=max_sessions, idle_release_s=idle_release, store=store, max_state_mb=max_state_mb,
                   progress=None if as_json else lambda m: console.print(f"[dim]{m}[/]"))
    if as_json:
        print(json.dumps(r))
    else:
        console.print(report(r))
    if out:
        write_section(out, SECTION, report(r))
    if not r["bounded"]:
        raise typer.Exit(1)


@app.command("train")
def bench_train_cmd(
    steps: Annotated[int, typer.Option(min=1, help="timed steps per configuration (after one warm-up)")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """A docqa training step (Algorithm 1, N = 4, batch 8, Muon) against the machine's own float32
    matmul peak: tokens/s, FLOPs/token, achieved/peak, per thread count and precision."""
    from ..bench import bench_train

    r = bench_train(steps=steps)
    if as_json:
        print(json.dumps(r))
        return
    table = Table(title=f"training step, docqa recipe ({r['steps']} steps each; ratios against the first row)")
    for col in ("configuration", "s/step", "tokens/s", "MFLOP/token", "achieved GFLOP/s", "matmul peak GFLOP/s",
                "of peak", "speed-up"):
        table.add_column(col, justify="right")
    for row in r["rows"]:
        table.add_row(row["config"], f"{row['s_per_step']:.2f}", f"{row['tokens_per_s']:.0f}",
                      f"{row['flops_per_token'] / 1e6:.1f}", f"{row['achieved_flops'] / 1e9:.1f}",
                      f"{row['peak_flops'] / 1e9:.1f}", f"{row['fraction_of_peak']:.0%}", f"{row['speedup']:.2f}x")
    console.print(table)
