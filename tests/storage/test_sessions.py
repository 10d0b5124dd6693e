"""Agent sessions persisted in the store: resume, memory policies, never-consolidate, tenants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from sleepagent.storage import SnapshotStore
from sleepagent.storage.schema import EventRow, SessionRow, SnapshotRow
from sqlalchemy import func, select

from sleepagent import Agent, MemoryPolicy, Message, SleepPolicy
from sleepagent.errors import FingerprintMismatch
from sleepagent.model import HybridState
from sleepagent.testing import tiny_model

MODEL_ARGS = dict(seed=1, window=256, tie_embeddings=False)  # untied: greedy outputs differ by prompt
SM = tiny_model(**MODEL_ARGS)


def make_agent(store, memory: MemoryPolicy, model=SM) -> Agent:
    return Agent(model, store=store, memory=memory, sleep=SleepPolicy(loops=2, min_fill=0.0),
                 max_tokens=16, max_steps=1, system_prompt="Hi.")


async def uninterrupted(first: str, second: str) -> str:
    agent = make_agent(None, MemoryPolicy(retention="ephemeral"))
    async with agent.session() as s:
        await s.run(first)
        await agent.engine.wait_idle(s.engine_session)
        return (await s.run(second)).output


async def test_resume_on_another_engine_continues_exactly(store_url):
    persistent = MemoryPolicy(retention="persistent")
    with SnapshotStore(store_url) as store:
        a = make_agent(store, persistent)
        async with a.session("conv", tenant="t") as s:
            await s.run("hello there")
            await a.engine.wait_idle(s.engine_session)
        a.close()
        assert len(store.list_snapshots("conv", tenant="t")) >= 1
        b = make_agent(store, persistent, model=tiny_model(**MODEL_ARGS))  # fresh engine and weights object
        async with b.session("conv", tenant="t") as s:
            resumed = (await s.run("and again")).output
    assert resumed == await uninterrupted("hello there", "and again")


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys, anyio
    from sleepagent import Agent, MemoryPolicy, SleepPolicy
    from sleepagent.storage import SnapshotStore
    from sleepagent.testing import tiny_model

    async def main():
        store = SnapshotStore(sys.argv[1])
        agent = Agent(tiny_model(seed=1, window=256, tie_embeddings=False), store=store,
                      memory=MemoryPolicy(retention="persistent"), sleep=SleepPolicy(loops=2, min_fill=0.0),
                      max_tokens=16, max_steps=1, system_prompt="Hi.")
        async with agent.session("conv", tenant="t") as s:
            print(json.dumps((await s.run(sys.argv[2])).output))

    anyio.run(main)
""")


async def test_resume_in_a_new_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with SnapshotStore(url) as store:
        a = make_agent(store, MemoryPolicy(retention="persistent"))
        async with a.session("conv", tenant="t") as s:
            await s.run("hello there")
        a.close()
    out = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, url, "and again"], capture_output=True, text=True,
                         timeout=300, check=True)
    assert json.loads(out.stdout) == await uninterrupted("hello there", "and again")


async def test_persist_window_resumes_mid_window(store_url):
    policy = MemoryPolicy(retention="persistent", persist_window=True)
    with SnapshotStore(store_url) as store:
        agent = Agent(SM, store=store, memory=policy, sleep=SleepPolicy(loops=2, when="full"),
                      max_tokens=16, max_steps=1, system_prompt="Hi.")
        async with agent.session("w", tenant="t") as s:
            await s.run("keep this in the window")
            assert s.engine_session.state.window_len > 0  # nothing consolidated
        snap = store.latest("w", tenant="t")[0]
        assert snap.window_len > 0
        b = Agent(tiny_model(**MODEL_ARGS), store=store, memory=policy, sleep=SleepPolicy(loops=2, when="full"),
                  max_tokens=16, max_steps=1, system_prompt="Hi.")
        async with b.session("w", tenant="t") as s:
            resumed = (await s.run("and again")).output
    ref = Agent(SM, sleep=SleepPolicy(loops=2, when="full"), max_tokens=16, max_steps=1, system_prompt="Hi.")
    async with ref.session() as s:
        await s.run("keep this in the window")
        assert resumed == (await s.run("and again")).output


