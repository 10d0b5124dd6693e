"""A LangChain tool-calling loop over ChatSleepModel: the shipped model reads a document through a
paging tool, page by page, then answers questions about it.

    python examples/langchain_agent.py
    python examples/langchain_agent.py --places 12 --latency 0.5
    python examples/langchain_agent.py --model /path/to/checkpoint

The loop is LangChain's usual one: bind tools, invoke, run each requested tool, append a
ToolMessage, invoke again until the reply has no tool call (the model then says "Done."); then one
question per user turn. The session id makes the model read only the new messages each round, and
while a page is on its way (``--latency`` seconds) the runtime consolidates the attention window
into the fast weights, so by the questions the pages have left the window.

No system message is sent: the checkpoint's own system prompt (its ``prompt.json``) is used, as
for the Agent. The document is generated in the format the shipped ``docqa-small`` was trained on
(road facts, "The road from K leads to M."); on other text it would still call the tool and
answer, but its answers would mean nothing.
"""

from __future__ import annotations

import argparse
import time

import anyio
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from sleepagent.tools import DocumentReader

from sleepagent import SleepModel
from sleepagent.demo import docqa_task
from sleepagent.langchain import ChatSleepModel
from sleepagent.train.docqa import READ_REQUEST
from sleepagent.train.docqa_eval import held_out_sessions


def main(model: str = "docqa-small", *, places: int = 6, questions: int = 4, latency: float = 0.3,
         max_rounds: int = 12, seed: int = 5) -> dict:
    sm = SleepModel.from_pretrained(model)
    session = held_out_sessions(1, places, 1, seed=seed)[0]
    # pages as long as the model read in training
    reader = DocumentReader.from_text(session.documents[0], page_chars=docqa_task(sm).page_chars)

    @tool
    def next_page() -> str:
        """Read the next page of the document."""
        time.sleep(latency)  # the network: the model sleeps meanwhile
        return anyio.run(reader.read)

    chat = ChatSleepModel.from_model(sm, loops=4, max_tokens=64)
    llm = chat.bind_tools([next_page])
    config = {"configurable": {"session_id": "langchain-example"}}  # one sleeping session per thread
    messages = [HumanMessage(READ_REQUEST)]
    for _ in range(max_rounds):
        reply = llm.invoke(messages, config=config)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            result = next_page.invoke(call["args"]) if call["name"] == "next_page" else f"unknown tool {call['name']}"
            print(f"  {call['name']}() -> {result.splitlines()[0]}", flush=True)
            messages.append(ToolMessage(result, tool_call_id=call["id"]))
    read_reply = messages[-1].content
    (live,) = chat.runtime.sessions.live.values()  # the thread's session, as the runtime holds it
    sleeps_after_reading = live.engine_session.stats.sleeps
    print(f"after reading: {read_reply!r} ({sleeps_after_reading} sleeps so far)")
    answers = []
    for q in [q for q in session.questions[0] if q.hops == 1][:questions]:
        messages.append(HumanMessage(q.text))
        reply = llm.invoke(messages, config=config)
        messages.append(reply)
        answers.append({"question": q.text, "answer": reply.content.strip(), "truth": q.truth})
        print(f"Q: {q.text}\nA: {reply.content.strip()} (truth: {q.truth})")
    stats = live.engine_session.stats
    report = {"pages": reader.page_count, "pages_read": reader.pages_read, "finished": reader.finished,
              "read_reply": read_reply, "sleeps_after_reading": sleeps_after_reading, "sleeps": stats.sleeps,
              "sleep_s_hidden": round(stats.sleep_s_hidden, 3), "sleep_s_exposed": round(stats.sleep_s_exposed, 3),
              "window": sm.config.window, "answers": answers,
              "right": sum(a["answer"] == a["truth"] for a in answers), "messages": messages}
    print(f"read {report['pages_read']}/{report['pages']} pages; {report['right']}/{len(answers)} answers right; "
          f"{stats.sleeps} sleeps, {report['sleep_s_hidden']} s hidden, {report['sleep_s_exposed']} s exposed")
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="docqa-small", help="a shipped checkpoint's name or a local directory")
    p.add_argument("--places", type=int, default=6, help="places in the generated document (2 to 26)")
    p.add_argument("--questions", type=int, default=4, help="1-hop questions asked after reading")
    p.add_argument("--latency", type=float, default=0.3, help="seconds each page takes to arrive")
    a = p.parse_args()
    main(a.model, places=a.places, questions=a.questions, latency=a.latency)
