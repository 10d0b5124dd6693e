"""A session persisted in a snapshot store, then resumed by a new agent that answers from it.

    python examples/persisted_session.py                       # writes sessions.db here
    python examples/persisted_session.py --store sqlite:///sessions.db --model /path/to/checkpoint

The first agent reads a generated document through a ``next_page`` tool (the kind of document the
shipped ``docqa-small`` was trained on: road facts), sleeping while each page is on its way; a
snapshot of the session (its fast weights, and with ``persist_window=True`` the window's token
ids) is stored after every sleep. The first agent then closes. A second agent, a new object with
nothing in memory, opens the same session id on the same store: it resumes from the newest
snapshot (``session.resume`` says which) and answers questions about the document from the
restored state alone: it has no tool, and the document is in no message it is sent.
"""

from __future__ import annotations

import argparse

import anyio
from sleepagent.storage import SnapshotStore
from sleepagent.tools import DocumentReader

from sleepagent import Agent, MemoryPolicy, SleepModel, SleepPolicy
from sleepagent.demo import docqa_task, task_min_fill
from sleepagent.train.docqa import READ_REQUEST
from sleepagent.train.docqa_eval import held_out_sessions


async def main(
    store_url: str = "sqlite:///sessions.db",
    model: str = "docqa-small",
    session_id: str = "example-session",
    *,
    places: int = 6,
    questions: int = 4,
    latency: float = 0.2,
    seed: int = 3,
) -> dict:
    sm = SleepModel.from_pretrained(model)
    doc = held_out_sessions(1, places, 1, seed=seed)[0]
    reader = DocumentReader.from_text(doc.documents[0], page_chars=docqa_task(sm).page_chars, latency=latency)
    store = SnapshotStore(store_url)
    memory = MemoryPolicy(retention="persistent", max_snapshots=3, persist_window=True)
    sleep = SleepPolicy(loops=4, min_fill=task_min_fill(sm))

    first = Agent(sm, tools=[next(t for t in reader.tools if t.name == "next_page")], store=store, memory=memory,
                  sleep=sleep, max_steps=reader.page_count + 3, max_tokens=64)
    try:
        async with first.session(session_id, tenant="demo") as s:
            read = (await s.run(READ_REQUEST)).output
            await first.engine.wait_idle(s.engine_session)  # the user thinks; the model sleeps
    finally:
        first.close()
    snaps = store.list_snapshots(session_id, tenant="demo")
    print(f"first agent: read {reader.pages_read}/{reader.page_count} pages, said {read!r}; "
          f"{len(snaps)} snapshot(s) stored, the newest holds {snaps[-1].tokens_consolidated} consolidated tokens")

    second = Agent(sm, store=store, memory=memory, sleep=sleep, max_steps=1, max_tokens=16)  # no tools needed
    answers = []
    try:
        async with second.session(session_id, tenant="demo") as s:  # resumes from the newest snapshot
            resume = s.resume
            print(f"second agent resumed: {resume}")
            for q in [q for q in doc.questions[0] if q.hops == 1][:questions]:
                out = (await s.run(q.text)).output.strip()
                answers.append({"question": q.text, "answer": out, "truth": q.truth})
                print(f"Q: {q.text}\nA: {out} (truth: {q.truth})")
    finally:
        second.close()
        store.close()
    right = sum(a["answer"] == a["truth"] for a in answers)
    print(f"{right}/{len(answers)} answers right, from the restored state")
    return {"read": read, "pages_read": reader.pages_read, "pages": reader.page_count, "snapshots": len(snaps),
            "resumed_from": resume.snapshot_id if resume else None, "answers": answers, "right": right}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///sessions.db")
    parser.add_argument("--model", default="docqa-small", help="a shipped checkpoint's name or a local directory")
    parser.add_argument("--session", default="example-session")
    args = parser.parse_args()
    anyio.run(lambda: main(args.store, args.model, args.session))
