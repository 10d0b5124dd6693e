"""Memory that must not persist, really does not (issue 18's findings, one test or more each).

Every check looks at what the store actually holds: the rows, the payload tensors, and the raw
bytes of the SQLite file, in several encodings of the secret.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from sleepagent.storage import SnapshotStore
from sleepagent.storage.schema import EventRow, SessionRow, SnapshotRow
from sqlalchemy import select, text

from sleepagent import Agent, MemoryPolicy, Message, SleepPolicy
from sleepagent.errors import SnapshotCorrupted, SnapshotNotFound
from sleepagent.testing import FunctionModel, tiny_model

SM = tiny_model(seed=1, window=256, tie_embeddings=False)
SECRET = "hunter2-XYZZY"


def encodings(secret: str) -> list[bytes]:
    """The forms a secret could take in a database: UTF-8 text, its byte-token ids as JSON (how
    metadata once stored them), and as int64 tensor bytes (how a window's ids are stored)."""
    ids = list(secret.encode())
    return [secret.encode(), json.dumps(ids).encode(), json.dumps(ids)[1:-1].encode(),
            torch.tensor(ids, dtype=torch.long).numpy().tobytes()]


def assert_nowhere(store: SnapshotStore, secret: str) -> None:
    """The secret is in no row of any table (any encoding), no payload tensor, and (SQLite) no
    byte of the database file."""
    forms = encodings(secret)
    with store._tx() as db:
        for table in (SessionRow, SnapshotRow, EventRow):
            for row in db.scalars(select(table)):
                for col in table.__table__.columns:
                    value = getattr(row, col.key)
                    blob = value if isinstance(value, bytes) else json.dumps(value, default=str).encode()
                    assert not any(f in blob for f in forms), (table.__tablename__, col.key)
        for payload in db.scalars(select(SnapshotRow.payload)):
            for name, t in st_load(bytes(payload)).items():
                if t.dtype == torch.long:
                    assert not any(f in t.numpy().tobytes() for f in forms[-1:]), name
    if store.path is not None:
        store.engine.dispose()
        data = store.path.read_bytes()
        assert not any(f in data for f in forms)


def agent_for(store, memory: MemoryPolicy, replies=("ok",), sleep=None, model=SM) -> Agent:
    replies = list(replies)

    def respond(messages, info):
        return replies.pop(0) if len(replies) > 1 else replies[0]

    return Agent(FunctionModel(respond, base=model), store=store, memory=memory, max_tokens=40, max_steps=2,
                 sleep=sleep or SleepPolicy(loops=2, min_fill=0.0), system_prompt="Hi.")


async def test_persist_window_never_stores_a_never_consolidate_turn(tmp_path):
    """Finding 1: with persist_window, the snapshot's window holds the other turns' ids and
    nothing computed from the secret (no KV, hidden states or working state), nor its length;
    the resume continues from the rest."""
    policy = MemoryPolicy(retention="persistent", persist_window=True, never_consolidate=[r"hunter\d"])
    store = SnapshotStore(f"sqlite:///{tmp_path / 's.db'}")
    agent = agent_for(store, policy, sleep=SleepPolicy(loops=2, when="full"))
    async with agent.session("w", tenant="t") as s:
        await s.run("remember the public part")
        await s.run(f"my password is {SECRET}")
        assert s.engine_session.state.window_len > 0  # nothing consolidated: all in the window
    info, blob = store.latest("w", tenant="t")
    tensors = st_load(blob)
    assert set(tensors) == {"fast.S.0", "fast.S.1", "fast.conv.0", "fast.conv.1", "window.ids"}
    assert "public part" in SM.tokenizer.decode(tensors["window.ids"][0].tolist())  # the window was kept...
    assert_nowhere(store, SECRET)  # ...without the secret
    assert "never_consolidate" not in info.meta["lost"]  # not even how many tokens it had
    b = agent_for(store, policy, sleep=SleepPolicy(loops=2, when="full"), model=tiny_model(seed=1, window=256,
                                                                                          tie_embeddings=False))
    async with b.session("w", tenant="t") as s:
        assert s.resume is not None and s.resume.lost == info.meta["lost"]
        assert s.resume.window_tokens == info.window_len > 0
        window = SM.tokenizer.decode(s.engine_session.state.ids()[0].tolist())
        assert "public part" in window and SECRET not in window
    store.close()


async def test_snapshot_metadata_holds_no_queued_text(tmp_path):
    """Finding 2: input queued while a sleep ran (a user message, a tool result) is not in the
    snapshot in any form; only counts and the structural markers a resume needs."""
    store = SnapshotStore(f"sqlite:///{tmp_path / 's.db'}")
    agent = agent_for(store, MemoryPolicy(retention="persistent"))
    s = agent.session("q", tenant="t")
    es = s.engine_session
    await s.run("first turn")
    await agent.engine.wait_idle(es)
    tok = SM.tokenizer
    await agent.engine.prefill(es, tok.render_turn("user", "something public"))
    queued = tok.render_turn("user", f"queued while sleeping {SECRET}")
    agent.engine.append(es, queued)  # arrives while the next sleep runs
    await agent.engine.consolidate(es)  # a commit, so a snapshot, with the message still queued
    info = store.latest("q", tenant="t")[0]
    assert info.meta["lost"]["unread"] == len(queued) and set(info.meta) == {"queued", "lost", "session"}
    assert_nowhere(store, f"queued while sleeping {SECRET}")
    assert_nowhere(store, SECRET)
    es.pending.clear()
    await s.close()
    store.close()


async def test_a_reply_that_repeats_a_secret_stays_out_of_the_fast_weights():
    """Finding 3: the assistant echoing a never-consolidate match is excluded as a whole turn:
    two sessions that differ only in an equal-length secret commit the same fast weights."""
    policy = MemoryPolicy(never_consolidate=[r"pin \d{4}"])
    committed = []
    for pin in ("1234", "9876"):
        agent = Agent(FunctionModel(lambda m, i, pin=pin: f"noted: pin {pin}, I will forget it", base=SM),
                      memory=policy, max_tokens=40, max_steps=1, sleep=SleepPolicy(loops=2, when="full"),
                      system_prompt="Hi.")
        async with agent.session() as s:
            await s.run(Message("user", f"my pin {pin}", consolidate=False))
            await s.run("now something public")
            es = s.engine_session
            committed.append(await agent.engine.call(es, lambda st: SM.model.consolidate(st, loops=2)))
        agent.close()
    assert committed[0].fast.equal(committed[1].fast)
    # a clean reply is released into the fast weights again (the hold is provisional)
    agent = Agent(FunctionModel(lambda m, i: "all public", base=SM), memory=policy, max_tokens=20, max_steps=1,
                  sleep=SleepPolicy(loops=2, when="full"), system_prompt="Hi.")
    async with agent.session() as s:
        await s.run("hello")
        mask = s.engine_session.state.consolidate_mask[0, : s.engine_session.state.window_len]
        assert bool(mask.all())
    agent.close()


async def test_expired_snapshots_are_deleted_by_ordinary_writes(tmp_path):
    """Finding 4: an expired snapshot's row and bytes go at the next write, purge or not."""
    now = [1_000_000.0]
    store = SnapshotStore(f"sqlite:///{tmp_path / 's.db'}", clock=lambda: now[0])
    agent = agent_for(store, MemoryPolicy(retention="persistent", ttl=60))
    async with agent.session("e", tenant="t") as s:
        await s.run("first")
        await agent.engine.wait_idle(s.engine_session)
    first = store.list_snapshots("e", tenant="t")
    blob = store.load(first[0].id, tenant="t")[1]
    now[0] += 120
    store.open_session("other", tenant="t", fingerprint=SM.fingerprint, policy=MemoryPolicy(retention="persistent"))
    assert store.list_snapshots("e", tenant="t", include_expired=True) == []
    store.engine.dispose()
    body = blob[int.from_bytes(blob[:8], "little") + 8 :]
    mid = len(body) // 2
    assert body[mid : mid + 64] not in (tmp_path / "s.db").read_bytes()
    assert any(e.kind == "purge" and e.detail["reason"] == "ttl" for e in store.events(session_id="e"))
    store.close()


async def test_session_retention_is_reclaimed_after_a_crash(tmp_path):
    """Finding 6: a process that dies never closes its `session`-retention sessions; their lease
    runs out and the store erases them, so reopening the id starts afresh."""
    now = [1_000_000.0]
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = SnapshotStore(url, clock=lambda: now[0])
    agent = agent_for(store, MemoryPolicy(retention="session", lease=300))
    s = agent.session("crashy", tenant="t")
    await s.run("remember me")
    await agent.engine.wait_idle(s.engine_session)
    assert store.list_snapshots("crashy", tenant="t")
    agent.engine.close()  # the process "dies": no close(), no erase
    store.close()
    now[0] += 100  # within the lease: a new process resumes (migration, restart)
    store = SnapshotStore(url, clock=lambda: now[0])
    assert store.list_snapshots("crashy", tenant="t")
    now[0] += 301  # the lease ran out: the next store opened reclaims it
    store = SnapshotStore(url, clock=lambda: now[0])
    with pytest.raises(SnapshotNotFound):
        store.list_snapshots("crashy", tenant="t")
    agent = agent_for(store, MemoryPolicy(retention="session", lease=300))
    s = agent.session("crashy", tenant="t")
    assert s.resume is None and s.engine_session.state.tokens_seen == 0
    await s.close()
    assert any(e.kind == "purge" and e.detail["reason"] == "lease" for e in store.events(session_id="crashy"))
    store.close()


def _stored(seed: int) -> bytes:
    lm = SM.model
    state = lm.new_state()
    lm.prefill(torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(seed)), state)
    return lm.save_state(lm.consolidate(state, loops=2))


