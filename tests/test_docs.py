"""Every code block of the README and the docs is checked, and the docs site is consistent.

Each ```python and ```bash block (and any unlabelled one) of README.md and docs/**/*.md (not
docs/studies/notes/: fragments of the generated study pages) is listed in BLOCKS below with how
it is checked:

- run:    a test runs it as written, with a fresh temporary directory as its working directory
          (a block never writes into the repository); where a CPU test machine lacks what the
          block needs (a checkpoint on a GPU, port 8000), the test swaps a placeholder and says so;
- same:   character for character a block that is run (the docs repeat the README's examples);
- parsed: NOT RUN: hours of training, a GPU, a Ray cluster with PostgreSQL, or a package that is
          no dependency; every command is parsed and each option, preset, module and script it
          names is checked;
- sketch: NOT RUN: an API outline with placeholder names; the names it uses are checked to exist;
- ci:     the install and test commands, which .ci/run runs (test_quickstart_commands_are_what_ci_runs).

The README's own blocks are run by tests/test_readme.py; the rest here. A page that gains a block
that is not listed fails test_every_block_is_listed. The one-minute fine-tuning block is marked
slow (it still runs in CI). The repository root must hold the same entries after these tests as
before (`root_unchanged`, also used by test_readme.py and test_examples.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sleepagent.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
runner = CliRunner(env={"COLUMNS": "200"})

CODE_LANGS = {"", "python", "py", "bash", "sh", "shell", "console"}
# pytest's own cache may appear in the root when a run starts; nothing else may
ROOT_CACHES = {".pytest_cache", "__pycache__"}


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    lang: str
    heading: str  # the nearest heading above it
    code: str


def pages() -> list[Path]:
    return [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if "notes" not in p.relative_to(DOCS).parts)


def blocks_of(page: Path) -> list[Block]:
    out, heading = [], ""
    text = page.read_text()
    for m in re.finditer(r"^(#+ [^\n]*)$|^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
        if m.group(1):
            heading = m.group(1)
        else:
            out.append(Block(str(page.relative_to(ROOT)), m.group(2), heading, m.group(3)))
    return out


def code_blocks() -> list[Block]:
    return [b for p in pages() for b in blocks_of(p) if b.lang in CODE_LANGS]


def block(page: str, lang: str, heading_words: str, contains: str = "") -> str:
    """The code of the one ```lang block of ``page`` under a heading with ``heading_words`` that
    contains ``contains``."""
    found = [b.code for b in blocks_of(ROOT / page) if b.lang == lang and heading_words in b.heading
             and contains in b.code]
    assert (
        len(found) == 1
    ), f"{page}: expected one {lang} block under {heading_words!r} with {contains!r}, found {len(found)}"
    return found[0]


def run_python(code: str, filename: str) -> tuple[dict, str]:
    """exec a Python block as a reader would run it, capturing what it prints."""
    namespace: dict = {"__name__": "docs_block"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, filename, "exec"), namespace)
    return namespace, out.getvalue()


def run_bash(code: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """A bash block in a shell, with the environment of the Quickstart active (`python` and
    `sleepagent` are this environment's)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-ec", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A block's working directory: a fresh temporary directory, never the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module", autouse=True)
def root_unchanged():
    """No block, example or test leaves a file in the repository root (sessions.db, plots/,
    s.safetensors, tiny-qwen3_5/, runs/ ... all belong in a temporary directory)."""
    before = set(os.listdir(ROOT))
    yield
    new = set(os.listdir(ROOT)) - before - ROOT_CACHES
    assert not new, f"left in the repository root: {sorted(new)}"


# --- the registry ---------------------------------------------------------------------------------

# (page, lang, heading words, a line it contains) -> how it is checked
BLOCKS: list[tuple[str, str, str, str, str]] = [
    ("README.md", "bash", "Quickstart", "python3 -m venv", "ci"),
    ("README.md", "bash", "Quickstart", "pytest", "ci"),
    ("README.md", "python", "An agent in ten lines", "", "run: test_readme.py"),
    ("README.md", "bash", "Serve it", "--no-auth", "run: test_readme.py (a server on a free port)"),
    ("README.md", "python", "Serve it", "", "run: test_readme.py (base_url swapped to that server)"),
    ("README.md", "python", "LangChain in ten lines", "", "run: test_readme.py"),
    ("docs/index.md", "bash", "Install", "python3 -m venv", "same: README Quickstart"),
    ("docs/index.md", "bash", "Install", "pytest", "same: README Quickstart"),
    ("docs/index.md", "bash", "Install", "mkdocs serve", "ci: .ci/run installs the docs extra and builds the site"),
    ("docs/guides/agents.md", "python", "An agent in ten lines", "", "same: README"),
    ("docs/guides/agents.md", "python", "LangChain in ten lines", "", "same: README"),
    ("docs/guides/serving.md", "bash", "Start it", "--no-auth", "same: README"),
    ("docs/guides/serving.md", "python", "Start it", "", "same: README"),
    (
        "docs/guides/serving.md",
        "bash",
        "Ray Serve",
        "--ray",
        "parsed: a Ray cluster and PostgreSQL (tests/serve/test_ray.py runs the deployment)",
    ),
    ("docs/guides/scaling.md", "bash", "Scaling out", "--ray", "parsed: a Ray cluster and PostgreSQL"),
    ("docs/guides/memory.md", "python", "Memory that persists", "", "run: twice"),
    ("docs/guides/memory.md", "bash", "Memory that persists", "snapshots", "run"),
    ("docs/guides/transformers.md", "python", "Transformers hybrids", "", "run: a tiny random qwen3_5 on the CPU"),
    ("docs/guides/transformers.md", "bash", "Teach it to sleep", "", "run (slow)"),
    ("docs/guides/finetune.md", "bash", "", "BASE=", "parsed: a real checkpoint on a GPU"),
    ("docs/guides/training.md", "bash", "Commands", "sleepagent train", "parsed: hours of CPU or a GPU"),
    ("docs/guides/training.md", "bash", "Commands", "scripts/", "parsed: a GPU, from a checkout"),
    ("docs/guides/constrained-decoding.md", "bash", "", "compare_grammar_engines.py", "parsed: needs xgrammar"),
    ("docs/guides/constrained-decoding.md", "python", "API", "", "sketch"),
    ("docs/guides/constrained-decoding.md", "python", "From the decoding loop", "picker", "sketch"),
    ("docs/guides/constrained-decoding.md", "python", "From the decoding loop", "emitted = []", "sketch"),
    ("docs/guides/constrained-decoding.md", "python", "Overhead per token", "", "run: fewer tokens"),
]


def _matches(b: Block, entry: tuple[str, str, str, str, str]) -> bool:
    page, lang, heading, contains, _ = entry
    return b.page == page and b.lang == lang and heading in b.heading and contains in b.code


def test_every_block_is_listed():
    unlisted = [b for b in code_blocks() if sum(_matches(b, e) for e in BLOCKS) != 1]
    assert (
        not unlisted
    ), "a code block is not listed (or matches several entries) in tests/test_docs.py BLOCKS: " + "; ".join(
        f"{b.page} under {b.heading!r}: {b.code.splitlines()[0][:60]!r}" for b in unlisted
    )
    missing = [e for e in BLOCKS if not any(_matches(b, e) for b in code_blocks())]
    assert not missing, f"listed but gone: {missing}"


def test_the_docs_repeat_the_readme_examples_exactly():
    for page, lang, heading, contains, how in BLOCKS:
        if how.startswith("same: README"):
            readme_heading = {"Start it": "Serve it", "Install": "Quickstart"}.get(heading, heading)
            assert block(page, lang, heading, contains) == block("README.md", lang, readme_heading, contains), page


# --- docs/guides/memory.md -------------------------------------------------------------------------

def test_the_memory_block_twice_then_every_snapshot_command(scratch):
    page = "docs/guides/memory.md"
    code = block(page, "python", "Memory that persists")
    _, first = run_python(code, page)
    _, second = run_python(code, page)  # the page: "after a second run of the snippet (it resumes)"
    assert first.startswith("None") and second.startswith("ResumeInfo(snapshot_id=")
    from sleepagent.storage import SnapshotStore

    with SnapshotStore("sqlite:///sessions.db") as store:
        ids = [s.id for s in store.list_snapshots("alice-1", tenant="alice")]
        assert len(ids) >= 2 and ids[:2] == [1, 2]  # what the commands below name
        for payload in (store.load(i, tenant="alice")[1] for i in ids):
            assert b"hunter2" not in payload and b"1234" not in payload
    commands = [line.split("#")[0].strip() for line in block(page, "bash", "Memory that persists").splitlines()]
    for line in filter(None, commands):
        args = shlex.split(line)
        assert args[0] == "sleepagent"
        result = runner.invoke(app, args[1:])
        assert result.exit_code == 0, (line, result.output)
    assert (scratch / "s.safetensors").stat().st_size > 0 and list((scratch / "plots").glob("*.png"))
    with SnapshotStore("sqlite:///sessions.db") as store:
        assert store.list_sessions(tenant="alice") == []  # the last command erased it


# --- docs/guides/transformers.md -------------------------------------------------------------------

def test_the_transformers_block_on_a_tiny_random_qwen3_5(scratch):
    from sleepagent.model.hf_tiny import save_tiny_hybrid

    path = save_tiny_hybrid(scratch / "qwen", "qwen3_5")
    code = block("docs/guides/transformers.md", "python", "Transformers hybrids")
    # placeholder swap: the reader's checkpoint on a GPU -> a tiny random qwen3_5 (4 layers) on the CPU
    for old, new in (('"/models/Qwen3.5-2B"', repr(str(path))), ('device="cuda"', "device=None"),
                     ("window=4096", "window=256"), ("loop_layers=(8, 24)", "loop_layers=(1, 3)")):
        assert old in code
        code = code.replace(old, new)
    ns, out = run_python(code, "docs/guides/transformers.md")
    assert ns["sm"].config.loop_layers == (1, 3) and ns["agent"].model is ns["sm"]
    assert "Usage(" in out  # it ran a turn (a random model's text means nothing)


@pytest.mark.slow
@pytest.mark.timeout(900)  # a minute on 2 idle cores; several times that beside a training job
def test_the_fine_tuning_block_runs_as_written(tmp_path):
    """The whole block, in a shell, as a reader would paste it (about a minute on 2 cores)."""
    out = run_bash(block("docs/guides/transformers.md", "bash", "Teach it to sleep"), tmp_path, timeout=880)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("qwen3_5") and "trained 20 steps" in out.stdout
    assert (tmp_path / "runs" / "tiny-qwen3_5-sleep" / "sleepagent.json").exists()


# --- parsed, not run: training, GPUs, clusters ---------------------------------------------------

def command_lines(code: str) -> list[str]:
    """The block's commands: continuation lines joined, comments dropped."""
    text = code.replace("\\\n", " ")
    return [
        line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")
    ]


def options_exist(args: list[str]) -> None:
    """Every --option of `sleepagent <command> ...` is one its --help lists."""
    command = [a for a in args if not a.startswith("-")][:1]
    help_text = runner.invoke(app, [*command, "--help"]).output
    options = {a.split("=")[0] for a in args if a.startswith("--")}
    assert options and all(o in help_text for o in options), (args, options)


def test_training_and_evaluation_commands_parse(scratch, monkeypatch):
    """NOT RUN (hours of CPU, or a GPU): each `train` line builds its TrainConfig and task, each
    `study` names a preset, each `eval` option exists, each `python -m` module imports."""
    import sleepagent.train as train_pkg
    from sleepagent.train.studies import STUDIES
    from sleepagent.train.tasks import make_task

    seen = []
    monkeypatch.setattr(
        train_pkg, "train", lambda cfg, out, stop_at=None: seen.append(cfg) or {"step": 0, "loss": None}
    )
    lines = command_lines(block("docs/guides/training.md", "bash", "Commands", "sleepagent train"))
    for line in lines:
        args = shlex.split(line)
        if args[0] == "python":
            assert args[1] == "-m" and importlib.util.find_spec(args[2]) is not None, line
            continue
        assert args[0] == "sleepagent", line
        if args[1] == "train":
            result = runner.invoke(app, args[1:])
            assert result.exit_code == 0, (line, result.output)
            make_task(seen[-1].task, **seen[-1].task_kwargs)
        elif args[1] == "study":
            assert args[2] in STUDIES, line
            options_exist(args[1:])
        else:
            assert args[1] == "eval", line
            options_exist(args[1:])
    assert len(seen) == 4 and {c.loops for c in seen} == {1, 4}


def test_the_checkout_scripts_exist_and_name_real_studies():
    """NOT RUN (a GPU, or the shipped model's training runs): the scripts and studies they name exist."""
    from sleepagent.train.studies import STUDIES

    for line in command_lines(block("docs/guides/training.md", "bash", "Commands", "scripts/")):
        args = shlex.split(line)
        env = dict(a.split("=", 1) for a in args if re.match(r"^[A-Z]+=", a))
        cmd = [a for a in args if not re.match(r"^[A-Z]+=", a)]
        assert cmd[0] in ("python", "bash") and (ROOT / cmd[1]).is_file(), line
        if "STUDIES" in env:
            assert all(s in STUDIES for s in env["STUDIES"].split()), line


def test_the_ray_commands_name_real_options():
    """NOT RUN (a Ray cluster and PostgreSQL; tests/serve/test_ray.py runs the deployment): the
    `sleepagent serve --ray` options exist, and `serve run`'s import path and arguments are real."""
    from sleepagent.serve.app import ServeConfig

    lines = command_lines(block("docs/guides/serving.md", "bash", "Ray Serve", "--ray"))
    lines += command_lines(block("docs/guides/scaling.md", "bash", "Scaling out", "--ray"))
    for line in lines:
        args = shlex.split(line)
        if args[0] == "sleepagent":
            assert args[1] == "serve"
            options_exist(args[1:])
        else:
            assert args[:2] == ["serve", "run"]
            module, attr = args[2].split(":")
            source = importlib.util.find_spec(module).origin
            assert f"def {attr}(" in Path(source).read_text(), args[2]
            keys = {a.split("=", 1)[0] for a in args[3:]}
            assert keys <= set(ServeConfig.model_fields) | {"replicas", "num_cpus"}, keys


def test_the_gpu_fine_tuning_recipe_names_real_options():
    """NOT RUN (a Qwen3.5 checkpoint on a GPU): its task settings build the gsm_inf task, and every
    option of its `train` and `eval` lines exists."""
    from sleepagent.train.tasks import make_task

    code = block("docs/guides/finetune.md", "bash", "", "BASE=")
    task = json.loads(re.search(r"^TASK='(.*)'$", code, re.M).group(1))
    make_task("gsm_inf", **task)
    lines = [line for line in command_lines(code) if line.startswith("sleepagent")]
    for line in lines:
        options_exist(shlex.split(line)[1:])
    assert {shlex.split(line)[1] for line in lines} == {"train", "eval"}


def test_the_grammar_engine_comparison_names_real_options(capsys, monkeypatch):
    """NOT RUN (needs xgrammar, which is no dependency): the script's --help lists every option used."""
    import runpy

    lines = command_lines(block("docs/guides/constrained-decoding.md", "bash", "", "compare_grammar_engines.py"))
    script = ROOT / shlex.split(lines[0])[1]
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(script), run_name="__main__")
    help_text = capsys.readouterr().out
    for line in lines:
        assert all(a in help_text for a in shlex.split(line) if a.startswith("--")), line


# --- docs/guides/constrained-decoding.md ---------------------------------------------------------

def test_the_constrained_decoding_sketches_name_real_api():
    """NOT RUN (placeholders: tok, schema, params, engine, session, logits, pick): the API outline,
    the decoding-loop call and the loop contract; their import line runs, and every name they call
    exists."""
    import sleepagent.runtime as runtime
    from sleepagent.runtime import grammar
    from sleepagent.tokenizer import ByteTokenizer

    page = "docs/guides/constrained-decoding.md"
    api = block(page, "python", "API")
    exec(compile(next(line for line in api.splitlines() if line.startswith("from ")), page, "exec"), {})
    sketches = api + block(page, "python", "From the decoding loop", "picker") + block(
        page, "python", "From the decoding loop", "emitted = []")
    for name in ("json_constraint", "tool_call_constraint"):
        assert name in sketches and callable(getattr(grammar, name))
    for name in ("Sampler", "generate_turn"):
        assert name in sketches and hasattr(runtime, name)
    c = grammar.json_constraint(ByteTokenizer(), {"type": "object"}, max_tokens=64)
    for member in ("apply", "end_ids", "is_complete"):
        assert f".{member}" in sketches and hasattr(c, member)


def test_the_overhead_block_on_fewer_tokens(scratch):
    code = block("docs/guides/constrained-decoding.md", "python", "Overhead per token")
    # placeholder swap: 512 tokens x 5 rounds is a measurement; 64 x 1 shows the same call works
    assert "tokens=512, repeats=5" in code
    code = code.replace("tokens=512, repeats=5", "tokens=64, repeats=1")
    code = code.replace("bench_constrained(", "result = bench_constrained(")
    ns, _ = run_python(code, "docs/guides/constrained-decoding.md")
    assert ns["result"]["constrained_ms_per_token"] > 0 and ns["result"]["ratio"] > 0


# --- the site ------------------------------------------------------------------------------------

def nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_the_site_nav_lists_every_page_and_the_api():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    on_disk = {str(p.relative_to(DOCS)) for p in pages() if p.is_relative_to(DOCS)}
    assert set(listed) == on_disk, (set(listed) ^ on_disk)
    api = " ".join((DOCS / "api" / p).read_text() for p in os.listdir(DOCS / "api"))
    for module in ("sleepagent.Agent", "sleepagent.SleepModel", "sleepagent.SleepPolicy", "sleepagent.MemoryPolicy",
                   "sleepagent.errors", "sleepagent.runtime", "sleepagent.tools", "sleepagent.tools.mcp",
                   "sleepagent.storage", "sleepagent.langchain", "sleepagent.serve"):
        assert f"::: {module}\n" in api, module


def test_ci_builds_the_site_strictly_after_the_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^docs = \[.*mkdocs-material.*mkdocstrings\[python\]", pyproject, re.M)
    tests = ci.index(".venv/bin/python -m pytest -q")
    build = ci.index(".venv/bin/mkdocs build --strict --site-dir")
    assert "docs]" in ci[:build] and tests < build
    assert {"site/", "/site/"} & set((ROOT / ".gitignore").read_text().split())


def test_links_between_pages_resolve():
    """Relative links in the README and the docs point at files that exist (mkdocs build --strict
    checks the docs again, in CI)."""
    broken = []
    for page in pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_readme_stays_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move details to a docs page"
