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
it. A retried request, or one whose last messages were edited, matches a session only up to
before those messages: when the session was snapshotted at that point (every reply is, when the
server has a store), a new session forks from that snapshot; otherwise the history is read
afresh. A session is never continued from a state whose transcript differs from the history.
:meth:`SessionTable.find` says which happened: ``new``, ``reused``, ``resumed`` or ``forked``.

Everything the table remembers is bounded: live sessions by ``max_sessions`` and, in bytes, by
``max_state_bytes`` (a live session holds its fast weights, its KV window and, while it sleeps, the
sleep's refined hidden states: :func:`state_bytes`), and the digests of released sessions and the
fork points (a session id and a count per snapshotted reply) by LRU caps, so a server that runs
for days holds a fixed amount.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, TypeVar

import anyio
import torch

from ..engine import Engine, EngineSession
from ..errors import (
    FingerprintMismatch,
    RequestError,
    SessionNotFound,
    SessionsFull,
    SleepAgentError,
    SnapshotError,
    SnapshotNotFound,
)
from ..policy import SleepPolicy
from .persistence import Persistence, ResumeInfo, SessionMeta, restore
from .render import ChatTurn

__all__ = ["ChatSession", "SessionTable", "default_state_budget", "state_bytes", "transcript_digests"]

K = TypeVar("K")
V = TypeVar("V")


def _canonical(t: ChatTurn) -> bytes:
    """What identifies a message for continuation: role, text, calls (ids and formatting do not
    count: clients re-serialise arguments and may drop or regenerate ids)."""
    return json.dumps([t.role, t.text, [[n, a] for n, a in t.calls]], sort_keys=True, ensure_ascii=False).encode()


def transcript_digests(key: bytes, turns: Sequence[ChatTurn], start: str = "") -> list[str]:
    """The rolling keyed digest (HMAC-SHA256) after each message of ``turns``, continuing from
    ``start``: what the table indexes a transcript by, and what a router in front of several
    tables routes on (it then holds the same key, in memory only)."""
    out, prev = [], start
    for t in turns:
        prev = hmac.new(key, prev.encode() + hashlib.sha256(_canonical(t)).digest(), "sha256").hexdigest()
        out.append(prev)
    return out


def _storages(obj: Any, out: dict[int, int], visited: set[int], depth: int = 0) -> None:
    """The tensor storages reachable from ``obj`` (through tuples, lists, dicts and object
    attributes, never into a module's weights) into ``out``: address -> bytes. Storages, not
    tensors: a view keeps all of its storage alive (a row of a batched result, a slice of a
    read's activations), and views of one storage are one allocation."""
    if obj is None or depth > 8 or isinstance(obj, (int, float, str, bytes, bool, torch.nn.Module)):
        return
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr():
            out[storage.data_ptr()] = storage.nbytes()
        return
    if id(obj) in visited:
        return
    visited.add(id(obj))
    if isinstance(obj, (list, tuple)):
        items: Any = obj
    elif isinstance(obj, dict):
        items = obj.values()
    else:
        attrs = getattr(obj, "__dict__", None)
        if attrs is None:
            return
        items = [v for k, v in attrs.items() if k not in ("model", "config")]
    for x in items:
        _storages(x, out, visited, depth + 1)


def state_storages(es: EngineSession) -> dict[int, int]:
    """The memory one live session's state holds, as its tensor storages (address -> bytes): its
    model state (fast weights, committed and working; the KV window, preallocated or grown with
    the window's fill; the window's hidden states), a sleep in progress (its refined hidden states
    and fast weights) and the logits after its last token. A read of tensor sizes, safe while the
    engine's worker runs the session (a figure of that moment)."""
    out: dict[int, int] = {}
    visited: set[int] = set()
    for part in (es.state, es._job, es.last_logits):
        _storages(part, out, visited)
    return out


def state_bytes(es: EngineSession) -> int:
    """Bytes of one live session's state (:func:`state_storages`, each storage once)."""
    return sum(state_storages(es).values())


def default_state_budget(device: Any = None) -> int:
    """The default ``max_state_bytes``: a quarter of the memory the states live in (the GPU's
    when the model is on one, else the machine's physical memory; 4 GiB when neither can be read).
    The rest is the model's weights, activations, the process and whatever else the host runs."""
    try:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda":
            total = torch.cuda.get_device_properties(dev).total_memory
        else:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, RuntimeError, AttributeError):
        return 4 << 30
    return int(total) // 4 if total > 0 else 4 << 30


