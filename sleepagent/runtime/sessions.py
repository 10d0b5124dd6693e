"""The one session table: live conversations per tenant, which one a request continues, and
their release to (and resume from) the store.

Clients of a chat API resend the whole history with every request. Per live session the table
keeps a running digest of every message the session has read (and of the replies it wrote), so
a history that extends a session's transcript reads only its new messages, like prefix caching
but for a hybrid model's fixed-size state. A caller may also name its session (the Agent, a
LangChain ``session_id``, the server's ``X-Session-Id``).

Digests are keyed hashes (HMAC-SHA256 with a key that lives only in this process's memory) and
are never written anywhere: a released session can be recognised again by this process, and
resumed by name by any process that shares the store (its snapshot records how many messages it
had read, a count, never text).

A session idle for ``idle_release_s`` is snapshotted to the store (if there is one) and released,
and so is the least recently used one when ``max_sessions`` are live; the next request resumes
it. :meth:`SessionTable.find` says which happened: ``new``, ``reused`` or ``resumed``.
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

from ..engine import Engine, EngineSession
from ..errors import FingerprintMismatch, RequestError, SessionNotFound, SessionsFull, SnapshotNotFound
from ..policy import SleepPolicy
from .persistence import Persistence, ResumeInfo, SessionMeta
from .render import ChatTurn

__all__ = ["ChatSession", "SessionTable"]


def _canonical(t: ChatTurn) -> bytes:
    """What identifies a message for continuation: role, text, calls (ids and formatting do not
    count: clients re-serialise arguments and may drop or regenerate ids)."""
    return json.dumps([t.role, t.text, [[n, a] for n, a in t.calls]], sort_keys=True, ensure_ascii=False).encode()


@dataclass(eq=False)
class ChatSession:
    """One live conversation: its engine session and what the runtime knows about it."""

    id: str
    tenant: str
    engine_session: EngineSession
    meta: SessionMeta = field(default_factory=SessionMeta)
    digests: list[str] = field(default_factory=list)  # rolling digest after each message of the transcript
    last_used: float = field(default_factory=time.monotonic)
    gate: anyio.Semaphore = field(default_factory=lambda: anyio.Semaphore(1))  # one request at a time
    busy: bool = False
    # a request that recognised this session holds it until it runs (or a while, if it never
    # does), so that two conversations with the same history never land on one state
    reserved_until: float = 0.0
    epoch: int = 0  # this process's claim on the session in the store (several engines)
    resume: ResumeInfo | None = None  # its last resume from the store (what came back, what was lost)
    dirty: bool = False  # a request was cancelled mid-read: the next one starts the session over

    @property
    def messages_read(self) -> int:
        return len(self.digests)

    def available(self, now: float) -> bool:
        return not self.busy and not self.dirty and self.reserved_until <= now


class SessionTable:
    """Live sessions per tenant, their transcript digests, and release/resume through the store.

    ``max_sessions=None``: no cap (the Agent's sessions are held by their caller, who closes
    them). ``claimant``: this engine's name in the store's ownership claims when several engines
    share the store (Ray Serve replicas)."""

    def __init__(self, engine: Engine, persistence: Persistence, *, sleep: SleepPolicy | None = None,
                 idle_release_s: float = 300.0, max_sessions: int | None = 1024, claimant: str | None = None) -> None:
        self.engine, self.persistence = engine, persistence
        self.sleep = sleep or SleepPolicy()
        self.idle_release_s = idle_release_s
        self.max_sessions = max_sessions
        self.claimant = claimant
        self._key = os.urandom(32)  # digests are meaningful to this process only
        self.live: dict[tuple[str, str], ChatSession] = {}
        # (tenant, digest of a whole transcript) -> ids of the sessions with that transcript
        self._index: dict[tuple[str, str], list[str]] = {}
        self._released: dict[tuple[str, str], list[str]] = {}  # digests of released sessions (memory only)
        self.released_total = 0
        self.sleep_totals: dict[str, float] = {"sleeps": 0, "sleep_s_hidden": 0.0, "sleep_s_exposed": 0.0}

    # --- opening ----------------------------------------------------------------------------------

    def new(self, tenant: str, session_id: str | None = None) -> ChatSession:
        """A fresh session (its store row created when the policy persists)."""
        if self.persistence.active:
            session_id = self.persistence.open(session_id, tenant)
        sid = session_id or uuid.uuid4().hex[:16]
        s = ChatSession(sid, tenant, self.engine.session(sid, policy=self.sleep))
        self._attach(s)
        return s

    def open(self, tenant: str, session_id: str | None = None) -> ChatSession:
        """A named session: resumed from its newest intact snapshot when the store has one, else
        new (the Agent's ``agent.session(id)``). FingerprintMismatch for another model's session."""
        if session_id is not None and (tenant, session_id) in self.live:
            return self.live[(tenant, session_id)]
        s = self.new(tenant, session_id)
        if self.persistence.active:
            self._restore(s)
        return s

    def resume(self, tenant: str, session_id: str) -> ChatSession:
        """A released session back from the store; SessionNotFound when there is none (the same
        for another tenant's id as for a missing one: ids are per tenant)."""
        store = self.persistence.store
        if not self.persistence.active or store is None:
            raise SessionNotFound(session_id)
        try:
            info = store.get_session(session_id, tenant=tenant)
        except SnapshotNotFound:
            raise SessionNotFound(session_id) from None
        if info.fingerprint != self.engine.model.fingerprint:
            raise FingerprintMismatch(expected=self.engine.model.fingerprint, found=info.fingerprint)
        s = self.new(tenant, session_id)
        self._restore(s)
        return s

    def _restore(self, s: ChatSession) -> None:
        restored = self.persistence.resume(s.engine_session, s.tenant)
        if restored is not None:
            s.resume, s.meta = restored

    def _attach(self, s: ChatSession) -> None:
        self.persistence.hook(s.engine_session, s.tenant, lambda: s.meta)
        if self.claimant is not None and self.persistence.store is not None:
            s.epoch = self.persistence.store.claim(s.id, tenant=s.tenant, owner=self.claimant)
        self.live[(s.tenant, s.id)] = s

    def get(self, tenant: str, session_id: str) -> ChatSession:
        s = self.live.get((tenant, session_id))
        if s is None:
            raise SessionNotFound(session_id)
        return s

    # --- digests -------------------------------------------------------------------------------

    def _chain(self, turns: list[ChatTurn], start: str = "") -> list[str]:
        out, prev = [], start
        for t in turns:
            prev = hmac.new(self._key, prev.encode() + hashlib.sha256(_canonical(t)).digest(), "sha256").hexdigest()
            out.append(prev)
        return out

    def record(self, s: ChatSession, turns: list[ChatTurn]) -> None:
        """``turns`` were read (or written) by ``s``: extend its transcript and re-index it."""
        self._unindex(s)
        s.digests += self._chain(turns, s.digests[-1] if s.digests else "")
        if s.digests:
            self._index.setdefault((s.tenant, s.digests[-1]), []).append(s.id)
        s.meta.messages_read = s.messages_read  # a count: what a resume by name may skip

    def _unindex(self, s: ChatSession, digests: list[str] | None = None) -> None:
        digests = s.digests if digests is None else digests
        if digests:
            ids = self._index.get((s.tenant, digests[-1]), [])
            if s.id in ids:
                ids.remove(s.id)
            if not ids:
                self._index.pop((s.tenant, digests[-1]), None)

    # --- finding a request's session ----------------------------------------------------------

    async def find(self, tenant: str, turns: list[ChatTurn], session_id: str | None,
                   create: bool = False) -> tuple[ChatSession, list[ChatTurn], str]:
        """The session a history continues, the messages it still has to read, and what happened
        ("new", "reused" or "resumed"). ``create``: a named session that does not exist yet is
        made (a router or a LangChain config named it) instead of SessionNotFound."""
        chain = self._chain(turns)
        await self._make_room()
        if session_id is not None:
            return await self._find_named(tenant, turns, chain, session_id, create)
        now = time.monotonic()
        for i in range(len(chain) - 1, 0, -1):
            for sid in list(self._index.get((tenant, chain[i - 1]), [])):
                s = self.live.get((tenant, sid))
                if s is not None and s.available(now):
                    s.reserved_until = now + 30.0
                    return s, turns[i:], "reused"
                if s is None and (tenant, sid) in self._released and self.persistence.active:
                    try:
                        s = self.resume(tenant, sid)
                    except SessionNotFound:
                        continue
                    s.digests = self._released.pop((tenant, sid))
                    s.reserved_until = now + 30.0
                    return s, turns[i:], "resumed"
        s = self.new(tenant)
        s.reserved_until = now + 30.0
        return s, turns, "new"

    async def _find_named(self, tenant: str, turns: list[ChatTurn], chain: list[str], session_id: str,
                          create: bool) -> tuple[ChatSession, list[ChatTurn], str]:
        s = self.live.get((tenant, session_id))
        status = "reused"
        if s is not None and not self._still_ours(s):  # another engine took it over
            self._drop(s)
            s = None
        if s is None:
            try:
                s = self.resume(tenant, session_id)
                status = "resumed" if s.meta.messages_read else "new"
            except SessionNotFound:
                if not create:
                    raise
                s, status = self.new(tenant, session_id), "new"
            if not s.digests:  # the digests died with the process that wrote them: trust the count
                count = s.meta.messages_read
                if count >= len(turns):
                    raise RequestError(f"session {session_id!r} has read {count} messages; this request sends "
                                       f"{len(turns)} and so nothing new", param="messages")
                s.digests = chain[:count]
        n = s.messages_read
        if s.dirty or (n and (n >= len(chain) or chain[n - 1] != s.digests[-1])):
            # the history no longer extends what the session read: start it over
            await self.reset(s)
            return s, turns, "new"
        return s, turns[n:], status

    async def _make_room(self) -> None:
        """At most ``max_sessions`` live: release the least recently used (to the store, where
        any engine can resume it); SessionsFull when every live session is in use."""
        while self.max_sessions is not None and len(self.live) >= self.max_sessions:
            now = time.monotonic()
            idle = [s for s in self.live.values() if s.available(now)]
            if not idle:
                raise SessionsFull(f"{self.max_sessions} live sessions, all in use; retry later")
            await self.release(min(idle, key=lambda s: s.last_used))

    def _still_ours(self, s: ChatSession) -> bool:
        store = self.persistence.store
        if self.claimant is None or store is None:
            return True
        return store.owner_of(s.id, tenant=s.tenant) == (self.claimant, s.epoch)

    def _drop(self, s: ChatSession) -> None:
        """Forget a live copy another engine has taken over (its store state is newer)."""
        self._unindex(s)
        self.engine.close_session(s.engine_session)
        self.live.pop((s.tenant, s.id), None)

    async def reset(self, s: ChatSession) -> None:
        """Start the session over: a fresh state under the same id (its snapshots stay)."""
        self._unindex(s)
        self.engine.close_session(s.engine_session)
        fresh = self.engine.session(s.id, policy=self.sleep)
        s.engine_session, s.digests, s.dirty, s.meta = fresh, [], False, SessionMeta()
        self.persistence.hook(fresh, s.tenant, lambda: s.meta)

    # --- leaving memory ---------------------------------------------------------------------------

    async def release_idle(self, now: float | None = None) -> int:
        """Snapshot and release every session idle for ``idle_release_s`` (none in use)."""
        now = time.monotonic() if now is None else now
        idle = [s for s in self.live.values() if s.available(now) and now - s.last_used >= self.idle_release_s]
        for s in idle:
            await self.release(s)
        return len(idle)

    async def release(self, s: ChatSession) -> None:
        """Write the session's state to the store (consolidating its window first, unless the
        policy keeps the window) and drop it from memory; its digests stay (in memory) so this
        process can still recognise the conversation."""
        async with s.gate:
            await self.persistence.settle(s.engine_session, s.tenant, s.meta, end=False)
            keep = self.persistence.active  # recognisable again: resumed from the store
            if keep:
                self._released[(s.tenant, s.id)] = list(s.digests)
            self._forget(s, keep_index=keep)

    async def close(self, s: ChatSession) -> None:
        """End the conversation: its state stays in the store, or is erased, as the policy says."""
        try:
            await self.persistence.settle(s.engine_session, s.tenant, s.meta, end=True)
        finally:
            self._forget(s)

    def discard(self, s: ChatSession) -> None:
        """Drop a session from memory without touching the store (an ephemeral call's session)."""
        self._forget(s)

    def _forget(self, s: ChatSession, keep_index: bool = False) -> None:
        if not keep_index:
            self._unindex(s)
        self._count(s.engine_session)
        self.engine.close_session(s.engine_session)
        if self.live.get((s.tenant, s.id)) is s:
            del self.live[(s.tenant, s.id)]
            self.released_total += 1

    def _count(self, es: EngineSession) -> None:
        st = es.stats
        self.sleep_totals["sleeps"] += st.sleeps
        self.sleep_totals["sleep_s_hidden"] += st.sleep_s_hidden
        self.sleep_totals["sleep_s_exposed"] += st.sleep_s_exposed

    def totals(self) -> dict[str, float]:
        """Sleep counters over every session this table served (live and released)."""
        out = dict(self.sleep_totals)
        for s in self.live.values():
            st = s.engine_session.stats
            out["sleeps"] += st.sleeps
            out["sleep_s_hidden"] += st.sleep_s_hidden
            out["sleep_s_exposed"] += st.sleep_s_exposed
        return out

    async def close_all(self) -> None:
        for s in list(self.live.values()):
            await self.release(s)

    def stats(self) -> dict[str, Any]:
        return {"live": len(self.live), "released": self.released_total}
