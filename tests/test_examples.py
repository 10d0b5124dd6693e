"""Every example runs (short settings, the small random model)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> dict:
    sys.path.insert(0, str(EXAMPLES))
    try:
        return runpy.run_path(str(EXAMPLES / name), run_name="example")
    finally:
        sys.path.pop(0)


async def test_persisted_session_example(tmp_path, capsys):
    example = load("persisted_session.py")
    outputs = await example["main"](f"sqlite:///{tmp_path / 's.db'}", None, "ex")
    assert len(outputs) == 2
    assert "snapshot(s) stored" in capsys.readouterr().out


def test_langchain_example(capsys):
    example = load("langchain_agent.py")
    messages = example["main"](None, max_rounds=2)
    assert messages[0].type == "system" and messages[2].type == "ai"
    assert "human" in capsys.readouterr().out


async def test_hf_hybrid_example_on_a_tiny_qwen3_5(capsys):
    example = load("hf_hybrid_agent.py")
    report = await example["main"](None, window=1024, loops=2, device=None, tiny=True)
    assert report["answer"] == "The answer is 391."
    assert report["sleeps"] >= 1 and report["sleep_s_exposed"] == 0 < report["sleep_s_hidden"]
    assert "fast_weight_bytes" in capsys.readouterr().out


async def test_long_document_qa_example_on_a_users_file(tmp_path, capsys):
    doc = tmp_path / "notes.txt"
    doc.write_text(" ".join(f"Line {i}: the meeting room {i} has {i * 3} chairs." for i in range(40)))
    example = load("long_document_qa.py")
    report = await example["main"](str(doc), ["How many chairs are in room 7?", "Which room is largest?"],
                                   latency=0.1)
    # how many pages the model chooses to read is up to the model; the mechanics are not
    assert report["pages"] > 3 and 1 <= report["pages_read"] <= report["pages"]
    assert report["most_tokens_in_window"] <= report["window"]
    assert report["sleeps"] >= 1 and len(report["answers"]) == 2
    assert "read page" in capsys.readouterr().out


async def test_mcp_agent_example(capsys):
    pytest.importorskip("mcp")
    example = load("mcp_agent.py")
    report = await example["main"]()  # a generated document, served by mcp_document_server.py over stdio
    assert report["output"] == "Done." and report["pages_read"] >= 2 and report["sleeps"] >= 1
    assert report["sleep_s_total"] > 0 and report["hidden_fraction"] >= 0.95  # slept while pages were on their way
    assert len(report["answers"]) == 2
    assert "[page 1/" in capsys.readouterr().out
