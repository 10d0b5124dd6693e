"""SnapshotStore on a real SQLite file and a real PostgreSQL server (same tests, both backends)."""

from __future__ import annotations

import functools
import threading

import pytest
import torch
from sleepagent.storage import SnapshotStore
from sqlalchemy import text

from sleepagent.errors import (
    ConfigError,
    FingerprintMismatch,
    SnapshotCorrupted,
    SnapshotExpired,
    SnapshotNotFound,
)
from sleepagent.model import HybridState
from sleepagent.policy import MemoryPolicy
from sleepagent.testing import tiny_model

SM = tiny_model(window=64)
FP = SM.fingerprint
PERSISTENT = MemoryPolicy(retention="persistent")


@functools.cache  # safetensors headers are not byte-stable across calls; cache to compare bytes
def payload(tokens: int = 10, seed: int = 0) -> bytes:
    lm = SM.model
    state = lm.new_state()
    ids = torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(seed))
    lm.prefill(ids, state)
    return lm.save_state(lm.consolidate(state, loops=2))


def test_save_latest_list_and_audit(store):
    store.open_session("s", tenant="acme", fingerprint=FP, policy=PERSISTENT)
    first = store.save("s", payload(seed=1), tenant="acme", loops=2, meta={"k": 1})
    second = store.save("s", payload(seed=2), tenant="acme", loops=2)
    info, data = store.latest("s", tenant="acme", fingerprint=FP)
    assert info.id == second.id and data == payload(seed=2)
    assert [s.id for s in store.list_snapshots("s", tenant="acme")] == [first.id, second.id]
    assert store.load(first.id, tenant="acme")[0].meta == {"k": 1}
    assert info.tokens_consolidated == 10 and info.fingerprint == FP and info.size == len(data)
    state = HybridState.from_bytes(data, cfg=SM.config, fingerprint=FP)
    assert state.tokens_consolidated == 10
    kinds = [e.kind for e in store.events(session_id="s")]
    assert kinds[:3] == ["open", "persist", "persist"] and "restore" in kinds
    assert [s.id for s in store.list_sessions(tenant="acme")] == ["s"]


def test_tenants_are_namespaces_and_a_foreign_id_reads_as_missing(store):
    """Finding 5: another tenant's session name is simply not there for you (you may even use the
    same name for your own), and another tenant's snapshot id reads exactly like a missing one;
    the attempt is audited in the owner's trail, not the prober's."""
    store.open_session("s", tenant="acme", fingerprint=FP, policy=PERSISTENT)
    snap = store.save("s", payload(), tenant="acme", loops=1)
    with pytest.raises(SnapshotNotFound) as missing_session:
        store.latest("nope", tenant="evil")
    with pytest.raises(SnapshotNotFound) as foreign_session:
        store.latest("s", tenant="evil")
    assert str(missing_session.value).replace("nope", "X") == str(foreign_session.value).replace("'s'", "'X'")
    with pytest.raises(SnapshotNotFound) as foreign:
        store.load(snap.id, tenant="evil")
    with pytest.raises(SnapshotNotFound) as missing:
        store.load(snap.id + 1000, tenant="evil")
    assert str(foreign.value).replace(str(snap.id), "N") == str(missing.value).replace(str(snap.id + 1000), "N")
    for attempt in (
        lambda: store.save("s", payload(), tenant="evil", loops=1),
        lambda: store.erase("s", tenant="evil"),
    ):
        with pytest.raises(SnapshotNotFound):
            attempt()
    own = store.open_session("s", tenant="evil", fingerprint=FP, policy=PERSISTENT)  # evil's own "s"
    assert own.tenant == "evil" and store.latest("s", tenant="evil") is None
    denied = [e for e in store.events() if e.kind == "denied"]
    assert len(denied) == 1 and denied[0].tenant == "acme" and denied[0].detail["by_tenant"] == "evil"
    assert store.events(tenant="evil") and not any(e.kind == "denied" for e in store.events(tenant="evil"))
    assert store.latest("s", tenant="acme")[0].id == snap.id  # nothing lost


def test_corrupted_payload_raises_and_other_snapshots_stay_readable(store):
    store.open_session("s", tenant="t", fingerprint=FP, policy=PERSISTENT)
    good = store.save("s", payload(seed=1), tenant="t", loops=1)
    bad = store.save("s", payload(seed=2), tenant="t", loops=1)
    tampered = bytearray(payload(seed=2))
    tampered[-5] ^= 0xFF
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE sleep_snapshots SET payload = :p WHERE id = :i"), {"p": bytes(tampered), "i": bad.id})
    with pytest.raises(SnapshotCorrupted, match="sha256"):
        store.latest("s", tenant="t")
    assert store.load(good.id, tenant="t")[1] == payload(seed=1)


