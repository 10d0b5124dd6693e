"""The live sessions' byte budget (``SessionTable.max_state_bytes``) with the shipped docqa-small:
past it the least recently used idle sessions are released to the store, the live state stays
within it, a released conversation resumes and goes on exactly as if it had stayed, and a session
with a request in flight is never released."""

from __future__ import annotations

import pytest
import torch
from sleepagent.storage import SnapshotStore

from sleepagent import Engine, MemoryPolicy, SleepModel, SleepPolicy
from sleepagent.engine import EngineSession
from sleepagent.errors import SessionsFull
from sleepagent.runtime import ChatRuntime, ChatTurn, GenerationParams
from sleepagent.runtime.sessions import state_bytes

PARAMS = GenerationParams(max_tokens=24)
# no sleep at a pause: a session's bytes are its state and its last logits, the same for each
NO_PAUSE_SLEEP = SleepPolicy(min_fill=1.0)


@pytest.fixture(scope="module")
def sm() -> SleepModel:
    return SleepModel.from_pretrained("docqa-small")


def runtime(sm: SleepModel, tmp_path, name: str, sessions: float | None) -> tuple[ChatRuntime, SnapshotStore]:
    """A runtime with a store that keeps the window (an exact resume) and a budget of about
    ``sessions`` replied-to sessions (None: no budget)."""
    store = SnapshotStore(f"sqlite:///{tmp_path / name}")
    rt = ChatRuntime(Engine(sm), store=store, memory=MemoryPolicy(persist_window=True), sleep=NO_PAUSE_SLEEP)
    if sessions is None:
        rt.sessions.max_state_bytes = None
    else:
        es = rt.engine.session("probe")
        per = state_bytes(es) + sm.config.vocab_size * 4  # a session after a reply holds its logits too
        rt.engine.close_session(es)
        rt.sessions.max_state_bytes = int(sessions * per)
    return rt, store


def opening(n: int) -> list[ChatTurn]:
    return [ChatTurn("user", f"Document {n}: the archive in town {n} opens at {n + 7} o'clock. When does it open?")]


def test_a_sessions_bytes_are_its_state_and_what_it_holds(sm):
    engine = Engine(sm)
    try:
        es = engine.session("s")
        # fast weights, KV window, window's hidden states; a fresh state's working fast weights are
        # its committed ones (one storage, counted once)
        st = es.state
        assert st.nbytes - st.fast.nbytes <= state_bytes(es) <= st.nbytes
        assert state_bytes(es) >= sum(t.numel() * t.element_size() for t in st.fast_weights) > 0
    finally:
        engine.close()


def test_a_sleep_in_progress_counts_its_refined_hidden_states(sm):
    model = sm.model
    state = model.new_state(1)
    model.prefill(torch.tensor([list(range(5, 5 + 150))]), state)
    es = EngineSession("s", state, SleepPolicy())
    awake = state_bytes(es)
    assert awake >= state.nbytes - state.fast.nbytes  # working and committed fast weights differ now
    es._job = job = model.begin_sleep(state, 2)
    job.run_pass()
    job.run_pass()  # pass 2: hidden states of its own, not the wake pass's
    h = job._h
    assert h.shape[1] == 150
    assert state_bytes(es) >= awake + h.numel() * h.element_size()
    es._job = None
    assert state_bytes(es) == awake


async def test_past_the_budget_the_least_recently_used_idle_sessions_are_released(sm, tmp_path):
    rt, store = runtime(sm, tmp_path, "a.db", sessions=2.5)
    table = rt.sessions
    try:
        budget = table.max_state_bytes
        assert budget is not None
        ids = []
        for n in range(5):
            r = await rt.reply("t", opening(n), tools=[], params=PARAMS)
            ids.append(r.session.id)
            await rt.release_idle()  # the server's periodic sweep (idle_release_s is far off)
            assert table.live_bytes() <= budget
            # storages, each once: rows of one batched step's result shared by sessions count once
            assert table.live_bytes() <= sum(x.state_bytes for x in table.live.values())
            assert len(table.live) == min(n + 1, 2)
        # the two most recently used stay; the others were released to the store, oldest first
        assert {sid for _, sid in table.live} == set(ids[-2:])
        assert table.released_total == 3
        for sid in ids[:3]:
            assert store.get_session(sid, tenant="t").id == sid
        assert table.stats()["state_bytes"] == table.live_bytes()
    finally:
        rt.engine.close()
        store.close()


