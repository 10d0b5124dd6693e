"""Long-document QA over your own text file: read it page by page through a tool, then ask.

    python examples/long_document_qa.py notes.txt -q "Where do 2 roads from Kalo lead?"
    python examples/long_document_qa.py notes.txt -q "..." --model /path/to/checkpoint --loops 4

The agent calls ``next_page`` until the reader says the document ended; while each page is "on
its way" (simulated latency) the runtime consolidates the attention window into the fast weights
with N sleep passes, then drops it. Questions come after: by then the pages have left the window.

What to expect from the shipped ``docqa-small``: it is a ~1M-parameter byte-level model trained
on one kind of document (sentences "The road from X leads to Y.") and one kind of question. On
such a file it answers as well as the demo reports; on other text it still runs the whole loop
(tool calls, sleeps, bounded KV), but its answers mean nothing. Bring your own checkpoint with
``--model`` for real documents.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio
from sleepagent.tools import DocumentReader

from sleepagent import Agent, SleepModel, SleepPolicy
from sleepagent.demo import docqa_task, task_min_fill
from sleepagent.train.docqa import DOCQA_SYSTEM, READ_REQUEST, reader_tools


async def main(path: str, questions: list[str], *, model: str = "docqa-small", loops: int = 4,
               latency: float = 0.3, page_chars: int | None = None) -> dict:
    sm = SleepModel.from_pretrained(model)
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    # pages as long, and sleeps at the same window fill, as the model saw in training
    page_chars = page_chars or docqa_task(sm).page_chars
    reader = DocumentReader.from_text(text, page_chars=page_chars, latency=latency)
    agent = Agent(
        sm,
        tools=reader_tools(reader),
        system_prompt=DOCQA_SYSTEM,
        sleep=SleepPolicy(loops=loops, min_fill=task_min_fill(sm)),
        max_steps=reader.page_count + 3,
        max_tokens=64,
    )
    answers, most_in_window = [], 0
    try:
        async with agent.session() as session:
            es = session.engine_session
            async with session.run_stream(READ_REQUEST) as run:
                async for event in run:
                    most_in_window = max(most_in_window, es.state.window_len)
                    if event.kind == "tool_result":
                        print(f"  read page {reader.pages_read}/{reader.page_count}", flush=True)
            for q in questions:
                out = (await session.run(q)).output
                most_in_window = max(most_in_window, es.state.window_len)
                answers.append(out)
                print(f"Q: {q}\nA: {out}")
            await agent.engine.wait_idle(es)
            stats, state = es.stats, es.state
    finally:
        agent.close()
    report = {"pages": reader.page_count, "pages_read": reader.pages_read, "tokens_read": state.tokens_seen,
              "window": sm.config.window, "most_tokens_in_window": most_in_window, "sleeps": stats.sleeps,
              "sleep_s_hidden": round(stats.sleep_s_hidden, 3), "sleep_s_exposed": round(stats.sleep_s_exposed, 3),
              "answers": answers}
    print({k: v for k, v in report.items() if k != "answers"})
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", help="a UTF-8 text file")
    p.add_argument("-q", "--question", action="append", required=True, help="a question (repeatable)")
    p.add_argument("--model", default="docqa-small")
    p.add_argument("--loops", type=int, default=4)
    p.add_argument("--latency", type=float, default=0.3, help="simulated seconds per page fetch")
    a = p.parse_args()
    anyio.run(lambda: main(a.file, a.question, model=a.model, loops=a.loops, latency=a.latency))
