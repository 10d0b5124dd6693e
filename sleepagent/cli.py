"""The ``sleepagent`` command line: demo, bench (and, as they land, train, eval, snapshots)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="sleepagent: an agent runtime for sleep-enabled hybrid LMs.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks, printed as ratios against a baseline run in the same process. "
    "With no subcommand: all of them, written to docs/benchmarks.md.",
    invoke_without_command=True,
)
app.add_typer(bench_app, name="bench")
snap_app = typer.Typer(help="Inspect and manage session snapshots in a store.", no_args_is_help=True)
app.add_typer(snap_app, name="snapshots")
console = Console()


def _span(text: str) -> tuple[int, int]:
    """``"a,b"``: decoder layers a (included) to b (excluded)."""
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise _fail(f"expected two integers 'start,stop', got {text!r}") from None
    return a, b


def _lengths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise _fail(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise _fail(f"values must be positive integers, got {text!r}")
    return values


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="shipped checkpoint name or local directory")] = "docqa-small",
    loops: Annotated[str, typer.Option(help="sleep passes N to compare, comma-separated")] = "4,1",
    places: Annotated[str, typer.Option(help="places (facts) per document, comma-separated; one document each, "
                                        "read one after another in one session")] = "16,10",
    questions: Annotated[int, typer.Option(min=1, help="questions asked after each document")] = 6,
    latency: Annotated[float, typer.Option(min=0.0, help="simulated seconds per page fetch")] = 0.3,
    think: Annotated[float, typer.Option(min=0.0, help="simulated user think time between questions")] = 0.2,
    seed: int = 0,
) -> None:
    """Long-document QA: the agent reads long documents page by page through a tool, sleeping
    during each fetch, then answers multi-hop questions, most from its fast weights; N = 4 vs N = 1."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .demo import run_demo
    from .errors import SleepAgentError
    from .model import SleepModel

    ns, sizes = _lengths(loops), _lengths(places)
    if sum(sizes) > 26 or min(sizes) < 2:
        raise _fail(f"--places {places}: each document needs at least 2 places, and all of them at most 26 in all")
    try:
        sm = SleepModel.from_pretrained(model)
    except SleepAgentError as e:
        raise _fail(str(e)) from None
    console.print(f"[bold]sleepagent demo[/]: {sm!r}")
    with Progress(TextColumn("[bold]N={task.fields[n]}[/] reading"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("pages"), console=console, transient=False) as progress:
        bars: dict[int, int] = {}

        def on_page(n: int, read: int, total: int) -> None:
            if n not in bars:
                bars[n] = progress.add_task("read", total=total, n=n)
            progress.update(bars[n], completed=read, total=total)

        runs = run_demo(sm, places=sizes, questions=questions, loops=ns, latency=latency, think=think, seed=seed,
                        on_page=on_page)
    first = runs[0]
    qa = Table(title=f"answers (N={first.loops}" + "".join(f" | N={r.loops}" for r in runs[1:]) + ")")
    for col in ("question", "doc", "its facts were", "truth"):
        qa.add_column(col)
    for r in runs:
        qa.add_column(f"N={r.loops}")
    for i, a in enumerate(first.answers):
        cells = [f"[green]{r.answers[i]['answer']}[/]" if r.answers[i]["right"] else f"[red]{r.answers[i]['answer'] or '∅'}[/]"
                 for r in runs]
        where = "evicted" if a["evicted"] else "in window"
        qa.add_row(a["question"], str(a["doc"]), where, a["truth"], *cells)
    console.print(qa)
    summary = Table(title="summary")
    summary.add_column("")
    for r in runs:
        summary.add_column(f"N={r.loops}", justify="right")

    def frac(right_asked: tuple[int, int] | None) -> str:
        right, asked = right_asked or (0, 0)
        return f"{right}/{asked}"

    rows = [("right answers", lambda r: f"{sum(a['right'] for a in r.answers)}/{len(r.answers)}")]
    docs = sorted({a["doc"] for r in runs for a in r.answers})
    hops = sorted({a["hops"] for r in runs for a in r.answers})
    rows += [(f"  about document {d}", lambda r, d=d: frac(r.accuracy_by("doc").get(d))) for d in docs]
    rows += [(f"  {k}-hop", lambda r, k=k: frac(r.accuracy_by("hops").get(k))) for k in hops]
    rows += [
        ("  facts evicted: fast weights only", lambda r: frac(r.accuracy_by("evicted").get(True))),
        ("pages read", lambda r: " + ".join(f"{a}/{b}" for a, b in zip(r.pages_read, r.pages))),
        ("tokens read", lambda r: f"{r.tokens_read:,}"),
        ("most tokens in the KV window", lambda r: f"{r.max_window_tokens} (window {r.window})"),
        ("sleeps (before the first question)", lambda r: f"{r.sleeps} ({r.sleeps_before_questions})"),
        ("fast-weight bytes", lambda r: f"{r.fast_weight_bytes / 1024:.0f} KiB"),
        ("sleep hidden / exposed", lambda r: f"{r.sleep_s_hidden:.2f} s / {r.sleep_s_exposed:.2f} s"),
        ("wake latency", lambda r: f"{r.wake_ms_per_token:.2f} ms/token"),
        ("wall time", lambda r: f"{r.wall_s:.1f} s"),
    ]
    for name, cell in rows:
        summary.add_row(name, *(cell(r) for r in runs))
    console.print(summary)


@app.command()
def train(
    task: Annotated[str, typer.Option(help="rule110 | depo | gsm_inf")] = "depo",
    loops: Annotated[int, typer.Option(min=1, help="sleep passes N during training")] = 4,
    steps: Annotated[int, typer.Option(min=1)] = 1000,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    optimizer: Annotated[str, typer.Option(help="adamw | muon")] = "adamw",
    lr: Annotated[float, typer.Option(help="Muon lr (matrices)")] = 2e-3,
    adam_lr: Annotated[float, typer.Option(help="AdamW lr")] = 1e-3,
    d_model: Annotated[int, typer.Option(min=8)] = 128,
    n_layers: Annotated[int, typer.Option(min=1)] = 4,
    seed: int = 0,
    task_args: Annotated[str, typer.Option(help='task settings as JSON, e.g. \'{"n_max": 20, "k_max": 8}\'')] = "{}",
    warmup_gdn_steps: Annotated[int, typer.Option(min=0)] = 0,
    schedule: Annotated[str, typer.Option(help="lr after warm-up: constant | cosine")] = "constant",
    warmup_steps: Annotated[int, typer.Option(min=0, help="linear lr warm-up steps")] = 0,
    n_heads: Annotated[int, typer.Option(min=1)] = 4,
    layer_types: Annotated[str | None, typer.Option(help="comma-separated gdn/attn per layer")] = None,
    conv_size: Annotated[int, typer.Option(min=1, help="GDN short-convolution width")] = 4,
    checkpoint: Annotated[bool, typer.Option(help="activation checkpointing per window")] = False,
    save_every: Annotated[int, typer.Option(min=1, help="steps between checkpoints")] = 200,
    eval_every: Annotated[int | None, typer.Option(min=1, help="score a test set every k steps")] = None,
    eval_n: Annotated[int, typer.Option(min=1, help="test examples per difficulty for --eval-every")] = 100,
    eval_teacher_forced: Annotated[bool, typer.Option(
        "--eval-teacher-forced", help="--eval-every scores teacher-forced (cheaper; labelled so in train.json)")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch")] = None,
    init_from: Annotated[str | None, typer.Option(help="start from this checkpoint's weights")] = None,
    stop_at: Annotated[int | None, typer.Option(min=1, help="stop after this step (schedule still planned for --steps)")] = None,
    time_limit: Annotated[float | None, typer.Option(help="stop (and save) after this many seconds; resumable")] = None,
    device: str = "cpu",
    out: Annotated[str, typer.Option(help="checkpoint directory (resumed if it exists)")] = "runs/train",
    base: Annotated[str | None, typer.Option(help="fine-tune this local transformers hybrid (qwen3_5, qwen3_next, "
                                             "olmo_hybrid) to sleep: docqa in its chat format, gsm_inf through its tokenizer, "
                                             "rule110/depo as token ids")] = None,
    window: Annotated[int | None, typer.Option(
        min=2, help="attention window (default: the task's; larger than an example: no eviction)")] = None,
    loop_layers: Annotated[str | None, typer.Option(help="--base: the decoder layers the sleep loops, 'a,b'")] = None,
    evict: Annotated[str, typer.Option(help="hard | sliding")] = "hard",
    keep: Annotated[int, typer.Option(min=0, help="sliding eviction: tokens kept after a sleep")] = 0,
    lora: Annotated[int | None, typer.Option(min=1, help="--base: LoRA rank (peft); default full fine-tuning")] = None,
) -> None:
    """Train a sleep-enabled hybrid on a synthetic task, or (--base) fine-tune a transformers hybrid
    to sleep; resumable; writes safetensors + config.json."""
    from pydantic import ValidationError

    from .train import TrainConfig
    from .train import train as run_train

    try:
        cfg = TrainConfig(
            task=task, task_kwargs=json.loads(task_args), loops=loops, steps=steps, batch_size=batch_size,
            optimizer=optimizer, lr=lr, adam_lr=adam_lr, d_model=d_model, n_layers=n_layers, seed=seed,
            warmup_gdn_steps=warmup_gdn_steps, checkpoint=checkpoint, save_every=save_every, device=device,
            schedule=schedule, warmup_steps=warmup_steps, n_heads=n_heads, eval_every=eval_every, eval_n=eval_n,
            eval_teacher_forced=eval_teacher_forced,
            init_from=init_from, time_limit=time_limit, conv_size=conv_size, base=base, window=window,
            loop_layers=_span(loop_layers) if loop_layers else None, evict=evict,
            keep=keep, lora=lora,
            layer_types=tuple(t.strip() for t in layer_types.split(",")) if layer_types else None,
        )
    except (ValidationError, json.JSONDecodeError) as e:
        raise _fail(f"invalid training settings: {_first_error(e)}") from None
    if threads:
        import torch

        torch.set_num_threads(threads)
    from .errors import SleepAgentError

    try:
        result = run_train(cfg, out, stop_at=stop_at)
    except (SleepAgentError, ValueError, TypeError) as e:  # bad task settings, layer types, resume clash
        raise _fail(str(e)) from None
    loss = f", loss {result['loss']:.4f}" if result["loss"] is not None else ""
    console.print(f"trained {result['step']} steps{loss} → {out}")


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="shipped checkpoint name or local directory")] = "docqa-small",
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    store: Annotated[str | None, typer.Option(help="snapshot store URL: idle sessions are released to it")] = None,
    api_keys: Annotated[str | None, typer.Option(help="file of 'key tenant' lines (also $SLEEPAGENT_API_KEYS)")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="accept requests without a key (local use)")] = False,
    loops: Annotated[int | None, typer.Option(min=1, max=64, help="sleep passes N (default: the model's)")] = None,
    idle_release: Annotated[float, typer.Option(min=0.1, help="seconds before an idle session is released")] = 300.0,
    persist_window: Annotated[bool, typer.Option(help="snapshots keep the window (exact resume)")] = False,
    max_in_flight: Annotated[int, typer.Option(min=1, help="requests served at once; more get 429")] = 64,
    max_prompt_tokens: Annotated[int, typer.Option(min=16, help="new tokens a request may bring; more get 413")] = 32_768,
    ray_mode: Annotated[bool, typer.Option("--ray", help="engine replicas on Ray Serve (needs --store)")] = False,
    replicas: Annotated[int, typer.Option(min=1, help="--ray: engine replicas")] = 2,
    ray_address: Annotated[str | None, typer.Option(help="--ray: a running Ray cluster (default: start one here)")] = None,
) -> None:
    """Serve a model over the OpenAI API: POST /v1/chat/completions, GET /v1/models, /health, /metrics.
    With --ray, K engine replicas on Ray Serve share sessions through the store."""
    from .errors import SleepAgentError
    from .serve.app import ServeConfig, load_api_keys
    from .serve.runner import serve as run_server

    try:
        cfg = ServeConfig(model=model, store=store, api_keys=load_api_keys(api_keys), no_auth=no_auth, loops=loops,
                          idle_release_s=idle_release, persist_window=persist_window, max_in_flight=max_in_flight,
                          max_prompt_tokens=max_prompt_tokens)
        from .serve.app import _Server

        _Server.check(cfg)
    except SleepAgentError as e:
        raise _fail(str(e)) from None
    except ImportError as e:
        raise _fail(f"the server needs its extra: pip install 'sleepagent[serve]' ({e})") from None
    banner = (f"[bold]sleepagent serve[/]: {model} on http://{host}:{port}/v1 "
              f"({'no auth' if no_auth else f'{len(cfg.api_keys)} API key(s)'}, store: {store or 'none'}"
              + (f", {replicas} Ray Serve replicas" if ray_mode else "") + ")")
    if ray_mode:
        try:
            import ray
            from ray import serve as ray_serve

            from .serve.ray_serve import build_app

            app_ = build_app(cfg, replicas=replicas)
        except ImportError as e:
            raise _fail(f"--ray needs its extra: pip install 'sleepagent[ray]' ({e})") from None
        except SleepAgentError as e:
            raise _fail(str(e)) from None
        console.print(banner)
        ray.init(address=ray_address)
        ray_serve.start(http_options={"host": host, "port": port})
        ray_serve.run(app_, name="sleepagent", route_prefix="/", blocking=True)
        return
    console.print(banner)
    run_server(cfg, host=host, port=port)


