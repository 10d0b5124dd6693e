"""MemoryPolicy(classify=...): a whole-turn check beside the regexes, never serialised anywhere.

Issue "Never-consolidate on every path", item 5. Patterns see each turn as written, so an
upper-case variant of a secret slips past ``hunter2``; a classifier that normalises the text
catches it. The classifier is code: it must not reach a dump, a row, snapshot metadata or a repr.
"""

from __future__ import annotations

import base64
import json

import pytest
import torch
from safetensors.torch import load as st_load
from sleepagent.storage import SnapshotStore
from sleepagent.storage.schema import EventRow, SessionRow, SnapshotRow
from sqlalchemy import select

from sleepagent import Agent, MemoryPolicy, SleepPolicy
from sleepagent.errors import ConfigError
from sleepagent.testing import FunctionModel, tiny_model

SM = tiny_model(seed=1, window=256, tie_embeddings=False)
SECRET = "hunter2-XYZZY"


class Dlp:
    """A classifier object whose repr carries what it was built with (as real ones may)."""

    def __init__(self, words: list[str]) -> None:
        self.words, self.seen = words, []

    def __call__(self, text: str) -> bool:
        self.seen.append(text)
        return any(w in text.lower() for w in self.words)

    def __repr__(self) -> str:
        return f"Dlp({self.words!r})"


def forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    ids = SM.tokenizer.encode(secret, specials=False)
    return [raw, raw.hex().encode(), base64.b64encode(raw), secret.encode("utf-16-le"),
            json.dumps(ids).encode(), json.dumps(ids)[1:-1].encode(), torch.tensor(ids).numpy().tobytes()]


def assert_nowhere(store: SnapshotStore, secret: str) -> None:
    """Not in any column of any row, any payload tensor, nor (SQLite) any byte of the file."""
    needles = forms(secret) + forms(secret.upper()) + forms(secret.lower())
    with store._tx() as db:
        for table in (SessionRow, SnapshotRow, EventRow):
            for row in db.scalars(select(table)):
                for col in table.__table__.columns:
                    value = getattr(row, col.key)
                    blob = value if isinstance(value, bytes) else json.dumps(value, default=str).encode()
                    assert not any(n in blob for n in needles), (table.__tablename__, col.key)
                    if col.key == "payload":
                        for name, t in st_load(value).items():
                            assert not any(n in t.numpy().tobytes() for n in needles), name
    if store.path is not None:
        store.engine.dispose()
        data = store.path.read_bytes()
        assert not any(n in data for n in needles)


def test_the_classifier_sees_the_whole_turn_and_either_check_refuses():
    dlp = Dlp(["hunter2"])
    policy = MemoryPolicy(never_consolidate=[r"pin \d{4}"], classify=dlp)
    turn = f"line one\nmy password is {SECRET.upper()}, keep it"
    assert not policy.allows_consolidation(turn)  # the case variant: only the classifier catches it
    assert dlp.seen == [turn]
    assert MemoryPolicy(never_consolidate=["hunter2"]).allows_consolidation(turn)  # what patterns miss
    assert not policy.allows_consolidation("my pin 1234")  # a pattern match: refused ...
    assert dlp.seen == [turn]  # ... without asking the classifier
    assert policy.allows_consolidation("all public")
    assert policy.screens_text and MemoryPolicy(classify=dlp).screens_text and not MemoryPolicy().screens_text


def test_a_classifier_that_raises_keeps_the_turn_out_and_logs_no_text(caplog):
    def broken(text: str) -> bool:
        raise ValueError(f"cannot parse {text!r}")

    with caplog.at_level("DEBUG"):
        assert not MemoryPolicy(classify=broken).allows_consolidation(f"my password is {SECRET}")
    assert caplog.records and all(SECRET not in r.getMessage() and not r.exc_info for r in caplog.records)


@pytest.mark.parametrize("value", ["hunter2", 3, ["a"]])
def test_a_classifier_that_is_not_callable_is_a_config_error(value):
    with pytest.raises(ConfigError, match="classify") as e:
        MemoryPolicy(classify=value)
    assert e.value.field == "classify" and "hunter2" not in str(e.value)


def test_an_async_classifier_is_refused():
    async def sensitive(text: str) -> bool:
        return False

    with pytest.raises(ConfigError, match="async") as e:
        MemoryPolicy(classify=sensitive)
    assert e.value.field == "classify"


def test_the_classifier_is_never_serialised():
    policy = MemoryPolicy(retention="persistent", classify=Dlp([SECRET]))
    for text in (repr(policy), str(policy), policy.model_dump_json(), json.dumps(policy.model_dump(mode="json"))):
        assert "Dlp" not in text and SECRET not in text and "classify" not in text
    assert "classify" not in policy.model_dump()
    assert "classify" not in MemoryPolicy.model_json_schema()["properties"]  # the schema describes data
    assert MemoryPolicy(**policy.model_dump()) == MemoryPolicy(retention="persistent")


def test_the_store_keeps_neither_the_classifier_nor_the_patterns(store):
    """A pattern may spell out the very secret it guards: the session row keeps only how many."""
    policy = MemoryPolicy(retention="persistent", never_consolidate=[SECRET], classify=Dlp([SECRET]))
    store.open_session("s", tenant="t", fingerprint=SM.fingerprint, policy=policy)
    info = store.get_session("s", tenant="t")
    assert info.policy.retention == "persistent" and info.policy.classify is None
    with store._tx() as db:
        stored = db.get(SessionRow, ("t", "s")).policy
    assert stored["never_consolidate_count"] == 1 and "never_consolidate" not in stored and "classify" not in stored
    assert_nowhere(store, SECRET)


async def test_an_agent_keeps_a_turn_the_classifier_flags_out_of_the_store(store):
    """An upper-case variant no pattern matches: with persist_window the snapshot keeps the
    window's other turns, and nothing of the flagged one, in any table or payload."""
    policy = MemoryPolicy(retention="persistent", persist_window=True, never_consolidate=["hunter2"],
                          classify=lambda text: "hunter2" in text.lower())
    agent = Agent(FunctionModel(lambda m, i: "noted", base=SM), store=store, memory=policy, max_tokens=20,
                  max_steps=1, sleep=SleepPolicy(loops=2, when="full"), system_prompt="Hi.")
    async with agent.session("w", tenant="t") as s:
        await s.run("remember the public part")
        await s.run(f"my password is {SECRET.upper()}")
    agent.close()
    _, blob = store.latest("w", tenant="t")
    window = SM.tokenizer.decode(st_load(blob)["window.ids"][0].tolist())
    assert "public part" in window and "PASSWORD" not in window.upper()
    assert_nowhere(store, SECRET)


async def test_a_reply_the_classifier_flags_is_kept_out_of_the_store(store):
    """The assistant repeats the secret in another case: only the classifier sees it."""
    policy = MemoryPolicy(retention="persistent", persist_window=True,
                          classify=lambda text: "hunter2" in text.lower())
    agent = Agent(FunctionModel(lambda m, i: f"noted: {SECRET.upper()}", base=SM), store=store, memory=policy,
                  max_tokens=30, max_steps=1, sleep=SleepPolicy(loops=2, when="full"), system_prompt="Hi.")
    async with agent.session("r", tenant="t") as s:
        await s.run("remember the public part")
    agent.close()
    _, blob = store.latest("r", tenant="t")
    window = SM.tokenizer.decode(st_load(blob)["window.ids"][0].tolist())
    assert "public part" in window
    assert_nowhere(store, SECRET)
