"""``sleepagent demo``: the shipped model reads long documents page by page and answers, N = 4 vs N = 1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, cast

import typer
from rich.table import Table

from ._common import console, fail, positive_ints

__all__ = ["demo"]


def demo(
    model: Annotated[str, typer.Option(help="shipped checkpoint name or local directory")] = "docqa-small",
    loops: Annotated[str, typer.Option(help="sleep passes N to compare, comma-separated")] = "4,1",
    places: Annotated[str, typer.Option(help="places (facts) per document, comma-separated; one document each, "
                                        "read one after another in one session")] = "16,10",
    questions: Annotated[int, typer.Option(min=1, help="questions asked after each document")] = 6,
    latency: Annotated[float, typer.Option(min=0.0, help="simulated seconds per page fetch")] = 0.3,
    think: Annotated[float, typer.Option(min=0.0, help="simulated user think time between questions")] = 0.2,
    sessions: Annotated[int, typer.Option(min=0, help="held-out sessions per N for the accuracy table (0: none)")] = 32,
    batch_places: Annotated[int, typer.Option(min=2, max=26, help="places per document in those sessions")] = 16,
    seed: int = 0,
) -> None:
    """Long-document QA: the agent reads long documents page by page through a tool, sleeping
    during each fetch, then answers multi-hop questions, most from its fast weights; N = 4 vs N = 1.
    Then many more sessions, batched by the engine, give accuracy per hop count with 95% intervals."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from ..demo import run_demo
    from ..errors import SleepAgentError
    from ..model import SleepModel

    ns, sizes = positive_ints(loops), positive_ints(places)
    if sum(sizes) > 26 or min(sizes) < 2:
        raise fail(f"--places {places}: each document needs at least 2 places, and all of them at most 26 in all")
    try:
        sm = SleepModel.from_pretrained(model)
    except SleepAgentError as e:
        raise fail(str(e)) from None
    console.print(f"[bold]sleepagent demo[/]: {sm!r}")
    with Progress(TextColumn("[bold]N={task.fields[n]}[/] reading"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("pages"), console=console, transient=False) as progress:
        bars: dict[int, TaskID] = {}

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
        cells = [
            (
                f"[green]{r.answers[i]['answer']}[/]"
                if r.answers[i]["right"]
                else f"[red]{r.answers[i]['answer'] or '∅'}[/]"
            )
            for r in runs
        ]
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
    # loop variables bound by default: mypy cannot infer such a lambda, hence the casts
    rows += [(f"  about document {d}", cast(Callable[..., str], lambda r, d=d: frac(r.accuracy_by("doc").get(d))))
             for d in docs]
    rows += [(f"  {k}-hop", cast(Callable[..., str], lambda r, k=k: frac(r.accuracy_by("hops").get(k)))) for k in hops]
    rows += [
        ("  facts evicted: fast weights only", lambda r: frac(r.accuracy_by("evicted").get(True))),
        ("pages read", lambda r: " + ".join(f"{a}/{b}" for a, b in zip(r.pages_read, r.pages, strict=False))),
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
    if sessions and len(runs) >= 1:
        _batch_table(sm, sessions, batch_places, ns, seed)


def _batch_table(sm, sessions: int, places: int, loops: tuple[int, ...], seed: int) -> None:
    """Right answers per hop count over many held-out sessions, per N, with 95% intervals."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from ..demo import run_batch, verdict

    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]N={task.fields[n]}[/] sessions"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as progress:
        bars: dict[int, TaskID] = {}

        def on_done(n: int, done: int, total: int) -> None:
            if n not in bars:
                bars[n] = progress.add_task("run", total=total, n=n)
            progress.update(bars[n], completed=done, total=total)

        batches = run_batch(sm, sessions=sessions, places=places, loops=loops, seed=seed, progress=on_done)
    hops = sorted({k for b in batches for k in b.cells})
    table = Table(title=f"{sessions} more sessions per N, each a held-out {places}-place document read through the "
                        f"tool; right answers [95% interval] (questions)")
    table.add_column("question")
    for b in batches:
        table.add_column(f"N={b.loops}", justify="right")
    if len(batches) >= 2:
        table.add_column(f"sleep (N={batches[0].loops} vs N={batches[-1].loops})")
    for k in hops:
        cells = []
        for b in batches:
            lo, hi = b.interval(k)
            right, asked = b.cells[k]
            cells.append(f"{right / asked:.2f} [{lo:.2f}, {hi:.2f}] ({asked})")
        if len(batches) >= 2:
            cells.append(verdict(batches[0], batches[-1], k))
        table.add_row(f"{k}-hop", *cells)
    console.print(table)
    read = sum(b.documents_finished for b in batches)
    console.print(f"documents read to their end: {read}/{sessions * len(batches)}; "
                  f"{time.perf_counter() - t0:.1f} s for {sessions * len(batches)} sessions")
