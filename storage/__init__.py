"""Snapshot store, shipped as ``sleepagent.storage``: session fast weights in SQLite/PostgreSQL."""

from .store import EraseReceipt, EventRecord, SessionInfo, SnapshotInfo, SnapshotStore

__all__ = ["EraseReceipt", "EventRecord", "SessionInfo", "SnapshotInfo", "SnapshotStore"]
