"""SnapshotStore: session fast-weight snapshots in SQLite or PostgreSQL, with an audit trail.

Payloads are the safetensors bytes of a :class:`~sleepagent.model.HybridState` (tensors plus a
string header with the format version and the model fingerprint); nothing read from the store is
ever unpickled. Every write is one transaction: a crash before the commit leaves the previous
snapshot exactly as it was. Each payload's sha256 is checked on every read.

SQLite: writes take the database lock up front (``BEGIN IMMEDIATE``), so several engines writing to
one file queue instead of failing, and ``secure_delete`` is on, so an erased payload's bytes are
overwritten in the file rather than left in free pages (``erase`` then checks the file).
PostgreSQL: the same tables and statements through psycopg 3.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from sleepagent.errors import (
    AccessDenied,
    ConfigError,
    FingerprintMismatch,
    SnapshotCorrupted,
    SnapshotError,
    SnapshotExpired,
    SnapshotNotFound,
)
from sleepagent.model.state import STATE_FORMAT_VERSION, read_header
from sleepagent.policy import MemoryPolicy

from .schema import Base, EventRow, SessionRow, SnapshotRow

__all__ = ["SnapshotStore", "SessionInfo", "SnapshotInfo", "EventRecord", "EraseReceipt"]


@dataclass(frozen=True)
class SessionInfo:
    id: str
    tenant: str
    fingerprint: str
    policy: MemoryPolicy
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class SnapshotInfo:
    id: int
    session_id: str
    created_at: float
    expires_at: float | None
    fingerprint: str
    format_version: str
    sha256: str
    size: int
    tokens_consolidated: int
    tokens_seen: int
    loops: int
    window_len: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EventRecord:
    id: int
    created_at: float
    tenant: str
    session_id: str | None
    kind: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class EraseReceipt:
    """What an erase removed. ``verified`` is True when the database file was re-read and none of
    the erased payloads' bytes were found (SQLite files only; None where it cannot be checked)."""

    session_id: str
    snapshots: int
    bytes: int
    sha256: list[str]
    verified: bool | None


def _snapshot_info(row: SnapshotRow) -> SnapshotInfo:
    return SnapshotInfo(
        id=row.id, session_id=row.session_id, created_at=row.created_at, expires_at=row.expires_at,
        fingerprint=row.fingerprint, format_version=row.format_version, sha256=row.sha256, size=row.size,
        tokens_consolidated=row.tokens_consolidated, tokens_seen=row.tokens_seen, loops=row.loops,
        window_len=row.window_len, meta=dict(row.meta or {}),
    )


def _session_info(row: SessionRow) -> SessionInfo:
    return SessionInfo(
        id=row.id, tenant=row.tenant, fingerprint=row.fingerprint, policy=MemoryPolicy(**row.policy),
        created_at=row.created_at, updated_at=row.updated_at,
    )


