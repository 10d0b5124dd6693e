"""An agent whose tools come from an MCP server, sleeping while it waits for them.

    python examples/mcp_agent.py                           # a generated document, served over stdio
    python examples/mcp_agent.py notes.txt -q "Where does 1 road from K lead?"
    python examples/mcp_document_server.py notes.txt --http --latency 0.5 &
    python examples/mcp_agent.py --url http://127.0.0.1:8765/mcp -q "..."

The shipped ``docqa-small`` reads a document through the ``next_page`` tool of
``mcp_document_server.py`` (launched here as a subprocess over stdio, or reached at ``--url`` over
streamable HTTP), then answers questions. Each page takes ``--latency`` seconds to arrive; the
runtime consolidates the attention window into the fast weights during that wait, so the sleep
costs the user nothing: the report's ``hidden_fraction`` is the share of sleep time spent inside
tool calls. Needs ``pip install 'sleepagent[mcp]'``. What the model can answer is what
long_document_qa.py says: documents of sentences "The road from X leads to Y.".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import anyio
from sleepagent.tools.mcp import MCPServerHTTP, MCPServerStdio

from sleepagent import Agent, SleepModel, SleepPolicy
from sleepagent.demo import docqa_task, task_min_fill
from sleepagent.train.docqa import DOCQA_SYSTEM, READ_REQUEST
from sleepagent.train.docqa_eval import held_out_sessions

SERVER = Path(__file__).with_name("mcp_document_server.py")


async def main(path: str | None = None, questions: list[str] | None = None, *, model: str = "docqa-small",
               loops: int = 4, latency: float = 0.5, url: str | None = None) -> dict:
    sm = SleepModel.from_pretrained(model)
    with tempfile.TemporaryDirectory() as tmp:
        if path is None:  # a document of the kind docqa-small was trained on, and two questions about it
            session = held_out_sessions(1, 12, 1, seed=11)[0]
            path = str(Path(tmp) / "roads.txt")
            Path(path).write_text(session.documents[0], encoding="utf-8")
            questions = questions or [q.text for q in session.questions[0] if q.hops == 1][:2]
        if url is not None:
            server = MCPServerHTTP(url, include=["next_page"])
        else:
            page_chars = docqa_task(sm).page_chars  # pages as long as the model read in training
            server = MCPServerStdio(sys.executable, [str(SERVER), path, "--page-chars", str(page_chars),
                                                     "--latency", str(latency)], include=["next_page"])
        # the agent owns the server: it starts it (a subprocess for stdio) and lists its tools before
        # the session's first turn, and shuts it down in close(); a server entered with
        # `async with server:` instead would be left to its block
        agent = Agent(sm, tools=[server], system_prompt=DOCQA_SYSTEM, max_steps=100, max_tokens=64,
                      sleep=SleepPolicy(loops=loops, min_fill=task_min_fill(sm)))
        try:
            await agent.start_tools()
            print(f"MCP server {server.server_info.name!r}: tools {list(agent.tools)}")
            async with agent.session() as s:
                async with s.run_stream(READ_REQUEST) as run:
                    async for event in run:
                        if event.kind == "tool_result":
                            print(f"  {event.result.content.splitlines()[0]}", flush=True)
                        elif event.kind == "final":
                            read = event.result
                answers = []
                for q in questions or []:
                    answers.append((await s.run(q)).output)
                    print(f"Q: {q}\nA: {answers[-1]}")
        finally:
            agent.close()
    stats = read.sleep
    report = {"output": read.output, "pages_read": sum(m.role == "tool" for m in read.messages),
              "sleeps": stats.sleeps, "sleep_s_total": round(stats.sleep_s_total, 3),
              "sleep_s_hidden": round(stats.sleep_s_hidden, 3), "hidden_fraction": round(stats.hidden_fraction, 3),
              "answers": answers}
    print({k: v for k, v in report.items() if k != "answers"})
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", nargs="?", help="a UTF-8 text file (default: a generated document)")
    p.add_argument("-q", "--question", action="append", help="a question (repeatable)")
    p.add_argument("--model", default="docqa-small")
    p.add_argument("--loops", type=int, default=4)
    p.add_argument("--latency", type=float, default=0.5, help="seconds each page takes to arrive (stdio server)")
    p.add_argument("--url", help="an MCP server's streamable HTTP endpoint, instead of launching one")
    a = p.parse_args()
    anyio.run(lambda: main(a.file, a.question, model=a.model, loops=a.loops, latency=a.latency, url=a.url))
