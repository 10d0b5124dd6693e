"""Probes: where a model's answers come from (depo: edge order; rule110: which row).

Depo.

A 2-hop question "X, 2 hops" asks for C where the cycle has the edges ``X A`` and ``A C``. With a
single pass over the edges (N = 1), one route to C exists when ``A C`` was written *before*
``X A``: the delta rule's write of ``X A`` first reads what the fast weights hold under its key,
so it can pick up the already-stored ``A -> C`` (a key that mixes X and A, which the short
convolution allows). When ``A C`` comes *after* ``X A``, a single pass has no such route (except
when the two edges are adjacent, ``X A A C``, inside the convolution's reach): the later write
cannot reach back into the earlier one. Sleep can: pass 2 sees the fast weights of every edge at
every position. So ``order_split`` scores the first question of each test document
(nothing earlier in the question window to build on) separately for the two orders; a model that
composes only in one pass scores near guessing on ``after``.

Rule 110. An answer is exact only when every row's label is right, which hides *which* rows a
model gets: ``row_split`` scores each row's label alone, next to the share of the majority label
(what answering a constant bit scores), on the study's test documents.

``python -m sleepagent.train.probes RUN_DIR...`` prints the split for trained depo or rule110 runs
(the study's test documents: same seed, same n). ``--into STUDY.json RUN_DIR...`` also writes the
Rule 110 row split into the study's JSON (``row_probe``) and renders its page again, so the page
quotes the probe from its JSON: a score that could be half a solution (one row right, the other
at its majority bit) is told apart from one that is.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

from .tasks import Depo, Example, Rule110
from .trainer import evaluate, load_checkpoint, test_set

__all__ = ["edge_order", "order_split", "row_probe_into", "row_split"]


def edge_order(task: Depo, ex: Example) -> str:
    """``"before"`` if the second edge of the first question's 2-hop path precedes its first edge
    in the text, else ``"after"``. Needs one-token names (``max_len=1``)."""
    if task.max_len != 1:
        raise ValueError("edge_order needs one-token node names (max_len=1)")
    edge_len = task.window * task.edge_windows
    body = [t for t in ex.ids[1:edge_len] if t != task.pad]
    edges = [(body[i], body[i + 1]) for i in range(0, len(body), 2)]
    succ = dict(edges)
    start = ex.ids[edge_len + 1]  # [<hop_k>, start, <ans>, answer] is the first question
    mid = succ[start]
    return "before" if edges.index((mid, succ[mid])) < edges.index((start, mid)) else "after"


class _FirstQuestionIf(Depo):
    """Depo whose test documents keep only the first answer, and only when its order matches."""

    def __init__(self, order: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.order = order

    def sample(self, rng: random.Random, difficulty: int | None = None, n: int | None = None) -> Example:
        ex = super().sample(rng, difficulty, n)
        keep = ex.answers[:1] if edge_order(self, ex) == self.order else []
        return dataclasses.replace(ex, answers=keep)


def order_split(model, task_kwargs: dict, loops: list[int], *, n: int = 500, seed: int = 12345,
                min_fill: float = 0.5) -> dict[int, dict[str, float]]:
    """2-hop accuracy on the first question of each document, per N, split by edge order."""
    out: dict[int, dict[str, float]] = {}
    for order in ("before", "after"):
        task = _FirstQuestionIf(order, **task_kwargs)
        acc = evaluate(model, task, loops, n=n, seed=seed, difficulties=[2], min_fill=min_fill)
        for n_loops, row in acc.items():
            out.setdefault(n_loops, {})[order] = row[2]
    return out


class _OneRow(Rule110):
    """Rule110 whose examples score one row's label alone."""

    def __init__(self, row: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.row = row

    def sample(self, rng: random.Random, difficulty: int | None = None) -> Example:
        ex = super().sample(rng, difficulty)
        return dataclasses.replace(ex, answers=[[ex.answers[0][self.row]]])


def row_split(model, task_kwargs: dict, loops: list[int], *, n: int = 500,
              seed: int = 12345) -> tuple[dict[int, list[float]], list[float]]:
    """Per N, the accuracy of each row's label alone (row 0 is the oldest window); and per row, the
    share of its majority label on the same documents (a constant answer's score)."""
    task = Rule110(**task_kwargs)
    t = task.steps[0]
    out: dict[int, list[float]] = {}
    for row in range(task.rows):
        acc = evaluate(model, _OneRow(row, **task_kwargs), loops, n=n, seed=seed, difficulties=[t])
        for n_loops, by_t in acc.items():
            out.setdefault(n_loops, []).append(by_t[t])
    docs = test_set(task, t, n, seed)
    ones = [sum(ex.ids[ex.answers[0][r]] for ex in docs) / n for r in range(task.rows)]
    return out, [max(p, 1 - p) for p in ones]


def row_probe_into(study_json: str | Path, run_dirs: list[str]) -> Path:
    """Each Rule 110 run's row split (at N = 1 and its own N) into the study's JSON, under
    ``row_probe``; then the page is rendered again from that JSON."""
    import json

    from .study import render_page

    path = Path(study_json)
    report = json.loads(path.read_text())
    probe = report.setdefault("row_probe", {})
    for run in run_dirs:
        model, meta = load_checkpoint(run)
        cfg = meta["config"]
        rows, majority = row_split(model, cfg["task_kwargs"], sorted({1, cfg["loops"]}), n=report["eval_n"],
                                   seed=report.get("eval_seed", 12345))
        probe[Path(run).name] = {"rows": {str(n): r for n, r in rows.items()}, "majority": majority}
    path.write_text(json.dumps(report, indent=1) + "\n")
    return render_page(path)


def main(run_dirs: list[str]) -> None:
    if run_dirs[:1] == ["--into"]:
        print(row_probe_into(run_dirs[1], run_dirs[2:]))
        return
    for run in run_dirs:
        model, meta = load_checkpoint(run)
        cfg = meta["config"]
        loops = sorted({1, cfg["loops"]})
        if cfg["task"] == "rule110":
            rows, majority = row_split(model, cfg["task_kwargs"], loops)
            cells = "; ".join(f"N={n_loops}: " + ", ".join(f"{a:.3f}" for a in r) for n_loops, r in rows.items())
            base = ", ".join(f"{m:.3f}" for m in majority)
            print(f"{Path(run).name} (trained N={cfg['loops']}), per row (oldest first): {cells}; majority {base}")
            continue
        split = order_split(model, cfg["task_kwargs"], loops)
        cells = ", ".join(f"N={n_loops}: before {r['before']:.3f}, after {r['after']:.3f}"
                          for n_loops, r in split.items())
        print(f"{Path(run).name} (trained N={cfg['loops']}): {cells}")


if __name__ == "__main__":
    main(sys.argv[1:])
