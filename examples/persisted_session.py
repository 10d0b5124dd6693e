"""A multi-turn session persisted in a snapshot store, then resumed by a new agent.

    python examples/persisted_session.py --store sqlite:///sessions.db [--model PATH]

Without --model a small random model is used: it shows the mechanics (snapshots after every
sleep, resume, exact continuation), not answers worth reading.
"""

from __future__ import annotations

import argparse

import anyio

from sleepagent import Agent, MemoryPolicy, SleepModel, SleepPolicy
from sleepagent.storage import SnapshotStore
from sleepagent.testing import tiny_model


async def main(store_url: str, model_path: str | None, session_id: str) -> list[str]:
    model = SleepModel.from_pretrained(model_path) if model_path else tiny_model(seed=1, window=256, tie_embeddings=False)
    store = SnapshotStore(store_url)
    memory = MemoryPolicy(retention="persistent", max_snapshots=3)
    sleep = SleepPolicy(loops=4, min_fill=0.0)
    outputs = []

    first = Agent(model, store=store, memory=memory, sleep=sleep, max_tokens=24, max_steps=1)
    async with first.session(session_id, tenant="demo") as s:
        outputs.append((await s.run("Remember: the meeting is on Thursday.")).output)
        await first.engine.wait_idle(s.engine_session)  # the user thinks; the model sleeps
    first.close()
    snaps = store.list_snapshots(session_id, tenant="demo")
    print(f"{len(snaps)} snapshot(s) stored; newest holds {snaps[-1].tokens_consolidated} consolidated tokens")

    second = Agent(model, store=store, memory=memory, sleep=sleep, max_tokens=24, max_steps=1)
    async with second.session(session_id, tenant="demo") as s:  # resumes from the snapshot
        outputs.append((await s.run("When is the meeting?")).output)
    second.close()
    for i, text in enumerate(outputs, 1):
        print(f"turn {i}: {text!r}")
    return outputs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="sqlite:///sessions.db")
    parser.add_argument("--model", default=None)
    parser.add_argument("--session", default="example-session")
    args = parser.parse_args()
    anyio.run(main, args.store, args.model, args.session)
