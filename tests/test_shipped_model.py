"""The shipped docqa-small, as users meet it: through the Agent API, on held-out documents, with
paging tools it was not trained on. Free-running throughout (its own earlier answers in context).
Smaller samples than the README's figures (those come from `sleepagent eval --agent`, 200
sessions); the bounds here are set well inside the intervals those figures give."""

from __future__ import annotations

import anyio
from sleepagent.tools import DocumentReader

from sleepagent import Agent, SleepPolicy, tool
from sleepagent.demo import DEMO_MODEL
from sleepagent.model import SleepModel
from sleepagent.train.docqa_eval import held_out_sessions, run_agent_eval, summarize

SM = SleepModel.from_pretrained(DEMO_MODEL)


def cell(summary: dict, doc: int, read: int, hops: int) -> float:
    row = next(r for r in summary["rows"] if (r["doc"], r["read"], r["hops"]) == (doc, read, hops))
    return row["accuracy"]


def test_it_reads_a_long_document_through_the_agent_and_answers_from_its_fast_weights():
    sessions = held_out_sessions(12, 16, 1, seed=2026)
    n4 = summarize(run_agent_eval(SM, sessions, 4, page_chars=112))
    n1 = summarize(run_agent_eval(SM, sessions, 1, page_chars=112))
    assert n4["documents_finished"] == n4["documents"] == 12
    assert n4["sleeps_before_first_question_min"] >= 4  # the pages left the window long before
    assert cell(n4, 1, 1, 1) >= 0.8  # 0.920 [0.90, 0.94] on 200 sessions; 0.958 here
    assert cell(n4, 1, 1, 2) >= 0.2  # 0.354 [0.32, 0.39] on 200 sessions; guessing is 1/16
    assert cell(n4, 1, 1, 2) >= cell(n1, 1, 1, 2) + 0.05  # what the sleep passes buy: 16 of 48 against 8 here


def test_it_reads_through_a_paging_tool_it_was_never_trained_with():
    """A tool name and docstring outside the training set, pages without headers: it still calls
    the tool page by page until the end marker, says Done., and answers."""
    doc = held_out_sessions(1, 8, 1, seed=7)[0]
    reader = DocumentReader.from_text(doc.documents[0], page_chars=112)

    @tool
    async def grab_page_contents() -> str:
        """Returns more of the file."""
        page = await reader.read(None)
        return page.split("\n", 1)[1] if page.startswith("[page ") else page  # no headers

    agent = Agent(SM, tools=[grab_page_contents], sleep=SleepPolicy(loops=4), max_steps=reader.page_count + 3)

    async def main() -> tuple[str, list[bool]]:
        async with agent.session() as s:
            read = (await s.run("Read the document.")).output
            right = [(await s.run(q.text)).output.strip() == q.truth for q in doc.questions[0] if q.hops == 1]
            return read, right

    read, right = anyio.run(main)
    agent.close()
    assert read == "Done." and reader.finished and reader.pages_read == reader.page_count
    assert sum(right) >= len(right) - 1
