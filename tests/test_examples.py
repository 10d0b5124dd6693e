"""Every example runs as written, on the shipped model, and does what its docstring says.

Each test calls the example's ``main`` with the defaults its command line uses (a shorter tool
latency where the example simulates one), in a temporary working directory. hf_hybrid_agent.py
needs a transformers checkpoint: it runs with ``--tiny`` (a tiny random qwen3_5, scripted turns),
as its docstring says. Every example's command line parses (``--help``).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from tests.test_docs import root_unchanged, scratch  # noqa: F401 (fixtures)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> dict:
    sys.path.insert(0, str(EXAMPLES))
    try:
        return runpy.run_path(str(EXAMPLES / name), run_name="example")
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_docstring_and_a_command_line(name, monkeypatch, capsys):
    source = (EXAMPLES / name).read_text()
    assert source.startswith('"""') and "python examples/" in source.split('"""')[1]  # how to run it
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    sys.path.insert(0, str(EXAMPLES))
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.path.pop(0)
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_langchain_example_reads_through_the_paging_tool_and_answers(scratch, capsys):
    example = load("langchain_agent.py")
    report = example["main"](latency=0.05)
    messages = report["messages"]
    assert [m.type for m in messages[:2]] == ["human", "ai"] and messages[1].tool_calls[0]["name"] == "next_page"
    assert report["finished"] and report["pages_read"] == report["pages"] >= 2  # every page, via tool calls
    assert sum(m.type == "tool" for m in messages) == report["pages"]
    assert report["read_reply"] == "Done." and report["sleeps_after_reading"] >= 1
    assert len(report["answers"]) == 4 and report["right"] >= 3  # 4/4 when written; 1-hop is 0.999 on 6 places
    assert "next_page() -> [page 1/" in capsys.readouterr().out


async def test_persisted_session_example_resumes_in_a_new_agent_and_answers(scratch, capsys):
    example = load("persisted_session.py")
    report = await example["main"](latency=0.05)  # the default store: sqlite:///sessions.db, here in scratch
    assert (scratch / "sessions.db").exists()
    assert report["read"] == "Done." and report["pages_read"] == report["pages"]
    assert report["snapshots"] >= 1 and report["resumed_from"] is not None
    assert len(report["answers"]) == 4 and report["right"] >= 3  # 4/4 when written, from the restored state
    assert "snapshot(s) stored" in capsys.readouterr().out


async def test_hf_hybrid_example_on_a_tiny_qwen3_5(scratch, capsys):
    example = load("hf_hybrid_agent.py")
    report = await example["main"](None, window=1024, loops=2, device=None, tiny=True)
    assert report["answer"] == "The answer is 391."
    assert report["sleeps"] >= 1 and report["sleep_s_hidden"] > 0
    assert "fast_weight_bytes" in capsys.readouterr().out


async def test_long_document_qa_example_on_a_users_file(scratch, capsys):
    doc = scratch / "notes.txt"
    doc.write_text(" ".join(f"Line {i}: the meeting room {i} has {i * 3} chairs." for i in range(40)))
    example = load("long_document_qa.py")
    report = await example["main"](str(doc), ["How many chairs are in room 7?", "Which room is largest?"],
                                   latency=0.1)
    # how many pages the model chooses to read is up to the model; the mechanics are not
    assert report["pages"] > 3 and 1 <= report["pages_read"] <= report["pages"]
    assert report["most_tokens_in_window"] <= report["window"]
    assert report["sleeps"] >= 1 and len(report["answers"]) == 2
    assert "read page" in capsys.readouterr().out


async def test_mcp_agent_example(scratch, capsys):
    pytest.importorskip("mcp")
    example = load("mcp_agent.py")
    report = await example["main"]()  # a generated document, served by mcp_document_server.py over stdio
    assert report["output"] == "Done." and report["pages_read"] >= 2 and report["sleeps"] >= 1
    # slept while pages were on their way (how much of it: the example prints its hidden fraction)
    assert report["sleep_s_total"] > 0 and report["hidden_fraction"] > 0
    assert len(report["answers"]) == 2
    assert "[page 1/" in capsys.readouterr().out
