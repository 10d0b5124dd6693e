"""Every code block of the README runs as written, and shows what the README says it shows.

The README is the front door: install, the tests, three short examples, links. Its Python blocks
run as they are, on the shipped model, each with a fresh temporary directory as its working
directory; the server block runs against a server the test starts on a free port instead of the
reader's port 8000 (the one swap, marked below). The install and test commands are what .ci/run
runs. How every other block of the docs is checked, and the registry of all blocks: test_docs.py.
"""

from __future__ import annotations

import pytest

from tests.test_docs import ROOT, block, blocks_of, root_unchanged, run_python, scratch  # noqa: F401 (fixtures)

README = "README.md"


def test_the_agent_in_ten_lines_calls_the_tool_and_answers(scratch):
    ns, out = run_python(block(README, "python", "An agent in ten lines"), README)
    result = ns["result"]
    assert result.usage.tool_calls >= 1 and [m.role for m in result.messages][:3] == ["user", "assistant", "tool"]
    assert result.output == "Done." and out.startswith("Done.")
    assert result.sleep.sleeps >= 1 and result.sleep.sleep_s_hidden > 0  # it slept during the tool's latency


def test_langchain_in_ten_lines_replies_with_a_tool_call(scratch):
    ns, out = run_python(block(README, "python", "LangChain in ten lines"), README)
    reply = ns["reply"]
    assert [c["name"] for c in reply.tool_calls] == ["next_page"]
    assert reply.usage_metadata["input_tokens"] > 0 and "next_page" in out


def test_the_server_snippet_against_a_running_server(scratch):
    pytest.importorskip("fastapi")
    from sleepagent.serve import ServeConfig, serve_in_background

    serve_cmd = block(README, "bash", "Serve it", contains="--no-auth")
    assert serve_cmd.strip() == "sleepagent serve --model docqa-small --no-auth --port 8000 &"
    code = block(README, "python", "Serve it")
    with serve_in_background(ServeConfig(model="docqa-small", no_auth=True)) as url:
        # placeholder swap: the reader's server listens on 8000, this one on a free port
        ns, out = run_python(code.replace("http://127.0.0.1:8000/v1", url), README)
    done = ns["done"]
    assert done.choices[0].message.content == "Done." and out.startswith("Done.")
    assert done.model_extra["session"]["status"] == "reused"
    uncached = done.usage.prompt_tokens - done.usage.prompt_tokens_details.cached_tokens
    assert 0 < uncached < 100  # the tool result only


def test_quickstart_commands_are_what_ci_runs():
    install, tests = (b.code.strip() for b in blocks_of(ROOT / README)[:2])
    ci = (ROOT / ".ci" / "run").read_text()
    one_line, activate = install.splitlines()
    assert one_line == ("python3 -m venv .venv && .venv/bin/pip install -c constraints/cpu.txt -e '.[dev,serve]' "
                        "&& .venv/bin/sleepagent demo")
    assert "-c constraints/cpu.txt -e '.[dev," in ci
    # every later block uses bare `sleepagent` and `python`: the environment is activated
    assert activate.split("#")[0].strip() == "source .venv/bin/activate"
    assert tests == ".venv/bin/python -m pytest -q" and tests in ci
