"""The long-document QA demo behind ``sleepagent demo``.

An agent with the shipped ``docqa-small`` model reads a generated document of road facts through
the paged reader, one ``next_page`` tool call per page, with a simulated tool latency; the engine
consolidates the window into the fast weights while each page is on its way. Then a user asks
multi-hop questions ("Where do 2 roads from K lead?"), one turn each, pausing to
think between them. By then the earlier pages have left the attention window (the last one may
still be in it, when the window was under the pause-sleep threshold): most facts can only come
from the fast weights.

The same document and questions run twice, with N = 4 sleep passes and with N = 1 (a plain
hybrid), and the demo reports, per run: each answer next to the truth, accuracy per hop count,
tokens read vs the most tokens ever held in the KV window, fast-weight bytes, sleep time hidden
vs exposed, and per-token wake latency.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from .agent import Agent
from .model import SleepModel
from .policy import SleepPolicy
from .tools import DocumentReader
from .train.docqa import DOCQA_SYSTEM, READ_REQUEST, DocQA, question, reader_tools

__all__ = ["DemoRun", "run_demo", "docqa_task", "task_min_fill", "DEMO_MODEL"]

DEMO_MODEL = "docqa-small"


@dataclass
class DemoRun:
    """What one pass of the demo did (one N)."""

    loops: int
    pages: int
    pages_read: int
    read_reply: str
    answers: list[dict[str, Any]] = field(default_factory=list)  # question, truth, answer, hops, right
    tokens_read: int = 0
    window: int = 0
    max_window_tokens: int = 0
    fast_weight_bytes: int = 0
    sleeps: int = 0
    sleep_s_total: float = 0.0
    sleep_s_hidden: float = 0.0
    sleep_s_exposed: float = 0.0
    wake_ms_per_token: float = 0.0
    wall_s: float = 0.0

    @property
    def accuracy(self) -> float:
        return sum(a["right"] for a in self.answers) / max(len(self.answers), 1)

    def accuracy_by_hops(self) -> dict[int, float]:
        out: dict[int, list[bool]] = {}
        for a in self.answers:
            out.setdefault(a["hops"], []).append(a["right"])
        return {k: sum(v) / len(v) for k, v in sorted(out.items())}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy,
                "accuracy_by_hops": {str(k): v for k, v in self.accuracy_by_hops().items()}}


def run_demo(
    model: str | SleepModel = DEMO_MODEL,
    *,
    places: int | None = None,
    questions: int = 6,
    hops: tuple[int, ...] | None = None,
    loops: tuple[int, ...] = (4, 1),
    latency: float = 0.3,
    think: float = 0.2,
    seed: int = 0,
    on_page: Callable[[int, int, int], None] | None = None,
) -> list[DemoRun]:
    """Run the demo once per N in ``loops`` over the same document and questions.

    ``places``/``hops`` default to the hardest setting the model was trained on (its
    ``train.json``), so the questions are in distribution. ``on_page(loops, read, total)`` is
    called as pages arrive (for a progress bar).
    """
    sm = model if isinstance(model, SleepModel) else SleepModel.from_pretrained(model)
    task = docqa_task(sm, places, hops)
    rng = random.Random(seed)
    transcript = task.transcript(rng, n=task.n_places[1])
    # several turns of questions: draw more than the transcript's own, each with its hop count
    names_cycle = _cycle(transcript.document)
    qs = []
    starts = rng.sample(sorted(names_cycle), min(questions, len(names_cycle)))
    for start in starts:
        k = rng.choice(task.hops)
        node = start
        for _ in range(k):
            node = names_cycle[node]
        qs.append((question(start, k), node, k))
    return [
        anyio.run(_one_run, sm, task, transcript.document, qs, n, latency, think, on_page)
        for n in loops
    ]


async def _one_run(sm, task: DocQA, document: str, questions, n: int, latency: float, think: float, on_page) -> DemoRun:
    reader = DocumentReader.from_text(document, page_chars=task.page_chars, latency=latency)
    policy = SleepPolicy(loops=n, when="pause", min_fill=task_min_fill(sm), on_wake="finish")
    agent = Agent(sm, tools=reader_tools(reader), system_prompt=DOCQA_SYSTEM, sleep=policy,
                  max_steps=reader.page_count + 3, max_tokens=64)
    run = DemoRun(loops=n, pages=reader.page_count, pages_read=0, read_reply="", window=sm.config.window)
    t0 = time.perf_counter()
    try:
        async with agent.session() as session:
            es = session.engine_session
            async with session.run_stream(READ_REQUEST) as stream:
                async for event in stream:
                    if event.kind == "tool_result" and on_page is not None:
                        on_page(n, reader.pages_read, reader.page_count)
                    run.max_window_tokens = max(run.max_window_tokens, es.state.window_len)
            run.read_reply = stream.result.output if stream.result else ""
            run.pages_read = reader.pages_read
            for question, truth, k in questions:
                await anyio.sleep(think)  # the user reads and thinks: the engine sleeps meanwhile
                result = await session.run(question)
                run.max_window_tokens = max(run.max_window_tokens, es.state.window_len + 1)
                answer = result.output.strip()
                run.answers.append({"question": question, "truth": truth, "answer": answer, "hops": k,
                                    "right": answer == truth})
            await agent.engine.wait_idle(es)
            stats, state = es.stats, es.state
            run.tokens_read = state.tokens_seen
            run.fast_weight_bytes = state.fast.nbytes
            run.sleeps = stats.sleeps
            run.sleep_s_total, run.sleep_s_hidden = stats.sleep_s_total, stats.sleep_s_hidden
            run.sleep_s_exposed = stats.sleep_s_exposed
            run.wake_ms_per_token = stats.wake_ms_per_token
    finally:
        agent.close()
    run.wall_s = time.perf_counter() - t0
    return run


def docqa_task(sm: SleepModel, places: int | None = None, hops: tuple[int, ...] | None = None) -> DocQA:
    """The docqa task ``sm`` was trained on (its train.json), so documents are paged and named
    as in training; ``places``/``hops`` override the difficulty."""
    kwargs = dict(sm.train_config.get("task_kwargs", {}))
    kwargs.pop("questions", None)
    task = DocQA(**kwargs) if kwargs else DocQA(window=sm.config.window)
    if places is not None:
        task.n_places = (places, places)
    if hops is not None:
        task.hops = tuple(hops)
    return task


def task_min_fill(sm: SleepModel) -> float:
    """The pause-sleep threshold the model was trained with (its windows match the runtime's)."""
    return float(sm.train_config.get("min_fill", 0.5))


def _cycle(document: str) -> dict[str, str]:
    """``{place: next place}`` from the document's facts."""
    out = {}
    for fact in document.split(". "):
        words = fact.strip(". ").split()
        out[words[3]] = words[6]
    return out