def snapshot_tree(*dirs: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in files:
                p = Path(root, f)
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


async def test_ephemeral_session_writes_nothing(tmp_path):
    store = SnapshotStore(f"sqlite:///{tmp_path / 'store.db'}")
    before = snapshot_tree(tmp_path, Path(tempfile.gettempdir()) / "sleepagent-nothing")
    tmp_listing = set(os.listdir(tempfile.gettempdir()))
    db_bytes = (tmp_path / "store.db").read_bytes()
    agent = make_agent(store, MemoryPolicy(retention="ephemeral"))
    async with agent.session("e", tenant="t") as s:
        await s.run("do not remember this")
        await agent.engine.wait_idle(s.engine_session)
        assert s.engine_session.stats.sleeps >= 1
    assert snapshot_tree(tmp_path) == {k: v for k, v in before.items() if k.startswith(str(tmp_path))}
    assert (tmp_path / "store.db").read_bytes() == db_bytes
    new_tmp = set(os.listdir(tempfile.gettempdir())) - tmp_listing
    assert not {n for n in new_tmp if "sleepagent" in n or n.endswith((".db", ".safetensors"))}
    with store._tx() as db:
        for table in (SessionRow, SnapshotRow, EventRow):
            assert db.scalar(select(func.count()).select_from(table)) == 0


@pytest.mark.parametrize("retention, erase_on_close, kept", [
    ("session", False, False), ("persistent", True, False), ("persistent", False, True),
])
async def test_retention_at_close(store, retention, erase_on_close, kept):
    agent = make_agent(store, MemoryPolicy(retention=retention, erase_on_close=erase_on_close))
    async with agent.session("r", tenant="t") as s:
        await s.run("hello")
        await agent.engine.wait_idle(s.engine_session)
        assert store.latest("r", tenant="t") is not None  # persisted while alive
    assert (store.list_sessions(tenant="t") != []) == kept
    if not kept:
        assert any(e.kind == "erase" for e in store.events(session_id="r"))


async def test_session_of_another_model_or_tenant_is_refused(store):
    agent = make_agent(store, MemoryPolicy(retention="persistent"))
    async with agent.session("x", tenant="acme") as s:
        await s.run("hi")
    other = make_agent(store, MemoryPolicy(retention="persistent"), model=tiny_model(seed=9, window=256))
    with pytest.raises(FingerprintMismatch, match="fingerprint"):
        other.session("x", tenant="acme")
    intruder = agent.session("x", tenant="intruder")  # its own, new session: nothing of acme's
    assert intruder.resume is None and intruder.engine_session.state.tokens_seen == 0
    await intruder.close()
    assert store.latest("x", tenant="acme") is not None


async def test_never_consolidate_span_leaves_no_trace(store):
    """A span marked never-consolidate: committed fast weights bit-identical to the same window
    without that span, and its tokens are not in the store."""
    tok = SM.tokenizer
    a, secret, b = (tok.encode(t, specials=False) for t in ("public part one. ", "SECRET-4242 ", "public two."))
    agent = make_agent(store, MemoryPolicy(retention="persistent", never_consolidate=(r"SECRET-\d+",)))
    engine = agent.engine
    session = agent.session("n", tenant="t")
    es = session.engine_session
    engine.append(es, a)
    engine.append(es, secret, consolidate=agent.memory.allows_consolidation("SECRET-4242"))
    engine.append(es, b)
    await engine.flush(es)
    await engine.consolidate(es)
    _info, blob = store.latest("n", tenant="t")
    stored = HybridState.from_bytes(blob, cfg=SM.config, fingerprint=SM.fingerprint)
    lm = SM.model
    ref = lm.new_state()
    lm.prefill(torch.tensor([a + b]), ref)
    want = lm.consolidate(ref, loops=2)
    assert stored.fast.equal(want.fast)
    assert bytes("SECRET-4242", "utf-8") not in blob
    await session.close()


async def test_message_marked_consolidate_false_is_kept_out(store):
    agent = make_agent(store, MemoryPolicy(retention="persistent"))
    async with agent.session("m", tenant="t") as s:
        await s.run(Message("user", "my pin is 9999", consolidate=False))
        masked = s.engine_session.state.consolidate_mask[0, : s.engine_session.state.window_len]
        assert not bool(masked.all())  # the user turn is masked, the rest is not
        assert bool(masked.any())
