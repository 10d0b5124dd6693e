"""Streamed tool calls, as OpenAI streams them: a call's first chunk carries its index, id and
name (once the name is decoded), the next ones its argument text as the model writes it; the
markup never reaches a content delta. Judged by clients we did not write (the openai SDK, its
stream helper, langchain-openai) against `sleepagent serve` over the shipped model: each streamed
call, accumulated, is the call a plain request answers (greedy)."""

from __future__ import annotations

import json

import anyio
import pytest
from sleepagent.tools import ToolCall, parse_tool_calls

from sleepagent.runtime.constraints import visible_text
from sleepagent.runtime.generate import CallDelta, Script, call_parts, generate_turn

MARKUP = ("<tool_call", "tool_call>", '{"name"')
PAGE_TOOL = {"type": "function", "function": {"name": "next_page", "description": "Read the next page of the document.",
                                              "parameters": {"type": "object", "properties": {}}}}
LOOKUP_TOOL = {"type": "function", "function": {
    "name": "lookup", "description": "Look a place up.",
    "parameters": {"type": "object", "properties": {"place": {"type": "string", "maxLength": 12},
                                                   "hops": {"type": "integer"}},
                   "required": ["place", "hops"]}}}
TOOLS = [PAGE_TOOL, LOOKUP_TOOL]
FORCE_LOOKUP = {"type": "function", "function": {"name": "lookup"}}

TEXTS = [
    'Let me look. <tool_call>{"name": "lookup", "arguments": {"place": "a}\\"b", "n": [1, {"x": null}]}}</tool_call>',
    '<tool_call>\n{"name":"next_page","arguments":{}}\n</tool_call>\n<tool_call>{"name": "lookup"}</tool_call>',
    '<tool_call><function=lookup>\n<parameter=place>\nK\n</parameter>\n</function></tool_call>',
    '<tool_call>{"arguments": {"a": 1}, "name": "lookup"}</tool_call><tool_call>{"name": "x", "arguments": {"a',
]


# --- what a call says as it is written ------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_call_parts_only_grow_and_add_up_to_the_parsed_calls(text):
    before = call_parts("")
    for k in range(1, len(text) + 1):
        now = call_parts(text[:k])
        assert len(now) >= len(before)
        for old, new in zip(before, now, strict=False):
            assert old.name is None or new.name == old.name
            assert new.arguments.startswith(old.arguments)
        before = now
    for part, call in zip(before, parse_tool_calls(text), strict=True):
        if part.done:
            assert isinstance(call, ToolCall) and call.name == part.name
            assert json.loads(part.arguments) == call.arguments


def test_the_token_loop_streams_text_then_the_call_name_then_its_arguments():
    from sleepagent import Engine
    from sleepagent.testing import tiny_model

    sm = tiny_model()
    tok = sm.tokenizer
    text = TEXTS[0]
    events: list[tuple[str, object]] = []

    async def main():
        engine = Engine(sm)
        try:
            s = engine.session()
            logits = await engine.prefill(s, tok.render_turn("user", "hi") + tok.generation_prompt())
            return await generate_turn(engine, s, logits, picker=Script(tok.encode(text), tok.end_id), max_tokens=200,
                                       on_text=lambda d: events.append(("text", d)),
                                       on_call=lambda d: events.append(("call", d)))
        finally:
            engine.close()

    turn = anyio.run(main)
    assert turn.text == text
    texts = [d for kind, d in events if kind == "text"]
    calls = [d for kind, d in events if kind == "call"]
    assert "".join(texts) == turn.content == visible_text(text) == "Let me look. "  # type: ignore[arg-type]
    assert not any(m in t for t in texts for m in MARKUP)  # type: ignore[operator]
    assert all(isinstance(d, CallDelta) and d.index == 0 for d in calls)
    first = calls[0]
    assert isinstance(first, CallDelta) and first.name == "lookup" and first.arguments == ""
    assert max(i for i, (kind, _) in enumerate(events) if kind == "text") < events.index(("call", first))
    assert len(calls) > 3  # the arguments arrived in pieces, as they were written
    args = "".join(d.arguments for d in calls)  # type: ignore[union-attr]
    [call] = parse_tool_calls(text)
    assert isinstance(call, ToolCall) and json.loads(args) == call.arguments
    from sleepagent.serve.protocol import arguments_text

    assert arguments_text(call) == args  # the plain reply's arguments string is what streamed


# --- real clients over a real server --------------------------------------------------------------

pytest.importorskip("fastapi", reason="the serve extra: pip install 'sleepagent[serve]'")


@pytest.fixture(scope="module")
def url():
    from sleepagent.serve import ServeConfig, serve_in_background

    with serve_in_background(ServeConfig(api_keys={"key-a": "a", "key-b": "b", "key-c": "c"})) as base:
        yield base


def _no_markup(content: str) -> None:
    assert not any(m in content for m in MARKUP), content


