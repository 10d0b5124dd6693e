"""Failover between engines that share a store: a session resumed from the checkpoint a reply
left goes on as the uninterrupted one does (shipped model, real SQLite store)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sleepagent import Engine, MemoryPolicy, SleepModel
from sleepagent.runtime import ChatRuntime, ChatTurn, GenerationParams

PARAMS = GenerationParams(max_tokens=24)


@pytest.fixture(scope="module")
def sm() -> SleepModel:
    return SleepModel.from_pretrained("docqa-small")


async def test_a_session_resumed_from_a_turn_checkpoint_sleeps_where_the_original_did(sm, tmp_path):
    """The engine holding a conversation goes away right after a reply's checkpoint, before the
    pause's sleep commits (or is saved): another engine resumes the checkpoint and sleeps over the
    same window, so the conversation goes on as the uninterrupted one does (the same sleeps, the
    same fast weights, the same next reply)."""
    from sleepagent.storage import SnapshotStore

    class Gone(Engine):  # its pause never runs: gone between the checkpoint and the sleep
        def pause(self, session):
            return False

    first = [ChatTurn("user", "Document 3: the archive in town 3 opens at 10 o'clock; the mill in town 4 "
                              "opens at 6 o'clock; the bakery in town 5 opens at 9 o'clock. When does the mill open?")]

    async def conversation(rt: ChatRuntime, then: ChatRuntime) -> tuple[str, Any]:
        r1 = await rt.reply("t", first, tools=[], params=PARAMS)
        turns = [*first, ChatTurn("assistant", r1.content), ChatTurn("user", "And the bakery?")]
        r2 = await then.reply("t", turns, tools=[], params=PARAMS, session_id=r1.session.id)
        es = r2.session.engine_session
        await then.engine.wait_idle(es)
        return r2.content, es.state

    def runtime(engine: Engine, name: str) -> ChatRuntime:
        store = SnapshotStore(f"sqlite:///{tmp_path / name}")
        return ChatRuntime(engine, store=store, memory=MemoryPolicy(persist_window=True), checkpoint_turns=True)

    reference = runtime(Engine(sm), "ref.db")
    gone = runtime(Gone(sm), "moved.db")
    other = ChatRuntime(Engine(sm), store=gone.persistence.store, memory=MemoryPolicy(persist_window=True),
                        checkpoint_turns=True)
    try:
        want, want_state = await conversation(reference, reference)
        got, got_state = await conversation(gone, other)
        assert got == want
        # the pause after the first reply (after the second: too little in the window to sleep)
        assert got_state.sleeps == want_state.sleeps >= 1
        for a, b in zip(got_state.fast.S, want_state.fast.S, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    finally:
        for rt in (reference, gone, other):
            rt.engine.close()
        reference.persistence.store.close()
        gone.persistence.store.close()
