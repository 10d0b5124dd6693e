"""`sleepagent serve` with structured output, driven by the openai SDK: ``response_format`` (a
pydantic model through ``chat.completions.parse``, ``json_object``), ``strict`` tools whose
arguments the SDK parses into the model, errors for what cannot be enforced; and a request's W3C
``traceparent`` continued by the server's spans, the sleep after the reply included."""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'sleepagent[serve]'")

from openai import OpenAI, pydantic_function_tool
from pydantic import BaseModel, Field

from sleepagent import tracing
from sleepagent.serve import ServeConfig, serve_in_background

KEY = "key-alice"
MODEL = "docqa-small"


class Answer(BaseModel):
    city: str = Field(max_length=16)
    hops: int = Field(ge=0, le=9)
    sure: bool


class NextPage(BaseModel):
    """Read a page of the document."""

    page: int = Field(ge=1, le=9)


@pytest.fixture(scope="module")
def url():
    with serve_in_background(ServeConfig(api_keys={KEY: "alice"})) as base:
        yield base


def post(url: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", json={"model": MODEL, **body}, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}", **headers})


def test_the_sdk_parses_the_answer_into_the_pydantic_model(url):
    client = OpenAI(base_url=url, api_key=KEY)
    completion = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Where does the road lead?"}], response_format=Answer,
        max_tokens=96)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Answer)
    assert Answer.model_validate_json(choice.message.content) == choice.message.parsed


def test_strict_tools_have_arguments_the_sdk_parses(url):
    client = OpenAI(base_url=url, api_key=KEY)
    completion = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Read the document."}],
        tools=[pydantic_function_tool(NextPage, name="next_page")], tool_choice="required", max_tokens=64)
    [call] = completion.choices[0].message.tool_calls
    assert call.function.name == "next_page" and isinstance(call.function.parsed_arguments, NextPage)


def test_json_object_and_what_cannot_be_enforced(url):
    reply = post(url, {"messages": [{"role": "user", "content": "Any JSON."}],
                       "response_format": {"type": "json_object"}, "max_tokens": 64})
    assert reply.status_code == 200
    assert isinstance(json.loads(reply.json()["choices"][0]["message"]["content"]), dict)
    remote = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "https://example.com/s.json"}}}
    bad = post(url, {"messages": [{"role": "user", "content": "x"}], "response_format": remote})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"
    small = post(url, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "response_format": {
        "type": "json_schema", "json_schema": {"name": "a", "schema": Answer.model_json_schema()}}})
    assert small.status_code == 400 and small.json()["error"]["param"] == "max_tokens"
    missing = post(url, {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}})
    assert missing.status_code == 400
    strict_remote = {
        "type": "function",
        "function": {"name": "f", "strict": True, "parameters": remote["json_schema"]["schema"]},
    }
    refused = post(url, {"messages": [{"role": "user", "content": "x"}], "tools": [strict_remote]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools"


def test_a_traceparent_is_continued_by_the_turn_and_its_sleep(url):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        long_message = "Read this and remember it. " * 8  # a window full enough to sleep after the reply
        reply = post(url, {"messages": [{"role": "user", "content": long_message}], "max_tokens": 8},
                     traceparent=f"00-{trace_id}-{parent_id}-01")
        assert reply.status_code == 200
        deadline = time.monotonic() + 30
        while not any(s.name == "sleep" for s in exporter.get_finished_spans()) and time.monotonic() < deadline:
            time.sleep(0.05)
        spans = exporter.get_finished_spans()
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()
    [turn] = [s for s in spans if s.name == f"chat {MODEL}"]
    assert f"{turn.context.trace_id:032x}" == trace_id and f"{turn.parent.span_id:016x}" == parent_id
    assert turn.parent.is_remote and turn.kind.name == "SERVER"
    usage = reply.json()["usage"]
    assert turn.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert turn.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert turn.attributes["gen_ai.conversation.id"] == reply.json()["session"]["id"]
    sleeps = [s for s in spans if s.name == "sleep"]
    assert sleeps and all(s.context.trace_id == turn.context.trace_id and s.parent.span_id == turn.context.span_id
                          for s in sleeps)
