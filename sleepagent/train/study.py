"""Studies: the sleep effect, measured, one command per result.

A study trains the same model on one task with several N (sleep passes during training) and two
or more seeds, each run resumable, scoring a fixed test set every ``eval_every`` steps; then it
scores every final checkpoint on a fresh, larger seeded test set and writes, under ``docs``
(``docs/studies`` by default):

- ``<name>.json``: every number (settings, per-run curves, final accuracies, margins);
- ``<name>.md``: the table, the command that reproduces it, the machine and wall time, the notes;
- ``<name>_final.png``: accuracy vs difficulty, one line per training N, or for a sweep of
  three or more N accuracy vs N, one line per difficulty (the paper's figure); the mean of the
  seeds as a line, each seed a marker;
- ``<name>_curve.png``: accuracy on the deepest difficulties vs training step, per run.

A study may have a second phase (``extend``): every run trained further from its final
checkpoint (say 6000 more steps at a constant lr, since a cosine run ends with its lr near the
floor), into ``<name>_more``, scored and compared the same way. The curve plot continues each run
through its second phase, which is how "N = 4 keeps improving where N = 1 stalls" is read off.

The claim a study checks, per difficulty: the mean accuracy of the largest N beats the mean of
N = 1 by more than the spread (max - min) between seeds of either. ``sleepagent study NAME``
runs a preset from ``STUDIES`` (:mod:`sleepagent.train.studies`, one module per task
family); the presets are sized for a 2-core CPU (each run well under an hour there) unless named
``-gpu``; the same command runs unchanged on CUDA with ``--device cuda``. A preset's notes (why
it is shaped as it is, what it found) are markdown under ``docs/studies/notes/``, read when the
page is written, so the prose is edited where it is read.
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from .finetune import run_task
from .stats import wilson
from .trainer import TrainConfig, accuracy, answer_hits, load_checkpoint, tally, train

__all__ = ["NOTES_DIR", "Study", "read_notes", "render_page", "run_study", "summarize"]

# the notes of the shipped presets: in the repository, beside the pages they are written into
NOTES_DIR = Path(__file__).resolve().parents[2] / "docs" / "studies" / "notes"


@dataclass(frozen=True)
class Study:
    """One comparison: ``task`` trained with each N in ``loops`` and each seed in ``seeds``."""

    name: str
    summary: str
    task: str
    task_kwargs: dict[str, Any]
    train: dict[str, Any]  # TrainConfig fields shared by every run (steps, sizes, lr, ...)
    loops: tuple[int, ...] = (1, 4)
    seeds: tuple[int, ...] = (0, 1)
    eval_n: int = 500  # final test examples per difficulty
    eval_seed: int = 12345
    deep: tuple[int, ...] = ()  # the difficulties the curve plot follows (default: the two hardest)
    notes: str = ""  # markdown appended to the study's page, after the files of notes_from
    notes_from: tuple[str, ...] = ()  # notes files (NOTES_DIR/<name>.md): how the preset was chosen, what it found
    extend: dict[str, Any] | None = None  # second phase: TrainConfig updates (steps, schedule, seed, ...)
    first_answer: bool = False  # also score each document's first question alone (see evaluate's first_only)
    # Fine-tuning studies (the paper's pretrained-model experiments): a random transformers hybrid
    # (``save_tiny_hybrid`` arguments) is first trained as an ordinary model, N = 1, with
    # ``pretrain`` (TrainConfig updates); every run then fine-tunes that checkpoint (``train --base``).
    base_model: dict[str, Any] | None = None
    pretrain: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.base_model is None) != (self.pretrain is None):
            raise ValueError(f"study {self.name}: base_model and pretrain go together")
        if self.pretrain is not None and self.extend:
            raise ValueError(f"study {self.name}: a fine-tuning study has no second phase")

    def page_notes(self) -> str:
        """The markdown the page ends with: the ``notes_from`` files in order, then ``notes``."""
        parts = [read_notes(name) for name in self.notes_from] + [self.notes]
        return "\n\n".join(p.strip() for p in parts if p.strip())

    def runs(self) -> list[tuple[str, TrainConfig]]:
        return [
            (f"N{n}_s{seed}", TrainConfig(task=self.task, task_kwargs=dict(self.task_kwargs), loops=n, seed=seed,
                                          **self.train))
            for n in self.loops
            for seed in self.seeds
        ]

    def pretrain_runs(self, out: Path) -> list[tuple[str, TrainConfig]]:
        """The "pretraining" run (N = 1 from the random transformers model), if this study has one."""
        if self.pretrain is None:
            return []
        return [("pretrain", TrainConfig(task=self.task, task_kwargs=dict(self.task_kwargs), loops=1, seed=0,
                                         base=str(out / "random"), **{**self.train, **self.pretrain}))]

    def extended_runs(self, out: Path) -> list[tuple[str, TrainConfig]]:
        """The second phase: each run continued from its final checkpoint under ``out``."""
        if not self.extend:
            return []
        return [(f"{name}_more", cfg.model_copy(update={**self.extend, "init_from": str(out / name)}))
                for name, cfg in self.runs()]


def read_notes(name: str) -> str:
    """One notes file; missing (an installed package without the repository's docs/) reads as
    none, with a warning, since a page without its notes is still a correct page."""
    path = NOTES_DIR / f"{name}.md"
    try:
        return path.read_text()
    except OSError:
        warnings.warn(f"study notes {path} not found: the page is written without them", stacklevel=2)
        return ""




def _train_one(args: tuple[dict, str, int | None, bool]) -> str:
    cfg_json, out, threads, progress = args
    if threads:
        torch.set_num_threads(threads)
    train(TrainConfig(**cfg_json), out, progress=progress)
    return out


def run_study(
    study: Study,
    out: str | Path = "runs/study",
    docs: str | Path = "docs/studies",
    *,
    jobs: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: str | None = None,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """Train every run (resuming finished or partial ones), score them, write the docs files.

    ``time_limit`` caps each run's training time in seconds (then it saves and the study scores
    it where it stopped; the same call resumes it), for a GPU lent for a fixed time."""
    out, docs = Path(out) / study.name, Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    runs = study.runs()
    if study.base_model is not None:  # fine-tuning: every run starts from the pretrained checkpoint
        runs = [(name, cfg.model_copy(update={"base": str(out / "pretrain")})) for name, cfg in runs]
        if not (out / "random" / "config.json").exists():
            from ..model.hf_tiny import save_tiny_hybrid

            save_tiny_hybrid(out / "random", **study.base_model)
    pretrain, *phases = [[(name, cfg.model_copy(update={"device": device, "time_limit": time_limit}))
                         for name, cfg in group]
                        for group in (study.pretrain_runs(out), runs, study.extended_runs(out))]
    t0 = time.perf_counter()
    if pretrain:
        _train_one((pretrain[0][1].model_dump(mode="json"), str(out / "pretrain"), threads, progress))
    for runs in phases:  # the second phase starts from the first one's checkpoints
        work = [(cfg.model_dump(mode="json"), str(out / name), threads, progress) for name, cfg in runs]
        if jobs > 1:
            # spawn, not fork: forking a process that already runs torch threads can deadlock
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
                list(pool.map(_train_one, work))
        else:
            for item in work:
                _train_one(item)
    train_s = time.perf_counter() - t0

    results, extended = (_score_all(study, out, runs, device, jobs) for runs in phases)
    report = {
        "study": study.name,
        "summary": study.summary,
        "task": study.task,
        "task_kwargs": study.task_kwargs,
        "train": study.train,
        "loops": list(study.loops),
        "seeds": list(study.seeds),
        "eval_n": study.eval_n,
        "notes": study.page_notes(),
        "runs": results,
        "comparison": summarize(results, study.loops),
        "extend": study.extend,
        "extended_runs": extended,
        "comparison_extended": summarize(extended, study.loops) if extended else None,
        "comparison_first": summarize(results, study.loops, "final_first") if study.first_answer else None,
        "comparison_extended_first": (summarize(extended, study.loops, "final_first")
                                      if study.first_answer and extended else None),
        "machine": _machine(device),
        "train_wall_s": round(train_s, 1),
        "command": command or f"sleepagent study {study.name}",
        "scoring": "free-running",
    }
    if pretrain:
        report["base_model"], report["pretrain"] = study.base_model, study.pretrain
        # the pretrained model itself, at N = 1 and woken with the largest N (never trained to sleep)
        report["pretrain_run"] = _score(study, out / "pretrain",
                                        pretrain[0][1].model_copy(update={"loops": max(study.loops)}), device)
    (docs / f"{study.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_final(report, docs / f"{study.name}_final.png")
    plot_curves(report, docs / f"{study.name}_curve.png", deep=study.deep)
    (docs / f"{study.name}.md").write_text(markdown(report))
    return report


def _score_all(study: Study, out: Path, runs: list[tuple[str, TrainConfig]], device: str,
               jobs: int) -> dict[str, Any]:
    """Every run of one phase scored, ``jobs`` at a time (the runs are independent; on a lent GPU
    scoring them one after another would take longer than training them side by side)."""
    if jobs <= 1 or len(runs) <= 1:
        return {name: _score(study, out / name, cfg, device) for name, cfg in runs}
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=get_context("spawn")) as pool:
        scored = pool.map(_score_one, [(study, out / name, cfg, device) for name, cfg in runs])
        return {name: result for (name, _), result in zip(runs, scored, strict=True)}


def _score_one(args: tuple[Study, Path, TrainConfig, str]) -> dict[str, Any]:
    torch.set_num_threads(1)  # one of several scoring processes
    return _score(*args)


def _score(study: Study, run_dir: Path, cfg: TrainConfig, device: str) -> dict[str, Any]:
    """A finished run on the study's final test set, at its own N and at N = 1, plus its curve.

    Batches of 256 examples on a GPU (32 on a CPU): the answers do not depend on the batch, and a
    small model on a GPU is bound by kernel launches, so fewer, larger batches finish sooner."""
    model, meta = load_checkpoint(run_dir, device)
    task = run_task(model, cfg.model_dump())
    scored = {"loops": cfg.loops, "seed": cfg.seed, "steps": meta.get("step"), "curve": meta.get("evals", [])}
    hits = answer_hits(model, task, sorted({1, cfg.loops}), n=study.eval_n, seed=study.eval_seed,
                       min_fill=cfg.min_fill, batch_size=256 if device.startswith("cuda") else 32)
    for key, first_only in (("final", False), ("final_first", True)):
        if first_only and not study.first_answer:
            continue
        scored[key] = {str(N): {str(d): a for d, a in row.items()} for N, row in accuracy(hits, first_only).items()}
        # (right, answers) behind each accuracy: the page's n and 95% intervals
        scored[f"{key}_counts"] = {str(N): {str(d): [k, n] for d, (k, n) in row.items()}
                                   for N, row in tally(hits, first_only).items()}
    return scored


def summarize(
    results: dict[str, Any], loops: tuple[int, ...], key: str = "final"
) -> dict[str, dict[str, float | bool]]:
    """Per difficulty: each training N's mean accuracy (at its own N), the seed spread, and
    whether the largest N beats N = 1 by more than either spread. ``key``: which scores
    (``final``, or ``final_first`` for the first question of each document)."""
    lo, hi = min(loops), max(loops)
    by_n: dict[int, list[dict[str, float]]] = {}
    for r in results.values():
        by_n.setdefault(r["loops"], []).append(r[key][str(r["loops"])])
    difficulties = sorted({int(d) for rows in by_n.values() for row in rows for d in row})
    out: dict[str, dict[str, float | bool]] = {}
    for d in difficulties:
        row: dict[str, float | bool] = {}
        for n, finals in sorted(by_n.items()):
            accs = [f[str(d)] for f in finals]
            row[f"N{n}_mean"] = sum(accs) / len(accs)
            row[f"N{n}_spread"] = max(accs) - min(accs)
        margin = float(row[f"N{hi}_mean"]) - float(row[f"N{lo}_mean"])
        row["margin"] = margin
        row["beats_spread"] = margin > max(float(row[f"N{lo}_spread"]), float(row[f"N{hi}_spread"]))
        out[str(d)] = row
    return out


def _machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def markdown(report: dict[str, Any]) -> str:
    """The study as a markdown page: settings, table, claim per difficulty, plots."""
    minutes = report["train_wall_s"] / 60
    trained = (f"the invocation that wrote this page trained for {minutes:.0f} min" if minutes >= 1
               else "the runs were trained before the invocation that wrote this page, which only scored them")
    loops = report["loops"]
    lo, hi = min(loops), max(loops)
    lines = [
        f"# Study `{report['study']}`: {report['summary']}",
        "",
        f"Reproduce: `{report['command']}` (resumable: finished runs are only re-scored; {trained}; "
        f"machine: {report['machine']}).",
        "",
        f"Task `{report['task']}` with `{json.dumps(report['task_kwargs'])}`; every run: "
        f"`{json.dumps(report['train'])}`; seeds {report['seeds']}; final test set: {report['eval_n']} "
        "examples per difficulty (fresh seed), exact match per answer.",
        "",
        scoring_note(report),
        "",
        "| difficulty | " + " | ".join(f"trained N={n} (mean ± spread/2)" for n in sorted(set(loops)))
        + (f" | margin N={hi} − N={lo} | beats seed spread |" if hi > lo else " |"),
    ]
    header = lines[-1:]
    lines += _comparison_rows(report["comparison"], loops)
    extend = f"`{json.dumps(report.get('extend'))}` (runs `<name>_more`)"
    for key, caption in (
        (
            "comparison_extended",
            f"After the second phase: every run trained further from its final checkpoint with {extend}:",
        ),
        (
            "comparison_first",
            "First phase, the first question of each document only (nothing earlier in the window to build on):",
        ),
        ("comparison_extended_first", "Second phase, the first question of each document only:"),
    ):
        if report.get(key):
            lines += ["", caption, "", *header, *_comparison_rows(report[key], loops)]
    phase1 = report["runs"]
    for key, caption in (("final", "every question"), ("final_first", "first question of each document")):
        if key not in next(iter(phase1.values())):
            continue
        counted = f"{key}_counts" in next(iter(phase1.values()))
        intervals = (" In brackets, the 95% Wilson interval over the cell's n answers (the answers of one "
                     "document are scored together, so where a document has several the interval is a little "
                     "narrower than one over documents)." if counted else "")
        lines += ["", f"Per run, {caption} (accuracy at the run's own N, and at N = 1 for the same weights):"
                      f"{intervals}", ""]
        lines.append("| run | steps | " + " | ".join(f"d={d}" for d in report["comparison"])
                     + (" | n (answers a cell)" if counted else "") + " |")
        lines.append("|---" * (len(report["comparison"]) + 2 + counted) + "|")
        for name, r in {**phase1, **(report.get("extended_runs") or {})}.items():
            base = phase1.get(name.removesuffix("_more")) if name not in phase1 else None
            steps = f"{base['steps']} + {r['steps']}" if base else str(r["steps"])
            for N, row in sorted(r[key].items(), key=lambda kv: -int(kv[0])):
                label = name if int(N) == r["loops"] else f"{name} at N=1"
                counts = (r.get(f"{key}_counts") or {}).get(N)
                cells = [_cell(row[d], counts[d] if counts else None) for d in report["comparison"]]
                if counted:
                    ns = sorted({counts[d][1] for d in report["comparison"]}) if counts else []
                    cells.append(", ".join(map(str, ns)))
                lines.append(f"| {label} | {steps} | " + " | ".join(cells) + " |")
    if report.get("row_probe"):
        probe = report["row_probe"]
        n_rows = len(next(iter(probe.values()))["majority"])
        lines += ["", "Per row (oldest window first): each row's label scored alone on the same test documents, "
                      "beside the share of that row's majority label (what answering a constant bit scores). A run "
                      "exact on one row and at the majority bit on the other scores about the majority share "
                      "overall: half a solution. Written by `python -m sleepagent.train.probes --into`.", "",
                  "| run | at N | " + " | ".join(f"row {i}" for i in range(n_rows)) + " | majority share |",
                  "|---" * (n_rows + 3) + "|"]
        for name, r in probe.items():
            majority = ", ".join(f"{m:.3f}" for m in r["majority"])
            for N, rows in sorted(r["rows"].items(), key=lambda kv: -int(kv[0])):
                lines.append(f"| {name} | {N} | " + " | ".join(f"{a:.3f}" for a in rows) + f" | {majority} |")
    if report.get("pretrain_run"):
        pre = report["pretrain_run"]
        lines += ["", f"Fine-tuning: every run above starts from one pretrained checkpoint, a random transformers "
                      f"model (`{json.dumps(report['base_model'])}`) trained as an ordinary model (N = 1, "
                      f"`{json.dumps(report['pretrain'])}`, {pre['steps']} steps). That checkpoint, before "
                      "fine-tuning:", ""]
        for N, row in sorted(pre["final"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"- at N = {N}: " + ", ".join(f"d={d} {row[d]:.3f}" for d in row))
    lines += [
        "",
        f"![accuracy vs {'N' if against_n(report) else 'difficulty'}]({report['study']}_final.png)",
        f"![accuracy vs training step]({report['study']}_curve.png)",
        "",
    ]
    if report.get("notes"):
        lines += ["## Notes", "", report["notes"].strip(), ""]
    return "\n".join(lines)


def _cell(acc: float, counts: list[int] | None) -> str:
    """An accuracy, with its 95% Wilson interval when the run recorded its (right, answers)."""
    if counts is None:
        return f"{acc:.3f}"
    lo, hi = wilson(*counts)
    return f"{acc:.3f} [{lo:.2f}, {hi:.2f}]"


def scoring_note(report: dict[str, Any]) -> str:
    """How the page's accuracies were scored. Pages written before free-running scoring existed
    were teacher-forced: for an example's first (or only) answer that is the same number, since
    nothing earlier is in its context; later answers had the true earlier answers in context."""
    if report.get("scoring") == "free-running":
        return ("Scoring: free-running, as an agent answers (each answer is the model's own greedy tokens, its "
                "earlier answers right or wrong in the context).")
    if report["task"] == "rule110":
        return ("Scoring: each example has one answer (both rows' labels), scored teacher-forced when this page was "
                "written; for a single answer that equals free-running exact match (the first wrong token already "
                "makes it wrong).")
    return ("Scoring: written before free-running scoring existed, so the 'every question' rows are teacher-forced "
            "(the true earlier answers were in the context); the first-question rows equal free-running scores "
            "(nothing earlier is in a first question's context). The README quotes only the latter.")


def render_page(json_path: str | Path) -> Path:
    """Rewrite ``<name>.md`` and ``<name>_final.png`` from its ``<name>.json`` (no training, no scoring)."""
    json_path = Path(json_path)
    report = json.loads(json_path.read_text())
    plot_final(report, json_path.with_name(f"{json_path.stem}_final.png"))
    out = json_path.with_suffix(".md")
    out.write_text(markdown(report))
    return out


def _comparison_rows(comparison: dict[str, Any], loops: list[int]) -> list[str]:
    """The table's rows; a study of one N (a baseline) has no margin columns."""
    compare = len(set(loops)) > 1
    rows = ["|---" * (len(set(loops)) + (3 if compare else 1)) + "|"]
    for d, row in comparison.items():
        cells = [f"{row[f'N{n}_mean']:.3f} ± {float(row[f'N{n}_spread']) / 2:.3f}" for n in sorted(set(loops))]
        margin = f" | {row['margin']:+.3f} | {'yes' if row['beats_spread'] else 'no'}" if compare else ""
        rows.append(f"| {d} | " + " | ".join(cells) + margin + " |")
    return rows


