"""Tables of the snapshot store (SQLAlchemy 2.x declarative), the same on SQLite and PostgreSQL.

- ``sleep_sessions``: one row per persisted session (tenant, model fingerprint, memory policy).
- ``sleep_snapshots``: the session's snapshots (safetensors payload + integrity and provenance
  columns), deleted with their session (ON DELETE CASCADE), indexed on (session_id, created_at).
- ``sleep_events``: the append-only audit trail. It has no foreign key on purpose: the receipt of
  an erase must outlive what it erased.

Message text is never stored: what a session remembers lives in its fast weights.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "SessionRow", "SnapshotRow", "EventRow"]


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    __tablename__ = "sleep_sessions"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    policy: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class SnapshotRow(Base):
    __tablename__ = "sleep_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("sleep_sessions.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    format_version: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    tokens_consolidated: Mapped[int] = mapped_column(Integer)
    tokens_seen: Mapped[int] = mapped_column(Integer)
    loops: Mapped[int] = mapped_column(Integer)
    window_len: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict] = mapped_column(JSON)
    payload: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_sleep_snapshots_session_created", "session_id", "created_at"),)


class EventRow(Base):
    __tablename__ = "sleep_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
