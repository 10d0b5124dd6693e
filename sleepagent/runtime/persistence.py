"""The one persistence path: what a session's snapshot holds, how it is written and resumed.

Every front door persists through :class:`Persistence`: the Agent when a session closes, the
server when it releases an idle session or checkpoints a reply, and every session after each
committed sleep (the engine's commit hook). The store is anything that implements
:class:`SessionStore` (``sleepagent.storage.SnapshotStore`` on SQLite or PostgreSQL; a test double
in memory), a few methods, as the OpenAI Agents SDK's ``Session`` is a protocol of a few methods.

A snapshot holds the committed fast weights and, with ``persist_window``, the window's ids minus
never-consolidate turns; no message text in any other form. The session's own bookkeeping
(:class:`SessionMeta`: whether the system turn was read, how many messages of the client's
history it holds) travels in the snapshot's metadata, as counts and flags, never text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from ..engine import Engine, EngineSession, kept_tokens
from ..errors import ConfigError, FingerprintMismatch, SleepAgentError, SnapshotCorrupted
from ..model import SleepModel
from ..policy import MemoryPolicy

__all__ = ["Persistence", "ResumeInfo", "SessionMeta", "SessionStore", "open_store", "restore", "snapshot"]


def open_store(store: Any) -> Any:
    """A store: ``store`` itself, a :class:`~sleepagent.storage.SnapshotStore` for a database URL
    (``sqlite:///path.db``, ``postgresql+psycopg://...``), or None."""
    from ..storage import SnapshotStore  # storage sits beside the core; loaded only when a store is used

    if store is None:
        return None
    if isinstance(store, str):
        return SnapshotStore(store)
    if not isinstance(store, SnapshotStore) and not all(
            callable(getattr(store, name, None)) for name in ("open_session", "save", "restore_point", "erase")):
        raise ConfigError(f"store must be a SnapshotStore (or a SessionStore), or a database URL; got "
                          f"{type(store).__name__}", field="store")
    return store


class SessionStore(Protocol):
    """What the runtime asks of a snapshot store (``sleepagent.storage.SnapshotStore`` is one).

    ``open_session`` creates or renews the tenant's session row; ``save`` appends a snapshot;
    ``restore_point`` finds the newest intact one (``accept(payload)`` decodes it, raising
    ``SnapshotCorrupted`` to skip it); ``erase`` deletes every byte of a session; ``touch``
    renews a session-retention lease; ``get_session`` reads a row (``SnapshotNotFound``
    otherwise); ``claim``/``owner_of`` say which engine owns a session when several share the
    store."""

    def open_session(self, session_id: str | None, *, tenant: str, fingerprint: str, policy: MemoryPolicy) -> Any: ...
    def get_session(self, session_id: str, *, tenant: str) -> Any: ...
    def save(self, session_id: str, payload: bytes, *, tenant: str, loops: int,
             meta: dict[str, Any] | None = None) -> Any: ...
    def restore_point(self, session_id: str, *, tenant: str, fingerprint: str | None = None,
                      accept: Callable[[bytes], Any] | None = None) -> Any: ...
    def erase(self, session_id: str, *, tenant: str) -> Any: ...
    def touch(self, session_id: str, *, tenant: str) -> None: ...
    def claim(self, session_id: str, *, tenant: str, owner: str) -> int: ...
    def owner_of(self, session_id: str, *, tenant: str) -> tuple[str | None, int]: ...


class RestorePointSource(Protocol):
    """The part of a :class:`SessionStore` that :func:`restore` reads (a fork passes a view of
    one snapshot)."""

    def restore_point(self, session_id: str, *, tenant: str, fingerprint: str | None = None,
                      accept: Callable[[bytes], Any] | None = None) -> Any: ...


@dataclass(kw_only=True)
class SessionMeta:
    """A conversation's bookkeeping, saved with every snapshot (flags and counts only).

    ``system_read``: the system turn (with the tool list) was read; later turns do not repeat it.
    ``messages_read``: how many messages of the client's history the session holds (the server
    and LangChain replay histories; a resume by name skips that many).
    ``paused``: taken as a reply ended, before the pause that follows it (a turn's checkpoint): a
    session restored from it pauses at once, so that it sleeps over the same window as the
    session it continues did, whether or not that sleep had committed (and been saved) before
    the engine that held it went away.
    """

    system_read: bool = False
    messages_read: int = 0
    paused: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SessionMeta:
        data = data or {}
        return cls(system_read=bool(data.get("system_read", False)), messages_read=int(data.get("messages_read", 0)),
                   paused=bool(data.get("paused", False)))


@dataclass(frozen=True)
class ResumeInfo:
    """How a session came back from the store (None for a new session).

    snapshot_id: the snapshot restored.
    skipped:     newer snapshots that failed their checks (corrupted, non-finite), (id, why):
                 the session resumed from an older one and lost what those held.
    window_tokens: tokens of the window restored (``persist_window``), re-read into it.
    lost:        tokens the snapshot did not hold, by reason: "window" (the window, without
                 ``persist_window``), "unread" (input queued but not read yet when it was
                 taken). Never-consolidate turns are in no count: not even their length is
                 stored.
    """

    snapshot_id: int
    skipped: list[tuple[int, str]] = field(default_factory=list)
    window_tokens: int = 0
    lost: dict[str, int] = field(default_factory=dict)


def snapshot(model: SleepModel, es: EngineSession, memory: MemoryPolicy,
             meta: SessionMeta | None = None) -> tuple[bytes, dict[str, Any]]:
    """A session's snapshot: (payload, metadata) for ``SessionStore.save``.

    Input queued but not read yet is not stored: only the count (and which structural tokens,
    like the assistant turn's closing token, were queued, so a resume closes the turn as the
    live session would). The metadata says what the snapshot could not hold (``lost``).

    Nothing in it depends on a never-consolidate turn: the payload holds no token of one (the
    window's ids without them; counters that count only the tokens the state holds in some form,
    :meth:`~sleepagent.model.HybridState.for_snapshot`), and the counts of ``lost`` leave them
    out, so that not even an excluded turn's length is stored."""
    state = es.state
    view = state.for_snapshot(keep_window=memory.persist_window)
    tok = model.tokenizer
    markers = {tuple(tok.close_turn()): "close_turn", tuple(tok.generation_prompt()): "generation_prompt"}
    queued, unread = [], 0
    for ids, consolidate in es.unread():
        marker = markers.get(tuple(ids))
        if marker is not None and not unread:
            queued.append(marker)
        elif consolidate:
            unread += len(ids)
    kept = kept_tokens(state)
    lost = {"window": 0 if memory.persist_window else kept, "unread": unread}
    dtype = torch.bfloat16 if memory.snapshot_dtype == "bfloat16" else None
    return view.to_bytes(model.fingerprint, dtype), {"queued": queued, "lost": lost,
                                                     "session": (meta or SessionMeta()).to_json()}


def restore(model: SleepModel, store: RestorePointSource, es: EngineSession, *,
            tenant: str) -> tuple[ResumeInfo, SessionMeta] | None:
    """Load a session's newest intact snapshot into ``es`` (state, queued structural tokens);
    returns what was restored and lost, and the session's bookkeeping, or None when there is
    nothing to resume."""

    def decode(payload: bytes) -> Any:  # decodable and this model's, else try an older one
        try:
            return model.state_from_bytes(payload)
        except FingerprintMismatch:
            raise
        except (SleepAgentError, ValueError, RuntimeError) as e:
            raise SnapshotCorrupted(f"unusable state: {e}") from None

    restored = store.restore_point(es.id, tenant=tenant, fingerprint=model.fingerprint, accept=decode)
    if restored is None:
        return None
    snap = restored.info
    es.state = restored.accepted
    tok = model.tokenizer
    # the snapshot holds no text: only which structural tokens were still queued
    markers = {"close_turn": tok.close_turn(), "generation_prompt": tok.generation_prompt()}
    es.pending = [(list(markers[m]), True) for m in snap.meta.get("queued", []) if m in markers]
    es.pending_offset = 0
    info = ResumeInfo(snapshot_id=snap.id, skipped=list(restored.skipped), window_tokens=es.state.window_len,
                      lost=dict(snap.meta.get("lost", {})))
    return info, SessionMeta.from_json(snap.meta.get("session"))


class Persistence:
    """Writes and resumes the sessions of one engine in one store under one memory policy.

    With no store, or an ephemeral policy, every method is a no-op: nothing touches the store
    or disk."""

    def __init__(self, engine: Engine, store: SessionStore | None, memory: MemoryPolicy) -> None:
        self.engine, self.store, self.memory = engine, store, memory

    @property
    def active(self) -> bool:
        return self.store is not None and self.memory.retention != "ephemeral"

    def open(self, session_id: str | None, tenant: str) -> str:
        """Create (or renew) the session's row; returns its id. FingerprintMismatch when the
        stored session was written by another model."""
        assert self.store is not None
        fp = self.engine.model.fingerprint
        info = self.store.open_session(session_id, tenant=tenant, fingerprint=fp, policy=self.memory)
        if info.fingerprint != fp:
            raise FingerprintMismatch(expected=fp, found=info.fingerprint)
        return info.id

    def resume(self, es: EngineSession, tenant: str) -> tuple[ResumeInfo, SessionMeta] | None:
        assert self.store is not None
        return restore(self.engine.model, self.store, es, tenant=tenant)

    def save(self, es: EngineSession, tenant: str, meta: SessionMeta) -> None:
        """Write a snapshot now (on the engine worker: from the commit hook, or via ``engine.call``)."""
        if not self.active:
            return
        assert self.store is not None
        payload, info = snapshot(self.engine.model, es, self.memory, meta)
        self.store.save(es.id, payload, tenant=tenant, loops=es.policy.loops, meta=info)

    def hook(self, es: EngineSession, tenant: str, meta: Callable[[], SessionMeta]) -> None:
        """Snapshot the session after every committed sleep that consolidated something (a sleep
        over never-consolidate tokens alone changes nothing; a snapshot of it would only tell,
        by the number of rows, how long the excluded turn was)."""
        if not self.active:
            return
        saved = {"consolidated": es.state.tokens_consolidated}

        def on_commit(e: EngineSession) -> None:
            if e.state.tokens_consolidated != saved["consolidated"]:
                saved["consolidated"] = e.state.tokens_consolidated
                self.save(e, tenant, meta())

        es.on_commit = on_commit

    async def checkpoint(self, es: EngineSession, tenant: str, meta: SessionMeta) -> None:
        """Snapshot now, in order with the session's queued work (after a reply: a failover then
        loses no committed turn)."""
        if self.active:
            await self.engine.call(es, lambda _state: self.save(es, tenant, meta))

    async def settle(self, es: EngineSession, tenant: str, meta: SessionMeta, *, end: bool) -> None:
        """Leave the session's state in the store as its policy says, before it leaves memory.

        ``end=False`` (a release: the conversation goes on later, on this engine or another):
        save its state, consolidating the window first unless ``persist_window`` keeps it.
        ``end=True`` (a close): the same, except that ``session`` retention and
        ``erase_on_close`` erase every byte of it instead."""
        await self.engine.wait_idle(es)
        if not self.active:
            return
        assert self.store is not None
        if end and (self.memory.retention == "session" or self.memory.erase_on_close):
            await self.engine.call(es, lambda _state: None)  # let queued work finish first
            self.store.erase(es.id, tenant=tenant)
        elif self.memory.persist_window or not es.state.window_len:
            await self.checkpoint(es, tenant, meta)
        else:
            await self.engine.consolidate(es)  # the commit hook writes the snapshot

    def touch(self, session_id: str, tenant: str) -> None:
        """Renew a ``session``-retention lease: the session is still in use."""
        if self.active and self.memory.retention == "session":
            assert self.store is not None
            self.store.touch(session_id, tenant=tenant)
