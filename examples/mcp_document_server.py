"""A small MCP server that serves a text file page by page (the server side of mcp_agent.py).

    python examples/mcp_document_server.py notes.txt                      # stdio, for a client to launch
    python examples/mcp_document_server.py notes.txt --http --port 8765   # streamable HTTP at /mcp

Any MCP client can use it; it is built on the official SDK (``pip install 'sleepagent[mcp]'``) and
imports nothing of sleepagent. ``--latency`` makes every page slow to arrive, like a remote
document store: the time a sleep-enabled agent consolidates in.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer

END_MARKER = "[end of document]"


def paginate(text: str, page_chars: int) -> list[str]:
    """Pages of at most ``page_chars`` characters, broken after a space where there is one."""
    pages, start = [], 0
    while start < len(text):
        end = min(start + page_chars, len(text))
        if end < len(text):
            space = text.rfind(" ", start + page_chars // 2, end)
            end = space + 1 if space != -1 else end
        pages.append(text[start:end])
        start = end
    return pages or [""]


def build(text: str, page_chars: int, latency: float) -> MCPServer:
    pages = paginate(text, page_chars)
    server = MCPServer("document-server", log_level="WARNING")
    state = {"next": 0}

    def render(number: int) -> str:
        body = f"[page {number}/{len(pages)}]\n{pages[number - 1]}"
        return body + f"\n{END_MARKER}" if number == len(pages) else body

    @server.tool()
    async def next_page() -> str:
        """Read the next unread page of the document."""
        await anyio.sleep(latency)
        if state["next"] >= len(pages):
            return f"{END_MARKER} All {len(pages)} page(s) have been read."
        state["next"] += 1
        return render(state["next"])

    @server.tool()
    async def read_page(page: int) -> str:
        """Read one page of the document by its number (1-based)."""
        await anyio.sleep(latency)
        if not 1 <= page <= len(pages):
            raise ValueError(f"the document has pages 1 to {len(pages)}")
        return render(page)

    return server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", help="a UTF-8 text file")
    p.add_argument("--page-chars", type=int, default=112)
    p.add_argument("--latency", type=float, default=0.0, help="seconds each page takes to arrive")
    p.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    p.add_argument("--port", type=int, default=8765)
    a = p.parse_args()
    server = build(Path(a.file).read_text(encoding="utf-8"), a.page_chars, a.latency)
    if a.http:
        server.run("streamable-http", host="127.0.0.1", port=a.port)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