class _Recent(OrderedDict, Generic[K, V]):
    """A dict that keeps its ``cap`` most recently put keys (the oldest go first)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def put(self, key: K, value: V) -> list[tuple[K, V]]:
        """Put ``key``; returns what fell out."""
        self[key] = value
        self.move_to_end(key)
        out = []
        while len(self) > self.cap:
            out.append(self.popitem(last=False))
        return out


@dataclass(frozen=True)
class _ForkPoint:
    """A session snapshotted after a reply: its id, how many messages it had read, and since when
    (store clock) its current state exists (a named session started over keeps older snapshots
    of another transcript under the same id; they are not this point's)."""

    session_id: str
    count: int
    since: float


@dataclass(frozen=True)
class _Restored:
    """One chosen snapshot in the shape :func:`~sleepagent.runtime.persistence.restore` reads."""

    info: Any
    payload: bytes
    skipped: list[tuple[int, str]]
    accepted: Any


class _OneSnapshot:
    """A store view whose restore point is one given snapshot (a fork's), so that a fork goes
    through the one restore path."""

    def __init__(self, restored: _Restored) -> None:
        self.restored = restored

    def restore_point(self, session_id: str, *, tenant: str, fingerprint: str | None = None,
                      accept: Any = None) -> _Restored:
        return self.restored


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
    leaving: bool = False  # being released: no request may take it (it is closed when the release ends)
    since: float = 0.0  # store clock when its current state began (snapshots older than this are another's)
    # (what the state looked like, its storages): measured again only when that changes
    _measured: tuple[tuple[int, ...], dict[int, int]] | None = field(default=None, repr=False)

    def storages(self) -> dict[int, int]:
        """:func:`state_storages` of its engine session, measured again only when the state changed
        (another state object or fast weights, window fill, sleep job or pass, logits)."""
        es = self.engine_session
        st, job = es.state, es._job
        fields = getattr(st, "__dict__", {})  # not properties: HFState computes its working state
        key = (id(st), int(getattr(st, "window_len", 0)), id(fields.get("fast")), id(fields.get("working")),
               id(fields.get("cache")), id(job), int(getattr(job, "passes_done", 0)),
               id(getattr(job, "_cursor", None)), id(getattr(job, "_h", None)), id(es.last_logits))
        if self._measured is None or self._measured[0] != key:
            self._measured = (key, state_storages(es))
        return self._measured[1]

    @property
    def state_bytes(self) -> int:
        """Bytes its state holds (:func:`state_bytes`)."""
        return sum(self.storages().values())

    @property
    def messages_read(self) -> int:
        return len(self.digests)

    def available(self, now: float) -> bool:
        return not self.busy and not self.dirty and not self.leaving and self.reserved_until <= now


class SessionTable:
    """Live sessions per tenant, their transcript digests, and release/resume through the store.

    ``max_sessions=None``: no cap (the Agent's sessions are held by their caller, who closes
    them). ``claimant``: this engine's name in the store's ownership claims when several engines
    share the store (Ray Serve replicas). ``key``: the digests' key (32 bytes, memory only; a
    router and its replicas share one), a random one by default. ``max_remembered``: how many
    released sessions (their digests) and fork points are kept for recognition, each (default:
    ``max_sessions``, or 1024).

    ``max_state_bytes``: a budget for the live sessions' state in bytes (:func:`state_bytes`; a
    count does not bound bytes: the KV window and a sleep in progress vary). A session about to be
    made needs room for a fresh state, and the periodic :meth:`release_idle` enforces it too: the
    least recently used idle sessions are released, as for ``max_sessions`` (to the store when
    there is one), never one in use. ``"auto"``: :func:`default_state_budget` for the model's
    device when ``max_sessions`` is set, no budget when it is None (sessions held by their caller);
    None: no budget."""

    def __init__(self, engine: Engine, persistence: Persistence, *, sleep: SleepPolicy | None = None,
                 idle_release_s: float = 300.0, max_sessions: int | None = 1024, claimant: str | None = None,
                 key: bytes | None = None, max_remembered: int | None = None,
                 max_state_bytes: int | Literal["auto"] | None = "auto") -> None:
        self.engine, self.persistence = engine, persistence
        self.sleep = sleep or SleepPolicy()
        self.idle_release_s = idle_release_s
        self.max_sessions = max_sessions
        if max_state_bytes == "auto":
            max_state_bytes = default_state_budget(getattr(engine.model, "device", None)) if max_sessions else None
        self.max_state_bytes: int | None = max_state_bytes
        self._fresh_bytes = 0  # a new session's state, as last measured (what making room makes room for)
        self.claimant = claimant
        self._key = key if key is not None else os.urandom(32)  # digests mean something only with it
        self.live: dict[tuple[str, str], ChatSession] = {}
        # (tenant, digest of a whole transcript) -> ids of the sessions with that transcript
        self._index: dict[tuple[str, str], list[str]] = {}
        cap = max_remembered or max_sessions or 1024
        # digests of released sessions (memory only), the most recently released first to stay
        self._released: _Recent[tuple[str, str], list[str]] = _Recent(cap)
        # (tenant, digest of a transcript up to a reply) -> where a snapshot of that point is
        self._points: _Recent[tuple[str, str], _ForkPoint] = _Recent(4 * cap)
        self.released_total = 0
        self.sleep_totals: dict[str, float] = {"sleeps": 0, "sleep_s_hidden": 0.0, "sleep_s_exposed": 0.0}

    # --- opening ----------------------------------------------------------------------------------

    def new(self, tenant: str, session_id: str | None = None) -> ChatSession:
        """A fresh session (its store row created when the policy persists)."""
        if self.persistence.active:
            session_id = self.persistence.open(session_id, tenant)
        sid = session_id or uuid.uuid4().hex[:16]
        s = ChatSession(sid, tenant, self.engine.session(sid, policy=self.sleep, cache_scope=tenant), since=self._now())
        self._attach(s)
        if self.max_state_bytes is not None and not self._fresh_bytes:
            self._fresh_bytes = s.state_bytes
        return s

    def _now(self) -> float:
        """The store's clock (snapshot times are in it)."""
        return getattr(self.persistence.store, "clock", time.time)()

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
            self._resumed(s, *restored)

    def _resumed(self, s: ChatSession, info: ResumeInfo, meta: SessionMeta) -> None:
        """``s`` restored from a snapshot: a turn's checkpoint (``meta.paused``) pauses it now, as
        the reply it ends paused the session it continues (the same window boundary for its
        sleep, whatever had committed before that engine went away)."""
        s.resume, s.meta = info, replace(meta, paused=False)
        if meta.paused:
            self.engine.pause(s.engine_session)

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

    def _chain(self, turns: Sequence[ChatTurn], start: str = "") -> list[str]:
        return transcript_digests(self._key, turns, start)

    def record(self, s: ChatSession, turns: list[ChatTurn]) -> None:
        """``turns`` were read (or written) by ``s``: extend its transcript and re-index it."""
        self._unindex(s)
        s.digests += self._chain(turns, s.digests[-1] if s.digests else "")
        if s.digests:
            self._index.setdefault((s.tenant, s.digests[-1]), []).append(s.id)
        s.meta.messages_read = s.messages_read  # a count: what a resume by name may skip

    def snapshotted(self, s: ChatSession) -> None:
        """``s`` was just snapshotted after a reply: a retried or edited next request may fork
        from that point (from the newest exact snapshot of it)."""
        if s.digests and self.persistence.active:
            self._points.put((s.tenant, s.digests[-1]), _ForkPoint(s.id, s.messages_read, s.since))

    def _unindex(self, s: ChatSession) -> None:
        if s.digests:
            self._unindex_id(s.tenant, s.id, s.digests[-1])

    def _unindex_id(self, tenant: str, sid: str, digest: str) -> None:
        ids = self._index.get((tenant, digest), [])
        if sid in ids:
            ids.remove(sid)
        if not ids:
            self._index.pop((tenant, digest), None)

    # --- finding a request's session ----------------------------------------------------------

    async def find(self, tenant: str, turns: list[ChatTurn], session_id: str | None,
                   create: bool = False) -> tuple[ChatSession, list[ChatTurn], str]:
        """The session a history continues, the messages it still has to read, and what happened
        ("new", "reused" or "resumed"). ``create``: a named session that does not exist yet is
        made (a router or a LangChain config named it) instead of SessionNotFound."""
        chain = self._chain(turns)
        if session_id is not None:
            return await self._find_named(tenant, turns, chain, session_id, create)
        now = time.monotonic()
        for i in range(len(chain) - 1, 0, -1):  # i: messages a match holds; turns[i:] are read
            for sid in list(self._index.get((tenant, chain[i - 1]), [])):
                s = self.live.get((tenant, sid))
                if s is not None and s.available(now):
                    s.reserved_until = now + 30.0
                    return s, turns[i:], "reused"
                if s is None and (tenant, sid) in self._released and self.persistence.active:
                    # taken before the first await: making room releases others, and what the
                    # table remembers is capped, so the entry may be gone after it
                    digests = self._released.pop((tenant, sid))
                    try:
                        await self._make_room()
                        s = self.resume(tenant, sid)
                    except SessionNotFound:
                        continue
                    except BaseException:
                        self._remember(tenant, sid, digests)  # still recognisable next time
                        raise
                    s.digests = digests
                    s.reserved_until = now + 30.0
                    return s, turns[i:], "resumed"
            point = self._points.get((tenant, chain[i - 1]))
            if point is not None:
                await self._make_room()
                s = self._fork(tenant, point)
                if s is not None:
                    s.digests = chain[:i]
                    s.reserved_until = now + 30.0
                    return s, turns[i:], "forked"
        await self._make_room()
        s = self.new(tenant)
        s.reserved_until = now + 30.0
        return s, turns, "new"

    def _fork(self, tenant: str, point: _ForkPoint) -> ChatSession | None:
        """A new session from the newest exact snapshot of ``point`` (one that lost nothing: the
        window kept with ``persist_window``, or empty after a sleep, and nothing unread), or None
        when there is none left (pruned, expired, corrupted)."""
        store = self.persistence.store
        # optional store methods (SnapshotStore has them): a store without them cannot fork
        if store is None or not (hasattr(store, "list_snapshots") and hasattr(store, "load")):
            return None
        model = self.engine.model
        try:
            snaps = store.list_snapshots(point.session_id, tenant=tenant)
        except SnapshotError:
            return None
        exact = [x for x in snaps if x.created_at >= point.since and x.fingerprint == model.fingerprint
                 and (x.meta.get("session") or {}).get("messages_read") == point.count
                 and not any((x.meta.get("lost") or {}).values())]
        skipped: list[tuple[int, str]] = []
        for snap in reversed(exact):  # the newest first: after the pause's sleep, as the conversation went on
            try:
                info, payload = store.load(snap.id, tenant=tenant, fingerprint=model.fingerprint)
                state = model.state_from_bytes(payload)
            except (SleepAgentError, ValueError, RuntimeError) as e:
                skipped.append((snap.id, type(e).__name__))
                continue
            s = self.new(tenant)
            restored = restore(model, _OneSnapshot(_Restored(info, payload, skipped, state)), s.engine_session,
                               tenant=tenant)
            assert restored is not None
            self._resumed(s, *restored)
            return s
        return None

    async def _find_named(self, tenant: str, turns: list[ChatTurn], chain: list[str], session_id: str,
                          create: bool) -> tuple[ChatSession, list[ChatTurn], str]:
        s = self.live.get((tenant, session_id))
        status = "reused"
        if s is not None and s.leaving:  # its release is under way: wait it out, then resume it
            async with s.gate:
                pass
            s = self.live.get((tenant, session_id))
        if s is not None and not self._still_ours(s):  # another engine took it over
            self._drop(s)
            s = None
        if s is None:
            await self._make_room()
            try:
                s = self.resume(tenant, session_id)
                status = "resumed" if s.meta.messages_read else "new"
                released = self._released.pop((tenant, session_id), None)
                if released is not None and len(released) == s.meta.messages_read:
                    s.digests = released  # this process read it: the exact transcript, not just a count
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

    def live_bytes(self) -> int:
        """Bytes of every live session's state (:func:`state_bytes`; a storage several sessions
        share, as rows of one batched step's result, counted once)."""
        held: dict[int, int] = {}
        for s in list(self.live.values()):
            held.update(s.storages())
        return sum(held.values())

    async def _trim(self, need: int = 0) -> bool:
        """Release the least recently used idle sessions until the live state and ``need`` more
        bytes fit in ``max_state_bytes``; False when they still do not (every session left in use)."""
        budget = self.max_state_bytes
        if budget is None:
            return True
        while (held := self.live_bytes() + self.engine.prefix_cache_bytes()) + need > budget:
            # the engine's cached prefixes go first: one costs a read to rebuild, a released
            # session a round trip through the store
            if self.engine.evict_prefixes(held + need - budget):
                continue
            now = time.monotonic()
            idle = [s for s in self.live.values() if s.available(now)]
            if not idle:
                return False
            await self.release(min(idle, key=lambda s: s.last_used))
        return True

    async def _make_room(self) -> None:
        """Room for one more session (asked only when one is about to be made): at most
        ``max_sessions`` live, and their state and a fresh one's within ``max_state_bytes``, the
        least recently used released (to the store, where any engine can resume it); SessionsFull
        when every live session is in use."""
        while self.max_state_bytes is not None and self.live:
            if await self._trim(self._fresh_bytes):
                break
            leaving = [s for s in self.live.values() if s.leaving]
            if leaving:  # a release under way frees bytes: wait for it
                async with leaving[0].gate:
                    pass
                continue
            raise SessionsFull(f"live sessions hold {self.live_bytes()} state bytes of a budget of "
                               f"{self.max_state_bytes}, all in use; retry later")
        while self.max_sessions is not None and len(self.live) >= self.max_sessions:
            now = time.monotonic()
            idle = [s for s in self.live.values() if s.available(now)]
            leaving = [s for s in self.live.values() if s.leaving]
            if not idle and leaving:  # a release under way makes the room: wait for it
                async with leaving[0].gate:
                    pass
                continue
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
        fresh = self.engine.session(s.id, policy=self.sleep, cache_scope=s.tenant)
        s.engine_session, s.digests, s.dirty, s.meta = fresh, [], False, SessionMeta()
        s.since = self._now()
        self.persistence.hook(fresh, s.tenant, lambda: s.meta)

    # --- leaving memory ---------------------------------------------------------------------------

    async def release_idle(self, now: float | None = None) -> int:
        """Snapshot and release every session idle for ``idle_release_s`` (none in use), then the
        least recently used idle ones while the live state exceeds ``max_state_bytes`` (states grow
        after they were made: a window's KV, a sleep's refined hidden states)."""
        now = time.monotonic() if now is None else now
        idle = [s for s in self.live.values() if s.available(now) and now - s.last_used >= self.idle_release_s]
        before = self.released_total
        for s in idle:
            if s.available(time.monotonic()):  # a request may have taken it while an earlier one was released
                await self.release(s)
        await self._trim()
        return self.released_total - before

    def _remember(self, tenant: str, sid: str, digests: list[str]) -> None:
        """Keep a released session's digests (capped: the oldest are forgotten, and unindexed)."""
        for (t, old), old_digests in self._released.put((tenant, sid), digests):
            self._unindex_id(t, old, old_digests[-1])  # forgotten: no longer recognised

    async def release(self, s: ChatSession) -> None:
        """Write the session's state to the store (consolidating its window first, unless the
        policy keeps the window) and drop it from memory; its digests stay (in memory) so this
        process can still recognise the conversation. Only an available session may be released:
        from here on no request takes it (a continuation arriving meanwhile reads its history anew,
        or, naming it, waits for the release and resumes it)."""
        s.leaving = True
        async with s.gate:
            await self.persistence.settle(s.engine_session, s.tenant, s.meta, end=False)
            keep = self.persistence.active and bool(s.digests)  # recognisable again: resumed from the store
            if keep:
                self._remember(s.tenant, s.id, list(s.digests))
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
        # the commit hook's closure refers back to the session: without it the state is freed at
        # once, not at the next full garbage collection
        s.engine_session.on_commit = None
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
        return {"live": len(self.live), "released": self.released_total, "remembered": len(self._released),
                "fork_points": len(self._points), "state_bytes": self.live_bytes(),
                "prefix_cache_bytes": self.engine.prefix_cache_bytes(), "max_state_bytes": self.max_state_bytes}
