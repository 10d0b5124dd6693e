"""SnapshotStore: session fast-weight snapshots in SQLite or PostgreSQL, with an audit trail.

Payloads are the safetensors bytes of a model state (tensors plus a string header with the format
version and the model fingerprint); nothing read from the store is ever unpickled. Every write is
one transaction: a crash before the commit leaves the previous snapshot exactly as it was. Each
payload's sha256 is checked on every read, and a payload with non-finite tensors is refused.

Privacy, as the store enforces it:
- **Tenants are namespaces.** Sessions are keyed by (tenant, id); a tenant naming another
  tenant's snapshot gets exactly the answer a missing one gets (:class:`SnapshotNotFound`, same
  text, and the same work: see the audit below, and :mod:`sleepagent.storage.timing` for the
  clock).
- **What a refused read leaves in the audit trail** (``sleep_events``; a trail is the rows of one
  ``tenant`` value):

  * :meth:`load` by snapshot number (snapshot ids are global, so a number can name another
    tenant's snapshot): another tenant's snapshot gives one ``denied`` row in the *owner's*
    trail (its ``session_id`` is the owner's session; detail ``action="read"``, ``by_tenant``,
    ``snapshot``); a number in range that no snapshot has gives one ``not_found`` row, with the
    same detail, in the store's own trail (tenant :data:`STORE_TRAIL`, the empty string, which no
    tenant can be named). The reader's own trail gets nothing in either case. The row is
    written by the same single INSERT in the read's own transaction, committed before the
    caller gets its :class:`SnapshotNotFound`: a crash cannot lose it, and the caller waits for
    the same work either way (the price: a refused read costs a commit, on SQLite a journal
    sync, even for an id nobody owns). Each case takes one event id from the store-wide
    sequence, so event ids do not tell them apart either. A number below 1 or above 2**63 - 1
    (no snapshot can have it) and a read of one's own expired snapshot are refused without an
    audit row.
  * Everything addressed by session id (:meth:`latest`, :meth:`restore_point`,
    :meth:`list_snapshots`, :meth:`get_session`, :meth:`save`, :meth:`erase`, :meth:`claim`,
    :meth:`owner_of`, :meth:`touch`) looks only in the caller's own namespace: another tenant's
    session of the same name is a different session, never looked up, so there is no owner and
    nothing is audited; the answer is :class:`SnapshotNotFound` as for any name the caller
    does not have.
  * A read-only store writes no audit rows at all (each skipped one is logged as a warning).
  * Successful reads leave ``restore`` rows (with ``skip_corrupted`` for snapshots a resume
    passed over), writes ``open``, ``claim``, ``persist``, ``erase`` (the receipt) and ``purge``;
    every detail holds ids, counts, sizes and hashes, never message text.
- **Logs carry ids, never text.** The store's own log lines name sessions, snapshot ids and
  paths; SQLAlchemy's statement logging (on as soon as an application sets INFO or DEBUG) gets
  no parameter values (``hide_parameters``), and payloads are read past its row logging, since a
  persisted window's token ids are message text.
- **Expired means deleted.** Every write (and :meth:`purge`, ``sleepagent snapshots purge``, and
  opening the store) deletes expired snapshots, and reclaims ``session``-retention sessions
  whose lease ran out (a process that crashed never closed them): the lease is renewed by every
  snapshot and turn (:meth:`touch`) and lasts ``MemoryPolicy.lease`` seconds.
- **Deleted means overwritten** on SQLite: ``secure_delete`` is on, so deleted payloads' bytes are
  zeroed in the file rather than left in free pages (``erase`` re-reads the file to check).
  PostgreSQL deletes the rows; their space is reclaimed by VACUUM, as PostgreSQL does.

SQLite: writes take the database lock up front (``BEGIN IMMEDIATE``), so several engines writing to
one file queue instead of failing. A read-only file can still be read (its audit rows are then
skipped with a warning). PostgreSQL: the same tables through psycopg 3; reads that must agree with
each other (resume) run in one REPEATABLE READ transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from sqlalchemy import Table, create_engine, delete, event, insert, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    IntegrityError,
    NoSuchModuleError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from sleepagent.errors import (
    ConfigError,
    FingerprintMismatch,
    SnapshotCorrupted,
    SnapshotError,
    SnapshotExpired,
    SnapshotNotFound,
    StoreError,
)
from sleepagent.model.state import STATE_FORMAT_VERSION, read_header
from sleepagent.policy import MemoryPolicy

from .schema import SCHEMA_VERSION, Base, EventRow, SchemaRow, SessionRow, SnapshotRow

__all__ = [
    "STORE_TRAIL",
    "EraseReceipt",
    "EventRecord",
    "Restored",
    "SessionInfo",
    "SnapshotInfo",
    "SnapshotStore",
    "check_name",
]

logger = logging.getLogger(__name__)

_MAX_ID = 2**63 - 1
# The audit trail of the store itself (reads of snapshot ids nobody owns): no tenant can have this
# name, since check_name requires at least one character.
STORE_TRAIL = ""
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")


def check_name(value: object, what: str) -> str:
    """A tenant or session id: 1 to 128 characters, none of them a control character (PostgreSQL
    refuses NUL, and a name is shown in tables and logs)."""
    if isinstance(value, str) and _NAME.match(value):
        return value
    shown = (
        repr(value) if not isinstance(value, str) or len(value) <= 40 else f"{value[:40]!r}… ({len(value)} characters)"
    )
    raise ConfigError(f"{what} must be a string of 1 to 128 characters without control characters, got {shown}",
                      field=what)


@dataclass(frozen=True)
class SessionInfo:
    """A session row. ``policy`` is the policy as stored: without its never-consolidate patterns
    (a pattern may spell out the very secret it guards; the row keeps only their number) and
    without its classifier (code is never stored)."""

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


@dataclass(frozen=True)
class Restored:
    """What a resume restores: the newest snapshot that passed every check, and the newer ones
    that did not (``skipped``: (snapshot id, why)), so the caller can say what was lost."""

    info: SnapshotInfo
    payload: bytes
    skipped: list[tuple[int, str]] = field(default_factory=list)
    accepted: Any = None  # what ``accept(payload)`` returned (e.g. the decoded state)


def _snapshot_info(row: SnapshotRow) -> SnapshotInfo:
    return SnapshotInfo(
        id=row.id, session_id=row.session_id, created_at=row.created_at, expires_at=row.expires_at,
        fingerprint=row.fingerprint, format_version=row.format_version, sha256=row.sha256, size=row.size,
        tokens_consolidated=row.tokens_consolidated, tokens_seen=row.tokens_seen, loops=row.loops,
        window_len=row.window_len, meta=dict(row.meta or {}),
    )


def _stored_policy(policy: MemoryPolicy) -> dict[str, Any]:
    """What a session row keeps of its policy: everything but the never-consolidate patterns (only
    their number) and the classifier (excluded from every dump)."""
    data = policy.model_dump(mode="json", exclude={"never_consolidate"})
    data["never_consolidate_count"] = len(policy.never_consolidate)
    return data


def _policy_of(data: dict[str, Any]) -> MemoryPolicy:
    """The stored policy back (rows written before patterns were left out still hold them)."""
    return MemoryPolicy(**{k: v for k, v in data.items() if k in MemoryPolicy.model_fields})


def _session_info(row: SessionRow) -> SessionInfo:
    return SessionInfo(
        id=row.id, tenant=row.tenant, fingerprint=row.fingerprint, policy=_policy_of(row.policy),
        created_at=row.created_at, updated_at=row.updated_at,
    )


def check_payload(payload: bytes) -> dict[str, str]:
    """The payload's header, after checking that it is a safetensors blob whose tensors are all
    finite (a state with NaN or inf would poison every later turn of the session)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise SnapshotCorrupted(f"a snapshot payload must be bytes, got {type(payload).__name__}")
    header = read_header(bytes(payload))
    try:
        tensors = st_load(bytes(payload))
    except (SafetensorError, ValueError) as e:
        raise SnapshotCorrupted(f"payload is not readable safetensors: {e}") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise SnapshotCorrupted(f"payload tensor {name!r} holds non-finite values (NaN or inf)")
    return header