class SnapshotStore:
    """Session snapshots on SQLAlchemy. ``url``: ``sqlite:///path.db`` (default ``sleepagent.db``
    in the working directory) or ``postgresql+psycopg://user@host/db``.

    ``clock`` (seconds, like :func:`time.time`) is injectable so TTL behaviour can be tested
    without sleeping.
    """

    def __init__(self, url: str = "sqlite:///sleepagent.db", *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError(f"not a database URL: {url!r} (try sqlite:///path.db or postgresql+psycopg://...)", field="url") from None
        self.url = parsed
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.path: Path | None = None
        try:
            if self.is_sqlite:
                if not parsed.database or parsed.database == ":memory:":
                    raise ConfigError("SnapshotStore needs a SQLite file, not an in-memory database", field="url")
                self.path = Path(parsed.database).expanduser().resolve()
                if not self.path.parent.is_dir():
                    raise ConfigError(f"directory {self.path.parent} does not exist", field="url")
                self.engine: Engine = create_engine(
                    parsed, connect_args={"timeout": 30, "check_same_thread": False}
                )
                event.listen(self.engine, "connect", _sqlite_on_connect)
                event.listen(self.engine, "begin", _sqlite_on_begin)
            else:
                self.engine = create_engine(parsed, pool_pre_ping=True)
            Base.metadata.create_all(self.engine)
        except (NoSuchModuleError, ModuleNotFoundError) as e:
            raise ConfigError(f"no database driver for {parsed.drivername!r}: {e} (pip install 'sleepagent[postgres]')", field="url") from None
        except OperationalError as e:
            raise SnapshotError(f"cannot open the store at {parsed.render_as_string(hide_password=True)}: {e.orig}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._fault: Callable[[str], None] = lambda point: None  # test seam: crash injection

    def __repr__(self) -> str:
        return f"SnapshotStore({self.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SnapshotStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        try:
            with self._sessions() as db, db.begin():
                yield db
        except _Denied as e:
            # audited after the rollback, in a transaction of its own
            self.record("denied", e.tenant, e.session_id, action=e.action, owner=e.owner)
            raise AccessDenied(str(e)) from None

    # --- sessions -------------------------------------------------------------------------------

    def open_session(
        self, session_id: str | None, *, tenant: str, fingerprint: str, policy: MemoryPolicy
    ) -> SessionInfo:
        """Create the session row, or return the existing one (checking its tenant)."""
        session_id = session_id or uuid.uuid4().hex[:16]
        now = self.clock()
        for _ in range(3):
            try:
                with self._tx() as db:
                    row = db.get(SessionRow, session_id)
                    if row is not None:
                        self._check_tenant(row, tenant, "open")
                        return _session_info(row)
                    row = SessionRow(
                        id=session_id, tenant=tenant, fingerprint=fingerprint,
                        policy=policy.model_dump(mode="json"), created_at=now, updated_at=now,
                    )
                    db.add(row)
                    db.add(self._event("open", tenant, session_id, fingerprint=fingerprint[:16]))
                return _session_info(row)
            except IntegrityError:
                continue  # another writer created it at the same moment: read theirs
        raise SnapshotError(f"could not open session {session_id!r}")

    def get_session(self, session_id: str, *, tenant: str) -> SessionInfo:
        with self._tx() as db:
            row = self._session_row(db, session_id, tenant, "read")
            return _session_info(row)

    def list_sessions(self, *, tenant: str | None = None) -> list[SessionInfo]:
        with self._tx() as db:
            q = select(SessionRow).order_by(SessionRow.created_at)
            if tenant is not None:
                q = q.where(SessionRow.tenant == tenant)
            return [_session_info(r) for r in db.scalars(q)]

    # --- snapshots ------------------------------------------------------------------------------

    def save(
        self,
        session_id: str,
        payload: bytes,
        *,
        tenant: str,
        loops: int,
        meta: dict[str, Any] | None = None,
    ) -> SnapshotInfo:
        """Store one snapshot (one transaction) and prune beyond the session's ``max_snapshots``."""
        header = read_header(payload)
        counters = json.loads(header.get("counters", "{}"))
        now = self.clock()
        with self._tx() as db:
            srow = self._session_row(db, session_id, tenant, "write")
            policy = MemoryPolicy(**srow.policy)
            if header.get("fingerprint") != srow.fingerprint:
                raise FingerprintMismatch(expected=srow.fingerprint, found=str(header.get("fingerprint")))
            row = SnapshotRow(
                session_id=session_id, created_at=now,
                expires_at=now + policy.ttl if policy.ttl else None,
                fingerprint=srow.fingerprint, format_version=header.get("format_version", "?"),
                sha256=hashlib.sha256(payload).hexdigest(), size=len(payload),
                tokens_consolidated=int(counters.get("tokens_consolidated", 0)),
                tokens_seen=int(counters.get("tokens_seen", 0)), loops=loops,
                window_len=int(counters.get("window_len", 0)), meta=meta or {}, payload=payload,
            )
            db.add(row)
            db.flush()
            self._fault("after_payload_write")
            pruned = 0
            if policy.max_snapshots:
                old = db.scalars(
                    select(SnapshotRow.id).where(SnapshotRow.session_id == session_id)
                    .order_by(SnapshotRow.created_at.desc(), SnapshotRow.id.desc()).offset(policy.max_snapshots)
                ).all()
                if old:
                    db.execute(delete(SnapshotRow).where(SnapshotRow.id.in_(old)))
                    pruned = len(old)
            srow.updated_at = now
            db.add(self._event("persist", tenant, session_id, snapshot=row.id, bytes=len(payload),
                               sha256=row.sha256, pruned=pruned))
            return _snapshot_info(row)

    def list_snapshots(self, session_id: str, *, tenant: str, include_expired: bool = False) -> list[SnapshotInfo]:
        now = self.clock()
        with self._tx() as db:
            self._session_row(db, session_id, tenant, "list")
            q = select(SnapshotRow).where(SnapshotRow.session_id == session_id)
            if not include_expired:
                q = q.where((SnapshotRow.expires_at.is_(None)) | (SnapshotRow.expires_at > now))
            return [_snapshot_info(r) for r in db.scalars(q.order_by(SnapshotRow.created_at, SnapshotRow.id))]

    def latest(self, session_id: str, *, tenant: str, fingerprint: str | None = None) -> tuple[SnapshotInfo, bytes] | None:
        """The newest unexpired snapshot of the session and its verified payload, or None."""
        snaps = self.list_snapshots(session_id, tenant=tenant)
        if not snaps:
            return None
        return self.load(snaps[-1].id, tenant=tenant, fingerprint=fingerprint)

    def load(self, snapshot_id: int, *, tenant: str, fingerprint: str | None = None) -> tuple[SnapshotInfo, bytes]:
        """One snapshot and its payload; raises if missing, expired, corrupted or foreign."""
        with self._tx() as db:
            row = db.get(SnapshotRow, snapshot_id)
            if row is None:
                raise SnapshotNotFound(f"no snapshot {snapshot_id}")
            srow = db.get(SessionRow, row.session_id)
            assert srow is not None
            self._check_tenant(srow, tenant, "read")
            if row.expires_at is not None and row.expires_at <= self.clock():
                raise SnapshotExpired(f"snapshot {snapshot_id} of session {row.session_id!r} expired")
            payload = bytes(row.payload)
            info = _snapshot_info(row)
        if hashlib.sha256(payload).hexdigest() != info.sha256 or len(payload) != info.size:
            raise SnapshotCorrupted(
                f"snapshot {snapshot_id} of session {info.session_id!r} failed its sha256 check; "
                "the session's other snapshots are unaffected"
            )
        if fingerprint is not None and info.fingerprint != fingerprint:
            raise FingerprintMismatch(expected=fingerprint, found=info.fingerprint)
        if info.format_version != STATE_FORMAT_VERSION:
            raise SnapshotCorrupted(f"snapshot {snapshot_id} has state format {info.format_version!r}")
        self.record("restore", tenant, info.session_id, snapshot=snapshot_id)
        return info, payload

    # --- forgetting -----------------------------------------------------------------------------

    def erase(self, session_id: str, *, tenant: str) -> EraseReceipt:
        """Delete the session and every snapshot of it, for real, and leave a receipt event."""
        with self._tx() as db:
            srow = self._session_row(db, session_id, tenant, "erase")
            rows = db.execute(
                select(SnapshotRow.sha256, SnapshotRow.size).where(SnapshotRow.session_id == session_id)
            ).all()
            samples = [self._sample(db, session_id)] if rows else []
            db.execute(delete(SnapshotRow).where(SnapshotRow.session_id == session_id))
            db.delete(srow)
        verified = self._verify_gone([s for s in samples if s]) if self.is_sqlite else None
        receipt = EraseReceipt(
            session_id=session_id, snapshots=len(rows), bytes=sum(r[1] for r in rows),
            sha256=[r[0] for r in rows], verified=verified,
        )
        self.record("erase", tenant, session_id, snapshots=receipt.snapshots, bytes=receipt.bytes,
                    sha256=receipt.sha256, verified=verified)
        return receipt

    def purge(self) -> int:
        """Delete every expired snapshot (they are never returned anyway); returns how many."""
        now = self.clock()
        with self._tx() as db:
            expired = db.execute(
                select(SnapshotRow.id, SnapshotRow.session_id, SessionRow.tenant)
                .join(SessionRow, SessionRow.id == SnapshotRow.session_id)
                .where(SnapshotRow.expires_at.is_not(None), SnapshotRow.expires_at <= now)
            ).all()
            if expired:
                db.execute(delete(SnapshotRow).where(SnapshotRow.id.in_([e[0] for e in expired])))
                for sid, tenant in {(e[1], e[2]) for e in expired}:
                    ids = [e[0] for e in expired if e[1] == sid]
                    db.add(self._event("purge", tenant, sid, snapshots=ids))
        return len(expired)

    # --- audit ----------------------------------------------------------------------------------

    def record(self, kind: str, tenant: str, session_id: str | None, **detail: Any) -> None:
        with self._tx() as db:
            db.add(self._event(kind, tenant, session_id, **detail))

    def events(self, *, session_id: str | None = None, tenant: str | None = None) -> list[EventRecord]:
        with self._tx() as db:
            q = select(EventRow).order_by(EventRow.id)
            if session_id is not None:
                q = q.where(EventRow.session_id == session_id)
            if tenant is not None:
                q = q.where(EventRow.tenant == tenant)
            return [
                EventRecord(r.id, r.created_at, r.tenant, r.session_id, r.kind, json.loads(r.detail))
                for r in db.scalars(q)
            ]

    def _event(self, kind: str, tenant: str, session_id: str | None, **detail: Any) -> EventRow:
        return EventRow(created_at=self.clock(), tenant=tenant, session_id=session_id, kind=kind,
                        detail=json.dumps(detail, sort_keys=True, default=str))

    def _session_row(self, db: Session, session_id: str, tenant: str, action: str) -> SessionRow:
        """The session's row, checked to belong to ``tenant``."""
        row = db.get(SessionRow, session_id)
        if row is None:
            raise SnapshotNotFound(f"no session {session_id!r}")
        self._check_tenant(row, tenant, action)
        return row

    def _check_tenant(self, row: SessionRow, tenant: str, action: str) -> None:
        if row.tenant != tenant:
            raise _Denied(tenant, row.id, action, row.tenant)

    def _sample(self, db: Session, session_id: str) -> list[bytes]:
        """Slices of the session's payloads (from their tensor data, past the header) to look for
        in the file after the erase."""
        out = []
        for payload in db.scalars(select(SnapshotRow.payload).where(SnapshotRow.session_id == session_id)):
            payload = bytes(payload)
            n = int.from_bytes(payload[:8], "little") + 8
            data = payload[n:]
            if len(data) >= 64:
                # a slice from the middle: fast-weight bytes, not zero padding at the start
                mid = len(data) // 2
                out.append(data[mid : mid + 64])
        return out

    def _verify_gone(self, samples: list[list[bytes]]) -> bool:
        assert self.path is not None
        needles = [s for group in samples for s in group if s.strip(b"\x00")]
        if not needles:
            return True
        self.engine.dispose()  # flush and close pooled connections before reading the file
        data = self.path.read_bytes()
        return not any(n in data for n in needles)


class _Denied(AccessDenied):
    """Carries the audit record of a denied access to :meth:`SnapshotStore._tx`."""

    def __init__(self, tenant: str, session_id: str, action: str, owner: str) -> None:
        super().__init__(f"tenant {tenant!r} may not {action} session {session_id!r}")
        self.tenant, self.session_id, self.action, self.owner = tenant, session_id, action, owner


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE instead of pysqlite's deferred BEGIN.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
