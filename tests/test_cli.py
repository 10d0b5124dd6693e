"""The CLI runs end to end (real model, tiny sizes)."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from sleepagent.cli import app

runner = CliRunner()


def test_demo_answers_with_the_shipped_model_and_compares_n():
    result = runner.invoke(app, ["demo", "--questions", "3", "--latency", "0.05", "--think", "0.01"])
    assert result.exit_code == 0, result.output
    for text in ("N=4 reading", "N=1 reading", "summary", "tokens read", "most tokens in the KV window",
                 "fast-weight bytes", "sleep hidden / exposed", "wake latency", "1-hop"):
        assert text in result.output


def test_demo_with_an_unknown_model_is_one_clear_line():
    result = runner.invoke(app, ["demo", "--model", "no-such-model"])
    assert result.exit_code == 2
    assert "no shipped checkpoint" in result.output and len(result.output.strip().splitlines()) <= 2


def test_bench_kernels_json():
    result = runner.invoke(app, ["bench", "kernels", "--lengths", "64,100", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [c["T"] for c in data["cases"]] == [64, 100]
    assert all(c["fwd_ratio"] > 0 and c["fwdbwd_ratio"] > 0 for c in data["cases"])


def test_bench_kernels_takes_a_head_shape_and_a_backend():
    result = runner.invoke(app, ["bench", "kernels", "--lengths", "64", "--repeats", "1", "--batch", "2", "--heads",
                                 "3", "--head-dim", "8", "--backend", "torch_chunk", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["batch"], data["heads"], data["head_dim"], data["backend"]) == (2, 3, 8, "torch_chunk")
    bad = runner.invoke(app, ["bench", "kernels", "--backend", "triton"])
    assert bad.exit_code != 0 and "--backend must be auto, torch_chunk or fla" in bad.output


def test_bench_wake_json():
    result = runner.invoke(app, ["bench", "wake", "--loops", "1,2", "--tokens", "80", "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["ms_per_token"]) == {"1", "2"}


def test_bad_option_is_reported():
    result = runner.invoke(app, ["bench", "kernels", "--lengths", "a,b"])
    assert result.exit_code != 0
    assert "comma-separated integers" in result.output


def test_bench_store_json_sqlite_only():
    result = runner.invoke(app, ["bench", "store", "--no-postgres", "--repeats", "1", "--writers", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    sqlite = data["backends"]["sqlite"]
    assert sqlite["2b-class"]["bytes"] > 24 * 12 * 96 * 256 * 4  # the fast weights, stored once
    assert sqlite["small"]["write_ms"] > 0 and sqlite["concurrent"]["snapshots_per_s"] > 0


def test_train_then_eval(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--task", "rule110", "--task-args", '{"steps": [2]}', "--loops", "2", "--steps", "2",
            "--batch-size", "2", "--d-model", "16", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["eval", str(out), "--loops", "1,2", "--n", "4", "--json", "--plot", str(tmp_path / "p.png")]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert set(data["accuracy"]) == {"1", "2"} and set(data["accuracy"]["1"]) == {"2"}
    assert (tmp_path / "p.png").exists()


def test_eval_of_a_missing_checkpoint_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no checkpoint directory" in result.output


def test_train_with_bad_task_args_is_a_clear_error():
    result = runner.invoke(app, ["train", "--task-args", "{not json"])
    assert result.exit_code == 2 and result.output.startswith("error: invalid training settings:")
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["demo", "--loops", "4,0"])
    assert result.exit_code == 2 and result.output.strip() == "error: values must be positive integers, got '4,0'"


@pytest.mark.slow
def test_bench_memory_json():
    result = runner.invoke(app, ["bench", "memory", "--tokens", "300,1200", "--run-full-up-to", "300", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert rows[0]["sleep"]["state_bytes"] == rows[1]["sleep"]["state_bytes"]  # bounded
    assert rows[1]["full"]["state_bytes"] > rows[0]["full"]["state_bytes"]  # the KV grows
    assert rows[0]["full"]["ran"] and not rows[1]["full"]["ran"]


@pytest.mark.slow
def test_bench_with_no_subcommand_writes_the_markdown_report(tmp_path):
    out = tmp_path / "docs" / "benchmarks.md"
    result = runner.invoke(app, ["bench", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    for heading in ("## Kernels", "## Wake latency", "## Agent", "## Engine", "## Snapshot store", "## Session memory"):
        assert heading in text
    assert "cores" in text and (tmp_path / "docs" / "memory.png").stat().st_size > 1000


@pytest.mark.slow
def test_eval_first_scores_first_questions_alone(tmp_path):
    from sleepagent.train import evaluate, load_checkpoint, make_task

    out = tmp_path / "docqa"
    task_args = '{"n_places": [3, 4], "questions": 3, "page_chars": 100, "window": 192}'
    args = ["train", "--task", "docqa", "--task-args", task_args, "--loops", "2", "--steps", "2", "--batch-size", "2",
            "--d-model", "16", "--n-layers", "2", "--conv-size", "12", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["eval", str(out), "--loops", "1,2", "--n", "6", "--json", "--first"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    model, meta = load_checkpoint(out)
    assert model.config.conv_size == 12
    task = make_task("docqa", **meta["config"]["task_kwargs"])
    for first_only, key in ((False, "accuracy"), (True, "first")):
        expected = evaluate(model, task, [1, 2], n=6, first_only=first_only)
        assert data[key] == {str(N): {str(d): a for d, a in row.items()} for N, row in expected.items()}


def test_eval_scores_sequences_in_the_original_depo_layout(tmp_path):
    from sleepagent.train import evaluate, load_checkpoint, make_task
    from sleepagent.train.trainer import test_set
    from tests.train.test_tasks import _original_layout

    out = tmp_path / "depo"
    task_args = '{"n_max": 6, "k_max": 4, "m": 8, "max_len": 1, "window": 16, "edge_windows": 1, "queries": 3}'
    args = ["train", "--task", "depo", "--task-args", task_args, "--loops", "2", "--steps", "2", "--batch-size", "2",
            "--d-model", "16", "--n-layers", "2", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    model, meta = load_checkpoint(out)
    task = make_task("depo", **meta["config"]["task_kwargs"])
    rng = random.Random(0)
    lines = [_original_layout(task, ex, rng) for k in task.hops for ex in test_set(task, k, 5, 12345)]
    data = tmp_path / "depo.jsonl"
    data.write_text("".join(json.dumps({"tokens": t, "label": lab}) + "\n" for t, lab in lines))
    result = runner.invoke(app, ["eval", str(out), "--task", "depo", "--loops", "1,2", "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    expected = evaluate(model, task, [1, 2], n=5)  # the same documents, generated
    assert json.loads(result.output.strip().splitlines()[-1])["accuracy"] == {
        str(N): {str(k): a for k, a in row.items()} for N, row in expected.items()}

    data.write_text(json.dumps({"tokens": lines[0][0], "label": lines[0][1]}) + "\n" + '{"tokens": [0, 1]}\n')
    result = runner.invoke(app, ["eval", str(out), "--data", str(data)])
    assert result.exit_code == 2 and "line 2: expected" in result.output
    result = runner.invoke(app, ["eval", str(out), "--task", "rule110"])
    assert result.exit_code == 2 and "was trained on 'depo'" in result.output


def test_eval_scores_free_running_by_default_with_counts_and_intervals(tmp_path):
    out = tmp_path / "depo"
    task_args = '{"n_max": 5, "k_max": 2, "m": 8, "max_len": 1, "window": 10, "edge_windows": 2, "queries": 3}'
    args = ["train", "--task", "depo", "--task-args", task_args, "--loops", "2", "--steps", "2", "--batch-size", "2",
            "--d-model", "16", "--n-layers", "2", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    free = runner.invoke(app, ["eval", str(out), "--loops", "2", "--n", "4"])
    assert free.exit_code == 0, free.output
    assert "free-running" in free.output and "95% interval" in free.output and "(12)" in free.output  # 4 x 3 questions
    forced = runner.invoke(app, ["eval", str(out), "--loops", "2", "--n", "4", "--teacher-forced", "--json"])
    data = json.loads(forced.output.strip().splitlines()[-1])
    assert data["mode"] == "teacher-forced" and data["counts"]["2"]["1"][1] == 12


def test_eval_agent_runs_held_out_sessions_through_the_agent_api():
    result = runner.invoke(app, ["eval", "docqa-small", "--agent", "--loops", "4", "--n", "2", "--places", "8",
                                 "--documents", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    summary = report["by_loops"]["4"]
    assert report["mode"] == "agent (free-running)" and summary["sessions"] == 2
    assert summary["documents"] == 4  # two documents per session
    cells = {(r["doc"], r["read"], r["hops"]): r["n"] for r in summary["rows"]}
    assert cells[(1, 2, 1)] == 2 * 2 and cells[(2, 2, 2)] == 2 * 4  # asked about both after the second
    assert all(0 <= r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] <= 1 for r in summary["rows"])
    bad = runner.invoke(app, ["eval", "docqa-small", "--agent", "--places", "20", "--documents", "2"])
    assert bad.exit_code == 2 and "26" in bad.output


def test_bench_fairness_and_serve_json():
    r = runner.invoke(app, ["bench", "fairness", "--sleepers", "2", "--turns", "3", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["sleep_passes_meanwhile"] > 0 and data["step_p99_ratio"] > 0
    r = runner.invoke(app, ["bench", "serve", "--conversations", "2", "--rounds", "1", "--tool-latency", "0.05",
                            "--think", "0.05", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["lost"] == 0 and data["requests"] == 2 * 3 and data["sleeps"] >= 1


def test_train_has_one_option_per_train_config_field():
    """The options are derived from TrainConfig, so a field added there is an option here."""
    from sleepagent.train import TrainConfig

    help_text = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["train", "--help"]).output
    flags = {"task_kwargs": "--task-args"}
    for name in TrainConfig.model_fields:
        assert f" {flags.get(name, '--' + name.replace('_', '-'))} " in help_text, name
    for extra in ("--threads", "--stop-at", "--out"):  # what is not a training setting
        assert f" {extra} " in help_text


def test_options_come_from_the_model_with_their_types_defaults_and_help():
    from typing import Any, Literal

    from pydantic import BaseModel, Field

    from sleepagent.cli.model_options import ModelOptions

    class Settings(BaseModel):
        steps: int = Field(default=3, ge=1, description="how many")
        rate: float = 0.5
        name: str | None = None
        fast: bool = False
        mode: Literal["a", "b"] = "a"
        sizes: tuple[int, ...] | None = None
        span: tuple[int, int] | None = (1, 2)
        extra: dict[str, Any] = Field(default_factory=dict)

    opts = ModelOptions(Settings, flags={"extra": "--extra-json"})
    assert [p.name for p in opts.parameters] == list(Settings.model_fields)
    defaults = {p.name: p.default for p in opts.parameters}
    assert defaults == {"steps": 3, "rate": 0.5, "name": None, "fast": False, "mode": "a", "sizes": None,
                        "span": "1,2", "extra": "{}"}
    given = {**defaults, "sizes": "4, 5,6", "extra": '{"k": 1}'}
    assert Settings(**opts.values(given)) == Settings(sizes=(4, 5, 6), span=(1, 2), extra={"k": 1})
    for field, text, words in (("span", "1", "--span: expected 2 comma-separated integers"),
                               ("sizes", "1,x", "--sizes: expected comma-separated integers"),
                               ("extra", "[1]", "--extra-json: expected a JSON object")):
        with pytest.raises(ValueError, match=words):
            opts.values({**defaults, field: text})

    class Unsupported(BaseModel):
        when: set[int] = set()

    with pytest.raises(TypeError, match=r"Unsupported.when"):
        ModelOptions(Unsupported)


def test_bad_inputs_across_the_cli_are_one_line_and_write_nothing(tmp_path):
    """Each of these printed a usage box or a traceback (some after minutes of work) before."""
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    train = ["train", "--task", "rule110", "--task-args", '{"steps": [2]}', "--steps", "1", "--batch-size", "1",
             "--d-model", "16"]
    cases = [
        (["train", "--steps", "abc"], "--steps"),
        (["train", "--optimizer", "sgd"], "--optimizer"),
        (["train", "--no-such-option"], "No such option"),
        (["train", "--steps", "0"], "--steps"),
        (["train", "--loop-layers", "1"], "--loop-layers"),
        ([*train, "--out", str(a_file)], "is a file"),
        ([*train, "--device", "tpu"], "--device tpu"),
        (["eval", "docqa-small", "--n", "1", "--loops", "1", "--plot", str(tmp_path)], "is a directory"),
        (["bench", "memory", "--tokens", "300", "--plot", str(tmp_path / "no" / "m.png")], "does not exist"),
        (["bench", "--quick", "--out", str(tmp_path)], "is a directory"),
        (["bench", "kernels", "--lengths", "64", "--device", "cuda:x"], "--device cuda:x"),
        (["study", "depo", "--docs", str(a_file)], "is a file"),
        (["study", "no-such-study"], "unknown study"),
        (["demo", "--questions", "many"], "--questions"),
        (["no-such-command"], "No such command"),
    ]
    for args, words in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("error: ") and r.output.strip().count("\n") == 0, (args, r.output)
        assert words in r.output, (args, r.output)
    assert a_file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_study_capacity_runs_the_capacity_study(tmp_path, monkeypatch):
    """`sleepagent study capacity` (named in sleepagent.train.capacity) goes to its own runner."""
    import sleepagent.train.capacity as capacity

    calls = []
    monkeypatch.setattr(capacity, "run_capacity", lambda out, docs, **kw: calls.append((out, docs, kw)) or {})
    r = runner.invoke(app, ["study", "capacity", "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
                            "--jobs", "2"])
    assert r.exit_code == 0, r.output
    assert calls == [(tmp_path / "runs" / "capacity", str(tmp_path / "docs"),
                      {"jobs": 2, "threads": 1, "budget_min": 30.0, "sessions": 100})]