class SnapshotStore:
    """Session snapshots on SQLAlchemy. ``url``: ``sqlite:///path.db`` or
    ``postgresql+psycopg://user@host/db``.

    ``create=False`` opens only an existing store (the CLI: a mistyped path is an error, not a new
    empty database). ``read_only=True`` (or a SQLite file this process cannot write) opens it for
    reading: reads work (their audit rows are skipped, with a warning), writes raise StoreError.
    ``clock`` (seconds, like :func:`time.time`) is injectable so TTL and lease
    behaviour can be tested without sleeping.
    """

    def __init__(self, url: str = "sqlite:///sleepagent.db", *, create: bool = True, read_only: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        if not isinstance(url, str):
            raise ConfigError(f"store URL must be a string, got {type(url).__name__}", field="url")
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError(
                f"not a database URL: {url!r} (try sqlite:///path.db or postgresql+psycopg://...)", field="url"
            ) from None
        self.url = parsed
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.path: Path | None = None
        self.read_only = False
        where = parsed.render_as_string(hide_password=True)
        # hide_parameters: SQLAlchemy logs each statement with its values as soon as an application
        # turns logging up to INFO (and puts them in error messages); a payload holds a persisted
        # window's token ids, so values never reach a log line, only the statements do
        try:
            if self.is_sqlite:
                if not parsed.database or parsed.database == ":memory:":
                    raise ConfigError("SnapshotStore needs a SQLite file, not an in-memory database", field="url")
                self.path = Path(parsed.database).expanduser().resolve()
                if not self.path.parent.is_dir():
                    raise ConfigError(f"directory {self.path.parent} does not exist", field="url")
                if not self.path.exists() and not create:
                    raise StoreError(f"no snapshot store at {self.path}")
                # a file this process may not write (or read_only=True) opens read-only: SQLite
                # itself then refuses writes, and reads need no lock or journal
                self.read_only = self.path.exists() and (read_only or not (
                    os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
                ))
                target = f"sqlite:///file:{self.path}?mode=ro&uri=true" if self.read_only else parsed
                self.engine: Engine = create_engine(target, connect_args={"timeout": 30, "check_same_thread": False},
                                                    hide_parameters=True)
                event.listen(self.engine, "connect", _sqlite_on_connect)
                if not self.read_only:
                    event.listen(self.engine, "begin", _sqlite_on_begin)
            else:
                self.engine = create_engine(parsed, pool_pre_ping=True, hide_parameters=True)
            self._prepare(create, where)
        except (NoSuchModuleError, ModuleNotFoundError) as e:
            raise ConfigError(
                f"no database driver for {parsed.drivername!r}: {e} (pip install 'sleepagent[postgres]')", field="url"
            ) from None
        except DatabaseError as e:
            raise StoreError(f"cannot open the store at {where}: {_reason(e)}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # resume reads several rows that must agree (PostgreSQL's default READ COMMITTED would let
        # a concurrent prune slip in between statements); SQLite's BEGIN IMMEDIATE already does
        self._consistent = self._sessions if self.is_sqlite else sessionmaker(
            self.engine.execution_options(isolation_level="REPEATABLE READ"), expire_on_commit=False)
        self._fault: Callable[[str], None] = lambda point: None  # test seam: crash injection
        # a process that crashed left expired snapshots and leases behind: reclaim them now
        self.purged_on_open = 0 if self.read_only else self.purge()

    def _prepare(self, create: bool, where: str) -> None:
        """Check the schema (create it in a new store) and refuse other versions."""
        tables = set(inspect(self.engine).get_table_names())
        if "sleep_sessions" in tables and "sleep_schema" not in tables:
            raise StoreError(f"{where} holds a store written by an older sleepagent (schema 1); "
                             f"this version reads schema {SCHEMA_VERSION}: start a new store")
        if "sleep_schema" not in tables:
            if not create or self.read_only:
                raise StoreError(f"{where} is not a sleepagent snapshot store")
            Base.metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                conn.execute(cast(Table, SchemaRow.__table__).insert().values(version=SCHEMA_VERSION))
                if not self.is_sqlite:
                    # fast weights are incompressible floats: skip TOAST's compression attempt
                    conn.exec_driver_sql("ALTER TABLE sleep_snapshots ALTER COLUMN payload SET STORAGE EXTERNAL")
            return
        with self.engine.connect() as conn:
            versions = [r[0] for r in conn.execute(select(SchemaRow.version))]
        if versions != [SCHEMA_VERSION]:
            raise StoreError(f"{where} has store schema {versions}; this sleepagent reads schema {SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"SnapshotStore({self.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SnapshotStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, factory: Callable[[], Session] | None = None) -> Iterator[Session]:
        """One transaction; database failures become typed errors naming the store."""
        try:
            with (factory or self._sessions)() as db, db.begin():
                yield db
        except (IntegrityError, SnapshotError, ConfigError):
            raise
        except DatabaseError as e:
            if self.read_only or "readonly" in str(e).replace("-", ""):
                raise StoreError(f"the store at {self.path or self.url} is read-only: {_reason(e)}") from None
            raise StoreError(f"store {self!r} failed: {_reason(e)}") from None
        except SQLAlchemyError as e:
            raise StoreError(f"store {self!r} failed: {_reason(e)}") from None

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"the store at {self.path} is read-only")

    # --- sessions -------------------------------------------------------------------------------

    def open_session(
        self, session_id: str | None, *, tenant: str, fingerprint: str, policy: MemoryPolicy
    ) -> SessionInfo:
        """Create the tenant's session row, or return the existing one (renewing its lease)."""
        session_id = check_name(session_id or uuid.uuid4().hex[:16], "session_id")
        check_name(tenant, "tenant")
        self._writable()
        now = self.clock()
        for _ in range(3):
            try:
                with self._tx() as db:
                    self._sweep(db, now)
                    row = db.get(SessionRow, (tenant, session_id))
                    if row is not None:
                        self._renew(row, now)
                        return _session_info(row)
                    row = SessionRow(
                        id=session_id, tenant=tenant, fingerprint=fingerprint,
                        policy=_stored_policy(policy), created_at=now, updated_at=now,
                    )
                    self._renew(row, now)
                    db.add(row)
                    db.add(self._event("open", tenant, session_id, fingerprint=fingerprint[:16]))
                return _session_info(row)
            except IntegrityError:
                continue  # another writer created it at the same moment: read theirs
        raise StoreError(f"could not open session {session_id!r}")

    def claim(self, session_id: str, *, tenant: str, owner: str) -> int:
        """``owner`` (an engine) now holds the session live; returns the claim's epoch. Any
        earlier holder sees a newer epoch in :meth:`owner_of` and drops its copy."""
        with self._tx() as db:
            row = self._session_row(db, session_id, tenant)
            row.owner, row.owner_epoch = owner, (row.owner_epoch or 0) + 1
            db.add(self._event("claim", tenant, session_id, owner=owner, epoch=row.owner_epoch))
            return row.owner_epoch

    def owner_of(self, session_id: str, *, tenant: str) -> tuple[str | None, int]:
        """(the engine that last claimed the session, the claim's epoch)."""
        with self._tx() as db:
            row = self._session_row(db, session_id, tenant)
            return row.owner, row.owner_epoch or 0

    def touch(self, session_id: str, *, tenant: str) -> None:
        """Renew a ``session``-retention session's lease (a live session's every turn)."""
        if self.read_only:
            return
        now = self.clock()
        with self._tx() as db:
            row = self._session_row(db, session_id, tenant)
            self._renew(row, now)

    @staticmethod
    def _renew(row: SessionRow, now: float) -> None:
        policy = _policy_of(row.policy)
        row.lease_until = now + policy.lease if policy.retention == "session" else None

    def get_session(self, session_id: str, *, tenant: str) -> SessionInfo:
        with self._tx() as db:
            return _session_info(self._session_row(db, session_id, tenant))

    def list_sessions(self, *, tenant: str | None = None) -> list[SessionInfo]:
        with self._tx() as db:
            q = select(SessionRow).order_by(SessionRow.created_at, SessionRow.id)
            if tenant is not None:
                q = q.where(SessionRow.tenant == check_name(tenant, "tenant"))
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
        """Store one snapshot (one transaction), prune beyond the session's ``max_snapshots`` and
        delete whatever has expired meanwhile. ``meta`` must hold no message text: counts, flags."""
        self._writable()
        header = check_payload(payload)
        payload = bytes(payload)
        counters = json.loads(header.get("counters", "{}"))
        now = self.clock()
        with self._tx() as db:
            self._sweep(db, now)
            srow = self._session_row(db, session_id, tenant)
            policy = _policy_of(srow.policy)
            if header.get("fingerprint") != srow.fingerprint:
                raise FingerprintMismatch(expected=srow.fingerprint, found=str(header.get("fingerprint")))
            row = SnapshotRow(
                tenant=tenant, session_id=session_id, created_at=now,
                expires_at=now + policy.ttl if policy.ttl else None,
                fingerprint=srow.fingerprint, format_version=header.get("format_version", "?"),
                sha256=hashlib.sha256(payload).hexdigest(), size=len(payload),
                tokens_consolidated=int(counters.get("tokens_consolidated", 0)),
                tokens_seen=int(counters.get("tokens_seen", 0)), loops=int(loops),
                window_len=int(counters.get("window_len", 0)), meta=meta or {}, payload=payload,
            )
            db.add(row)
            db.flush()
            self._fault("after_payload_write")
            pruned = 0
            if policy.max_snapshots:
                old = db.scalars(
                    select(SnapshotRow.id).where(*_of(tenant, session_id))
                    .order_by(SnapshotRow.created_at.desc(), SnapshotRow.id.desc()).offset(policy.max_snapshots)
                ).all()
                if old:
                    db.execute(delete(SnapshotRow).where(SnapshotRow.id.in_(old)))
                    pruned = len(old)
            srow.updated_at = now
            self._renew(srow, now)
            db.add(self._event("persist", tenant, session_id, snapshot=row.id, bytes=len(payload),
                               sha256=row.sha256, pruned=pruned))
            return _snapshot_info(row)

    def list_snapshots(self, session_id: str, *, tenant: str, include_expired: bool = False) -> list[SnapshotInfo]:
        now = self.clock()
        with self._tx() as db:
            self._session_row(db, session_id, tenant)
            q = select(SnapshotRow).where(*_of(tenant, session_id))
            if not include_expired:
                q = q.where(_live(now))
            return [_snapshot_info(r) for r in db.scalars(q.order_by(SnapshotRow.created_at, SnapshotRow.id))]

    def latest(
        self, session_id: str, *, tenant: str, fingerprint: str | None = None
    ) -> tuple[SnapshotInfo, bytes] | None:
        """The newest unexpired snapshot of the session and its verified payload, or None; read
        in one transaction (a concurrent prune cannot remove it between finding and reading)."""
        now = self.clock()
        with self._tx(self._consistent) as db:
            self._session_row(db, session_id, tenant)
            row = db.scalars(select(SnapshotRow).where(*_of(tenant, session_id), _live(now))
                             .order_by(SnapshotRow.created_at.desc(), SnapshotRow.id.desc()).limit(1)).first()
            if row is None:
                return None
            info, payload = _snapshot_info(row), self._payload(db, row)
        self._verify(info, payload, fingerprint)
        self._audit("restore", tenant, info.session_id, snapshot=info.id)
        return info, payload

    def restore_point(
        self, session_id: str, *, tenant: str, fingerprint: str | None = None,
        accept: Callable[[bytes], Any] | None = None,
    ) -> Restored | None:
        """What a resume restores: the newest snapshot that passes its checks (sha256, format,
        fingerprint, finite tensors, and ``accept(payload)``, which raises
        :class:`SnapshotCorrupted` to refuse one; what it returns is :attr:`Restored.accepted`),
        read in one transaction; the newer snapshots
        that failed are listed in :attr:`Restored.skipped` and audited. None: nothing to resume."""
        now = self.clock()
        skipped: list[tuple[int, str]] = []
        found: tuple[SnapshotInfo, bytes, Any] | None = None
        with self._tx(self._consistent) as db:
            self._session_row(db, session_id, tenant)
            ids = db.scalars(select(SnapshotRow.id).where(*_of(tenant, session_id), _live(now))
                             .order_by(SnapshotRow.created_at.desc(), SnapshotRow.id.desc())).all()
            for sid in ids:
                row = db.get(SnapshotRow, sid)
                if row is None:  # pragma: no cover - excluded by the transaction's snapshot
                    continue
                info, payload = _snapshot_info(row), self._payload(db, row)
                try:
                    self._verify(info, payload, fingerprint)
                    check_payload(payload)
                    value = accept(payload) if accept is not None else None
                except SnapshotCorrupted as e:
                    skipped.append((sid, str(e)))
                    continue
                found = (info, payload, value)
                break
        for sid, _ in skipped:
            self._audit("skip_corrupted", tenant, session_id, snapshot=sid)
            # the reason stays out of the log (an ``accept`` hook's message could quote the
            # state it refused); the caller gets it in Restored.skipped
            logger.warning("session %r: snapshot %d failed its checks; resuming from an older one", session_id, sid)
        if found is None:
            if skipped:
                raise SnapshotCorrupted(
                    f"session {session_id!r}: none of its {len(skipped)} snapshot(s) passed its checks"
                )
            return None
        self._audit("restore", tenant, session_id, snapshot=found[0].id, skipped=[s for s, _ in skipped])
        return Restored(found[0], found[1], skipped, found[2])

    def load(self, snapshot_id: int, *, tenant: str, fingerprint: str | None = None) -> tuple[SnapshotInfo, bytes]:
        """One snapshot and its payload; raises if missing (or another tenant's: the same answer,
        after the same statements and one audit row either way; see the module docstring),
        expired, corrupted or made by another model."""
        check_name(tenant, "tenant")
        if isinstance(snapshot_id, bool) or not isinstance(snapshot_id, int):
            raise ConfigError(f"snapshot id must be an integer, got {type(snapshot_id).__name__}", field="snapshot_id")
        missing = SnapshotNotFound(
            f"no snapshot {snapshot_id}" if snapshot_id.bit_length() < 80 else "no such snapshot"
        )
        if not 1 <= snapshot_id <= _MAX_ID:
            raise missing
        refused = False
        with self._tx() as db:
            # always exactly one result row (NULLs for a missing id), so a hit and a miss fetch alike
            of_id = SnapshotRow.id == snapshot_id
            owner_tenant, owner_session = db.execute(select(
                select(SnapshotRow.tenant).where(of_id).scalar_subquery(),
                select(SnapshotRow.session_id).where(of_id).scalar_subquery(),
            )).one()
            if owner_tenant != tenant:
                # another tenant's snapshot and a missing one: the same statements, the same
                # answer, and the audit committed with this transaction before the caller hears
                # anything (so neither the clock nor a crash tells them apart or loses the row)
                self._audit_refused_read(db, snapshot_id, tenant,
                                         owner=None if owner_tenant is None else (owner_tenant, owner_session))
                refused = True
            else:
                row = db.get(SnapshotRow, snapshot_id)
                assert row is not None  # its owner was read in this transaction
                if row.expires_at is not None and row.expires_at <= self.clock():
                    raise SnapshotExpired(f"snapshot {snapshot_id} of session {row.session_id!r} expired")
                payload = self._payload(db, row)
                info = _snapshot_info(row)
        if refused:
            raise missing
        self._verify(info, payload, fingerprint)
        self._audit("restore", tenant, info.session_id, snapshot=snapshot_id)
        return info, payload

    def _payload(self, db: Session, row: SnapshotRow) -> bytes:
        """A snapshot's bytes, in the caller's transaction. The column is deferred (listing rows
        never moves payloads); PostgreSQL sends it in binary, not as hex text twice its size."""
        found = self._raw_payloads(db, "id = {}", row.id)
        if not found:  # pragma: no cover - the row was read in this transaction
            raise SnapshotNotFound(f"no snapshot {row.id}")
        return found[0]

    def _raw_payloads(self, db: Session, where: str, *params: Any) -> list[bytes]:
        """Payload bytes through the driver's own cursor, in the caller's transaction: SQLAlchemy
        logs every result row at DEBUG (a truncated repr keeps a payload's head and tail, where a
        persisted window's token ids can lie), and this read must leave no trace in a log."""
        raw: Any = db.connection().connection.driver_connection  # sqlite3 or psycopg: typed per driver
        mark = "?" if self.is_sqlite else "%s"
        sql = f"SELECT payload FROM sleep_snapshots WHERE {where.format(*[mark] * len(params))} ORDER BY id"
        if self.is_sqlite:
            return [bytes(r[0]) for r in raw.execute(sql, params).fetchall()]
        with raw.cursor(binary=True) as cur:
            cur.execute(sql, params)
            return [bytes(r[0]) for r in cur.fetchall()]

    def _verify(self, info: SnapshotInfo, payload: bytes, fingerprint: str | None) -> None:
        if hashlib.sha256(payload).hexdigest() != info.sha256 or len(payload) != info.size:
            raise SnapshotCorrupted(
                f"snapshot {info.id} of session {info.session_id!r} failed its sha256 check; "
                "the session's other snapshots are unaffected"
            )
        if fingerprint is not None and info.fingerprint != fingerprint:
            raise FingerprintMismatch(expected=fingerprint, found=info.fingerprint)
        if info.format_version != STATE_FORMAT_VERSION:
            raise SnapshotCorrupted(f"snapshot {info.id} has state format {info.format_version!r}")

    # --- forgetting -----------------------------------------------------------------------------

    def erase(self, session_id: str, *, tenant: str) -> EraseReceipt:
        """Delete the session and every snapshot of it, for real, and leave a receipt event."""
        self._writable()
        with self._tx() as db:
            srow = self._session_row(db, session_id, tenant)
            rows, samples = self._delete_session(db, srow)
        verified = self._verify_gone(samples) if self.is_sqlite else None
        receipt = EraseReceipt(
            session_id=session_id, snapshots=len(rows), bytes=sum(r[1] for r in rows),
            sha256=[r[0] for r in rows], verified=verified,
        )
        self.record("erase", tenant, session_id, snapshots=receipt.snapshots, bytes=receipt.bytes,
                    sha256=receipt.sha256, verified=verified)
        return receipt

    def purge(self) -> int:
        """Delete every expired snapshot and every ``session``-retention session whose lease ran
        out (the store also does this on every write); returns how many snapshots went."""
        self._writable()
        with self._tx() as db:
            return self._sweep(db, self.clock())

    def _sweep(self, db: Session, now: float) -> int:
        """Expiry and lease reclamation inside the caller's transaction (secure_delete zeroes the
        bytes on SQLite); each removal leaves a purge event with ids and counts only."""
        expired = db.execute(
            select(SnapshotRow.id, SnapshotRow.tenant, SnapshotRow.session_id)
            .where(SnapshotRow.expires_at.is_not(None), SnapshotRow.expires_at <= now)
        ).all()
        if expired:
            db.execute(delete(SnapshotRow).where(SnapshotRow.id.in_([e[0] for e in expired])))
            for tenant, sid in {(e[1], e[2]) for e in expired}:
                db.add(
                    self._event(
                        "purge",
                        tenant,
                        sid,
                        snapshots=[e[0] for e in expired if (e[1], e[2]) == (tenant, sid)],
                        reason="ttl",
                    )
                )
        lapsed = db.scalars(
            select(SessionRow).where(SessionRow.lease_until.is_not(None), SessionRow.lease_until <= now)
        ).all()
        gone = len(expired)
        for srow in lapsed:
            rows, _ = self._delete_session(db, srow)
            gone += len(rows)
            db.add(self._event("purge", srow.tenant, srow.id, snapshots=len(rows), reason="lease"))
        return gone

    def _delete_session(self, db: Session, srow: SessionRow) -> tuple[Sequence[Any], list[list[bytes]]]:
        rows = db.execute(select(SnapshotRow.sha256, SnapshotRow.size).where(*_of(srow.tenant, srow.id))).all()
        samples = [self._sample(db, srow.tenant, srow.id)] if rows and self.is_sqlite else []
        db.execute(delete(SnapshotRow).where(*_of(srow.tenant, srow.id)))
        db.delete(srow)
        return rows, samples

    # --- audit ----------------------------------------------------------------------------------

    def record(self, kind: str, tenant: str, session_id: str | None, **detail: Any) -> None:
        """Append an audit event (ids, counts, hashes: never message text)."""
        self._writable()
        with self._tx() as db:
            db.add(self._event(kind, tenant, session_id, **detail))

    def _audit(self, kind: str, tenant: str, session_id: str | None, **detail: Any) -> None:
        """Audit a read; a read-only store can still be read, so its audit is skipped (warned)."""
        if self.read_only:
            logger.warning("read-only store %s: not auditing %s of session %r", self.path, kind, session_id)
            return
        self.record(kind, tenant, session_id, **detail)

    def _audit_refused_read(self, db: Session, snapshot_id: int, tenant: str, owner: tuple[str, str] | None) -> None:
        """Audit a read of a snapshot id the reader does not own, in the caller's transaction.

        One row, written by one INSERT of the same shape whatever the reason: another tenant's
        snapshot gives a ``denied`` row in the owner's trail, an id nobody owns a ``not_found`` row
        in the store's own trail (tenant :data:`STORE_TRAIL`). The reader's own trail gets
        neither, so it reads the same either way. A read-only store skips it (warned) in both
        cases."""
        if self.read_only:
            logger.warning("read-only store %s: not auditing a refused read of snapshot %d", self.path, snapshot_id)
            return
        trail, session_id, kind = (STORE_TRAIL, None, "not_found") if owner is None else (*owner, "denied")
        detail = json.dumps({"action": "read", "by_tenant": tenant, "snapshot": snapshot_id}, sort_keys=True)
        db.execute(insert(EventRow).values(created_at=self.clock(), tenant=trail, session_id=session_id,
                                           kind=kind, detail=detail))

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

    def _session_row(self, db: Session, session_id: str, tenant: str) -> SessionRow:
        """The tenant's session row (tenants are namespaces: another tenant's is simply not found)."""
        check_name(session_id, "session_id")
        check_name(tenant, "tenant")
        row = db.get(SessionRow, (tenant, session_id))
        if row is None:
            raise SnapshotNotFound(f"no session {session_id!r}")
        return row

    def _sample(self, db: Session, tenant: str, session_id: str) -> list[bytes]:
        """Slices of the session's payloads (from their tensor data, past the header) to look for
        in the file after the erase."""
        out = []
        for payload in self._raw_payloads(db, "tenant = {} AND session_id = {}", tenant, session_id):
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


def _of(tenant: str, session_id: str) -> tuple[Any, Any]:
    return SnapshotRow.tenant == tenant, SnapshotRow.session_id == session_id


def _live(now: float) -> Any:
    return (SnapshotRow.expires_at.is_(None)) | (SnapshotRow.expires_at > now)


def _reason(e: Exception) -> str:
    """The driver's message, one line (not SQLAlchemy's multi-line statement dump)."""
    orig = getattr(e, "orig", None) or e
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE instead of pysqlite's deferred BEGIN.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
