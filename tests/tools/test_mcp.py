"""sleepagent.tools.mcp against a real MCP server (tests/tools/mcp_server.py, the mcp SDK's own
server) in a subprocess, over stdio and over streamable HTTP on a free loopback port."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

pytest.importorskip("mcp")

from sleepagent.tools import Tool, ToolCall, ToolRegistry
from sleepagent.tools.mcp import MCPConnectionError, MCPServerHTTP, MCPServerStdio, MCPTool

from sleepagent.errors import ConfigError, ToolError

SERVER = str(Path(__file__).with_name("mcp_server.py"))


def stdio_server(*args: str, **kw) -> MCPServerStdio:
    return MCPServerStdio(sys.executable, [SERVER, "stdio", *args], **kw)


def start_http_process(*args: str) -> tuple[subprocess.Popen, str]:
    """The test server on a port it picked itself; returns the process and its /mcp URL."""
    proc = subprocess.Popen([sys.executable, SERVER, "http", *args], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("PORT "):
                return proc, f"http://127.0.0.1:{int(line.split()[1])}/mcp"
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the MCP test server did not report its port")


@pytest.fixture(scope="module")
def http_url():
    proc, url = start_http_process()
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module", params=["stdio", "http"])
def server(request):
    """One running server per transport for the module, started from synchronous code: its tools
    then serve every test's own event loop (the connection has its own)."""
    srv = stdio_server(timeout=5) if request.param == "stdio" else MCPServerHTTP(
        request.getfixturevalue("http_url"), timeout=5)
    srv.start_sync()
    yield srv
    srv.stop_sync()


async def execute(registry: ToolRegistry, name: str, timeout: float | None = None, **arguments):
    return await registry.execute(ToolCall(name=name, arguments=arguments), timeout=timeout)


# --- listing ---------------------------------------------------------------------------------------


def test_the_servers_tools_become_sleepagent_tools(server):
    tools = {t.name: t for t in server.tools}
    assert {"add", "weather", "slow_echo", "fail", "files_read-all", "crash", "next_page"} <= set(tools)
    add = tools["add"]
    assert isinstance(add, Tool) and isinstance(add, MCPTool) and add.is_async
    assert add.description == "Add two integers." and add.remote_name == "add" and add.timeout == 5
    # the server's own schema, for the prompt and for validation
    assert add.json_schema["properties"]["a"]["type"] == "integer" and add.json_schema["required"] == ["a", "b"]
    assert add.spec()["function"] == {"name": "add", "description": "Add two integers.", "parameters": add.json_schema}
    assert add.args_model.model_json_schema() == add.json_schema
    # an MCP name a sleepagent name may not hold is made safe; calls still use the server's
    assert tools["files_read-all"].remote_name == "files.read-all"
    assert server.server_info.name == "sleepagent-test-server" and server.instructions == "Test tools."
    ToolRegistry(server.tools)  # what Agent(tools=server.tools) builds


# --- calls -----------------------------------------------------------------------------------------


async def test_calls_with_typed_arguments_and_structured_results(server):
    reg = ToolRegistry(server.tools)
    result = await execute(reg, "add", a=2, b=40)
    assert not result.is_error and result.content == "42"
    weather = await execute(reg, "weather", city="Oslo")
    assert json.loads(weather.content) == {"city": "Oslo", "temperature": 21, "units": "c"}
    assert (await execute(reg, "files_read-all")).content == "all of it"
    # Tool.call and a direct call, as for any @tool
    tools = {t.name: t for t in server.tools}
    assert await tools["add"].call({"a": 1, "b": 2}) == "3"
    assert await tools["add"](a=1, b=1) == "2"


async def test_bad_arguments_are_explained_to_the_model_before_anything_is_sent(server):
    reg = ToolRegistry(server.tools)
    missing = await execute(reg, "add", a=1)
    assert missing.is_error and missing.error_kind == "invalid_arguments"
    assert missing.content == "invalid arguments for tool 'add': b: missing required argument"
    wrong = await execute(reg, "add", a="one", b=2)
    assert wrong.error_kind == "invalid_arguments"
    assert wrong.content == "invalid arguments for tool 'add': a: Input should be a valid integer, got \"one\""
    enum = await execute(reg, "weather", city="Oslo", units="k")
    assert enum.error_kind == "invalid_arguments" and 'one of "c", "f"' in enum.content
    with pytest.raises(Exception) as info:  # Tool.call raises what the registry reports
        await reg["add"].call({"a": 1})
    assert type(info.value).__name__ == "ValidationError"


async def test_a_tool_error_becomes_a_tool_error_result(server):
    reg = ToolRegistry(server.tools)
    result = await execute(reg, "fail", message="the disk is full")
    assert result.is_error and result.error_kind == "tool_exception"
    assert result.content.startswith("tool 'fail' failed: ") and "the disk is full" in result.content
    with pytest.raises(ToolError, match="the disk is full"):
        await server.call_tool("fail", {"message": "the disk is full"})
    # a protocol-level answer for a name the server does not have
    with pytest.raises(ToolError, match="nope"):
        await server.call_tool("nope", {})


