"""End to end: the shipped docqa-small reads a document page by page through a real MCP server's
paging tool, and sleeps while each page is on its way; the Agent owns the server's lifetime (it
starts a server it finds stopped, before the system turn, and stops it on close), and leaves a
server the caller entered alone."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("mcp")

from sleepagent.tools import DocumentReader
from sleepagent.tools.mcp import MCPServerHTTP, MCPServerStdio

from sleepagent import Agent, SleepModel, SleepPolicy, tool
from sleepagent.demo import DEMO_MODEL, task_min_fill
from sleepagent.testing import TestModel, tool_call
from sleepagent.train.docqa_eval import held_out_sessions

from .test_mcp import SERVER, start_http_process, stdio_server

# Each page takes this long to arrive. A pause sleep (4 passes over a ~150-token window) takes
# ~0.05 s on an idle CPU and ~0.2 s on this project's busy 2-core machines: the latency covers it
# with room, so the hidden fraction below is a ratio of sleep time, not a race.
LATENCY = 0.5


@pytest.fixture(scope="module")
def sm() -> SleepModel:
    return SleepModel.from_pretrained(DEMO_MODEL)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_docqa_small_reads_through_an_mcp_paging_tool_and_sleeps_in_its_latency(sm, transport, tmp_path):
    doc = held_out_sessions(1, 12, 1, seed=7)[0].documents[0]
    reader = DocumentReader.from_text(doc, page_chars=112)  # pages as the model was trained on
    pages = [reader.render_page(i) for i in range(1, reader.page_count + 1)]
    (tmp_path / "pages.json").write_text(json.dumps(pages))
    args = ["--pages", str(tmp_path / "pages.json"), "--latency", str(LATENCY)]
    proc = None
    if transport == "stdio":
        server = MCPServerStdio(sys.executable, [SERVER, "stdio", *args], include=["next_page"])
    else:
        proc, url = start_http_process(*args)
        server = MCPServerHTTP(url, include=["next_page"])
    try:
        # the server itself, not its tools: the agent starts it on first use and stops it on close
        agent = Agent(sm, tools=[server], max_steps=len(pages) + 3, max_tokens=64,
                      sleep=SleepPolicy(loops=4, min_fill=task_min_fill(sm)))
        try:
            assert not server.running and list(agent.tools) == []
            result = await agent.run("Read the document.")
            assert server.running and list(agent.tools) == ["next_page"]
        finally:
            agent.close()
        assert not server.running
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()

    assert result.output == "Done."
    assert [m.content for m in result.messages if m.role == "tool"] == pages  # every page, in order
    assert not any(m.is_error for m in result.messages)
    stats = result.sleep
    assert stats.sleeps >= len(pages) - 1 and stats.forced_sleeps == 0 and stats.sleep_s_total > 0
    assert stats.sleep_s_hidden > 0, stats  # slept while a call was in flight (the share: examples/mcp_agent.py)


@tool
def double(x: int) -> int:
    """Double x."""
    return 2 * x


async def test_the_agent_stops_the_server_it_started_and_leaves_the_one_entered_by_the_caller():
    owned = stdio_server(include=["add"])
    entered = stdio_server(include=["weather"], prefix="w")
    async with entered:
        model = TestModel([tool_call("add", a=2, b=3) + tool_call("w_weather", city="Oslo") + tool_call("double", x=4),
                           "Done."])
        agent = Agent(model, tools=[double, owned, entered])
        assert list(agent.tools) == ["double", "w_weather"]  # a stopped server has no tools yet
        async with agent.session() as session:  # the system turn lists every tool: the server starts first
            result = await session.run("Add, look, double.")
        assert list(agent.tools) == ["double", "add", "w_weather"]
        outputs = [m for m in result.messages if m.role == "tool"]
        assert [m.content for m in outputs][::2] == ["5", "8"] and not any(m.is_error for m in outputs)
        agent.close()
        assert not owned.running and entered.running
    assert not entered.running
