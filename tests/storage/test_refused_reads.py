"""Another tenant's snapshot and a missing one: the same answer, the same work, a durable audit.

Issue "Never-consolidate on every path", item 4: a foreign read used to take ~8x longer than a
missing one (its audit row was a second transaction), so the clock told them apart. These tests
check the cause structurally, never the wall clock: both reads send the same SQL statements and
commit once, and the audit row is committed before the caller hears the answer. The clock itself
is measured by :func:`sleepagent.storage.timing.bench_foreign_vs_missing`.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save as st_save
from sleepagent.storage import SnapshotStore
from sleepagent.storage.store import STORE_TRAIL
from sleepagent.storage.timing import bench_foreign_vs_missing
from sqlalchemy import event

from sleepagent.errors import SnapshotNotFound
from sleepagent.model.state import STATE_FORMAT_VERSION
from sleepagent.policy import MemoryPolicy

FP = "f" * 64
PERSISTENT = MemoryPolicy(retention="persistent")


def payload() -> bytes:
    meta = {"format_version": STATE_FORMAT_VERSION, "fingerprint": FP, "counters": "{}"}
    return st_save({"S.0": torch.ones(1, 2, 4, 4)}, metadata=meta)


def owned_snapshot(store: SnapshotStore) -> int:
    store.open_session("s", tenant="acme", fingerprint=FP, policy=PERSISTENT)
    return store.save("s", payload(), tenant="acme", loops=1).id


class Recorder:
    """Every statement the store's engine sends (text and parameter names) and every commit."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store, self.log = store, []
        event.listen(store.engine, "before_cursor_execute", self._stmt)
        event.listen(store.engine, "commit", self._commit)

    def _stmt(self, conn, cursor, statement, parameters, context, executemany) -> None:
        params = parameters if isinstance(parameters, dict) else {}
        self.log.append(("sql", re.sub(r"\s+", " ", statement).strip(), tuple(sorted(params)), executemany))

    def _commit(self, conn) -> None:
        self.log.append(("commit",))

    def refused_load(self, snapshot_id: int, tenant: str) -> list[tuple]:
        self.log = []
        with pytest.raises(SnapshotNotFound) as e:
            self.store.load(snapshot_id, tenant=tenant)
        return [*self.log, ("answer", str(e.value).replace(str(snapshot_id), "N"))]

    def close(self) -> None:
        event.remove(self.store.engine, "before_cursor_execute", self._stmt)
        event.remove(self.store.engine, "commit", self._commit)


def test_a_foreign_and_a_missing_read_do_the_same_work(store):
    """The same statements (text and parameter names), in the same order, one commit each."""
    snap = owned_snapshot(store)
    rec = Recorder(store)
    try:
        foreign = rec.refused_load(snap, "evil")
        missing = rec.refused_load(snap + 1000, "evil")
    finally:
        rec.close()
    assert foreign == missing
    assert foreign.count(("commit",)) == 1
    assert sum(1 for x in foreign if x[0] == "sql" and x[1].startswith("INSERT INTO sleep_events")) == 1


def test_the_audit_row_is_committed_before_the_answer(store_url):
    """A second connection (another process, or this one after a crash) sees the row the moment
    the refused read returns: nothing waits in a queue that a crash could lose."""
    store = SnapshotStore(store_url)
    snap = owned_snapshot(store)
    for target in (snap, snap + 1000):
        with pytest.raises(SnapshotNotFound):
            store.load(target, tenant="evil")
    with SnapshotStore(store_url) as other:  # its own connections: sees only committed rows
        seen = [(e.tenant, e.session_id, e.kind, e.detail) for e in other.events() if e.kind in ("denied", "not_found")]
    store.close()
    assert seen == [
        ("acme", "s", "denied", {"action": "read", "by_tenant": "evil", "snapshot": snap}),
        (STORE_TRAIL, None, "not_found", {"action": "read", "by_tenant": "evil", "snapshot": snap + 1000}),
    ]
    with SnapshotStore(store_url) as reopened:
        assert not any(e.kind in ("denied", "not_found") for e in reopened.events(tenant="evil"))
        assert [e.kind for e in reopened.events(tenant="acme")].count("denied") == 1


def test_a_read_only_store_refuses_both_alike(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'ro.db'}"
    with SnapshotStore(url) as store:
        snap = owned_snapshot(store)
    ro = SnapshotStore(url, read_only=True)
    try:
        rec = Recorder(ro)
        with caplog.at_level("WARNING", logger="sleepagent.storage.store"):
            foreign = rec.refused_load(snap, "evil")
            missing = rec.refused_load(snap + 1000, "evil")
        rec.close()
    finally:
        ro.close()
    assert foreign == missing
    warned = [r.getMessage().replace(str(snap + 1000), "N").replace(str(snap), "N") for r in caplog.records]
    assert len(warned) == 2 and warned[0] == warned[1]


def test_bench_foreign_vs_missing_reports_both_distributions(tmp_path):
    out = bench_foreign_vs_missing(f"sqlite:///{tmp_path / 'bench.db'}", tries=5, warmup=1)
    assert out["tries"] == 5 and out["ratio"] > 0
    for kind in ("foreign", "missing"):
        assert 0 < out[kind]["median_ms"] <= out[kind]["p90_ms"]
    with SnapshotStore(f"sqlite:///{tmp_path / 'bench.db'}") as store:
        assert store.list_sessions() == []  # the bench erased its session
