"""Server sessions: which conversation a request continues, and what it still has to read.

OpenAI clients resend the whole history with every request. Per live session the registry keeps
a running digest of every message the session has read (and of the replies it wrote), so a
request whose messages extend a session's transcript reads only the new ones, like prefix caching
but for a hybrid model's fixed-size state. A request may also name its session (``X-Session-Id``
or ``session_id`` in the body), as returned by the server in the first response.

Digests are keyed hashes (HMAC-SHA256 with a key that lives only in this process's memory) and
are never written anywhere: a released session can be recognised again by this process, and
resumed by name by any process that shares the store (its snapshot records how many messages it
had read, a count, never text).

A session idle for ``idle_release_s`` is snapshotted to the store (if there is one) and released,
and so is the least recently used one when ``max_sessions`` are live; the next request resumes
it. Responses say which happened: ``new``, ``reused`` or ``resumed``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..agent import ChatTurn, restore, snapshot
from ..engine import Engine, EngineSession
from ..policy import MemoryPolicy, SleepPolicy
from .protocol import ApiError, ChatMessage, text_of

__all__ = ["ServerSession", "SessionRegistry", "turn_of"]


def turn_of(m: ChatMessage) -> ChatTurn:
    """A client's message as the runtime renders it (developer messages are system messages)."""
    role = "system" if m.role == "developer" else m.role
    calls = []
    for c in m.tool_calls or []:
        args = c.function.arguments
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise ApiError(400, f"tool call {c.function.name!r} has arguments that are not JSON",
                               param="messages") from None
        if not isinstance(args, dict):
            raise ApiError(400, f"tool call {c.function.name!r}: arguments must be a JSON object", param="messages")
        calls.append((c.function.name, args))
    return ChatTurn(role, text_of(m.content), tuple(calls))


def _canonical(t: ChatTurn) -> bytes:
    """What identifies a message for continuation: role, text, calls (ids and formatting do not
    count: clients re-serialise arguments and may drop or regenerate ids)."""
    return json.dumps([t.role, t.text, [[n, a] for n, a in t.calls]], sort_keys=True, ensure_ascii=False).encode()


@dataclass(eq=False)
class ServerSession:
    id: str
    tenant: str
    engine_session: EngineSession
    digests: list[str] = field(default_factory=list)  # rolling digest after each message of the transcript
    last_used: float = field(default_factory=time.monotonic)
    gate: anyio.Semaphore = field(default_factory=lambda: anyio.Semaphore(1))  # one request at a time
    busy: bool = False
    # a request that recognised this session holds it until it runs (or a while, if it never
    # does), so that two conversations with the same history never land on one state
    reserved_until: float = 0.0
    epoch: int = 0  # this process's claim on the session in the store (several engines)
    resume: Any = None  # the ResumeInfo of its last resume from the store (what came back, what was lost)
    dirty: bool = False  # a request was cancelled mid-read: the next one starts the session over

    @property
    def messages_read(self) -> int:
        return len(self.digests)

    def available(self, now: float) -> bool:
        return not self.busy and not self.dirty and self.reserved_until <= now


