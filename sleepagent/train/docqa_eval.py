"""Long-document QA scored the way a user meets it: through the public Agent API.

Each session is a real :class:`~sleepagent.Agent` session on a shared :class:`~sleepagent.Engine`:
the model reads generated documents through a paging tool (the product's
:class:`~sleepagent.tools.DocumentReader`), sleeping at the pauses, then answers questions, one user
turn each, with its own earlier answers in its context (free-running: nothing is teacher-forced).
A session may read several documents, one after another, and is asked about all of them.

The documents come from :func:`held_out_sessions`, a generator written apart from the training
task's (:mod:`sleepagent.train.docqa`), on its own random streams: only the documented format is
shared (facts "The road from X leads to Y." forming one cycle, shuffled, joined by spaces;
questions "Where does 1 road from X lead?" / "Where do 2 roads from X lead?").

The paging tool is the user's to write: :class:`PagingStyle` gives it another name, docstring
or signature (``read_page(page: int)``, the model counting its own pages), page headers in
another form or none, and another end-of-document marker; :data:`STYLES` holds the ones the
project checks (none of them the exact forms the training task draws).

Every accuracy comes with its number of questions and a 95% Wilson interval.
"""

from __future__ import annotations

import inspect
import random
import string
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..agent import Agent
from ..engine import Engine
from ..errors import SleepAgentError
from ..model import SleepModel
from ..policy import SleepPolicy
from ..tools import paginate, tool
from .stats import wilson

__all__ = [
    "STYLES",
    "EvalQuestion",
    "EvalSession",
    "PagingStyle",
    "facts_needed",
    "held_out_sessions",
    "run_agent_eval",
    "summarize",
    "wilson",
]


@dataclass
class EvalQuestion:
    text: str
    truth: str
    hops: int
    doc: int  # which document (0-based) it is about
    after: int  # documents read when it was asked, minus one


@dataclass
class EvalSession:
    """One held-out session: its documents and, per document read, the questions that follow."""

    documents: list[str]
    questions: list[list[EvalQuestion]]


def held_out_sessions(n: int, places: int | Sequence[int], documents: int = 1, *, seed: int = 0, per_doc: int = 8,
                      recall: int = 4) -> list[EvalSession]:
    """``n`` sessions of ``documents`` documents of ``places`` places each (or one size per
    document; distinct one-letter names across a session), with ``per_doc`` questions after each
    document (half 1-hop, half 2-hop) and ``recall`` about each earlier document after a later one."""
    sizes = [places] * documents if isinstance(places, int) else list(places)
    if sum(sizes) > 26 or min(sizes) < 2:
        raise ValueError(f"documents of {sizes} places need 2 to 26 one-letter names in all")
    out = []
    for i in range(n):
        rng = random.Random(f"held-out/{seed}/{sizes}/{i}")
        letters = rng.sample(string.ascii_uppercase, sum(sizes))
        cycles = [letters[sum(sizes[:d]) : sum(sizes[: d + 1])] for d in range(len(sizes))]
        docs = []
        for cyc in cycles:
            facts = [f"The road from {a} leads to {cyc[(j + 1) % len(cyc)]}." for j, a in enumerate(cyc)]
            rng.shuffle(facts)
            docs.append(" ".join(facts))
        asked: list[set[tuple[str, int]]] = [set() for _ in cycles]
        rounds = []
        for d in range(len(sizes)):
            qs = _questions(rng, cycles, d, d, per_doc, asked)
            for e in range(d):
                qs += _questions(rng, cycles, e, d, recall, asked)
            rng.shuffle(qs)
            rounds.append(qs)
        out.append(EvalSession(docs, rounds))
    return out


def facts_needed(document: str, question: EvalQuestion) -> list[str]:
    """The fact sentences a question's answer follows, e.g. ``["The road from K leads to M."]``."""
    nxt = {}
    for fact in document.split(". "):
        words = fact.strip(". ").split()
        nxt[words[3]] = words[6]
    node, out = question.text.rstrip("?").split()[-2], []
    for _ in range(question.hops):
        out.append(f"The road from {node} leads to {nxt[node]}.")
        node = nxt[node]
    return out