@pytest.mark.parametrize("choice", [None, FORCE_LOOKUP], ids=["auto-next_page", "forced-lookup"])
def test_openai_sdk_stream_accumulates_to_the_plain_call(url, choice):
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="key-a")
    kw = dict(model="docqa-small", messages=[{"role": "user", "content": "Read the document."}], tools=TOOLS,
              max_tokens=80, temperature=0)
    if choice is not None:
        kw["tool_choice"] = choice
    plain = client.chat.completions.create(**kw)
    assert plain.choices[0].finish_reason == "tool_calls"
    [want] = plain.choices[0].message.tool_calls

    stream = client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    final_tool_calls: dict = {}  # as the SDK's docs accumulate them
    carriers, name_at, finish, use = [], {}, None, None
    for n, chunk in enumerate(stream):
        if chunk.usage:
            use = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        _no_markup(delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
        for tool_call in delta.tool_calls or []:
            carriers.append(n)
            index = tool_call.index
            if index not in final_tool_calls:
                final_tool_calls[index] = tool_call
                name_at[index] = n
            else:
                assert tool_call.function.name is None and tool_call.id is None
                final_tool_calls[index].function.arguments += tool_call.function.arguments
    assert list(final_tool_calls) == [0]
    got = final_tool_calls[0]
    assert (got.function.name, got.function.arguments) == (want.function.name, want.function.arguments)
    assert got.id.startswith("call_") and got.type == "function"
    assert name_at[0] < carriers[-1]  # the name came first, the arguments after it
    # lookup's free arguments arrive in pieces; next_page's "{}" is all the grammar allows, read
    # (and sent) in one piece
    assert len(carriers) >= (2 if choice is None else 3)
    assert finish == "tool_calls"
    assert use is not None and use.completion_tokens == plain.usage.completion_tokens
    if choice is not None:
        assert json.loads(want.function.arguments).keys() == {"place", "hops"}


def test_openai_stream_helper_reports_argument_deltas_and_the_final_call(url):
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="key-b")
    kw = dict(model="docqa-small", messages=[{"role": "user", "content": "Read the document."}],
              tools=TOOLS, tool_choice=FORCE_LOOKUP, max_tokens=80, temperature=0)
    plain = client.chat.completions.create(**kw)
    [want] = plain.choices[0].message.tool_calls
    deltas, done = [], []
    with client.chat.completions.stream(**kw) as stream:
        for event in stream:
            if event.type == "content.delta":
                _no_markup(event.delta)
            elif event.type == "tool_calls.function.arguments.delta":
                deltas.append(event.arguments_delta)
            elif event.type == "tool_calls.function.arguments.done":
                done.append((event.name, event.arguments))
        completion = stream.get_final_completion()
    assert len(deltas) > 1 and "".join(deltas) == want.function.arguments
    assert done == [(want.function.name, want.function.arguments)]
    [got] = completion.choices[0].message.tool_calls
    assert (got.function.name, got.function.arguments) == (want.function.name, want.function.arguments)
    assert completion.choices[0].finish_reason == "tool_calls"
    assert not completion.choices[0].message.content


@pytest.mark.parametrize("choice", [None, "lookup"], ids=["auto-next_page", "forced-lookup"])
def test_langchain_openai_stream_accumulates_tool_call_chunks(url, choice):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=url, api_key="key-c", model="docqa-small", temperature=0, max_tokens=80)
    bound = llm.bind_tools(TOOLS, tool_choice=choice) if choice else llm.bind_tools(TOOLS)
    history = [HumanMessage("Read the document.")]
    plain = bound.invoke(history)
    chunks = list(bound.stream(history))
    carrying = [i for i, c in enumerate(chunks) if c.tool_call_chunks]
    assert len(carrying) > 1  # the call arrived in pieces
    named = [i for i in carrying if any(t.get("name") for t in chunks[i].tool_call_chunks)]
    assert named and named[0] < carrying[-1]
    final = chunks[0]
    for c in chunks[1:]:
        final = final + c
    for c in chunks:
        _no_markup(c.content if isinstance(c.content, str) else json.dumps(c.content))
    assert [(t["name"], t["args"]) for t in final.tool_calls] == [(t["name"], t["args"]) for t in plain.tool_calls]
    assert len(final.tool_calls) == 1 and final.tool_calls[0]["name"] == ("lookup" if choice else "next_page")
    assert final.response_metadata.get("finish_reason") == "tool_calls"
    assert not final.invalid_tool_calls


def test_a_call_cut_by_the_budget_streams_what_was_written_and_finishes_length(url):
    """As OpenAI's: the part of the call written before the budget ran out, then "length" (the
    plain reply, whose call never closed, has no call and the same finish)."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="key-a")
    kw = dict(model="docqa-small", messages=[{"role": "user", "content": "Read the document."}], tools=TOOLS,
              tool_choice="required", max_tokens=30)
    plain = client.chat.completions.create(**kw)
    assert plain.choices[0].finish_reason == "length" and not plain.choices[0].message.tool_calls
    items, finish = [], None
    for chunk in client.chat.completions.create(**kw, stream=True):
        delta = chunk.choices[0].delta
        _no_markup(delta.content or "")
        items += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "length"
    assert all(i.index == 0 for i in items)
    assert [i.function.name for i in items if i.function.name] in ([], ["lookup"], ["next_page"])
