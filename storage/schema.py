"""Tables of the snapshot store (SQLAlchemy 2.x declarative), the same on SQLite and PostgreSQL.

- ``sleep_schema``: one row, the schema version (a store written by another version is refused
  with a clear error rather than misread).
- ``sleep_sessions``: one row per persisted session, keyed by (tenant, id): every tenant has its
  own namespace of session ids, so no tenant can learn whether another tenant uses a name.
- ``sleep_snapshots``: the session's snapshots (safetensors payload + integrity and provenance
  columns), deleted with their session (ON DELETE CASCADE), indexed on (tenant, session_id,
  created_at) and on expires_at (the expiry sweep). Ids are never reused (AUTOINCREMENT on SQLite,
  an identity sequence on PostgreSQL), so an audit row naming a snapshot keeps meaning that one.
- ``sleep_events``: the append-only audit trail. It has no foreign key on purpose: the receipt of
  an erase must outlive what it erased. Details hold ids, counts, hashes and sizes, never text.

Message text is never stored: what a session remembers lives in its fast weights (and, only under
``MemoryPolicy(persist_window=True)``, the window's token ids minus never-consolidate spans).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["SCHEMA_VERSION", "Base", "EventRow", "SchemaRow", "SessionRow", "SnapshotRow"]

SCHEMA_VERSION = 2


class Base(DeclarativeBase):
    pass


class SchemaRow(Base):
    __tablename__ = "sleep_schema"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class SessionRow(Base):
    __tablename__ = "sleep_sessions"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    policy: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    # retention "session": the row and its snapshots are reclaimed once this passes (a crashed
    # process never closes its sessions); renewed by every snapshot and turn
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    # which engine holds the session live (several engines on one store: Ray Serve replicas);
    # a claim bumps the epoch, so a replica can tell that another one took the session over
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    owner_epoch: Mapped[int] = mapped_column(Integer, default=0)


class SnapshotRow(Base):
    __tablename__ = "sleep_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    format_version: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    tokens_consolidated: Mapped[int] = mapped_column(Integer)
    tokens_seen: Mapped[int] = mapped_column(Integer)
    loops: Mapped[int] = mapped_column(Integer)
    window_len: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict] = mapped_column(JSON)
    payload: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # read only when asked for

    __table_args__ = (
        ForeignKeyConstraint(["tenant", "session_id"], ["sleep_sessions.tenant", "sleep_sessions.id"],
                             ondelete="CASCADE"),
        Index("ix_sleep_snapshots_session_created", "tenant", "session_id", "created_at"),
        {"sqlite_autoincrement": True},
    )


class EventRow(Base):
    __tablename__ = "sleep_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)

    __table_args__ = ({"sqlite_autoincrement": True},)
