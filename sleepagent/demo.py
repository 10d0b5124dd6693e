"""The long-document QA demo behind ``sleepagent demo``.

An agent with the shipped ``docqa-small`` model reads a long generated document of road facts
("The road from K leads to M.", 16 places over several pages) through a paging tool, one
``next_page`` call per page, with a simulated tool latency: the engine consolidates the window
into the fast weights while each page is on its way, so by the time the user asks, the early
pages left the attention window long ago. Then a user asks multi-hop questions ("Where do 2 roads
from K lead?"), one turn each, pausing to think between them. Then the same session reads a
second document and is asked about both.

For every answer the demo checks whether the facts it needs were still in the attention window
when the question came (the window's tokens, decoded) or had been evicted: those answers could
only come from the fast weights. The same session runs twice, with N = 4 sleep passes and with
N = 1 (a plain hybrid), and the demo reports, per run: each answer next to the truth, accuracy
per document and hop count, tokens read vs the most tokens ever held in the KV window, sleeps,
fast-weight bytes, sleep time hidden vs exposed, and per-token wake latency.

One session is a small sample, so the demo then runs many more (:func:`run_batch`: held-out
documents from a generator written apart from the training task's, every session a real Agent
session, the engine batching their work) and gives right answers per hop count for N = 4 and
the same weights at N = 1, with the number of questions and a 95% interval: what sleep buys,
and where it buys nothing, at a glance.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import anyio

from .agent import Agent
from .engine import Engine
from .model import SleepModel
from .policy import SleepPolicy
from .tools import DocumentReader, tool
from .train.docqa import NEXT_REQUEST, READ_REQUEST, DocQA
from .train.docqa_eval import EvalSession, facts_needed, held_out_sessions, run_agent_eval, wilson

__all__ = [
    "DEMO_MODEL",
    "DemoBatch",
    "DemoRun",
    "demo_session",
    "docqa_task",
    "run_batch",
    "run_demo",
    "task_min_fill",
]

DEMO_MODEL = "docqa-small"


@dataclass
class DemoRun:
    """What one pass of the demo did (one N)."""

    loops: int
    pages: list[int] = field(default_factory=list)  # per document
    pages_read: list[int] = field(default_factory=list)
    read_replies: list[str] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)  # question, truth, answer, hops, doc, right, evicted
    sleeps_before_questions: int = 0
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

    def accuracy_by(self, key: str) -> dict[Any, tuple[int, int]]:
        """(right, asked) per value of ``key`` ("hops", "doc" or "evicted")."""
        out: dict[Any, list[bool]] = {}
        for a in self.answers:
            out.setdefault(a[key], []).append(a["right"])
        return {k: (sum(v), len(v)) for k, v in sorted(out.items())}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy,
                "accuracy_by_hops": {str(k): v for k, v in self.accuracy_by("hops").items()}}


@dataclass
class DemoBatch:
    """Many held-out sessions at one N: right answers and questions per hop count."""

    loops: int
    sessions: int
    places: int
    cells: dict[int, tuple[int, int]]  # hops -> (right, asked)
    documents_finished: int
    wall_s: float

    def interval(self, hops: int) -> tuple[float, float]:
        return wilson(*self.cells[hops])

    def accuracy(self, hops: int) -> float:
        right, asked = self.cells[hops]
        return right / max(asked, 1)


def verdict(a: DemoBatch, b: DemoBatch, hops: int) -> str:
    """What the two runs' intervals say about sleep on ``hops``-hop questions (``a``: more passes)."""
    (lo_a, hi_a), (lo_b, hi_b) = a.interval(hops), b.interval(hops)
    if lo_a > hi_b:
        return f"N={a.loops} better (intervals apart)"
    if lo_b > hi_a:
        return f"N={b.loops} better (intervals apart)"
    return "no gain: a lookup needs no sleep" if hops == 1 else "no difference shown"


def run_batch(model: str | SleepModel = DEMO_MODEL, *, sessions: int = 32, places: int = 16, per_doc: int = 8,
              loops: tuple[int, ...] = (4, 1), seed: int = 0,
              progress: Callable[[int, int, int], None] | None = None) -> list[DemoBatch]:
    """``sessions`` held-out sessions of one ``places``-place document each, ``per_doc`` questions
    (half 1-hop, half 2-hop) after it, through the Agent API, once per N on the same documents;
    the engine batches the sessions' reads, decode steps and sleeps. ``progress(loops, done,
    total)`` as sessions finish."""
    sm = model if isinstance(model, SleepModel) else SleepModel.from_pretrained(model)
    held = held_out_sessions(sessions, places, 1, seed=1000 + seed, per_doc=per_doc)
    page_chars = docqa_task(sm).page_chars
    out = []
    for n in loops:
        t0 = time.perf_counter()
        results = run_agent_eval(sm, held, n, page_chars=page_chars, min_fill=task_min_fill(sm),
                                 concurrency=sessions,
                                 progress=None if progress is None
                                 # the loop's n bound by default: mypy cannot infer such a lambda
                                 else cast(Callable[[int, int], None], lambda d, t, n=n: progress(n, d, t)))
        cells: dict[int, list[bool]] = {}
        for r in results:
            for a in r.answers:
                cells.setdefault(a["hops"], []).append(a["right"])
        out.append(DemoBatch(loops=n, sessions=sessions, places=places,
                             cells={k: (sum(v), len(v)) for k, v in sorted(cells.items())},
                             documents_finished=sum(f for r in results for f in r.finished_reading),
                             wall_s=time.perf_counter() - t0))
    return out


