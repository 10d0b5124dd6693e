"""gsm_infinite: GSM-Infinite's semantics (dependency DAG, unmarked distractors, symbolic list answers)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepagent.errors import DataError
from sleepagent.train.gsm_infinite import MOD, GsmInfinite, evaluate, op_count, parse
from sleepagent.train.tasks import make_task, read_data


def _split(ex):
    text = bytes(ex.ids).decode()
    head, rest = text.split("? ", 1)
    problem, answer = rest.rsplit(". A: ", 1)
    return head[len("Q: "):], problem, answer.rstrip(".")


def test_the_same_seed_gives_the_same_problem_and_another_seed_another():
    task = GsmInfinite()
    a = [task.sample(random.Random(7)).ids for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert task.sample(random.Random(8)).ids != a[0]


def _independent_values(problem: str) -> dict[str, int]:
    """A second evaluator: fixed-point iteration over the statements (no recursion, no shared code)."""
    rules = [s.removeprefix("assign ").split(" = ") for s in problem.split(". ")]
    values: dict[str, int] = {}
    changed = True
    while changed:
        changed = False
        for var, rhs in rules:
            if var in values:
                continue
            parts = rhs.split(" ")
            if len(parts) == 1:
                values[var], changed = int(parts[0]) % MOD, True
            elif parts[0] in values and parts[2] in values:
                a, b = values[parts[0]], values[parts[2]]
                values[var] = {"+": a + b, "-": a - b, "*": a * b}[parts[1]] % MOD
                changed = True
    return values


@pytest.mark.parametrize("op", [2, 4, 6])
def test_answers_and_op_counts_agree_with_an_independent_evaluator(op):
    task = GsmInfinite(ops=(2, 4, 6))
    for seed in range(40):
        ex = task.sample(random.Random(seed), op)
        question, problem, answer = _split(ex)
        values = _independent_values(problem)
        v = int(question.removeprefix("which variables equal "))
        assert answer == ", ".join(sorted(x for x, y in values.items() if y == v))
        defs = parse(problem)
        assert values == evaluate(defs)
        assert ex.difficulty == op == max(op_count(defs, x) for x in answer.split(", "))
        value_ex = GsmInfinite(question="value").sample(random.Random(seed), op)
        q, p, a = _split(value_ex)
        assert int(a) == _independent_values(p)[q] and op_count(parse(p), q) == op


def test_no_marker_tells_the_answer_graph_from_the_fillers():
    """Operation statements of the answer graph and of the fillers: the same operation mix, the same
    shapes (two variables), constants from the same values; fillers drawn with the same op counts."""
    task = GsmInfinite(ops=(2, 4, 6), filler=3)
    chain_ops: Counter[str] = Counter()
    filler_ops: Counter[str] = Counter()
    for seed in range(300):
        ex = task.sample(random.Random(seed))
        _, problem, answer = _split(ex)
        defs = parse(problem)
        values = evaluate(defs)
        target = max(answer.split(", "), key=lambda x: op_count(defs, x))
        ancestors = {target}
        stack = [target]
        while stack:
            d = defs[stack.pop()]
            if not isinstance(d, int):
                for x in (d[0], d[2]):
                    if x not in ancestors:
                        ancestors.add(x)
                        stack.append(x)
        for var, d in defs.items():
            if not isinstance(d, int):
                (chain_ops if var in ancestors else filler_ops)[d[1]] += 1
                assert (var in values) == (var in ancestors)  # only the answer graph is computable
    total_c, total_f = sum(chain_ops.values()), sum(filler_ops.values())
    for o in "+-*":
        assert abs(chain_ops[o] / total_c - filler_ops[o] / total_f) < 0.04, (chain_ops, filler_ops)


def test_records_round_trip_through_read_data_and_a_wrong_answer_is_refused(tmp_path):
    task = make_task("gsm_infinite", ops=(2, 4))
    exs = [task.sample(random.Random(s)) for s in range(6)]
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(GsmInfinite.record(e)) + "\n" for e in exs))
    back = read_data(path, task)
    assert [b.ids for b in back] == [e.ids for e in exs] and [b.difficulty for b in back] == [e.difficulty for e in exs]
    bad = GsmInfinite.record(exs[0]) | {"op": exs[0].difficulty + 1}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match="op"):
        read_data(path, task)
    bad = GsmInfinite.record(exs[0]) | {"answer": "V10"}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match="answer"):
        read_data(path, task)


def test_eval_data_scores_gsm_infinite_records(tmp_path):
    from sleepagent.cli import app

    runner = CliRunner()
    out = tmp_path / "gsm"
    args = ["train", "--task", "gsm_infinite", "--task-args", '{"ops": [2], "filler": 1, "window": 64}',
            "--loops", "1", "--steps", "1", "--batch-size", "2", "--d-model", "16", "--n-layers", "2",
            "--threads", "1", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    task = make_task("gsm_infinite", ops=(2,), filler=1, window=64)
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps(GsmInfinite.record(task.sample(random.Random(s)))) + "\n" for s in range(3)))
    result = runner.invoke(app, ["eval", str(out), "--loops", "1", "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    assert "2" in json.loads(result.output.strip().splitlines()[-1])["accuracy"]["1"]


def test_the_gsm_infinite_preset_samples_its_ops_and_has_notes():
    from sleepagent.train.studies import STUDIES
    from sleepagent.train.study import read_notes

    study = STUDIES["gsm-infinite"]
    task = make_task(study.task, **study.task_kwargs)
    assert task.test_difficulties() == [2, 4, 6] and study.loops == (1, 4) and study.seeds == (0, 1)
    assert [task.sample(random.Random(0), op).difficulty for op in (2, 4, 6)] == [2, 4, 6]
    # the notes call its one run unfinished, and its JSON bears that out: every score zero, and no
    # run reached its 1000 steps
    notes = " ".join(read_notes("gsm-infinite").split())
    assert "unfinished study, not a result" in notes
    docs = Path(__file__).resolve().parents[2] / "docs" / "studies"
    report = json.loads((docs / "gsm-infinite.json").read_text())
    assert all(a == 0.0 for r in report["runs"].values() for row in r["final"].values() for a in row.values())
    assert all(r["steps"] < study.train["steps"] for r in report["runs"].values())

