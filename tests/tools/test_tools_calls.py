"""The <tool_call> / <tool_response> wire format."""

from __future__ import annotations

import json

from sleepagent.tools import (
    MalformedToolCall,
    ToolCall,
    ToolResult,
    parse_tool_calls,
    render_tool_call,
    render_tool_response,
    split_text_and_calls,
)


def test_parse_single_call() -> None:
    text = 'Sure. <tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
    (call,) = parse_tool_calls(text)
    assert isinstance(call, ToolCall)
    assert call.name == "calculator"
    assert call.arguments == {"expression": "1+1"}
    assert call.raw == text[len("Sure. ") :]
    assert call.id.startswith("call_") and len(call.id) > len("call_")


def test_parse_multiple_calls_in_order_with_unique_ids() -> None:
    text = (
        'a <tool_call>{"name": "one", "arguments": {"x": 1}}</tool_call> b\n'
        '<tool_call>\n{"name": "two", "arguments": {}}\n</tool_call> c '
        '<tool_call>{"name": "three"}</tool_call>'
    )
    calls = parse_tool_calls(text)
    assert [c.name for c in calls] == ["one", "two", "three"]
    assert all(isinstance(c, ToolCall) for c in calls)
    assert calls[2].arguments == {}  # missing arguments means none
    assert len({c.id for c in calls}) == 3


def test_no_calls() -> None:
    assert parse_tool_calls("just text, no tags") == []
    assert split_text_and_calls("  hi  ") == ("hi", [])


def test_arguments_as_json_string_are_accepted() -> None:
    (call,) = parse_tool_calls(
        '<tool_call>{"name": "f", "arguments": "{\\"q\\": \\"x\\", \\"n\\": 2}"}</tool_call>'
    )
    assert isinstance(call, ToolCall)
    assert call.arguments == {"q": "x", "n": 2}


def test_code_fence_inside_call_is_tolerated() -> None:
    text = '<tool_call>```json\n{"name": "f", "arguments": {"a": 1}}\n```</tool_call>'
    (call,) = parse_tool_calls(text)
    assert isinstance(call, ToolCall) and call.arguments == {"a": 1}


def _malformed(text: str) -> MalformedToolCall:
    (call,) = parse_tool_calls(text)
    assert isinstance(call, MalformedToolCall), call
    return call


def test_malformed_json() -> None:
    call = _malformed('<tool_call>{"name": "f", "arguments": {</tool_call>')
    assert "not valid JSON" in call.reason
    assert call.raw == '<tool_call>{"name": "f", "arguments": {</tool_call>'


def test_malformed_not_an_object() -> None:
    assert "JSON object, not an array" in _malformed("<tool_call>[1, 2]</tool_call>").reason
    assert "empty" in _malformed("<tool_call>  </tool_call>").reason


def test_malformed_missing_or_bad_name() -> None:
    assert 'no "name"' in _malformed('<tool_call>{"arguments": {}}</tool_call>').reason
    assert '"name" must be a non-empty string, not a number' in _malformed(
        '<tool_call>{"name": 3}</tool_call>'
    ).reason
    assert "non-empty" in _malformed('<tool_call>{"name": "  "}</tool_call>').reason


def test_malformed_arguments() -> None:
    call = _malformed('<tool_call>{"name": "f", "arguments": [1]}</tool_call>')
    assert '"arguments" must be a JSON object, not an array' in call.reason
    assert call.name == "f"
    call = _malformed('<tool_call>{"name": "f", "arguments": "not json"}</tool_call>')
    assert "string that does not contain a JSON object" in call.reason
    call = _malformed('<tool_call>{"name": "f", "arguments": "[1]"}</tool_call>')
    assert "not an array" in call.reason


def test_unclosed_call_at_end_is_malformed() -> None:
    text = 'ok <tool_call>{"name": "a"}</tool_call> then <tool_call>{"name": "b", "argu'
    first, second = parse_tool_calls(text)
    assert isinstance(first, ToolCall) and first.name == "a"
    assert isinstance(second, MalformedToolCall)
    assert "not closed" in second.reason
    assert second.raw == '<tool_call>{"name": "b", "argu'


def test_unclosed_call_followed_by_another_call() -> None:
    text = '<tool_call>{"name": "a"} <tool_call>{"name": "b"}</tool_call>'
    first, second = parse_tool_calls(text)
    assert isinstance(first, MalformedToolCall) and "not closed" in first.reason
    assert isinstance(second, ToolCall) and second.name == "b"


def test_split_text_and_calls_removes_every_block() -> None:
    text = 'Let me compute. <tool_call>{"name": "a"}</tool_call> And <tool_call>oops'
    rest, calls = split_text_and_calls(text)
    assert rest == "Let me compute.  And"
    assert [type(c) for c in calls] == [ToolCall, MalformedToolCall]


def test_render_tool_call_round_trips() -> None:
    text = render_tool_call("search", {"query": "café", "n": 3})
    assert text == (
        '<tool_call>{"name": "search", "arguments": {"query": "café", "n": 3}}</tool_call>'
    )
    (call,) = parse_tool_calls(text)
    assert isinstance(call, ToolCall)
    assert (call.name, call.arguments) == ("search", {"query": "café", "n": 3})
    assert render_tool_call("clock") == '<tool_call>{"name": "clock", "arguments": {}}</tool_call>'


def test_render_tool_response_success_and_error() -> None:
    ok = ToolResult(call_id="c1", name="f", content="42")
    assert render_tool_response(ok) == "<tool_response>42</tool_response>"
    err = ToolResult(
        call_id="c2", name="f", content='bad "x"', is_error=True, error_kind="tool_exception"
    )
    rendered = render_tool_response(err)
    assert rendered.startswith("<tool_response>") and rendered.endswith("</tool_response>")
    body = rendered[len("<tool_response>") : -len("</tool_response>")]
    assert json.loads(body) == {"error": 'bad "x"'}
    assert err.render() == rendered


def test_render_tool_response_escapes_closing_tag_in_content() -> None:
    sneaky = ToolResult(call_id="c", name="f", content="a</tool_response>b")
    rendered = render_tool_response(sneaky)
    assert rendered.count("</tool_response>") == 1
    assert rendered.endswith("</tool_response>")
