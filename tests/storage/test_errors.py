"""Bad input gets a typed error naming the problem (issue 18, findings 8 and 11): never a raw
DatabaseError, OverflowError, DataError, AttributeError, UnicodeEncodeError or TypeError."""

from __future__ import annotations

import pytest
from sleepagent.storage import SnapshotStore
from typer.testing import CliRunner

from sleepagent import Agent, MemoryPolicy, SleepPolicy
from sleepagent.cli import app
from sleepagent.errors import ConfigError, SleepAgentError, SnapshotNotFound, StoreError
from sleepagent.testing import TestModel, tiny_model

runner = CliRunner(env={"COLUMNS": "200"})
SM = tiny_model(window=64)


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path):
    notes = tmp_path / "notes.db"
    notes.write_bytes(b"definitely not SQLite " * 200)
    with pytest.raises(StoreError, match="not a database"):
        SnapshotStore(f"sqlite:///{notes}")
    assert notes.read_bytes().startswith(b"definitely not SQLite")  # and it was left alone


def test_ids_and_names_out_of_range_are_typed(store):
    store.open_session("s", tenant="t", fingerprint=SM.fingerprint, policy=MemoryPolicy(retention="persistent"))
    with pytest.raises(SnapshotNotFound):
        store.load(2**70, tenant="t")
    with pytest.raises(SnapshotNotFound):
        store.load(-1, tenant="t")
    with pytest.raises(ConfigError, match="snapshot id must be an integer"):
        store.load("1", tenant="t")  # type: ignore[arg-type]
    for tenant in ("", "x" * 129, "x" * 100_000, "nul\x00byte", 42):
        with pytest.raises(ConfigError, match="tenant"):
            store.open_session("s2", tenant=tenant, fingerprint=SM.fingerprint, policy=MemoryPolicy())
    with pytest.raises(ConfigError, match="session_id"):
        store.open_session("bad\x00id", tenant="t", fingerprint=SM.fingerprint, policy=MemoryPolicy())


@pytest.mark.parametrize("task", [None, 42, b"bytes", "\udcff"])
async def test_a_run_of_something_that_is_not_text_is_a_config_error(task):
    agent = Agent(TestModel(["ok"]), system_prompt="S.")
    with pytest.raises(ConfigError):
        await agent.run(task)  # type: ignore[arg-type]
    agent.close()


@pytest.mark.parametrize("kwargs, field", [
    (dict(model=123), "model"),
    (dict(sleep="x"), "sleep"),
    (dict(memory={}), "memory"),
    (dict(tool_timeout=-1), "tool_timeout"),
    (dict(tool_timeout=True), "tool_timeout"),
    (dict(max_steps=0), "max_steps"),
    (dict(max_tokens="8"), "max_tokens"),
    (dict(store=42), "store"),
    (dict(usage_limits={"request_limit": 3}), "usage_limits"),
])
def test_agent_arguments_are_validated(kwargs, field):
    with pytest.raises(ConfigError) as e:
        Agent(**{"model": TestModel(["ok"]), **kwargs})
    assert e.value.field == field


@pytest.mark.parametrize("kwargs", [dict(loops="4"), dict(loops=True), dict(loops=10**9), dict(loops=0),
                                    dict(min_fill=2), dict(on_wake="later")])
def test_sleep_policy_is_strict(kwargs):
    with pytest.raises(ConfigError):
        SleepPolicy(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(retention="forever"), dict(ttl=-5), dict(max_snapshots=True),
                                    dict(never_consolidate=["(unclosed"]), dict(persist_window="yes"), dict(lease=0)])
def test_memory_policy_is_strict(kwargs):
    with pytest.raises(ConfigError):
        MemoryPolicy(**kwargs)


async def test_a_store_url_is_accepted_and_a_bad_tenant_refused(tmp_path):
    agent = Agent(
        TestModel(["ok"]),
        store=f"sqlite:///{tmp_path / 'x.db'}",
        memory=MemoryPolicy(retention="persistent"),
        system_prompt="S.",
        sleep=SleepPolicy(loops=1, min_fill=0.0),
    )
    assert isinstance(agent.store, SnapshotStore)
    async with agent.session("a", tenant="t") as s:
        await s.run("hi")
    assert agent.store.list_sessions(tenant="t")[0].id == "a"
    for tenant in ("", "y" * 100_000):
        with pytest.raises(ConfigError, match="tenant"):
            agent.session("b", tenant=tenant)
    agent.close()


def test_every_error_is_a_sleepagent_error():
    for cls in (ConfigError, StoreError, SnapshotNotFound):
        assert issubclass(cls, SleepAgentError)


@pytest.mark.parametrize("args, words", [
    (["snapshots", "show", "99999999999999999999999999"], "no such snapshot"),
    (["snapshots", "list", "--tenant", ""], "tenant must be"),
    (["snapshots", "erase", "x" * 300], "session_id must be"),
])
def test_cli_errors_are_one_line(tmp_path, args, words):
    url = f"sqlite:///{tmp_path / 's.db'}"
    SnapshotStore(url).close()
    r = runner.invoke(app, [*args, "--store", url])
    assert r.exit_code == 2, r.output
    assert words in r.output and "Traceback" not in r.output and r.output.strip().count("\n") <= 1
