"""Draw docs/timeline.png: what the model does while a tool call is in flight.

    python docs/timeline.py [--out docs/timeline.png]

A real agent run (the shipped docqa-small reading a document through ``next_page``, each page
taking 0.3 s to arrive): the time of every emitted token, every sleep and every tool call is
recorded from the run's event stream and drawn on three lanes.
"""

from __future__ import annotations

import argparse
import random
import time

import anyio
from sleepagent.tools import DocumentReader

from sleepagent import Agent, SleepModel, SleepPolicy
from sleepagent.demo import docqa_task
from sleepagent.train.docqa import DOCQA_SYSTEM, READ_REQUEST, reader_tools


async def record(latency: float = 0.3) -> dict[str, list]:
    sm = SleepModel.from_pretrained("docqa-small")
    task = docqa_task(sm)
    doc = task.transcript(random.Random(1), n=task.n_places[1]).document
    reader = DocumentReader.from_text(doc, page_chars=task.page_chars, latency=latency)
    agent = Agent(sm, tools=reader_tools(reader), system_prompt=DOCQA_SYSTEM,
                  sleep=SleepPolicy(loops=4, min_fill=0.0), max_steps=reader.page_count + 3, max_tokens=64)
    marks: dict[str, list] = {"token": [], "sleep": [], "tool": []}
    t0 = time.perf_counter()
    open_sleep = open_tool = None
    async with agent.session() as s, s.run_stream(READ_REQUEST) as run:
        async for ev in run:
            t = time.perf_counter() - t0
            if ev.kind == "token":
                marks["token"].append(t)
            elif ev.kind == "sleep_started":
                open_sleep = t
            elif ev.kind == "sleep_finished" and open_sleep is not None:
                marks["sleep"].append((open_sleep, t, ev.data.get("reason")))
                open_sleep = None
            elif ev.kind == "tool_call":
                open_tool = t
            elif ev.kind == "tool_result" and open_tool is not None:
                marks["tool"].append((open_tool, t))
    agent.close()
    return marks


def draw(marks: dict[str, list], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 2.4), dpi=130)
    lanes = {"tool call in flight": 2, "sleep (N = 4 passes)": 1, "wake (tokens)": 0}
    for a, b in marks["tool"]:
        ax.broken_barh([(a, b - a)], (1.7, 0.6), color="#bbbbbb")
    for a, b, reason in marks["sleep"]:  # a forced sleep (the window filled mid-turn) is waited for
        ax.broken_barh([(a, max(b - a, 0.004))], (0.7, 0.6), color="#c0392b" if reason == "forced" else "#6a5acd")
    for t in marks["token"]:
        ax.broken_barh([(t, 0.004)], (-0.3, 0.6), color="#e07b00")
    ax.set_yticks(list(lanes.values()), list(lanes.keys()))
    ax.set_xlabel("seconds")
    ax.set_title("sleep at a pause runs while the tool call is in flight (blue); "
                 "a forced sleep, the window full mid-turn, is waited for (red)", fontsize=9)
    ax.set_ylim(-0.6, 2.6)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/timeline.png")
    a = p.parse_args()
    draw(anyio.run(record), a.out)
    print(f"wrote {a.out}")
