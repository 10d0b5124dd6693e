"""Constrained tool-call decoding through the runtime's one builder (turn_constraint): a call names
a registered tool, its arguments follow the tool's schema, tool_choice is enforced."""

from __future__ import annotations

import pytest
import torch
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool as lc_tool

from sleepagent.errors import ConfigError
from sleepagent.runtime import normalize_tool_choice, turn_constraint
from sleepagent.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
OPEN = TOK.special_ids["<tool_call>"]
NO_ARGS = {"type": "object", "properties": {}}


def _bytes(text: str) -> list[int]:
    return TOK.encode(text, specials=False)


def _allowed(c, emitted: list[int]) -> set[int]:
    return set(torch.nonzero(c.allowed(emitted)).flatten().tolist())


def test_after_tool_call_only_a_registered_name_can_be_spelled():
    c = turn_constraint(TOK, {"next": NO_ARGS, "next_page": NO_ARGS}, max_tokens=200)
    assert OPEN in _allowed(c, []) and ord("H") in _allowed(c, [])  # "auto": the model decides whether to call
    assert _allowed(c, [OPEN]) == set(_bytes("{\n"))  # an optional newline after the tag
    head = _bytes('{"name": "next')
    assert _allowed(c, [OPEN, *head]) == set(_bytes('"_'))  # either name may continue
    full = _bytes('{"name": "next_page", "arguments": ')
    assert _allowed(c, [OPEN, *full]) == set(_bytes("{"))  # the arguments follow the schema too


def test_tool_choice_none_required_and_a_named_tool():
    assert OPEN not in _allowed(turn_constraint(TOK, {"a": NO_ARGS, "b": NO_ARGS}, "none", max_tokens=50), [])
    assert OPEN not in _allowed(turn_constraint(TOK, {}, "auto", max_tokens=50), [])  # nothing to call
    required = turn_constraint(TOK, {"a": NO_ARGS, "b": NO_ARGS}, "required", max_tokens=50)
    assert _allowed(required, []) == {OPEN}
    named = turn_constraint(TOK, {"a": NO_ARGS, "bb": NO_ARGS}, "bb", max_tokens=50)
    assert _allowed(named, []) == {OPEN}
    assert _allowed(named, [OPEN, *_bytes('{"name": "')]) == set(_bytes("b"))
    assert normalize_tool_choice({"type": "function", "function": {"name": "a"}}, ["a"]) == "a"
    assert normalize_tool_choice("any", ["a"]) == normalize_tool_choice(True, ["a"]) == "required"
    with pytest.raises(ConfigError, match="not one of the tools"):
        normalize_tool_choice("c", ["a", "b"])


def test_apply_masks_the_logits_the_model_would_have_preferred():
    c = turn_constraint(TOK, {"calc": NO_ARGS}, max_tokens=100)
    logits = torch.zeros(TOK.vocab_size)
    logits[ord("x")] = 10.0  # the model wants to write x
    prefix = [OPEN, *_bytes('{"name": "')]
    out = c.apply(logits, prefix)
    assert int(out.argmax()) == ord("c") and torch.isinf(out[ord("x")])
    assert int(c.apply(logits, []).argmax()) == ord("x")  # outside a call: text is free


def test_a_loose_schema_the_engine_cannot_take_falls_back_and_a_strict_one_is_refused():
    tools = {"remote": {"$ref": "https://example.com/schema.json"}, "ok": NO_ARGS}
    c = turn_constraint(TOK, tools, "remote", max_tokens=100)  # any JSON object as its arguments
    assert _allowed(c, [OPEN, *_bytes('{"name": "remote", "arguments": ')]) == set(_bytes("{"))
    with pytest.raises(ConfigError, match="remote") as e:
        turn_constraint(TOK, tools, max_tokens=100, strict=["remote"])
    assert e.value.field == "tools"
    with pytest.raises(ConfigError) as e:
        turn_constraint(TOK, {}, max_tokens=5, output={"type": "object", "properties": {"a": {"type": "string"}},
                                                      "required": ["a"]})
    assert e.value.field == "max_tokens"


@lc_tool
def next_page() -> str:
    """Read the next page of the document."""
    return "The road from K leads to M.\n[end of document]"


@lc_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_langchain_tool_choice_is_enforced_on_the_shipped_model():
    from sleepagent.langchain import ChatSleepModel

    llm = ChatSleepModel(model="docqa-small", loops=1, max_tokens=64)
    hello = [HumanMessage("hello")]
    forced = llm.bind_tools([next_page, add], tool_choice="add").invoke(hello)
    assert [c["name"] for c in forced.tool_calls] == ["add"]
    anything = llm.bind_tools([next_page, add], tool_choice="any").invoke(hello)
    assert anything.tool_calls and anything.tool_calls[0]["name"] in {"next_page", "add"}
    none = llm.bind_tools([next_page], tool_choice="none").invoke([HumanMessage("Read the document.")])
    assert none.tool_calls == [] and "<tool_call>" not in none.content
    with pytest.raises(ConfigError):
        llm.bind_tools([next_page], tool_choice="nope")


@pytest.mark.parametrize("temperature", [2.2e-304, 5e-324, 1e-6])
def test_a_tiny_temperature_samples_the_top_token_not_a_nan(temperature):
    """Found by the HTTP fuzz test: logits / 2.2e-304 overflowed to inf and softmax gave NaNs (a 500).
    A temperature near zero is greedy in the limit; the masked (``-inf``) tokens stay impossible."""
    from sleepagent.runtime.generate import Sampler

    logits = torch.randn(300, generator=torch.Generator().manual_seed(3)) * 10
    logits[7] = logits.max() + 1e-3
    logits[8] = float("-inf")
    sampler = Sampler(temperature, torch.Generator().manual_seed(0))
    assert [sampler(logits, []) for _ in range(20)] == [7] * 20


def test_sampling_at_temperature_one_follows_the_softmax():
    from sleepagent.runtime.generate import Sampler

    logits = torch.tensor([0.0, 1.0, float("-inf"), 2.0])
    sampler = Sampler(1.0, torch.Generator().manual_seed(0))
    counts = torch.bincount(torch.tensor([sampler(logits, []) for _ in range(4000)]), minlength=4).double() / 4000
    torch.testing.assert_close(counts, torch.softmax(logits.double(), -1), atol=0.03, rtol=0)