class SessionRegistry:
    """Live sessions per tenant, their transcript digests, and release/resume through the store."""

    def __init__(self, engine: Engine, *, store: Any = None, memory: MemoryPolicy | None = None,
                 sleep: SleepPolicy | None = None, idle_release_s: float = 300.0, max_sessions: int = 1024) -> None:
        self.engine, self.store = engine, store
        self.memory = memory or MemoryPolicy(retention="persistent" if store is not None else "ephemeral")
        self.sleep = sleep or SleepPolicy()
        self.idle_release_s = idle_release_s
        self.max_sessions = max_sessions
        self._key = os.urandom(32)  # digests are meaningful to this process only
        self.live: dict[tuple[str, str], ServerSession] = {}
        # (tenant, digest of a whole transcript) -> ids of the sessions with that transcript
        self._index: dict[tuple[str, str], list[str]] = {}
        self._released: dict[tuple[str, str], list[str]] = {}  # digests of released sessions (memory only)
        self.released_total = 0
        self.sleep_totals: dict[str, float] = {"sleeps": 0, "sleep_s_hidden": 0.0, "sleep_s_exposed": 0.0}
        # several engines on one store (Ray Serve): this engine's name in the store's claims, and
        # a snapshot after every reply, so that another engine can take a session over mid-way
        self.claimant: str | None = None
        self.checkpoint_turns = False

    # --- digests -------------------------------------------------------------------------------

    def _chain(self, turns: list[ChatTurn], start: str = "") -> list[str]:
        out, prev = [], start
        for t in turns:
            prev = hmac.new(self._key, prev.encode() + hashlib.sha256(_canonical(t)).digest(), "sha256").hexdigest()
            out.append(prev)
        return out

    def record(self, s: ServerSession, turns: list[ChatTurn]) -> None:
        """``turns`` were read (or written) by ``s``: extend its transcript and re-index it."""
        self._unindex(s)
        s.digests += self._chain(turns, s.digests[-1] if s.digests else "")
        if s.digests:
            self._index.setdefault((s.tenant, s.digests[-1]), []).append(s.id)
        s.engine_session.meta["messages_read"] = s.messages_read  # a count: what a resume may skip

    def _unindex(self, s: ServerSession, digests: list[str] | None = None) -> None:
        digests = s.digests if digests is None else digests
        if digests:
            ids = self._index.get((s.tenant, digests[-1]), [])
            if s.id in ids:
                ids.remove(s.id)
            if not ids:
                self._index.pop((s.tenant, digests[-1]), None)

    # --- finding a request's session ----------------------------------------------------------

    async def find(self, tenant: str, turns: list[ChatTurn], session_id: str | None,
                   create: bool = False) -> tuple[ServerSession, list[ChatTurn], str]:
        """The session a request continues, the messages it still has to read, and what happened
        ("new", "reused" or "resumed"). ``create``: a named session that does not exist yet is
        made (a router named it), instead of a 404."""
        chain = self._chain(turns)
        await self._make_room()
        if session_id is not None:
            s = self.live.get((tenant, session_id))
            status = "reused"
            if s is not None and not self._still_ours(s):  # another engine took it over
                self._drop(s)
                s = None
            if s is None:
                try:
                    s = self._resume(tenant, session_id)  # 404 when neither live nor stored
                    status = "resumed" if s.engine_session.meta.get("messages_read") else "new"
                except ApiError:
                    if not create:
                        raise
                    s, status = self._new(tenant, session_id), "new"
                if not s.digests:  # the digests died with the process that wrote them: trust the count
                    count = int(s.engine_session.meta.get("messages_read", 0))
                    if count >= len(turns):
                        raise ApiError(400, f"session {session_id!r} has read {count} messages; this request sends "
                                            f"{len(turns)} and so nothing new", param="messages")
                    s.digests = chain[:count]
            n = s.messages_read
            if s.dirty or (n and (n >= len(chain) or chain[n - 1] != s.digests[-1])):
                # the history no longer extends what the session read: start it over
                await self._reset(s)
                return s, turns, "new"
            return s, turns[n:], status
        now = time.monotonic()
        for i in range(len(chain) - 1, 0, -1):
            for sid in list(self._index.get((tenant, chain[i - 1]), [])):
                s = self.live.get((tenant, sid))
                if s is not None and s.available(now):
                    s.reserved_until = now + 30.0
                    return s, turns[i:], "reused"
                if s is None and (tenant, sid) in self._released and self.store is not None:
                    try:
                        s = self._resume(tenant, sid)
                    except ApiError:
                        continue
                    s.digests = self._released.pop((tenant, sid))
                    s.reserved_until = now + 30.0
                    return s, turns[i:], "resumed"
        s = self._new(tenant)
        s.reserved_until = now + 30.0
        return s, turns, "new"

    def get(self, tenant: str, session_id: str) -> ServerSession:
        s = self.live.get((tenant, session_id))
        if s is None:
            raise ApiError(404, f"no session {session_id!r}", code="session_not_found", param="session_id")
        return s

    async def _make_room(self) -> None:
        """At most ``max_sessions`` live: release the least recently used (to the store, where
        any engine can resume it); 429 when every live session is in use."""
        while len(self.live) >= self.max_sessions:
            now = time.monotonic()
            idle = [s for s in self.live.values() if s.available(now)]
            if not idle:
                raise ApiError(429, f"the server holds {self.max_sessions} live sessions, all in use; retry later",
                               type="rate_limit_error", code="too_many_sessions")
            await self.release(min(idle, key=lambda s: s.last_used))

    def _new(self, tenant: str, session_id: str | None = None) -> ServerSession:
        sid = session_id or uuid.uuid4().hex[:16]
        es = self.engine.session(sid, policy=self.sleep)
        s = ServerSession(sid, tenant, es)
        if self.store is not None and self.memory.retention != "ephemeral":
            self.store.open_session(sid, tenant=tenant, fingerprint=self.engine.model.fingerprint, policy=self.memory)
            es.on_commit = lambda e, tenant=tenant: self._persist(e, tenant)
            if self.claimant is not None:
                s.epoch = self.store.claim(sid, tenant=tenant, owner=self.claimant)
        self.live[(tenant, sid)] = s
        return s

    def _still_ours(self, s: ServerSession) -> bool:
        if self.claimant is None or self.store is None:
            return True
        return self.store.owner_of(s.id, tenant=s.tenant) == (self.claimant, s.epoch)

    def _drop(self, s: ServerSession) -> None:
        """Forget a live copy another engine has taken over (its store state is newer)."""
        self._unindex(s)
        self.engine.close_session(s.engine_session)
        self.live.pop((s.tenant, s.id), None)

    async def checkpoint(self, s: ServerSession) -> None:
        """Snapshot the session now (after a reply), so that a failover loses no committed turn."""
        if self.store is None or self.memory.retention == "ephemeral":
            return
        es = s.engine_session
        await self.engine.call(es, lambda _state: self._persist(es, s.tenant))

    def _resume(self, tenant: str, session_id: str) -> ServerSession:
        """A released session back from the store (the same 404 for another tenant's id as for a
        missing one: ids are per tenant)."""
        from ..errors import SnapshotNotFound

        missing = ApiError(404, f"no session {session_id!r}", code="session_not_found", param="session_id")
        if self.store is None:
            raise missing
        try:
            info = self.store.get_session(session_id, tenant=tenant)
        except SnapshotNotFound:
            raise missing from None
        if info.fingerprint != self.engine.model.fingerprint:
            raise ApiError(409, f"session {session_id!r} was made by another model", code="fingerprint_mismatch")
        s = self._new(tenant, session_id)
        s.resume = restore(self.engine.model, self.store, s.engine_session, tenant=tenant)
        if s.resume is None:
            s.engine_session.meta.clear()
        return s

    async def _reset(self, s: ServerSession) -> None:
        self._unindex(s)
        self.engine.close_session(s.engine_session)
        fresh = self.engine.session(s.id, policy=self.sleep)
        fresh.on_commit = s.engine_session.on_commit
        s.engine_session, s.digests, s.dirty = fresh, [], False

    def _persist(self, es: EngineSession, tenant: str) -> None:
        payload, meta = snapshot(self.engine.model, es, self.memory)
        self.store.save(es.id, payload, tenant=tenant, loops=es.policy.loops, meta=meta)

    # --- idle release ---------------------------------------------------------------------------

    async def release_idle(self, now: float | None = None) -> int:
        """Snapshot and release every session idle for ``idle_release_s`` (none in use)."""
        now = time.monotonic() if now is None else now
        idle = [s for s in self.live.values() if s.available(now) and now - s.last_used >= self.idle_release_s]
        for s in idle:
            await self.release(s)
        return len(idle)

    async def release(self, s: ServerSession) -> None:
        """Write the session's state to the store (consolidating its window first, unless the
        policy keeps the window) and drop it from memory; its digests stay (in memory) so this
        process can still recognise the conversation."""
        async with s.gate:
            es = s.engine_session
            await self.engine.wait_idle(es)
            if self.store is not None and self.memory.retention != "ephemeral":
                if self.memory.persist_window:
                    await self.engine.call(es, lambda _state: self._persist(es, s.tenant))
                elif es.state.window_len:
                    await self.engine.consolidate(es)  # the commit hook writes the snapshot
                else:
                    await self.engine.call(es, lambda _state: self._persist(es, s.tenant))
                self._released[(s.tenant, s.id)] = list(s.digests)
            else:
                self._unindex(s)
            self._count(es)
            self.engine.close_session(es)
            self.live.pop((s.tenant, s.id), None)
            self.released_total += 1

    def _count(self, es: EngineSession) -> None:
        st = es.stats
        self.sleep_totals["sleeps"] += st.sleeps
        self.sleep_totals["sleep_s_hidden"] += st.sleep_s_hidden
        self.sleep_totals["sleep_s_exposed"] += st.sleep_s_exposed

    def totals(self) -> dict[str, float]:
        """Sleep counters over every session this registry served (live and released)."""
        out = dict(self.sleep_totals)
        for s in self.live.values():
            st = s.engine_session.stats
            out["sleeps"] += st.sleeps
            out["sleep_s_hidden"] += st.sleep_s_hidden
            out["sleep_s_exposed"] += st.sleep_s_exposed
        return out

    async def close(self) -> None:
        for s in list(self.live.values()):
            await self.release(s)