@app.command()
def study(
    name: Annotated[str, typer.Argument(help="a preset from sleepagent.train.study.STUDIES")],
    out: Annotated[str, typer.Option(help="run directories (resumed if they exist)")] = "runs/study",
    docs: Annotated[str, typer.Option(help="where the table, JSON and plots go")] = "docs",
    jobs: Annotated[int, typer.Option(min=1, help="runs trained in parallel processes")] = 1,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads per run")] = None,
    device: str = "cpu",
    time_limit: Annotated[
        float | None, typer.Option(help="seconds each run may train per invocation (then it saves; rerun resumes)")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Train one task with each N of the preset (N = 1 and 4; rule110-sweep: 1 to 4), two seeds each, score all runs, write docs/NAME.*"""
    import shlex
    import sys

    from .train.study import STUDIES, run_study

    if name not in STUDIES:
        raise _fail(f"unknown study {name!r}; choose one of {', '.join(sorted(STUDIES))}")
    command = "sleepagent " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["study"] else None
    report = run_study(STUDIES[name], out, docs, jobs=jobs, threads=threads, device=device, progress=not quiet,
                       command=command, time_limit=time_limit)
    loops = sorted(set(report["loops"]))
    for key, phase in (("comparison", ""), ("comparison_extended", " (extended)"),
                       ("comparison_first", ", first questions"), ("comparison_extended_first", " (extended), first questions")):
        if not report.get(key):
            continue
        table = Table(title=f"study {name}{phase}: {report['summary']}")
        table.add_column("difficulty", justify="right")
        for n in loops:
            table.add_column(f"trained N={n}", justify="right")
        table.add_column("margin", justify="right")
        table.add_column("> seed spread", justify="center")
        for d, row in report[key].items():
            table.add_row(d, *[f"{row[f'N{n}_mean']:.3f} ± {row[f'N{n}_spread'] / 2:.3f}" for n in loops],
                          f"{row['margin']:+.3f}", "yes" if row["beats_spread"] else "no")
        console.print(table)
    console.print(f"wrote {docs}/{name}.md, .json, _final.png, _curve.png")


@app.command("eval")
def eval_cmd(
    checkpoint_dir: Annotated[str, typer.Argument(help="a directory written by `sleepagent train`, or a shipped name")],
    loops: Annotated[str, typer.Option(help="N values, comma-separated")] = "1,2,4",
    n: Annotated[int, typer.Option(min=1, help="test examples (--agent: sessions) per difficulty")] = 200,
    seed: int = 12345,
    plot: Annotated[str | None, typer.Option(help="write a PNG plot here")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    first: Annotated[bool, typer.Option("--first", help="also score each document's first question alone")] = False,
    task_name: Annotated[str | None, typer.Option("--task", help="the task (default and only choice: the "
                                                  "checkpoint's own)")] = None,
    data: Annotated[str | None, typer.Option(help="score these sequences instead of a generated test set, one JSON "
                                             "per line: depo {tokens, label} in the original generator's ids, gsm_inf "
                                             "{question_var, context, answer}")] = None,
    teacher_forced: Annotated[bool, typer.Option(
        "--teacher-forced", help="score each answer with the TRUE earlier answers in context (not how an agent "
        "answers; the default scores free-running, with the model's own earlier answers)")] = False,
    agent: Annotated[bool, typer.Option("--agent", help="docqa: run sessions through the public Agent API "
                                        "(held-out documents, a paging tool, sleeps at the pauses)")] = False,
    places: Annotated[int, typer.Option(min=2, help="--agent: places (facts) per document")] = 16,
    documents: Annotated[int, typer.Option(min=1, help="--agent: documents read one after another per session")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="--agent: sessions run at once on the engine")] = 16,
) -> None:
    """Exact-match accuracy per difficulty and per N, free-running, with the number of questions
    and a 95% interval: on a fresh seeded test set, on --data, or (--agent) through the Agent API."""
    from .errors import SleepAgentError
    from .model.pretrained import resolve_checkpoint
    from .train import load_checkpoint, plot_accuracy
    from .train.finetune import run_task
    from .train.tasks import read_data
    from .train.trainer import _jsonable, data_hits, tally

    try:
        path = resolve_checkpoint(checkpoint_dir)
        if agent:
            return _eval_agent(path, _lengths(loops), n, seed, places, documents, concurrency, as_json, device)
        model, meta = load_checkpoint(path, device)
    except SleepAgentError as e:
        raise _fail(str(e)) from None
    cfg = meta.get("config", {})
    trained_on = cfg.get("task", "depo")
    if task_name is not None and task_name != trained_on:
        raise _fail(f"{checkpoint_dir} was trained on {trained_on!r}, so --task {task_name} cannot score it")
    task = run_task(model, cfg)
    N_values, min_fill = list(_lengths(loops)), cfg.get("min_fill", 0.5)
    mode = "teacher-forced" if teacher_forced else "free-running"
    if data is not None:
        try:
            examples = read_data(data, task)
        except (OSError, SleepAgentError) as e:
            raise _fail(f"{data}: {e}") from None
    else:
        examples = None
    # one pass per test batch serves both scores (all questions; first questions alone)
    counts, firsts = data_hits(model, task, N_values, examples=examples, n=n, seed=seed, min_fill=min_fill,
                               teacher_forced=teacher_forced)
    firsts = firsts if first else {}
    result = {N: {d: k / max(m, 1) for d, (k, m) in row.items()} for N, row in counts.items()}
    if plot:
        plot_accuracy(result, plot, title=f"{task.name}, trained with N={cfg.get('loops')} ({mode})")
    if as_json:
        first_acc = {N: {d: k / max(m, 1) for d, (k, m) in row.items()} for N, row in firsts.items()}
        print(json.dumps({"task": task.name, "mode": mode, "accuracy": _jsonable(result),
                          "counts": {str(N): {str(d): list(c) for d, c in row.items()} for N, row in counts.items()},
                          **({"first": _jsonable(first_acc)} if first else {})}))
        return
    source = f"{data}, " if data else ""
    table = Table(title=f"{task.name}: exact match, {mode} ({source}{checkpoint_dir}, trained N={cfg.get('loops')}, "
                        f"step {meta.get('step')}); accuracy [95% interval] (questions)")
    table.add_column("difficulty", justify="right")
    for N in counts:
        table.add_column(f"N={N}", justify="right")
    for N in firsts:
        table.add_column(f"N={N}, first question", justify="right")
    for d in sorted(next(iter(counts.values()))):
        table.add_row(str(d), *[_cell(*counts[N][d]) for N in counts],
                      *[_cell(*firsts[N][d]) if d in firsts[N] else "-" for N in firsts])
    console.print(table)


def _cell(k: int, n: int) -> str:
    from .train.docqa_eval import wilson

    lo, hi = wilson(k, n)
    return f"{k / max(n, 1):.3f} [{lo:.2f}, {hi:.2f}] ({n})"


def _eval_agent(path, loops: tuple[int, ...], n: int, seed: int, places: int, documents: int, concurrency: int,
                as_json: bool, device: str) -> None:
    """``eval --agent``: held-out docqa sessions through the Agent API, per N."""
    from rich.progress import Progress

    from .demo import task_min_fill
    from .model import SleepModel
    from .train.docqa_eval import held_out_sessions, run_agent_eval, summarize

    sm = SleepModel.from_pretrained(path, device=device if device != "cpu" else None)
    page_chars = int(sm.train_config.get("task_kwargs", {}).get("page_chars", 112))
    try:
        sessions = held_out_sessions(n, places, documents, seed=seed)
    except ValueError as e:
        raise _fail(str(e)) from None
    report = {"model": str(path), "places": places, "documents": documents, "sessions": n, "page_chars": page_chars,
              "mode": "agent (free-running)", "by_loops": {}}
    with Progress(console=console, transient=True, disable=as_json) as progress:
        for N in loops:
            bar = progress.add_task(f"N={N}", total=n)
            results = run_agent_eval(sm, sessions, N, page_chars=page_chars, min_fill=task_min_fill(sm),
                                     concurrency=concurrency, progress=lambda done, total: progress.update(bar, completed=done))
            report["by_loops"][str(N)] = summarize(results)
    if as_json:
        print(json.dumps(report))
        return
    for N, summary in report["by_loops"].items():
        table = Table(title=f"agent sessions, N={N}: {n} held-out sessions of {documents} document(s) x {places} "
                            f"places; accuracy [95% interval] (questions)")
        for col in ("document", "documents read", "hops", "exact match"):
            table.add_column(col, justify="right")
        for row in summary["rows"]:
            table.add_row(str(row["doc"]), str(row["read"]), str(row["hops"]), _cell(row["right"], row["n"]))
        console.print(table)
        console.print(f"documents read to the end: {summary['documents_finished']}/{summary['documents']}; "
                      f"sleeps before the first question: at least {summary['sleeps_before_first_question_min']}; "
                      f"most tokens in the window: {summary['max_window_tokens']}")


@bench_app.callback()
def bench_all(
    ctx: typer.Context,
    out: Annotated[str, typer.Option(help="markdown report to write")] = "docs/benchmarks.md",
    quick: Annotated[bool, typer.Option(help="small sizes (a smoke run, not figures to quote)")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
) -> None:
    """Run every benchmark (kernels, wake, agent, engine, store, memory) and write a markdown table."""
    if ctx.invoked_subcommand is not None:
        return
    from .bench.report import write_report

    path = write_report(out, quick=quick, device=device, progress=lambda m: console.print(f"[dim]{m}[/]"))
    console.print(f"wrote {path} (and {path.with_name('memory.png')})")


@bench_app.command("kernels")
def bench_kernels_cmd(
    lengths: Annotated[str, typer.Option(help="sequence lengths T, comma-separated")] = "512,2048,8192",
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Chunked GDN kernel vs the recurrent reference: forward and forward+backward time and ratio."""
    from .bench import bench_kernels

    result = bench_kernels(_lengths(lengths), repeats=repeats, device=device)
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


@bench_app.command("wake")
def bench_wake_cmd(
    loops: Annotated[str, typer.Option(help="sleep-loop counts N, comma-separated")] = "1,2,4,8",
    tokens: Annotated[int, typer.Option(min=1)] = 256,
    rounds: Annotated[int, typer.Option(min=1)] = 3,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Per-token decode latency for each N (sleep runs between steps, never on the decode path)."""
    from .bench import bench_wake

    result = bench_wake(_lengths(loops), tokens=tokens, rounds=rounds, device=device)
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


@bench_app.command("agent")
def bench_agent_cmd(
    latency: Annotated[float, typer.Option(min=0.0, help="seconds each page takes to arrive")] = 0.2,
    loops: Annotated[int, typer.Option(min=1, help="sleep passes N")] = 4,
    pages: Annotated[int, typer.Option(min=1)] = 12,
    page_chars: Annotated[int, typer.Option(min=1)] = 300,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """An agent reads a document page by page: sleep in pauses vs only when full vs N = 1."""
    from .bench import bench_agent

    result = bench_agent(latency=latency, loops=loops, pages=pages, page_chars=page_chars, device=device)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"agent reading {pages} pages, tool latency {latency}s, N={loops}, window {result['window']}")
    for col in ("schedule", "total s", "sleep s", "hidden s", "exposed s", "hidden %", "forced", "wake ms/token"):
        table.add_column(col, justify="right")
    for name, r in result["schedules"].items():
        table.add_row(
            name, f"{r['total_s']:.2f}", f"{r['sleep_s']:.3f}", f"{r['hidden_s']:.3f}", f"{r['exposed_s']:.3f}",
            f"{100 * r['hidden_fraction']:.1f}", str(r["forced_sleeps"]), f"{r['wake_ms_per_token']:.2f}",
        )
    console.print(table)
    console.print(f"user-visible time, pause / full: {result['pause_over_full_total']:.3f}")


@bench_app.command("engine")
def bench_engine_cmd(
    sessions: Annotated[int, typer.Option(min=1)] = 10,
    tokens: Annotated[int, typer.Option(min=1)] = 64,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Concurrent sessions' decode throughput: batched wake steps vs one session at a time."""
    from .bench import bench_engine

    result = bench_engine(sessions=sessions, tokens=tokens, device=device)
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"{sessions} sessions × {tokens} tokens on {result['device']}: serial {result['serial_tok_s']:.0f} tok/s, "
        f"batched {result['batched_tok_s']:.0f} tok/s, speedup {result['speedup']:.2f}x"
    )


@bench_app.command("store")
def bench_store_cmd(
    url: Annotated[str | None, typer.Option(help="a PostgreSQL URL to use instead of a temporary server")] = None,
    postgres: Annotated[bool, typer.Option(help="also bench PostgreSQL (temporary local server)")] = True,
    repeats: Annotated[int, typer.Option(min=1)] = 5,
    writers: Annotated[int, typer.Option(min=1)] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Snapshot write/restore latency and bytes (small model, 2B-class state) and concurrent writes."""
    from .bench import bench_store

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
        console.print(f"{backend}: {c['writers']} concurrent writers, {c['snapshots_per_s']:.0f} snapshots/s ({c['mb_per_s']:.1f} MB/s)")


@bench_app.command("bounded")
def bench_bounded_cmd(
    read_mb: Annotated[float, typer.Option(min=0.01, help="MB of tool output one session reads")] = 2.0,
    steps: Annotated[int, typer.Option(min=10, help="decode steps timed per case")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Bounded work: a 1 MB task against an input limit, and an active session's decode latency
    while another session reads a huge tool output (then cancelled), on the shipped model."""
    from .bench import bench_bounded

    r = bench_bounded(read_mb=read_mb, steps=steps)
    if as_json:
        print(json.dumps(r))
        return
    console.print(f"1 MB task, input_tokens_limit=10_000: refused after {r['refused_1mb_s'] * 1e3:.0f} ms, unread")
    console.print(f"decode step of an active session: idle p50 {r['idle_p50_ms']:.2f} / p99 {r['idle_p99_ms']:.2f} ms; "
                  f"while another reads {read_mb:g} MB: p50 {r['reading_p50_ms']:.2f} / p99 {r['reading_p99_ms']:.2f} ms "
                  f"(p99 {r['p99_ratio']:.2f}x); tokens read after the cancel: {r['read_after_cancel']}")


@bench_app.command("fairness")
def bench_fairness_cmd(
    sleepers: Annotated[int, typer.Option(min=1, help="other sessions sleeping meanwhile")] = 8,
    loops: Annotated[int, typer.Option(min=1, max=64, help="their sleep passes N")] = 4,
    turns: Annotated[int, typer.Option(min=2)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """An active session's wake latency while other sessions sleep, against the same with them idle."""
    from .bench import bench_fairness

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


@bench_app.command("serve")
def bench_serve_cmd(
    conversations: Annotated[int, typer.Option(min=1, help="simulated conversations")] = 8,
    concurrency: Annotated[int | None, typer.Option(min=1, help="at a time (default: all)")] = None,
    rounds: Annotated[int, typer.Option(min=0, help="questions after the document")] = 2,
    tool_latency: Annotated[float, typer.Option(min=0.0, help="seconds the tool takes")] = 0.3,
    think: Annotated[float, typer.Option(min=0.0, help="user think time before each question")] = 0.3,
    replicas: Annotated[str | None, typer.Option(help="also on Ray Serve with these replica counts, e.g. 1,2")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Concurrent conversations against a real `sleepagent serve` over HTTP (streaming); with
    --replicas, the same on Ray Serve and a timed failover."""
    from .bench import bench_serve

    r = bench_serve(conversations=conversations, concurrency=concurrency, rounds=rounds, tool_s=tool_latency,
                    think_s=think, replicas=_lengths(replicas) if replicas else ())
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


@bench_app.command("memory")
def bench_memory_cmd(
    tokens: Annotated[str, typer.Option(help="session lengths, comma-separated")] = "1000,10000,100000",
    run_full_up_to: Annotated[int, typer.Option(help="run the no-eviction model up to this length")] = 10_000,
    plot: Annotated[str | None, typer.Option(help="write a PNG plot here")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Per-session memory: the sleep hybrid vs the same model whose KV cache keeps everything."""
    from .bench import bench_memory

    result = bench_memory(_lengths(tokens), run_full_up_to=run_full_up_to, plot=plot)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title="session memory (d=128, 4 layers; state = what a session holds between calls)")
    for col in ("tokens", "sleep state MB", "sleep peak RSS MB", "no-eviction state MB", "no-eviction peak RSS MB", "state ratio"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        full = r["full"]
        table.add_row(
            str(r["tokens"]), f"{r['sleep']['state_bytes'] / 1e6:.2f}", f"{r['sleep']['peak_rss_mb']:.0f}",
            f"{full['state_bytes'] / 1e6:.2f}", f"{full['peak_rss_mb']:.0f}" + ("" if full["ran"] else " (allocated only)"),
            f"{r['state_ratio']:.1f}x",
        )
    console.print(table)


StoreOpt = Annotated[str, typer.Option("--store", help="store URL, e.g. sqlite:///sleepagent.db")]
TenantOpt = Annotated[str, typer.Option(help="tenant the sessions belong to")]


def _first_error(e: Exception) -> str:
    """One line for a pydantic or JSON error: ``field: message`` rather than a count of errors."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError) and e.errors():
        err = e.errors()[0]
        return f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}"
    return str(e).splitlines()[0]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(2)


def _open_store(url: str):
    from .storage import SnapshotStore

    # an existing store only: a mistyped path must be an error, not a new empty database
    return SnapshotStore(url, create=False)


def _store_call(fn):
    """Run a store operation; a typed error becomes one clear line and exit code 2."""
    from .errors import SleepAgentError

    try:
        return fn()
    except SleepAgentError as e:
        raise _fail(str(e)) from None


def _when(t: float | None) -> str:
    import datetime as dt

    return "never" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@snap_app.command("list")
def snapshots_list(store: StoreOpt = "sqlite:///sleepagent.db", tenant: TenantOpt = "default") -> None:
    """Sessions and their snapshots."""
    st = _store_call(lambda: _open_store(store))
    table = Table(title=f"sessions of tenant {tenant!r} in {store}")
    for col in ("session", "retention", "snapshot", "created (UTC)", "expires", "tokens", "loops", "bytes"):
        table.add_column(col)
    for sess in _store_call(lambda: st.list_sessions(tenant=tenant)):
        snaps = _store_call(lambda s=sess: st.list_snapshots(s.id, tenant=tenant))
        if not snaps:
            table.add_row(sess.id, sess.policy.retention, "-", _when(sess.created_at), "-", "-", "-", "-")
        for snap in snaps:
            table.add_row(sess.id, sess.policy.retention, str(snap.id), _when(snap.created_at), _when(snap.expires_at),
                          str(snap.tokens_consolidated), str(snap.loops), str(snap.size))
    console.print(table)


@snap_app.command("show")
def snapshots_show(snapshot_id: int, store: StoreOpt = "sqlite:///sleepagent.db", tenant: TenantOpt = "default") -> None:
    """Per-layer fast-weight norms, effective rank, bytes; the policy and expiry."""
    from .snapshot_view import layer_stats

    st = _store_call(lambda: _open_store(store))
    info, payload = _store_call(lambda: st.load(snapshot_id, tenant=tenant))
    sess = _store_call(lambda: st.get_session(info.session_id, tenant=tenant))
    console.print(
        f"snapshot {info.id} of session {info.session_id!r}: {info.size} bytes, {info.tokens_consolidated} tokens "
        f"consolidated with N={info.loops}, created {_when(info.created_at)}, expires {_when(info.expires_at)}, "
        f"retention {sess.policy.retention}, sha256 {info.sha256[:16]}…, model {info.fingerprint[:16]}…"
    )
    table = Table(title="fast weights per GDN layer")
    for col in ("layer", "shape", "‖S‖_F", "effective rank", "bytes"):
        table.add_column(col, justify="right")
    for row in _store_call(lambda: layer_stats(payload)):
        table.add_row(str(row["layer"]), "×".join(map(str, row["shape"])), f"{row['norm']:.4f}",
                      f"{row['effective_rank']:.2f}", str(row["bytes"]))
    console.print(table)


@snap_app.command("diff")
def snapshots_diff(a: int, b: int, store: StoreOpt = "sqlite:///sleepagent.db", tenant: TenantOpt = "default") -> None:
    """Compare two snapshots layer by layer."""
    from .snapshot_view import diff_stats

    st = _store_call(lambda: _open_store(store))
    _, pa = _store_call(lambda: st.load(a, tenant=tenant))
    _, pb = _store_call(lambda: st.load(b, tenant=tenant))
    table = Table(title=f"snapshot {a} vs {b}")
    for col in ("layer", "‖A−B‖_F", "relative", "cosine"):
        table.add_column(col, justify="right")
    for row in _store_call(lambda: diff_stats(pa, pb)):
        table.add_row(str(row["layer"]), f"{row['diff_norm']:.4f}", f"{row['relative']:.4f}", f"{row['cosine']:.4f}")
    console.print(table)


@snap_app.command("export")
def snapshots_export(
    snapshot_id: int,
    out: Annotated[str, typer.Option(help="file to write (safetensors)")],
    store: StoreOpt = "sqlite:///sleepagent.db",
    tenant: TenantOpt = "default",
) -> None:
    """Write a snapshot's verified payload to a safetensors file."""
    from pathlib import Path

    st = _store_call(lambda: _open_store(store))
    _, payload = _store_call(lambda: st.load(snapshot_id, tenant=tenant))
    path = Path(out)
    if not path.parent.is_dir():
        raise _fail(f"directory {path.parent} does not exist")
    path.write_bytes(payload)
    st.record("export", tenant, None, snapshot=snapshot_id, path=str(path))
    console.print(f"wrote {len(payload)} bytes to {path}")


@snap_app.command("purge")
def snapshots_purge(store: StoreOpt = "sqlite:///sleepagent.db") -> None:
    """Delete expired snapshots, and sessions whose lease ran out, for real (every write does too)."""
    st = _store_call(lambda: _open_store(store))
    n = st.purged_on_open + _store_call(st.purge)  # opening a store already sweeps it
    console.print(f"purged {n} expired snapshot(s)")


@snap_app.command("erase")
def snapshots_erase(session_id: str, store: StoreOpt = "sqlite:///sleepagent.db", tenant: TenantOpt = "default") -> None:
    """Erase a session and all its snapshots for real; prints the receipt."""
    st = _store_call(lambda: _open_store(store))
    r = _store_call(lambda: st.erase(session_id, tenant=tenant))
    console.print(f"erased session {r.session_id!r}: {r.snapshots} snapshot(s), {r.bytes} bytes; verified: {r.verified}")


@snap_app.command("plot")
def snapshots_plot(
    snapshot_id: int,
    out: Annotated[str, typer.Option(help="directory for the PNG files")] = ".",
    store: StoreOpt = "sqlite:///sleepagent.db",
    tenant: TenantOpt = "default",
) -> None:
    """PNG heat-maps of each layer's fast weights and a per-layer norm chart."""
    from .snapshot_view import plot_snapshot

    st = _store_call(lambda: _open_store(store))
    _, payload = _store_call(lambda: st.load(snapshot_id, tenant=tenant))
    for path in _store_call(lambda: plot_snapshot(payload, out, name=f"snapshot{snapshot_id}")):
        console.print(f"wrote {path}")


def main() -> None:  # pragma: no cover - console-script entry
    app()