def demo_session(places: tuple[int, ...] = (16, 10), questions: int = 6, recall: int = 4, seed: int = 0) -> EvalSession:
    """The demo's documents and questions: a long document (16 places, four pages at the shipped
    model's page size), then a second one, with questions after each and about both at the end."""
    return held_out_sessions(1, list(places), len(places), seed=seed, per_doc=questions, recall=recall)[0]


def run_demo(
    model: str | SleepModel = DEMO_MODEL,
    *,
    places: tuple[int, ...] = (16, 10),
    questions: int = 6,
    loops: tuple[int, ...] = (4, 1),
    latency: float = 0.3,
    think: float = 0.2,
    seed: int = 0,
    on_page: Callable[[int, int, int], None] | None = None,
) -> list[DemoRun]:
    """Run the demo once per N in ``loops`` over the same documents and questions.

    ``places``: places per document, read one after another in one session (at most 26 in all:
    one-letter names). ``on_page(loops, read, total)`` is called as pages arrive (a progress bar).
    """
    sm = model if isinstance(model, SleepModel) else SleepModel.from_pretrained(model)
    session = demo_session(tuple(places), questions, recall=max(questions // 2, 1), seed=seed)
    runs: dict[int, DemoRun] = {}

    async def main() -> None:
        # the runs share one engine and go at once: each mostly waits (pages on their way, a user
        # thinking), and the engine serves whichever has work
        with Engine(sm) as engine:
            async with anyio.create_task_group() as tg:
                for n in loops:
                    async def one(n: int = n) -> None:
                        runs[n] = await _one_run(engine, session, n, latency, think, on_page)
                    tg.start_soon(one)

    anyio.run(main)
    return [runs[n] for n in loops]


async def _one_run(engine: Engine, session: EvalSession, n: int, latency: float, think: float,
                   on_page) -> DemoRun:
    sm = engine.model
    page_chars = docqa_task(sm).page_chars
    readers = [DocumentReader.from_text(doc, page_chars=page_chars, latency=latency) for doc in session.documents]
    current = {"doc": 0}

    @tool
    async def next_page() -> str:
        """Read the next unread page of the document."""
        return await readers[current["doc"]].read(None)

    policy = SleepPolicy(loops=n, when="pause", min_fill=task_min_fill(sm), on_wake="finish")
    agent = Agent(sm, engine=engine, tools=[next_page], sleep=policy,
                  max_steps=max(r.page_count for r in readers) + 3, max_tokens=64)
    run = DemoRun(loops=n, pages=[r.page_count for r in readers], window=sm.config.window)
    total_pages = sum(run.pages)
    t0 = time.perf_counter()
    try:
        async with agent.session() as s:
            es = s.engine_session
            tok = sm.tokenizer
            for d, questions in enumerate(session.questions):
                current["doc"] = d
                async with s.run_stream(READ_REQUEST if d == 0 else NEXT_REQUEST) as stream:
                    async for event in stream:
                        if event.kind == "tool_result" and on_page is not None:
                            on_page(n, sum(r.pages_read for r in readers), total_pages)
                        run.max_window_tokens = max(run.max_window_tokens, es.state.window_len)
                run.read_replies.append(stream.result.output if stream.result else "")
                run.pages_read.append(readers[d].pages_read)
                for q in questions:
                    await anyio.sleep(think)  # the user reads and thinks: the engine sleeps meanwhile
                    await agent.engine.wait_idle(es)
                    if not run.sleeps_before_questions:
                        run.sleeps_before_questions = es.stats.sleeps
                    # was any fact the answer needs still in the attention window when asked?
                    window_text = tok.decode(es.state.ids()[0].tolist())
                    needed = facts_needed(session.documents[q.doc], q)
                    evicted = not any(fact in window_text for fact in needed)
                    result = await s.run(q.text)
                    run.max_window_tokens = max(run.max_window_tokens, es.state.window_len + 1)
                    answer = result.output.strip()
                    run.answers.append({"question": q.text, "truth": q.truth, "answer": answer, "hops": q.hops,
                                        "doc": q.doc + 1, "right": answer == q.truth, "evicted": evicted})
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