def test_latest_is_one_transaction_against_a_pruning_writer(store):
    """Finding 9: a reader of the newest snapshot never sees it vanish under a writer pruning to
    max_snapshots=1 (it once raised SnapshotNotFound 6 times in 1,179 calls)."""
    store.open_session("race", tenant="t", fingerprint=SM.fingerprint,
                       policy=MemoryPolicy(retention="persistent", max_snapshots=1))
    payloads = [_stored(i) for i in range(4)]
    store.save("race", payloads[0], tenant="t", loops=2)
    stop, errors = threading.Event(), []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.save("race", payloads[i % 4], tenant="t", loops=2)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 3
        calls = 0
        while time.monotonic() < deadline:
            try:
                assert store.latest("race", tenant="t") is not None
                assert store.restore_point("race", tenant="t") is not None
            except SnapshotNotFound as e:  # the race this test exists for
                errors.append(e)
            calls += 1
    finally:
        stop.set()
        thread.join()
    assert calls > 20 and errors == []


async def test_resume_falls_back_to_the_newest_intact_snapshot_and_says_so(store):
    """Finding 10: a corrupted newest snapshot, or one of NaNs with a recomputed checksum, does
    not make the session unresumable: it resumes from the newest intact one and says which."""
    import hashlib

    agent = agent_for(store, MemoryPolicy(retention="persistent"))
    async with agent.session("fb", tenant="t") as s:
        for turn in ("one", "two", "three"):
            await s.run(turn)
            await agent.engine.wait_idle(s.engine_session)
    snaps = store.list_snapshots("fb", tenant="t")
    assert len(snaps) >= 3
    newest, second, intact = snaps[-1], snaps[-2], snaps[-3]
    tampered = bytearray(store.load(newest.id, tenant="t")[1])
    tampered[-3] ^= 0xFF  # corrupt: checksum fails
    tensors = st_load(store.load(second.id, tenant="t")[1])
    tensors["fast.S.0"] = torch.full_like(tensors["fast.S.0"], float("nan"))
    header = json.loads(bytes(store.load(second.id, tenant="t")[1][8:8 + int.from_bytes(
        store.load(second.id, tenant="t")[1][:8], "little")]))["__metadata__"]
    nan_blob = st_save(tensors, metadata=header)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE sleep_snapshots SET payload = :p WHERE id = :i"),
                     {"p": bytes(tampered), "i": newest.id})
        conn.execute(text("UPDATE sleep_snapshots SET payload = :p, sha256 = :h, size = :n WHERE id = :i"),
                     {"p": nan_blob, "h": hashlib.sha256(nan_blob).hexdigest(), "n": len(nan_blob), "i": second.id})
    s = agent.session("fb", tenant="t")
    assert s.resume is not None and s.resume.snapshot_id == intact.id
    assert [sid for sid, _ in s.resume.skipped] == [newest.id, second.id]
    assert "sha256" in s.resume.skipped[0][1] and "non-finite" in s.resume.skipped[1][1]
    await s.close()
    kinds = [e.kind for e in store.events(session_id="fb")]
    assert kinds.count("skip_corrupted") >= 2
    with pytest.raises(SnapshotCorrupted, match="non-finite"):  # and it is refused on the way in
        store.save("fb", nan_blob, tenant="t", loops=2)


def test_snapshot_ids_are_never_reused(tmp_path):
    """Finding 12: after the newest snapshot is deleted, the next one gets a new id (an audit row
    or a user's note naming snapshot N keeps meaning that snapshot)."""
    store = SnapshotStore(f"sqlite:///{tmp_path / 's.db'}")
    store.open_session("a", tenant="t", fingerprint=SM.fingerprint, policy=MemoryPolicy(retention="persistent"))
    first = store.save("a", _stored(1), tenant="t", loops=2).id
    second = store.save("a", _stored(2), tenant="t", loops=2).id
    store.erase("a", tenant="t")
    store.open_session("b", tenant="t", fingerprint=SM.fingerprint, policy=MemoryPolicy(retention="persistent"))
    third = store.save("b", _stored(3), tenant="t", loops=2).id
    assert third > second > first
    store.close()