def test_wrong_fingerprint_and_missing(store):
    store.open_session("s", tenant="t", fingerprint=FP, policy=PERSISTENT)
    store.save("s", payload(), tenant="t", loops=1)
    with pytest.raises(FingerprintMismatch):
        store.latest("s", tenant="t", fingerprint="0" * 64)
    other = tiny_model(seed=5, window=64)
    st = other.model.new_state()
    with pytest.raises(FingerprintMismatch):  # a payload from another model cannot be saved here
        store.save("s", other.model.save_state(st), tenant="t", loops=1)
    with pytest.raises(SnapshotNotFound):
        store.latest("nope", tenant="t")
    with pytest.raises(SnapshotNotFound):
        store.load(10_000, tenant="t")
    assert len(store.list_snapshots("s", tenant="t")) == 1


def test_ttl_expiry_and_purge(store_url):
    now = [1000.0]
    store = SnapshotStore(store_url, clock=lambda: now[0])
    store.open_session("s", tenant="t", fingerprint=FP, policy=MemoryPolicy(retention="persistent", ttl=60))
    old = store.save("s", payload(seed=1), tenant="t", loops=1)
    now[0] += 50
    new = store.save("s", payload(seed=2), tenant="t", loops=1)
    now[0] += 20  # old expired, new still valid
    assert store.latest("s", tenant="t")[0].id == new.id
    with pytest.raises(SnapshotExpired):
        store.load(old.id, tenant="t")
    assert [s.id for s in store.list_snapshots("s", tenant="t")] == [new.id]
    assert store.purge() == 1
    assert [s.id for s in store.list_snapshots("s", tenant="t", include_expired=True)] == [new.id]
    assert any(e.kind == "purge" for e in store.events(session_id="s"))
    now[0] += 100
    assert store.latest("s", tenant="t") is None
    store.close()


def test_max_snapshots_prunes_oldest(store):
    store.open_session("s", tenant="t", fingerprint=FP, policy=MemoryPolicy(retention="persistent", max_snapshots=2))
    ids = [store.save("s", payload(seed=i), tenant="t", loops=1).id for i in range(4)]
    assert [s.id for s in store.list_snapshots("s", tenant="t")] == ids[-2:]


def test_crash_between_payload_write_and_commit_keeps_previous(store):
    store.open_session("s", tenant="t", fingerprint=FP, policy=MemoryPolicy(retention="persistent", max_snapshots=1))
    before = store.save("s", payload(seed=1), tenant="t", loops=1)

    def crash(point: str) -> None:
        if point == "after_payload_write":
            raise RuntimeError("power cut")

    store._fault = crash
    with pytest.raises(RuntimeError, match="power cut"):
        store.save("s", payload(seed=2), tenant="t", loops=1)
    store._fault = lambda point: None
    info, data = store.latest("s", tenant="t")
    assert info.id == before.id and data == payload(seed=1)
    assert len(store.list_snapshots("s", tenant="t", include_expired=True)) == 1


def test_concurrent_writers_lose_nothing(store_url):
    stores = [SnapshotStore(store_url) for _ in range(8)]
    stores[0].open_session("shared", tenant="t", fingerprint=FP, policy=PERSISTENT)
    blob = payload()
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            s = stores[i]
            s.open_session(f"own{i}", tenant="t", fingerprint=FP, policy=PERSISTENT)
            for _ in range(4):
                s.save("shared", blob, tenant="t", loops=1)
                s.save(f"own{i}", blob, tenant="t", loops=1)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(stores[0].list_snapshots("shared", tenant="t")) == 32
    assert all(len(stores[0].list_snapshots(f"own{i}", tenant="t")) == 4 for i in range(8))
    for s in stores:
        s.close()


def test_erase_removes_the_bytes_and_leaves_a_receipt(store):
    lm = SM.model
    state = lm.new_state()
    marker = torch.tensor([1234.5678, -8765.4321, 3.14159e7, 2.71828e-9])
    # a recognisable float pattern planted in every fast-weight matrix
    S = tuple(marker.repeat(s.numel() // 4).view_as(s) for s in state.fast.S)
    state.fast = state.working = type(state.fast)(S=S, conv=state.fast.conv)
    blob = lm.save_state(state)
    needle = marker.numpy().tobytes()
    assert needle in blob
    store.open_session("secret", tenant="t", fingerprint=FP, policy=PERSISTENT)
    store.open_session("other", tenant="t", fingerprint=FP, policy=PERSISTENT)
    store.save("secret", blob, tenant="t", loops=1)
    store.save("other", payload(), tenant="t", loops=1)
    if store.is_sqlite:
        store.engine.dispose()
        assert needle in store.path.read_bytes()
    receipt = store.erase("secret", tenant="t")
    assert receipt.snapshots == 1 and receipt.bytes == len(blob)
    if store.is_sqlite:
        assert receipt.verified is True
        assert needle not in store.path.read_bytes()
    with pytest.raises(SnapshotNotFound):
        store.latest("secret", tenant="t")
    erased = [e for e in store.events(session_id="secret") if e.kind == "erase"]
    assert erased and erased[0].detail["sha256"] == receipt.sha256
    assert store.latest("other", tenant="t") is not None  # nothing else lost


def test_bad_urls_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a database URL"):
        SnapshotStore("not a url")
    with pytest.raises(ConfigError, match="does not exist"):
        SnapshotStore(f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(ConfigError, match="driver"):
        SnapshotStore("nosuchdb://x/y")
