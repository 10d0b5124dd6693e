"""No log record carries message or tool text (issue "Never-consolidate on every path", item 2).

A real Agent session with a store, through the public API only: the user's message, the model's
tool-call arguments, a tool's result and two tool exceptions (a plain one whose message and
chained cause quote the secret, and a ToolError) all hold the secret. Every record any logger
emits at DEBUG is captured and rendered the way a handler would (message, arguments, formatted
traceback, stack, extra fields); the secret must appear in none of them, raw or encoded.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import warnings

import pytest

from sleepagent import Agent, MemoryPolicy, SleepPolicy, tool
from sleepagent.errors import ToolError
from sleepagent.testing import TestModel, tiny_model, tool_call

SM = tiny_model(seed=1, window=256, tie_embeddings=False)
SECRET = "s3cr3t-Pa55phrase-4242"


def forms(secret: str) -> list[str]:
    """The secret as text could carry it: raw, hex, base64, UTF-16 (as a bytes repr would print
    it), its token ids, in both cases where it matters."""
    raw = secret.encode()
    u16 = [secret.encode(enc) for enc in ("utf-16-le", "utf-16-be", "utf-16")]
    ids = SM.tokenizer.encode(secret, specials=False)
    out = [secret, secret.lower(), secret.upper(), raw.hex(), raw.hex().upper(),
           base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
           json.dumps(ids)[1:-1], " ".join(map(str, ids)), repr(ids)[1:-1]]
    out += [repr(b)[2:-1] for b in u16] + [b.decode("latin-1") for b in u16] + [b.hex() for b in u16]
    return out


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def rendered(self, record: logging.LogRecord) -> str:
        """Everything a handler could write for the record."""
        parts = [self.format(record), record.getMessage(), repr(record.msg), repr(record.args)]
        if record.exc_info:
            parts.append(self.formatter.formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        std = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
        parts += [repr(v) for k, v in vars(record).items() if k not in std]  # extra={...} fields
        return "\n".join(parts)


@pytest.fixture
def every_log_record(caplog):
    """Every logger at DEBUG, propagating to the root (restored afterwards)."""
    caplog.set_level(logging.DEBUG)
    handler = Everything()
    root = logging.getLogger()
    root.addHandler(handler)
    saved = []
    for _name, lg in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):
            saved.append((lg, lg.level, lg.disabled))
            lg.setLevel(logging.DEBUG)
            lg.disabled = False
            if not lg.propagate:
                lg.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for lg, level, disabled in saved:
            lg.setLevel(level)
            lg.disabled = disabled
            lg.removeHandler(handler)


@tool
def lookup(key: str) -> str:
    """Look a key up in the vault."""
    try:
        raise KeyError(key)
    except KeyError as e:
        raise RuntimeError(f"vault refused key {key}: it is revoked") from e


@tool
def vault(key: str) -> str:
    """Open the vault with a key."""
    raise ToolError(f"wrong key {key}")


@tool
def echo(text: str) -> str:
    """Echo text back."""
    return f"you said {text}"


async def test_no_log_record_carries_message_or_tool_text(store, every_log_record):
    model = TestModel([
        "Checking." + tool_call("lookup", key=SECRET),
        "Again." + tool_call("vault", key=SECRET),
        "Echo." + tool_call("echo", text=SECRET),
        "Done.",
    ], base=SM)
    memory = MemoryPolicy(retention="persistent", never_consolidate=[re.escape(SECRET)])
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        agent = Agent(model, tools=[lookup, vault, echo], store=store, memory=memory, max_steps=5,
                      max_tokens=80, sleep=SleepPolicy(loops=2, min_fill=0.0), system_prompt="Hi.")
        async with agent.session("logs", tenant="t") as s:
            result = await s.run(f"my key is {SECRET}, look it up")
        agent.close()
    tool_errors = [m.content for m in result.messages if m.role == "tool" and m.is_error]
    assert len(tool_errors) == 2 and all(SECRET in t for t in tool_errors)  # the model did read them
    records = every_log_record.records
    needles = forms(SECRET)
    for record in records:
        text = every_log_record.rendered(record)
        found = [n for n in needles if n in text]
        assert not found, (record.name, record.levelname, record.msg, found)
    for w in warned:
        assert not any(n in str(w.message) for n in needles), w
    # the failure is still logged: its type, length and place
    assert any(r.name == "sleepagent.tools.base" and "RuntimeError" in r.getMessage() for r in records)


def test_the_store_logs_no_payload_bytes_at_debug(store, every_log_record):
    """SQLAlchemy logs statements, parameters and result rows once logging is at DEBUG; a payload
    holds a persisted window's token ids (message text), so no part of it may reach a record."""
    import torch
    from safetensors.torch import save as st_save

    from sleepagent.model.state import STATE_FORMAT_VERSION

    fp = "a" * 64
    ids = torch.tensor([SM.tokenizer.encode("a public turn that still must not be logged", specials=False)])
    meta = {"format_version": STATE_FORMAT_VERSION, "fingerprint": fp, "counters": "{}"}
    # the ids alone, so they are the payload's tail, which a truncated bytes repr (head ... tail)
    # still shows
    payload = st_save({"window.ids": ids}, metadata=meta)
    store.open_session("p", tenant="t", fingerprint=fp, policy=MemoryPolicy(retention="persistent"))
    snap = store.save("p", payload, tenant="t", loops=1)
    assert store.latest("p", tenant="t")[1] == payload
    assert store.load(snap.id, tenant="t")[1] == payload
    assert store.restore_point("p", tenant="t").payload == payload
    store.erase("p", tenant="t")
    data = ids.numpy().tobytes()
    # any two consecutive tokens, as a bytes repr (how a row or a parameter is printed) or hex
    chunks = [data[i : i + 16] for i in range(0, len(data) - 15, 8)]
    needles = [repr(c)[2:-1] for c in chunks] + [c.hex() for c in chunks]
    assert any(r.name.startswith("sqlalchemy") for r in every_log_record.records)
    for record in every_log_record.records:
        text = every_log_record.rendered(record)
        assert not any(n in text for n in needles), (record.name, record.msg)
