"""The session table under concurrency: a session chosen for release is taken by no request."""

from __future__ import annotations

import anyio
from sleepagent.storage import SnapshotStore

from sleepagent import Engine, SleepPolicy
from sleepagent.runtime import ChatRuntime, ChatTurn, GenerationParams
from sleepagent.testing import tiny_model

PARAMS = GenerationParams(max_tokens=4)


async def test_a_continuation_during_its_sessions_release_is_served(tmp_path):
    """Regression (bench soak: 500 "session ... is closed" at the live-session cap): the table is
    full (two live), a new conversation releases the least recently used session, and that session's
    continuation arrives while the release is consolidating it. It must not be handed the session
    being closed: it is read anew (or resumed) and answered."""
    engine = Engine(tiny_model(seed=1, window=64))
    store = SnapshotStore(f"sqlite:///{tmp_path / 's.db'}")
    rt = ChatRuntime(engine, store=store, max_sessions=2, sleep=SleepPolicy(loops=4, min_fill=0.0))
    try:
        first = [ChatTurn("user", "one " * 20)]
        r1 = await rt.reply("t", first, tools=[], params=PARAMS)
        await rt.reply("t", [ChatTurn("user", "three " * 20)], tools=[], params=PARAMS)  # the table is full
        follow = [*first, ChatTurn("assistant", r1.content), ChatTurn("user", "and then?")]
        results: dict[str, object] = {}

        async def other() -> None:
            results["other"] = await rt.reply("t", [ChatTurn("user", "two " * 20)], tools=[], params=PARAMS)

        async def continuation() -> None:
            await anyio.sleep(0)  # the other request has chosen the session to release by now
            results["follow"] = await rt.reply("t", follow, tools=[], params=PARAMS)

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            tg.start_soon(continuation)
        assert results["follow"].status in ("new", "resumed", "forked")  # type: ignore[attr-defined]
        assert results["other"].status == "new"  # type: ignore[attr-defined]
        assert len(rt.sessions.live) <= 2 and not any(x.leaving for x in rt.sessions.live.values())
    finally:
        engine.close()
        store.close()


async def test_a_released_session_is_resumed_when_making_room_forgets_it(tmp_path):
    """Regression (bench soak: 500 KeyError): resuming a released session first makes room, which
    releases another session; with what the table remembers at its cap, that release forgot the
    session being resumed. It is resumed from the store all the same, and remembered again."""
    engine = Engine(tiny_model(seed=1, window=64))
    store = SnapshotStore(f"sqlite:///{tmp_path / 's.db'}")
    rt = ChatRuntime(engine, store=store, max_sessions=1, key=b"k" * 32,
                     sleep=SleepPolicy(loops=2, min_fill=0.0))
    rt.sessions._released.cap = 1  # remember one released session
    try:
        a = [ChatTurn("user", "one " * 10)]
        ra = await rt.reply("t", a, tools=[], params=PARAMS)
        await rt.reply("t", [ChatTurn("user", "two " * 10)], tools=[], params=PARAMS)  # releases a's session
        again = await rt.reply("t", [*a, ChatTurn("assistant", ra.content), ChatTurn("user", "more")],
                               tools=[], params=PARAMS)
        assert again.status == "resumed" and again.session.id == ra.session.id
        # the other conversation is the one remembered now (released to make room)
        assert ("t", again.session.id) not in rt.sessions._released and len(rt.sessions._released) == 1
    finally:
        engine.close()
        store.close()
