"""A small real MCP server for the tests of ``sleepagent.tools.mcp``, built on the mcp SDK.

    python mcp_server.py stdio [--pages FILE] [--latency S]
    python mcp_server.py http  [--pages FILE] [--latency S]

Over HTTP it binds a free loopback port itself and prints ``PORT <n>`` on stdout before it
serves, so a test never races another process for a port. ``--pages`` names a JSON file with a
list of pages, served in order by ``next_page`` (the way the shipped docqa model reads a
document); ``--latency`` is how long each page takes to arrive. It imports nothing of sleepagent,
so it starts as fast as the SDK allows.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Literal

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

END = "[end of document] All pages have been read."


def build(pages: list[str], latency: float) -> MCPServer:
    server = MCPServer("sleepagent-test-server", log_level="WARNING", instructions="Test tools.")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def weather(city: str, units: Literal["c", "f"] = "c") -> dict:
        """The weather in a city, as structured data."""
        return {"city": city, "temperature": 21 if units == "c" else 70, "units": units}

    @server.tool()
    async def slow_echo(text: str, delay: float = 0.3) -> str:
        """Echo the text after a delay (seconds)."""
        await anyio.sleep(delay)
        return text

    @server.tool()
    def fail(message: str) -> str:
        """Always fails with the given message."""
        # the SDK's way to report a failure to the client; any other exception's text is hidden
        # from the client ("Error executing tool fail") and logged with a traceback
        raise ToolError(message)

    @server.tool(name="files.read-all")
    def read_all() -> str:
        """A name with characters a sleepagent tool name may not contain."""
        return "all of it"

    @server.tool()
    def crash() -> str:
        """Kill the server process in the middle of the call."""
        sys.stdout.flush()
        os._exit(3)

    cursor = {"next": 0}

    @server.tool()
    async def next_page() -> str:
        """Read the next unread page of the document."""
        await anyio.sleep(latency)
        if cursor["next"] >= len(pages):
            return END
        cursor["next"] += 1
        return pages[cursor["next"] - 1]

    return server


async def serve_http(server: MCPServer) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[sock])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("transport", choices=["stdio", "http"])
    p.add_argument("--pages", help="a JSON file: the list of pages next_page serves")
    p.add_argument("--latency", type=float, default=0.0, help="seconds each page takes")
    a = p.parse_args()
    pages = json.loads(Path(a.pages).read_text(encoding="utf-8")) if a.pages else []
    server = build(pages, a.latency)
    if a.transport == "stdio":
        server.run("stdio")
    else:
        anyio.run(serve_http, server)


if __name__ == "__main__":
    main()