def _questions(rng: random.Random, cycles: list[list[str]], doc: int, after: int, count: int,
               asked: list[set[tuple[str, int]]]) -> list[EvalQuestion]:
    cyc = cycles[doc]
    out = []
    for q in range(count):
        k = 1 + q % 2
        starts = [s for s in cyc if (s, k) not in asked[doc] and all(s != a for a, _ in asked[doc])]
        starts = starts or [s for s in cyc if (s, k) not in asked[doc]]
        if not starts:
            continue
        start = rng.choice(starts)
        asked[doc].add((start, k))
        truth = cyc[(cyc.index(start) + k) % len(cyc)]
        text = f"Where does 1 road from {start} lead?" if k == 1 else f"Where do {k} roads from {start} lead?"
        out.append(EvalQuestion(text, truth, k, doc, after))
    return out


@dataclass(frozen=True)
class PagingStyle:
    """How a user's paging tool looks: its name and docstring, an optional 1-based page-number
    argument (``page_arg``; without one the tool keeps its own place), the header above each page
    (a format with ``{i}`` and ``{n}``, or "" for none) and the line that ends the last page."""

    name: str = "next_page"
    docstring: str = "Read the next unread page of the document."
    page_arg: str | None = None
    header: str = "[page {i}/{n}]"
    end_marker: str = "[end of document]"


STYLES: dict[str, PagingStyle] = {
    "default": PagingStyle(),
    "read_page": PagingStyle("read_page", "Return one page of the document.", page_arg="page",
                             header="--- page {i} of {n} ---"),
    "plain": PagingStyle("get_more", "Returns more of the file.", header=""),
    "dashes": PagingStyle("next_page", "Read the next unread page of the document.", header="",
                          end_marker="--- end of document ---"),
    "numbered": PagingStyle("fetch_page", "Fetch a page by its number.", page_arg="n", header="Page {i} of {n}",
                            end_marker="(end of document)"),
}


class _Pages:
    """One document served page by page in a :class:`PagingStyle`; remembers what was read."""

    def __init__(self, text: str, page_chars: int, style: PagingStyle) -> None:
        self.pages, self.style = paginate(text, page_chars), style
        self.delivered: set[int] = set()
        self.next = 1

    def read(self, number: int | None) -> str:
        n = len(self.pages)
        number = self.next if number is None else number
        if not 1 <= number <= n:
            return f"{self.style.end_marker} The document has {n} page(s)."
        self.delivered.add(number)
        self.next = number + 1
        head = self.style.header.format(i=number, n=n)
        body = f"{head}\n{self.pages[number - 1]}" if head else self.pages[number - 1]
        return body + (f"\n{self.style.end_marker}" if number == n else "")

    @property
    def finished(self) -> bool:
        return len(self.delivered) == len(self.pages)


def _paging_tool(style: PagingStyle, current: dict[str, Any]):
    """The user's paging tool, with ``style``'s name, docstring and signature."""
    pager: Callable[..., Awaitable[str]]
    page_arg = style.page_arg
    if page_arg is None:
        async def read_all() -> str:
            return current["pages"].read(None)
        pager = read_all
    else:
        async def read_page(**kwargs: int) -> str:
            return current["pages"].read(int(kwargs[page_arg]))
        read_page.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(page_arg, inspect.Parameter.KEYWORD_ONLY, annotation=int)])
        read_page.__annotations__ = {page_arg: int, "return": str}
        pager = read_page
    return tool(name=style.name, description=style.docstring)(pager)


@dataclass
class SessionResult:
    answers: list[dict[str, Any]] = field(default_factory=list)
    finished_reading: list[bool] = field(default_factory=list)
    sleeps_before_first_question: int = 0
    tokens_read: int = 0
    max_window_tokens: int = 0
    error: str | None = None