async def test_a_released_conversation_resumes_as_if_it_had_stayed(sm, tmp_path):
    """Greedy: the conversation released by the budget between its turns writes the same second
    reply as the same conversation on a table without a budget."""
    question = ChatTurn("user", "And the archive in town 0, does it open later than 5 o'clock?")

    async def conversation(rt: ChatRuntime, crowd: bool) -> tuple[str, str, str]:
        first = await rt.reply("t", opening(0), tools=[], params=PARAMS)
        if crowd:  # two more conversations: the first one is the least recently used, released
            for n in (1, 2):
                await rt.reply("t", opening(n), tools=[], params=PARAMS)
            assert (("t", first.session.id)) not in rt.sessions.live
        turns = [*opening(0), ChatTurn("assistant", first.content), question]
        second = await rt.reply("t", turns, tools=[], params=PARAMS)
        return first.content, second.content, second.status

    budgeted, store_a = runtime(sm, tmp_path, "b.db", sessions=2.5)
    free, store_b = runtime(sm, tmp_path, "c.db", sessions=None)
    try:
        got = await conversation(budgeted, crowd=True)
        want = await conversation(free, crowd=False)
        assert got[2] == "resumed" and want[2] == "reused"
        assert got[:2] == want[:2]
        assert budgeted.sessions.released_total >= 1 and free.sessions.released_total == 0
    finally:
        budgeted.engine.close()
        free.engine.close()
        store_a.close()
        store_b.close()


async def test_a_session_with_a_request_in_flight_is_never_released(sm, tmp_path):
    rt, store = runtime(sm, tmp_path, "d.db", sessions=2.5)
    table = rt.sessions
    try:
        first = await rt.reply("t", opening(0), tools=[], params=PARAMS)
        follow = [*opening(0), ChatTurn("assistant", first.content), ChatTurn("user", "Thanks. And town 1?")]
        job = await rt.prepare("t", follow, tools=[], params=PARAMS)  # in flight: taken, not yet run
        held = job.session
        for n in (1, 2, 3):  # each new one makes room: the previous one goes, never the held one
            await rt.reply("t", opening(n), tools=[], params=PARAMS)
            assert table.live.get(("t", held.id)) is held and not held.leaving
        assert len(table.live) == 2
        # a budget the held session nearly fills: the idle one goes, and a new one is refused, not forced in
        table.max_state_bytes = int(1.5 * held.state_bytes)
        with pytest.raises(SessionsFull):
            await rt.prepare("t", opening(9), tools=[], params=PARAMS)
        assert table.live.get(("t", held.id)) is held
        reply = await rt.run(job)  # the in-flight request finishes on its session
        assert reply.status == "reused" and reply.session is held
    finally:
        rt.engine.close()
        store.close()


def test_the_server_takes_a_budget_and_reports_the_live_state(sm, tmp_path):
    """``sleepagent serve --max-state-mb``: the table's budget; /metrics: the live state and the budget."""
    import httpx
    from typer.testing import CliRunner

    from sleepagent.cli import app
    from sleepagent.serve import ServeConfig, serve_in_background

    help_text = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["serve", "--help"]).output
    assert "--max-state-mb" in help_text
    engine = Engine(sm)
    mb = 2.5 * state_bytes(engine.session("probe")) / 2**20
    engine.close()
    cfg = ServeConfig(model=sm, no_auth=True, store=f"sqlite:///{tmp_path / 'serve.db'}", max_state_mb=mb)

    def metric(text: str, name: str) -> float:
        return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

    with serve_in_background(cfg) as url:
        for n in range(4):
            r = httpx.post(f"{url}/chat/completions", timeout=60,
                           json={"model": "docqa-small", "max_tokens": 8,
                                 "messages": [{"role": "user", "content": opening(n)[0].text}]})
            assert r.status_code == 200
        text = httpx.get(f"{url.removesuffix('/v1')}/metrics").text
    assert metric(text, "sleepagent_state_budget_bytes") == int(mb * 2**20)
    live, state = metric(text, "sleepagent_sessions"), metric(text, "sleepagent_state_bytes")
    assert 1 <= live <= 2 and state > 0
    # the server's own header (its chat template's opening) is cached once, and reported
    assert metric(text, "sleepagent_prefix_cache_bytes") > 0
    assert metric(text, "sleepagent_sessions_released_total") == 4 - live


async def test_the_prefix_cache_counts_against_the_budget_and_is_evicted_first(sm, tmp_path):
    """The engine's cached prefixes (a system prompt's state, kept for every new conversation)
    are live state too: they count against the budget, and they go before any session does (one
    costs a read to rebuild; a session, a round trip through the store)."""
    rt, store = runtime(sm, tmp_path, "p.db", sessions=None)
    table, engine = rt.sessions, rt.engine
    system = ChatTurn("system", "You answer questions about the documents you are given, briefly.")
    try:
        for n in range(3):
            await rt.reply("t", [system, *opening(n)], tools=[], params=PARAMS)
        [(state, logits)] = engine._prefixes.values()  # one shared header: one entry
        cached = engine.prefix_cache_bytes()
        assert cached == state.nbytes + logits.numel() * logits.element_size() > 0
        assert engine.prefix_hits == 2
        assert table.stats()["prefix_cache_bytes"] == cached
        live = table.live_bytes()
        table.max_state_bytes = live + cached  # everything fits
        assert await table._trim() and engine.prefix_cache_bytes() == cached
        table.max_state_bytes = live + cached - 1  # one byte short: the cache goes, no session does
        assert await table._trim()
        assert engine.prefix_cache_bytes() == 0 and len(table.live) == 3 and table.released_total == 0
        await rt.reply("t", [system, *opening(3)], tools=[], params=PARAMS)  # reads its header again
        assert engine.prefix_hits == 2
    finally:
        rt.engine.close()
        store.close()
