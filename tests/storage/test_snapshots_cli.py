"""`sleepagent snapshots ...` over a real SQLite store."""

from __future__ import annotations

import pytest
import torch
from sleepagent.storage import SnapshotStore
from typer.testing import CliRunner

from sleepagent.cli import app
from sleepagent.policy import MemoryPolicy
from sleepagent.testing import tiny_model

runner = CliRunner(env={"COLUMNS": "200"})
SM = tiny_model(window=32)


def make_store(tmp_path) -> tuple[str, list[int]]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = SnapshotStore(url)
    store.open_session("conv", tenant="acme", fingerprint=SM.fingerprint, policy=MemoryPolicy(retention="persistent"))
    lm, ids = SM.model, []
    state = lm.new_state()
    for seed in range(2):
        lm.prefill(torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(seed)), state)
        state = lm.consolidate(state, loops=2)
        ids.append(store.save("conv", lm.save_state(state), tenant="acme", loops=2).id)
    store.close()
    return url, ids


def test_list_show_diff_export_plot_erase(tmp_path):
    url, (a, b) = make_store(tmp_path)
    common = ["--store", url, "--tenant", "acme"]
    r = runner.invoke(app, ["snapshots", "list", *common])
    assert r.exit_code == 0 and "conv" in r.output and "persistent" in r.output
    r = runner.invoke(app, ["snapshots", "show", str(b), *common])
    assert r.exit_code == 0, r.output
    assert "effective rank" in r.output and "40 tokens" in r.output
    r = runner.invoke(app, ["snapshots", "diff", str(a), str(b), *common])
    assert r.exit_code == 0 and "cosine" in r.output
    r = runner.invoke(app, ["snapshots", "export", str(a), "--out", str(tmp_path / "a.safetensors"), *common])
    assert r.exit_code == 0 and (tmp_path / "a.safetensors").stat().st_size > 0
    r = runner.invoke(app, ["snapshots", "plot", str(a), "--out", str(tmp_path / "plots"), *common])
    assert r.exit_code == 0 and len(list((tmp_path / "plots").glob("*.png"))) == 2
    r = runner.invoke(app, ["snapshots", "erase", "conv", *common])
    assert r.exit_code == 0 and "verified: True" in r.output


def test_errors_are_one_clear_line(tmp_path):
    url, (a, _) = make_store(tmp_path)
    cases = [
        (["snapshots", "show", "999", "--store", url, "--tenant", "acme"], "no snapshot 999"),
        (["snapshots", "show", str(a), "--store", url, "--tenant", "intruder"], f"no snapshot {a}"),
        (["snapshots", "list", "--store", "nonsense"], "not a database URL"),
        (["snapshots", "list", "--store", f"sqlite:///{tmp_path}/no/dir.db"], "does not exist"),
    ]
    for args, words in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert words in r.output and "Traceback" not in r.output
        assert r.output.strip().count("\n") <= 1


def test_another_tenant_cannot_tell_a_foreign_id_from_a_missing_one(tmp_path):
    """Finding 5: the answer for another tenant's snapshot is the missing one's, and the
    attempt lands in the owner's audit trail."""
    url, (_a, b) = make_store(tmp_path)
    missing = runner.invoke(app, ["snapshots", "show", "999", "--store", url, "--tenant", "bob"])
    foreign = runner.invoke(app, ["snapshots", "show", str(b), "--store", url, "--tenant", "bob"])
    assert missing.exit_code == foreign.exit_code == 2
    assert missing.output.replace("999", "N") == foreign.output.replace(str(b), "N")
    listed = runner.invoke(app, ["snapshots", "list", "--store", url, "--tenant", "bob"])
    assert listed.exit_code == 0 and "conv" not in listed.output
    with SnapshotStore(url) as store:
        denied = [e for e in store.events() if e.kind == "denied"]
    assert len(denied) == 1 and denied[0].tenant == "acme" and denied[0].detail["by_tenant"] == "bob"


def test_a_mistyped_path_is_an_error_not_a_new_database(tmp_path):
    """Finding 8: `snapshots list` on a path with no store says so and creates nothing."""
    r = runner.invoke(app, ["snapshots", "list", "--store", f"sqlite:///{tmp_path / 'typo.db'}"])
    assert r.exit_code == 2 and "no snapshot store" in r.output
    assert not (tmp_path / "typo.db").exists()
    (tmp_path / "notes.db").write_text("this is not a database, just text " * 100)
    r = runner.invoke(app, ["snapshots", "list", "--store", f"sqlite:///{tmp_path / 'notes.db'}"])
    assert r.exit_code == 2 and "Traceback" not in r.output and r.output.strip().count("\n") <= 1
    assert "not a database" in r.output or "not a sleepagent" in r.output


