"""`sleepagent snapshots ...` over a real SQLite store."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from sleepagent.cli import app
from sleepagent.policy import MemoryPolicy
from sleepagent.storage import SnapshotStore
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
        (["snapshots", "show", str(a), "--store", url, "--tenant", "intruder"], "may not read"),
        (["snapshots", "list", "--store", "nonsense"], "not a database URL"),
        (["snapshots", "list", "--store", f"sqlite:///{tmp_path}/no/dir.db"], "does not exist"),
    ]
    for args, words in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert words in r.output and "Traceback" not in r.output
        assert r.output.strip().count("\n") <= 1