def against_n(report: dict[str, Any]) -> bool:
    """A sweep (three or more N, one phase) is drawn as the paper draws it: accuracy against N."""
    return len(set(report["loops"])) >= 3 and not report.get("comparison_extended")


def final_series(
    report: dict[str, Any],
) -> tuple[str, list[tuple[str, list[int], list[float], list[tuple[int, float]]]]]:
    """What the final plot draws: the x axis, then per line (label, xs, mean accuracies, seed points).

    Two N: one line per training N against difficulty. A sweep (:func:`against_n`): one line per
    difficulty against N, the paper's figure, each seed a point so the spread shows."""
    loops = sorted(set(report["loops"]))
    difficulties = [int(d) for d in report["comparison"]]
    seeds = {n: [r["final"][str(n)] for r in report["runs"].values() if r["loops"] == n] for n in loops}
    if against_n(report):
        return "trained N (sleep passes)", [
            (f"difficulty {d}", loops, [report["comparison"][str(d)][f"N{n}_mean"] for n in loops],
             [(n, row[str(d)]) for n in loops for row in seeds[n]])
            for d in difficulties
        ]
    return "difficulty", [
        (f"trained N = {n}", difficulties, [report["comparison"][str(d)][f"N{n}_mean"] for d in difficulties],
         [(d, row[str(d)]) for row in seeds[n] for d in difficulties])
        for n in loops
    ]


