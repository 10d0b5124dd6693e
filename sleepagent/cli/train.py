"""``sleepagent train | eval | study``: train a model, score it, and run a whole study.

``train`` has one option per :class:`~sleepagent.train.TrainConfig` field, derived from the model
(:mod:`.model_options`): a field added there is an option here without an edit, with the
model's default and description. Only what is not a training setting is declared here
(``--threads``, ``--stop-at``, ``--out``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.table import Table

from ..train import TrainConfig
from ._common import check_device, console, fail, first_error, new_file, new_or_existing_dir, positive_ints
from .model_options import ModelOptions

__all__ = ["eval_cmd", "ship", "study", "train"]

# help for the fields TrainConfig leaves undescribed (its own description wins once it has one)
_HELP = {
    "task": "rule110 | depo | gsm_inf | docqa",
    "task_kwargs": 'task settings, e.g. \'{"n_max": 20, "k_max": 8}\'',
    "loops": "sleep passes N during training",
    "lr": "Muon lr (matrices)",
    "layer_types": "gdn or attn, one per layer",
    "save_every": "steps between checkpoints",
    "detach_every": "truncated backprop: cut the gradient every k windows (default: never)",
    "device": "cpu or cuda",
}
TRAIN_OPTIONS = ModelOptions(TrainConfig, flags={"task_kwargs": "--task-args"}, extra_help=_HELP)


def train(**given: Any) -> None:
    """Train a sleep-enabled hybrid on a synthetic task, or (--base) fine-tune a transformers hybrid
    to sleep: docqa in its chat format, gsm_inf through its tokenizer, rule110/depo as token ids.
    Resumable; writes safetensors + config.json."""
    from ..errors import SleepAgentError
    from ..train import train as run_train  # looked up at call time: tests replace it

    threads, stop_at, out = given.pop("threads"), given.pop("stop_at"), given.pop("out")
    names = {f: o.flag for f, o in TRAIN_OPTIONS.options.items()}
    try:
        cfg = TrainConfig(**TRAIN_OPTIONS.values(given))
    except ValueError as e:  # pydantic's ValidationError is one too
        raise fail(f"invalid training settings: {first_error(e, names)}") from None
    check_device(cfg.device)
    new_or_existing_dir(out)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        result = run_train(cfg, out, stop_at=stop_at)
    except (SleepAgentError, ValueError, TypeError) as e:  # bad task settings, layer types, resume clash
        raise fail(str(e)) from None
    except OSError as e:  # a path that cannot be read or written: --out, --init-from, --base
        raise fail(f"{e.filename or out}: {e.strerror or e}") from None
    loss = f", loss {result['loss']:.4f}" if result["loss"] is not None else ""
    console.print(f"trained {result['step']} steps{loss} → {out}")


train.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    *TRAIN_OPTIONS.parameters,
    inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[int | None, typer.Option(min=1, help="CPU threads for torch")]),
    inspect.Parameter("stop_at", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        int | None, typer.Option(min=1, help="stop after this step (schedule still planned for --steps)")]),
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default="runs/train", annotation=Annotated[
        str, typer.Option(help="checkpoint directory (resumed if it exists)")]),
])


def study(
    name: Annotated[str, typer.Argument(help="a preset from sleepagent.train.studies.STUDIES, or capacity")],
    out: Annotated[str, typer.Option(help="run directories (resumed if they exist)")] = "runs/study",
    docs: Annotated[str, typer.Option(help="where the table, JSON and plots go")] = "docs/studies",
    jobs: Annotated[int, typer.Option(min=1, help="runs trained in parallel processes")] = 1,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads per run")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    time_limit: Annotated[
        float | None, typer.Option(help="seconds each run may train per invocation (then it saves; rerun resumes)")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    budget_min: Annotated[float, typer.Option(min=0.1, help="capacity: CPU-minutes each arm trains")] = 30.0,
    sessions: Annotated[int, typer.Option(min=1, help="capacity: held-out sessions each arm is scored on")] = 100,
) -> None:
    """Train one task with each N of the preset (N = 1 and 4; sweeps: 1 to 4), two seeds each, score
    all runs, write DOCS/NAME.{md,json} and its plots (docs/studies/ by default)."""
    import shlex
    import sys

    from ..train.studies import STUDIES
    from ..train.study import run_study

    if name not in STUDIES and name != "capacity":
        raise fail(f"unknown study {name!r}; choose one of {', '.join(sorted([*STUDIES, 'capacity']))}")
    check_device(device)
    new_or_existing_dir(docs, "--docs")
    new_or_existing_dir(out)
    if name == "capacity":  # its own runner: arms of one model on equal CPU budgets, scored as an agent
        from ..train.capacity import run_capacity

        run_capacity(Path(out) / name, docs, jobs=jobs, threads=threads or 1, budget_min=budget_min,
                     sessions=sessions)
        console.print(f"wrote {docs}/capacity.json")
        return
    command = "sleepagent " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["study"] else None
    report = run_study(STUDIES[name], out, docs, jobs=jobs, threads=threads, device=device, progress=not quiet,
                       command=command, time_limit=time_limit)
    loops = sorted(set(report["loops"]))
    for key, phase in (
        ("comparison", ""),
        ("comparison_extended", " (extended)"),
        ("comparison_first", ", first questions"),
        ("comparison_extended_first", " (extended), first questions"),
    ):
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
    from ..errors import SleepAgentError
    from ..model.pretrained import resolve_checkpoint
    from ..train import load_checkpoint, plot_accuracy
    from ..train.finetune import run_task
    from ..train.tasks import read_data
    from ..train.trainer import data_hits

    n_values = list(positive_ints(loops))
    check_device(device)
    if plot:
        new_file(plot, "--plot")
    try:
        path = resolve_checkpoint(checkpoint_dir)
        if agent:
            return _eval_agent(path, tuple(n_values), n, seed, places, documents, concurrency, as_json, device)
        model, meta = load_checkpoint(path, device)
    except SleepAgentError as e:
        raise fail(str(e)) from None
    cfg = meta.get("config", {})
    trained_on = cfg.get("task", "depo")
    if task_name is not None and task_name != trained_on:
        raise fail(f"{checkpoint_dir} was trained on {trained_on!r}, so --task {task_name} cannot score it")
    task = run_task(model, cfg)
    min_fill = cfg.get("min_fill", 0.5)
    mode = "teacher-forced" if teacher_forced else "free-running"
    if data is not None:
        try:
            examples = read_data(data, task)
        except (OSError, SleepAgentError) as e:
            raise fail(f"{data}: {e}") from None
    else:
        examples = None
    # one pass per test batch serves both scores (all questions; first questions alone)
    counts, firsts = data_hits(model, task, n_values, examples=examples, n=n, seed=seed, min_fill=min_fill,
                               teacher_forced=teacher_forced)
    firsts = firsts if first else {}
    result = {N: {d: k / max(m, 1) for d, (k, m) in row.items()} for N, row in counts.items()}
    if plot:
        plot_accuracy(result, plot, title=f"{task.name}, trained with N={cfg.get('loops')} ({mode})")
    if as_json:
        first_acc = {N: {d: k / max(m, 1) for d, (k, m) in row.items()} for N, row in firsts.items()}
        print(json.dumps({"task": task.name, "mode": mode, "accuracy": _str_keys(result),
                          "counts": {str(N): {str(d): list(c) for d, c in row.items()} for N, row in counts.items()},
                          **({"first": _str_keys(first_acc)} if first else {})}))
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


def _str_keys(result: dict[int, dict[int, float]]) -> dict[str, dict[str, float]]:
    """Accuracies keyed by N and difficulty, with string keys as JSON has them."""
    return {str(N): {str(d): a for d, a in row.items()} for N, row in result.items()}


def _cell(k: int, n: int) -> str:
    from ..train.docqa_eval import wilson

    lo, hi = wilson(k, n)
    return f"{k / max(n, 1):.3f} [{lo:.2f}, {hi:.2f}] ({n})"


def _eval_agent(path: Path, loops: tuple[int, ...], n: int, seed: int, places: int, documents: int,
                concurrency: int, as_json: bool, device: str) -> None:
    """``eval --agent``: held-out docqa sessions through the Agent API, per N."""
    from rich.progress import Progress

    from ..demo import task_min_fill
    from ..model import SleepModel
    from ..train.docqa_eval import held_out_sessions, run_agent_eval, summarize

    sm = SleepModel.from_pretrained(path, device=device if device != "cpu" else None)
    page_chars = int(sm.train_config.get("task_kwargs", {}).get("page_chars", 112))
    try:
        sessions = held_out_sessions(n, places, documents, seed=seed)
    except ValueError as e:
        raise fail(str(e)) from None
    report: dict[str, Any] = {"model": str(path), "places": places, "documents": documents, "sessions": n,
                              "page_chars": page_chars, "mode": "agent (free-running)", "by_loops": {}}
    with Progress(console=console, transient=True, disable=as_json) as progress:
        for N in loops:
            bar = progress.add_task(f"N={N}", total=n)
            results = run_agent_eval(sm, sessions, N, page_chars=page_chars, min_fill=task_min_fill(sm),
                                     concurrency=concurrency,
                                     # bar bound by default: mypy cannot infer such a lambda
                                     progress=cast(Callable[[int, int], None],
                                                   lambda done, total, bar=bar: progress.update(bar, completed=done)))
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


def ship(
    preset: Annotated[str, typer.Option(help="cpu (batch 8, two single-thread runs) or cuda (batch 64, fla)")] = "cpu",
    time_limit: Annotated[float | None, typer.Option(min=1, help="seconds the model trains in this invocation "
                                                     "(then the twin catches up; rerun resumes)")] = None,
    round_s: Annotated[float, typer.Option("--round", min=10, help="seconds per side-by-side round")] = 1200.0,
    out: Annotated[str, typer.Option(help="run directories (resumed if they exist)")] = "runs/ship",
    main_from: Annotated[str | None, typer.Option("--from", help="a run to continue as the model "
                                                  "(the capacity study's arm)")] = None,
    publish: Annotated[bool, typer.Option(help="score both through the Agent API and copy them into "
                                          "sleepagent/checkpoints")] = False,
    sessions: Annotated[int, typer.Option(min=1, help="--publish: held-out sessions per setting")] = 200,
    report: Annotated[str | None, typer.Option(help="write the run's report (steps, scores) to this JSON file")] = None,
) -> None:
    """The shipped demo model and its N = 1 twin (sleepagent/train/ship.py): train, resumably, on
    a CPU or a GPU; with --publish, score and ship them."""
    import json

    from ..train.ship import PRESETS, run_ship

    if preset not in PRESETS:
        raise fail(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    check_device(PRESETS[preset]["device"])
    new_or_existing_dir(out)
    if report is not None:
        new_file(report, "--report")
    result = run_ship(out, preset=preset, time_limit=time_limit, round_s=round_s, publish=publish,
                      sessions=sessions, main_from=main_from)
    text = json.dumps(result, indent=1)
    if report is not None:
        Path(report).write_text(text + "\n")
    console.print(f"model at step {result['main_step']}, twin at step {result['twin_step']}"
                  + (", published" if publish else ""))