async def _one(engine: Engine, session: EvalSession, loops: int, page_chars: int, min_fill: float,
               style: PagingStyle) -> SessionResult:
    readers = [_Pages(doc, page_chars, style) for doc in session.documents]
    current: dict[str, Any] = {"pages": readers[0]}
    pages = max(len(r.pages) for r in readers)
    agent = Agent(engine.model, engine=engine, tools=[_paging_tool(style, current)], max_steps=pages + 3,
                  max_tokens=64, sleep=SleepPolicy(loops=loops, when="pause", min_fill=min_fill))
    out = SessionResult()
    async with agent.session() as s:
        es = s.engine_session
        for d, questions in enumerate(session.questions):
            current["pages"] = readers[d]
            try:
                await s.run("Read the document." if d == 0 else "Read the next document.")
            except SleepAgentError as e:  # e.g. it kept calling past the end: its answers still count
                out.error = f"{type(e).__name__}: {e}"
            out.finished_reading.append(readers[d].finished)
            if d == 0:
                await engine.wait_idle(es)
                out.sleeps_before_first_question = es.stats.sleeps + (1 if es.sleeping else 0)
            for q in questions:
                out.max_window_tokens = max(out.max_window_tokens, es.state.window_len)
                try:
                    answer = (await s.run(q.text)).output.strip()
                except SleepAgentError as e:
                    answer, out.error = "", f"{type(e).__name__}: {e}"
                out.answers.append({"question": q.text, "truth": q.truth, "answer": answer, "hops": q.hops,
                                    "doc": q.doc, "after": q.after, "right": answer == q.truth})
        await engine.wait_idle(es)
        out.tokens_read = es.state.tokens_seen
    return out


def run_agent_eval(
    model: SleepModel,
    sessions: list[EvalSession],
    loops: int,
    *,
    page_chars: int = 112,
    min_fill: float = 0.5,
    concurrency: int = 16,
    progress: Callable[[int, int], None] | None = None,
    style: PagingStyle = PagingStyle(),
) -> list[SessionResult]:
    """Run every session through the Agent API on one engine, ``concurrency`` at a time (their
    reads, decode steps and sleeps batch together), reading through a paging tool in ``style``;
    returns one :class:`SessionResult` per session, in order."""
    results: list[SessionResult | None] = [None] * len(sessions)

    async def main() -> None:
        engine = Engine(model)
        limiter = anyio.CapacityLimiter(concurrency)
        done = 0

        async def worker(i: int) -> None:
            nonlocal done
            async with limiter:
                results[i] = await _one(engine, sessions[i], loops, page_chars, min_fill, style)
            done += 1
            if progress is not None:
                progress(done, len(sessions))

        try:
            async with anyio.create_task_group() as tg:
                for i in range(len(sessions)):
                    tg.start_soon(worker, i)
        finally:
            engine.close()

    anyio.run(main)
    return [r for r in results if r is not None]


def summarize(results: list[SessionResult]) -> dict[str, Any]:
    """Accuracy per (document, documents read, hops) with n and a 95% interval, plus totals."""
    cells: dict[tuple[int, int, int], list[bool]] = {}
    for r in results:
        for a in r.answers:
            cells.setdefault((a["doc"], a["after"], a["hops"]), []).append(a["right"])
    rows = []
    for (doc, after, hops), hits in sorted(cells.items()):
        k, n = sum(hits), len(hits)
        lo, hi = wilson(k, n)
        rows.append({"doc": doc + 1, "read": after + 1, "hops": hops, "n": n, "right": k, "accuracy": k / n,
                     "ci95": [lo, hi]})
    finished = [f for r in results for f in r.finished_reading]
    return {
        "rows": rows,
        "sessions": len(results),
        "documents_finished": sum(finished),
        "documents": len(finished),
        "sleeps_before_first_question_min": min((r.sleeps_before_first_question for r in results), default=0),
        "max_window_tokens": max((r.max_window_tokens for r in results), default=0),
        "errors": sum(r.error is not None for r in results),
    }