def plot_final(report: dict[str, Any], path: Path) -> Path:
    """Accuracy vs difficulty per training N, or vs N per difficulty for a sweep: the mean as a
    line, each seed as a marker (with a second phase: its results solid, the first phase's dotted)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    if report.get("comparison_extended"):
        first = {**report, "comparison_extended": None}
        extended = {**report, "runs": report["extended_runs"], "comparison": report["comparison_extended"],
                    "comparison_extended": None}
        phases = [(first, " (first phase)", False), (extended, " (extended)", True)]
    else:
        phases = [(report, "", True)]
    for phase, tag, last in phases:
        xlabel, series = final_series(phase)
        for i, (label, xs, means, points) in enumerate(series):
            ax.plot(xs, means, color=f"C{i}", marker="o", linestyle="-" if last else ":",
                    alpha=1.0 if last else 0.5, label=label + tag)
            if last and points:
                ax.scatter(*zip(*points, strict=True), color=f"C{i}", marker="x", alpha=0.6)
        ax.set_xticks(xs)
    _finish(ax, xlabel, f"{report['task']}: accuracy (x = seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(report: dict[str, Any], path: Path, deep: tuple[int, ...] = ()) -> Path:
    """Accuracy vs training step on the deepest difficulties, one line per run."""
    plt = _pyplot()
    difficulties = [str(d) for d in deep] or list(report["comparison"])[-2:]
    fig, axes = plt.subplots(1, len(difficulties), figsize=(4.5 * len(difficulties), 3.5), dpi=120, squeeze=False)
    for ax, d in zip(axes[0], difficulties, strict=True):
        for i, n in enumerate(sorted(set(report["loops"]))):
            for j, (name, r) in enumerate(x for x in report["runs"].items() if x[1]["loops"] == n):
                more = (report.get("extended_runs") or {}).get(f"{name}_more", {"curve": []})
                evals = r["curve"] + [{**e, "step": r["steps"] + e["step"]} for e in more["curve"]]
                curve = [(e["step"], e["accuracy"][str(n)][d]) for e in evals if str(n) in e["accuracy"]]
                if curve:
                    xs, ys = zip(*curve, strict=True)
                    ax.plot(xs, ys, color=f"C{i}", linestyle="-" if j == 0 else "--", label=name)
        if report.get("extended_runs"):
            ax.axvline(max(r["steps"] for r in report["runs"].values()), color="grey", linewidth=0.5)
        _finish(ax, "training step", f"difficulty {d}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is assumed
    import matplotlib.pyplot as plt

    return plt


def _finish(ax, xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7)


if __name__ == "__main__":  # python -m sleepagent.train.study render docs/studies/depo.json ...
    import sys

    if sys.argv[1:2] != ["render"] or len(sys.argv) < 3:
        raise SystemExit("usage: python -m sleepagent.train.study render docs/studies/NAME.json [...]")
    for path in sys.argv[2:]:
        print(render_page(path))
