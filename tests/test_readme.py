"""Every code block of the README runs as written, and shows what the README says it shows.

Python blocks run as they are, on the shipped model. Two need something a CPU test machine does
not have, and run with a placeholder swapped in, marked below: the transformers block (a user's
checkpoint on a GPU: here a tiny random qwen3_5 on the CPU) and the server block (a server the
reader started on port 8000: here one on a free port). Bash blocks: the snapshot commands run
against the store the memory block wrote; the install and test commands are what CI runs; the
long training and evaluation commands are parsed and validated (options, task settings), not run
for hours.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepagent.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
runner = CliRunner(env={"COLUMNS": "200"})


def blocks(lang: str) -> list[tuple[str, str]]:
    """(the heading above it, code) for every ```lang block, in order."""
    out, heading = [], ""
    for m in re.finditer(r"^(#+ [^\n]*)$|^```(\w*)\n(.*?)^```", README.read_text(), re.M | re.S):
        if m.group(1):
            heading = m.group(1)
        elif m.group(2) == lang:
            out.append((heading, m.group(3)))
    return out


def block(lang: str, heading_words: str, contains: str = "") -> str:
    found = [code for heading, code in blocks(lang) if heading_words in heading and contains in code]
    assert len(found) == 1, f"expected one {lang} block under a heading with {heading_words!r}, found {len(found)}"
    return found[0]


def run_python(code: str) -> tuple[dict, str]:
    namespace: dict = {"__name__": "readme"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), namespace)
    return namespace, out.getvalue()


def test_every_block_is_covered_below():
    headings = {h for h, _ in blocks("python")} | {h for h, _ in blocks("bash")}
    covered = ("Quickstart", "An agent in ten lines", "LangChain in ten lines", "Serve it", "Transformers hybrids",
               "Teach it to sleep", "Memory that persists", "Training")
    assert all(any(c in h for c in covered) for h in headings), headings
    assert len(blocks("python")) == 5


def test_the_agent_in_ten_lines_calls_the_tool_and_answers():
    ns, out = run_python(block("python", "An agent in ten lines"))
    result = ns["result"]
    assert result.usage.tool_calls >= 1 and [m.role for m in result.messages][:3] == ["user", "assistant", "tool"]
    assert result.output == "Done." and out.startswith("Done.")
    assert result.sleep.sleeps >= 1 and result.sleep.sleep_s_hidden > 0  # it slept during the tool's latency


def test_langchain_in_ten_lines_replies_with_a_tool_call():
    ns, out = run_python(block("python", "LangChain in ten lines"))
    reply = ns["reply"]
    assert [c["name"] for c in reply.tool_calls] == ["next_page"]
    assert reply.usage_metadata["input_tokens"] > 0 and "next_page" in out


def test_the_server_snippet_against_a_running_server():
    pytest.importorskip("fastapi")
    from sleepagent.serve import ServeConfig, serve_in_background

    serve_cmd = block("bash", "Serve it", contains="--no-auth")
    assert serve_cmd.strip() == "sleepagent serve --model docqa-small --no-auth --port 8000 &"
    code = block("python", "Serve it")
    with serve_in_background(ServeConfig(model="docqa-small", no_auth=True)) as url:
        # placeholder swap: the reader's server listens on 8000, this one on a free port
        ns, out = run_python(code.replace("http://127.0.0.1:8000/v1", url))
    done = ns["done"]
    assert done.choices[0].message.content == "Done." and out.startswith("Done.")
    assert done.model_extra["session"]["status"] == "reused"
    uncached = done.usage.prompt_tokens - done.usage.prompt_tokens_details.cached_tokens
    assert 0 < uncached < 100  # the tool result only


def test_the_transformers_block_on_a_tiny_random_qwen3_5(tmp_path):
    from sleepagent.model.hf_tiny import save_tiny_hybrid

    path = save_tiny_hybrid(tmp_path / "qwen", "qwen3_5")
    code = block("python", "Transformers hybrids")
    # placeholder swap: the reader's checkpoint on a GPU -> a tiny random qwen3_5 (4 layers) on the CPU
    for old, new in (('"/models/Qwen3.5-2B"', repr(str(path))), ('device="cuda"', "device=None"),
                     ("window=4096", "window=256"), ("loop_layers=(8, 24)", "loop_layers=(1, 3)")):
        assert old in code
        code = code.replace(old, new)
    ns, out = run_python(code)
    assert ns["sm"].config.loop_layers == (1, 3) and ns["agent"].model is ns["sm"]
    assert "Usage(" in out  # it ran a turn (a random model's text means nothing)


def test_the_memory_block_twice_then_every_snapshot_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = block("python", "Memory that persists")
    _, first = run_python(code)
    _, second = run_python(code)  # the README: "after a second run of the snippet (it resumes)"
    assert first.startswith("None") and second.startswith("ResumeInfo(snapshot_id=")
    from sleepagent.storage import SnapshotStore

    with SnapshotStore("sqlite:///sessions.db") as store:
        ids = [s.id for s in store.list_snapshots("alice-1", tenant="alice")]
        assert len(ids) >= 2 and ids[:2] == [1, 2]  # what the commands below name
        for payload in (store.load(i, tenant="alice")[1] for i in ids):
            assert b"hunter2" not in payload and b"1234" not in payload
    commands = [line.split("#")[0].strip() for line in block("bash", "Memory that persists").splitlines()]
    for line in filter(None, commands):
        args = shlex.split(line)
        assert args[0] == "sleepagent"
        result = runner.invoke(app, args[1:])
        assert result.exit_code == 0, (line, result.output)
    assert (tmp_path / "s.safetensors").stat().st_size > 0 and list((tmp_path / "plots").glob("*.png"))
    with SnapshotStore("sqlite:///sessions.db") as store:
        assert store.list_sessions(tenant="alice") == []  # the last command erased it


def test_quickstart_commands_are_what_ci_runs():
    install, tests = (code.strip() for _, code in blocks("bash")[:2])
    ci = (README.parent / ".ci" / "run").read_text()
    assert "-c constraints/cpu.txt -e '.[dev," in install and "-c constraints/cpu.txt -e '.[dev," in ci
    assert tests == ".venv/bin/python -m pytest -q" and tests in ci


def test_training_and_evaluation_commands_parse(monkeypatch):
    """The long commands are checked, not run: each `train` line builds its TrainConfig and task,
    each `eval`/`study` line names an existing checkpoint option set and preset."""
    import sleepagent.train as train_pkg
    from sleepagent.train.studies import STUDIES
    from sleepagent.train.tasks import make_task

    seen = []
    monkeypatch.setattr(train_pkg, "train", lambda cfg, out, stop_at=None: seen.append(cfg) or
                        {"step": 0, "loss": None})
    text = block("bash", "Training").replace("\\\n", " ")
    lines = [line.split(" #")[0].strip() for line in text.splitlines() if line.strip().startswith("sleepagent")]
    for line in lines:
        args = shlex.split(line)[1:]
        if args[0] == "train":
            result = runner.invoke(app, args)
            assert result.exit_code == 0, (line, result.output)
            make_task(seen[-1].task, **seen[-1].task_kwargs)
        elif args[0] == "study":
            assert args[1] in STUDIES
        elif args[0] == "eval":
            assert runner.invoke(app, ["eval", "--help"]).exit_code == 0
            options = {a for a in args if a.startswith("--")}
            help_text = runner.invoke(app, ["eval", "--help"]).output
            assert all(o in help_text for o in options), options
    assert len(seen) == 4 and {c.loops for c in seen} == {1, 4}


def test_the_ray_command_names_real_options():
    """The Ray Serve command needs a cluster and PostgreSQL: its options are checked here, and the
    deployment itself runs in tests/serve/test_ray.py."""
    line = block("bash", "Serve it", contains="--ray").strip()
    args = shlex.split(line)
    help_text = runner.invoke(app, ["serve", "--help"]).output
    assert args[:2] == ["sleepagent", "serve"]
    assert all(a in help_text for a in args if a.startswith("--"))


def test_the_fine_tuning_block_runs_as_written(tmp_path):
    """The whole block, in a shell, as a reader would paste it (about a minute on 2 cores)."""
    import os
    import subprocess
    import sys

    code = block("bash", "Teach it to sleep")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-ec", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("qwen3_5") and "trained 20 steps" in out.stdout
    assert (tmp_path / "runs" / "tiny-qwen3_5-sleep" / "sleepagent.json").exists()