async def test_a_slow_call_completes_and_a_call_past_its_timeout_becomes_a_timeout_result(server):
    reg = ToolRegistry(server.tools)
    started = time.perf_counter()
    slow = await execute(reg, "slow_echo", text="hi", delay=0.3)
    assert slow.content == "hi" and slow.elapsed_s >= 0.3
    late = await execute(reg, "slow_echo", timeout=0.2, text="hi", delay=3)
    assert late.is_error and late.error_kind == "timeout" and late.elapsed_s < 2
    assert late.content == "tool 'slow_echo' timed out after 0.2 s"
    # the server was told to cancel; the connection is intact
    assert (await execute(reg, "add", a=1, b=2)).content == "3" and server.running
    assert time.perf_counter() - started < 2.5


async def test_the_agents_concurrent_calls_overlap_on_one_connection(server):
    reg = ToolRegistry(server.tools)
    started = time.perf_counter()
    results = [None, None]

    async def one(i: int) -> None:
        results[i] = await execute(reg, "slow_echo", text=str(i), delay=0.5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, 0)
        tg.start_soon(one, 1)
    assert [r.content for r in results] == ["0", "1"]
    assert time.perf_counter() - started < 0.95  # not one after the other (1.0 s)


# --- failures of the server itself -------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_crashed_server_becomes_tool_error_results_and_start_reconnects(transport):
    proc = None
    if transport == "stdio":
        srv = stdio_server()
    else:
        proc, url = start_http_process()
        srv = MCPServerHTTP(url)
    try:
        await srv.start()
        reg = ToolRegistry(srv.tools)
        if transport == "stdio":
            crashed = await execute(reg, "crash")  # the process exits in the middle of the call
        else:
            proc.kill()
            proc.wait()
            crashed = await execute(reg, "add", a=1, b=2)
        assert crashed.is_error and crashed.error_kind == "tool_exception"
        assert "closed the connection" in crashed.content
        assert not srv.running
        again = await execute(reg, "add", a=1, b=2)
        assert again.is_error and "closed the connection" in again.content
        if transport == "stdio":
            await srv.start()  # a new process; the registry's tool objects work again
            assert srv.running and (await execute(reg, "add", a=1, b=2)).content == "3"
    finally:
        await srv.stop()
        if proc is not None:
            proc.kill()
            proc.wait()


async def test_a_server_that_cannot_be_reached_fails_start_with_a_typed_error():
    with pytest.raises(MCPConnectionError, match="cannot start MCP server 'no-such-command'") as info:
        await MCPServerStdio("/nonexistent/no-such-command").start()
    assert isinstance(info.value, ToolError)
    with pytest.raises(MCPConnectionError, match="cannot start"):
        await MCPServerHTTP("http://127.0.0.1:9/mcp", connect_timeout=5).start()  # the discard port: refused
    with pytest.raises(MCPConnectionError, match=r"did not answer within 0.5 s"):
        await MCPServerStdio(sys.executable, ["-c", "import time; time.sleep(30)"], connect_timeout=0.5).start()


# --- lifetime ----------------------------------------------------------------------------------------


def test_lifetime_is_idempotent_and_not_tied_to_one_task_or_event_loop():
    srv = stdio_server(include=["add"])
    with pytest.raises(ConfigError, match="never started"):
        _ = srv.tools
    srv.stop_sync()  # stopping a server that never started: nothing to do

    async def start_twice() -> list[MCPTool]:
        await srv.start()
        first = srv.tools
        await srv.start()  # running: a no-op
        assert srv.tools == first
        return first

    tools = anyio.run(start_twice)  # started in one event loop...
    assert [t.name for t in tools] == ["add"]  # include: only what was asked for
    reg = ToolRegistry(tools)
    assert anyio.run(execute, reg, "add", None).error_kind == "invalid_arguments"
    assert anyio.run(lambda: execute(reg, "add", a=3, b=4)).content == "7"  # ...used from others
    anyio.run(srv.stop)  # ...and stopped from yet another
    assert not srv.running
    stopped = anyio.run(lambda: execute(reg, "add", a=3, b=4))
    assert stopped.is_error and "is not running" in stopped.content
    anyio.run(srv.stop)  # idempotent


async def test_async_with_nests_and_the_outermost_exit_stops():
    srv = stdio_server(prefix="calc", include=["add", "files.read-all"])
    async with srv as entered:
        assert entered is srv
        assert [t.name for t in srv.tools] == ["calc_add", "calc_files_read-all"]
        async with srv:
            pass
        assert srv.running
        assert await ToolRegistry(srv.tools)["calc_add"].call({"a": 1, "b": 1}) == "2"
    assert not srv.running


async def test_include_must_name_tools_the_server_has():
    with pytest.raises(ConfigError, match="has no tool named 'subtract'"):
        await stdio_server(include=["add", "subtract"]).start()
    with pytest.raises(ConfigError, match="prefix"):
        stdio_server(prefix="has space")
    with pytest.raises(ConfigError, match="url"):
        MCPServerHTTP("127.0.0.1:8000/mcp")