def test_a_read_only_store_can_be_read(tmp_path, monkeypatch):
    """Finding 8: a store this process may not write can still be read; a write says why it
    cannot. SQLite opens the file with mode=ro, so SQLite itself enforces it."""
    import os

    from sleepagent.errors import StoreError

    url, (a, _) = make_store(tmp_path)
    with SnapshotStore(url, read_only=True) as store:
        info, blob = store.load(a, tenant="acme")
        assert info.id == a and len(blob) == info.size
        with pytest.raises(StoreError, match="read-only"):
            store.erase("conv", tenant="acme")
        # not only our check: the connection cannot write
        with store.engine.connect() as conn, pytest.raises(Exception, match="readonly"):
            conn.exec_driver_sql("DELETE FROM sleep_events")
    # the CLI detects a file it may not write (tests run as root, which file modes do not stop:
    # the permission check answers as it would for any other user)
    real_access = os.access
    monkeypatch.setattr("sleepagent.storage.store.os.access",
                        lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    r = runner.invoke(app, ["snapshots", "show", str(a), "--store", url, "--tenant", "acme"])
    assert r.exit_code == 0, r.output
    assert "effective rank" in r.output
    r = runner.invoke(app, ["snapshots", "erase", "conv", "--store", url, "--tenant", "acme"])
    assert r.exit_code == 2 and "read-only" in r.output


def test_purge_deletes_expired_snapshots_for_real(tmp_path):
    """Finding 4: `snapshots purge` (and every write) deletes what expired, bytes and all."""
    import time

    url = f"sqlite:///{tmp_path / 'p.db'}"
    clock = [time.time() - 3600]
    with SnapshotStore(url, clock=lambda: clock[0]) as store:
        store.open_session("old", tenant="t", fingerprint=SM.fingerprint,
                           policy=MemoryPolicy(retention="persistent", ttl=60))
        lm = SM.model
        state = lm.new_state()
        lm.prefill(torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(7)), state)
        payload = lm.save_state(lm.consolidate(state, loops=2))
        store.save("old", payload, tenant="t", loops=2)
    r = runner.invoke(app, ["snapshots", "purge", "--store", url])
    assert r.exit_code == 0 and "1 expired snapshot" in r.output
    data = (tmp_path / "p.db").read_bytes()
    header = int.from_bytes(payload[:8], "little") + 8
    tensors = payload[header:]
    assert tensors[len(tensors) // 2 : len(tensors) // 2 + 64] not in data


def _one_line_error(r, words: str) -> None:
    """What every refused command prints: exit code 2, one ``error:`` line naming the problem."""
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and r.output.strip().count("\n") == 0, r.output
    assert words in r.output and "Traceback" not in r.output and "Usage" not in r.output


def test_export_from_a_read_only_store_writes_nothing(tmp_path, monkeypatch):
    """Before: the payload was written, then recording the export failed with a traceback. An
    export is recorded in the store's audit trail, so a store this process may not write refuses
    it, and no file (whole, partial or temporary) is left."""
    import os

    url, (a, _) = make_store(tmp_path)
    real_access = os.access
    monkeypatch.setattr("sleepagent.storage.store.os.access",
                        lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    out = tmp_path / "out"
    out.mkdir()
    r = runner.invoke(app, ["snapshots", "export", str(a), "--out", str(out / "a.safetensors"), "--store", url,
                            "--tenant", "acme"])
    _one_line_error(r, "read-only")
    assert list(out.iterdir()) == []


def test_export_that_cannot_be_recorded_leaves_no_file(tmp_path, monkeypatch):
    """The audit row is written before the file takes its name: if recording fails, the file and
    its temporary twin are both gone."""
    from sleepagent.errors import StoreError

    url, (a, _) = make_store(tmp_path)
    real_record = SnapshotStore.record

    def refuse(self, kind, *args, **kwargs):  # reads are audited too: only the export's row fails
        if kind == "export":
            raise StoreError("the store went away")
        return real_record(self, kind, *args, **kwargs)

    monkeypatch.setattr(SnapshotStore, "record", refuse)
    out = tmp_path / "out"
    out.mkdir()
    r = runner.invoke(app, ["snapshots", "export", str(a), "--out", str(out / "a.safetensors"), "--store", url,
                            "--tenant", "acme"])
    _one_line_error(r, "the store went away")
    assert list(out.iterdir()) == []


def test_output_paths_of_the_wrong_kind_are_one_line(tmp_path):
    """Before: `export --out DIR` and `plot --out FILE` ended in tracebacks."""
    url, (a, _) = make_store(tmp_path)
    common = ["--store", url, "--tenant", "acme"]
    r = runner.invoke(app, ["snapshots", "export", str(a), "--out", str(tmp_path), *common])
    _one_line_error(r, "is a directory")
    r = runner.invoke(app, ["snapshots", "export", str(a), "--out", str(tmp_path / "no" / "a.safetensors"), *common])
    _one_line_error(r, "does not exist")
    a_file = tmp_path / "taken.png"
    a_file.write_text("not a directory")
    for out in (a_file, a_file / "plots"):
        r = runner.invoke(app, ["snapshots", "plot", str(a), "--out", str(out), *common])
        _one_line_error(r, "is a file, not a directory")
    assert a_file.read_text() == "not a directory"


def test_ids_that_are_not_integers_are_one_line(tmp_path):
    """Before: typer's usage box. Now what the parser rejects is one line too."""
    url, (a, _) = make_store(tmp_path)
    for args in (["show", "abc"], ["diff", str(a), "x"], ["export", "1.5", "--out", str(tmp_path / "x")],
                 ["plot", "abc"], ["show"], ["show", str(a), "--no-such-option"]):
        r = runner.invoke(app, ["snapshots", *args, "--store", url])
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("error: ") and r.output.strip().count("\n") == 0, (args, r.output)
    assert not (tmp_path / "x").exists()
