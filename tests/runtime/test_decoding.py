"""Constrained tool-call decoding: a call names a registered tool; tool_choice is enforced."""

from __future__ import annotations

import pytest
import torch
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool as lc_tool

from sleepagent.runtime import ToolCallConstraint, normalize_tool_choice
from sleepagent.errors import ConfigError
from sleepagent.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
OPEN = TOK.special_ids["<tool_call>"]


def _bytes(text: str) -> list[int]:
    return TOK.encode(text, specials=False)


def test_after_tool_call_only_a_registered_name_can_be_spelled():
    c = ToolCallConstraint(TOK, ["next", "next_page"])
    assert c.allowed([]) is None and c.banned() == []  # "auto": the model decides whether to call
    assert c.allowed([OPEN]) == _bytes("{")
    head = _bytes('{"name": "next')
    assert c.allowed([OPEN, *head]) == sorted(_bytes('"_'))  # either name may continue
    full = _bytes('{"name": "next_page", "arguments": ')
    assert c.allowed([OPEN, *full]) is None  # the arguments are free
    assert c.allowed([65, 66, OPEN, *full, *_bytes("{}}</tool_call>")]) is None


def test_tool_choice_none_required_and_a_named_tool():
    assert ToolCallConstraint(TOK, ["a", "b"], "none").banned() == [OPEN]
    assert ToolCallConstraint(TOK, [], "auto").banned() == [OPEN]  # nothing to call
    required = ToolCallConstraint(TOK, ["a", "b"], "required")
    assert required.allowed([]) == [OPEN]
    named = ToolCallConstraint(TOK, ["a", "bb"], "bb")
    assert named.allowed([]) == [OPEN]
    assert named.allowed([OPEN, *_bytes('{"name": "')]) == _bytes("b")
    assert normalize_tool_choice({"type": "function", "function": {"name": "a"}}, ["a"]) == "a"
    assert normalize_tool_choice("any", ["a"]) == normalize_tool_choice(True, ["a"]) == "required"
    with pytest.raises(ConfigError, match="not one of the tools"):
        normalize_tool_choice("c", ["a", "b"])


def test_apply_masks_the_logits_the_model_would_have_preferred():
    c = ToolCallConstraint(TOK, ["calc"])
    logits = torch.zeros(TOK.vocab_size)
    logits[ord("x")] = 10.0  # the model wants to write x
    prefix = [OPEN, *_bytes('{"name": "')]
    out = c.apply(logits, prefix)
    assert int(out.argmax()) == ord("c") and torch.isinf(out[ord("x")])
    assert torch.equal(c.apply(logits, []), logits)  # outside a call: untouched


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
