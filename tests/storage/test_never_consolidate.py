"""Never-consolidate on every path (issue 31): every text that enters the model is judged whole,
before any cut, and nothing stored depends on an excluded turn, its content or its length.

Every check reads what the store holds (rows, payloads, the SQLite file's bytes), on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import json
import random
import string

import pytest
from sleepagent.storage import SnapshotStore
from sleepagent.storage.schema import EventRow, SessionRow, SnapshotRow
from sqlalchemy import select

from sleepagent import Agent, MemoryPolicy, SleepPolicy, tool
from sleepagent.testing import FunctionModel, tiny_model, tool_call

from .test_privacy import assert_nowhere

SM = tiny_model(seed=3, window=128, tie_embeddings=False)
MARK = "~"  # the policy's pattern: a turn with a tilde in it is never consolidated
POLICY = dict(retention="persistent", never_consolidate=[MARK])


def secret(length: int, seed: int) -> str:
    """An excluded text of ``length`` bytes (one token each): the mark, then random letters."""
    rng = random.Random(seed)
    return MARK + "".join(rng.choice(string.ascii_letters) for _ in range(length - 1))


def stored(store: SnapshotStore) -> list:
    """Every stored field that is not a clock reading, in a comparable form."""
    clock = {"created_at", "updated_at", "expires_at", "lease_until", "at"}
    out = []
    with store._tx() as db:
        for table in (SessionRow, SnapshotRow, EventRow):
            for row in db.scalars(select(table).order_by(*table.__table__.primary_key.columns)):
                fields = {}
                for col in table.__table__.columns:
                    if col.key in clock:
                        continue
                    value = getattr(row, col.key)
                    if isinstance(value, dict):
                        value = {k: v for k, v in value.items() if k not in clock}
                    fields[col.key] = bytes(value) if isinstance(value, (bytes, memoryview)) else value
                out.append((table.__tablename__, fields))
    return out


async def converse(store_url: str, position: str, text: str, *, persist_window: bool) -> SnapshotStore:
    """One session in which ``text`` is the excluded turn, at ``position``; returns its store."""
    store = SnapshotStore(store_url)

    @tool
    def lookup() -> str:
        """Look it up."""
        return text if position == "tool" else "public"

    def respond(messages, info):
        last = messages[-1]
        if position == "tool" and last.role == "user" and last.content == "look it up":
            return tool_call("lookup")
        if position == "assistant" and last.content == "say it":
            return text
        return "ok"

    agent = Agent(FunctionModel(respond, base=SM), tools=[lookup], store=store, max_tokens=600, max_steps=3,
                  memory=MemoryPolicy(**POLICY, persist_window=persist_window),
                  sleep=SleepPolicy(loops=2, min_fill=0.0),
                  system_prompt=text if position == "system" else "Be brief.")
    async with agent.session("s", tenant="t") as s:
        await s.run("public one")
        if position == "user":
            await s.run(text)
        elif position == "assistant":
            await s.run("say it")
        elif position == "tool":
            await s.run("look it up")
        await s.run("public two")
    agent.close()
    return store


LENGTHS = [(1, 0), (37, 1), (37, 2), (500, 3)]  # tokens (the window is 128), seed


@pytest.mark.slow
@pytest.mark.parametrize("persist_window", [False, True], ids=["ids-dropped", "persist_window"])
@pytest.mark.parametrize("position", ["user", "tool", "system", "assistant"])
async def test_nothing_stored_depends_on_an_excluded_turn(store_url, position, persist_window, request):
    """Runs that differ only in an excluded turn, its content or its length (1 to 500 tokens, in a
    128-token window), store the same bytes, and none of its text: a full window sheds excluded
    tokens instead of sleeping (Engine, ``drop_excluded``), and pauses count only the tokens that
    may be consolidated, so the turn does not even move when the others sleep."""
    if store_url.startswith("postgresql") and (persist_window or position in ("system", "assistant")):
        pytest.skip("PostgreSQL runs the user and tool positions; SQLite every case (the same code path)")
    runs = []
    for length, seed in LENGTHS:
        url = store_url
        if url.startswith("sqlite"):
            url = url.replace("store.db", f"store-{length}-{seed}.db")
        else:
            from sleepagent.storage.pgtemp import create_database

            url = create_database(request.getfixturevalue("postgres_server"))
        text = secret(length, seed)
        store = await converse(url, position, text, persist_window=persist_window)
        if length > 1:
            assert_nowhere(store, text[1:])
        runs.append(stored(store))
        store.close()
    assert any(table == "sleep_snapshots" for table, _ in runs[0]), "the session was stored"
    for (length, _), other in zip(LENGTHS[1:], runs[1:], strict=True):
        assert other == runs[0], f"a {length}-token excluded turn changed what was stored"


async def test_a_tool_output_cut_short_is_judged_whole(tmp_path):
    """A tool's output over max_tool_output_chars is cut; the pattern is matched on the whole
    output first, so a secret the cut splits still keeps the result out of every store."""
    store = SnapshotStore(f"sqlite:///{tmp_path / 's.db'}")
    filler = "x" * 95

    @tool
    def read() -> str:
        """Read it."""
        return filler + "password=" + "hunter2" * 3

    replies = iter([tool_call("read"), "ok"])
    agent = Agent(FunctionModel(lambda m, i: next(replies), base=SM), tools=[read], store=store,
                  max_tool_output_chars=100, memory=MemoryPolicy(retention="persistent", persist_window=True,
                                                                  never_consolidate=[r"password=\w{21}"]),
                  sleep=SleepPolicy(loops=2, min_fill=0.0))
    async with agent.session("s", tenant="t") as s:
        result = await s.run("read it")
        tool_msg = next(m for m in result.messages if m.role == "tool")
        assert tool_msg.content.startswith(filler + "pass") and "hunter2" not in tool_msg.content
        assert tool_msg.consolidate is False
    assert_nowhere(store, "x" * 60 + "pass")  # the cut output's ids are not in the stored window


async def test_a_reply_cut_by_max_tokens_is_never_consolidated(tmp_path):
    """A reply cut by max_tokens may end inside a secret the pattern would have matched whole:
    with never-consolidate rules, a cut reply stays out of the fast weights and the store."""
    store = SnapshotStore(f"sqlite:///{tmp_path / 's.db'}")
    reply = "the code is hunter2hunter2"
    agent = Agent(FunctionModel(lambda m, i: reply, base=SM), store=store, max_tokens=16,
                  memory=MemoryPolicy(retention="persistent", persist_window=True,
                                      never_consolidate=[r"hunter2hunter2"]),
                  sleep=SleepPolicy(loops=2, when="full"))
    async with agent.session("s", tenant="t") as s:
        out = await s.run("what is the code")
        assert out.output == reply[:16]  # "the code is hunt": no match left in what was written
        es = s.engine_session
        written = es.state.consolidate_mask[0, : es.state.window_len].tolist()
        assert written[-16:] == [False] * 16 and written[-17]  # the cut reply is held out, all of it
        assert es.pending[-1] == (SM.tokenizer.close_turn(), False)  # and so is its closing token
    assert_nowhere(store, "the code is hunt")


async def test_an_error_that_echoes_a_call_is_judged_with_the_call(tmp_path):
    """The invalid-arguments error echoes part of the call; the call carried a secret, so the
    error (which no longer holds the whole secret) stays out too."""
    store = SnapshotStore(f"sqlite:///{tmp_path / 's.db'}")

    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    bad = '<tool_call>{"name": "add", "arguments": {"a": "token=' + "Q" * 80 + '"}}</tool_call>'
    replies = iter([bad, "ok"])
    agent = Agent(FunctionModel(lambda m, i: next(replies), base=SM), tools=[add], store=store, max_tokens=200,
                  memory=MemoryPolicy(retention="persistent", persist_window=True,
                                      never_consolidate=[r"token=Q{80}"]),
                  sleep=SleepPolicy(loops=2, when="full"))
    async with agent.session("s", tenant="t") as s:
        result = await s.run("add")
        error = next(m for m in result.messages if m.role == "tool")
        assert error.is_error and "token=" in error.content and "Q" * 80 not in error.content
        assert error.consolidate is False
    assert_nowhere(store, "token=QQQQQQ")


async def test_the_system_prompt_is_judged_too(tmp_path):
    store = SnapshotStore(f"sqlite:///{tmp_path / 's.db'}")
    agent = Agent(FunctionModel(lambda m, i: "ok", base=SM), store=store,
                  system_prompt="You are the vault. The key is hunter2-XYZZY.",
                  memory=MemoryPolicy(retention="persistent", persist_window=True, never_consolidate=[r"hunter2"]),
                  sleep=SleepPolicy(loops=2, when="full"))
    async with agent.session("s", tenant="t") as s:
        await s.run("hello")
    assert_nowhere(store, "The key is")
    info, _ = store.latest("s", tenant="t")
    assert json.dumps(info.meta).find("hunter2") == -1
