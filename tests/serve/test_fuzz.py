"""Fuzzing the HTTP API: no request, however malformed, gets a 5xx or hangs.

Bodies are drawn by hypothesis around the shape of :class:`~sleepagent.serve.protocol.ChatRequest`
(the fields its JSON schema lists, each drawn from valid values, wrong types, extremes and text
with lone surrogates, control characters and markup), plus arbitrary JSON and raw bytes, and sent
to a real server (the shipped model, a small completion budget). Every answer must be under 500,
an error must have OpenAI's shape, and each request must finish within its timeout. Bounded to
about a minute on two cores (``max_examples``); found cases stay below as explicit examples.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .error_cases import KEYS

pytest.importorskip("fastapi", reason="the serve extra: pip install 'sleepagent[serve]'")

FIELDS = ("model", "messages", "tools", "tool_choice", "max_tokens", "max_completion_tokens", "temperature",
          "seed", "stop", "stream", "stream_options", "response_format", "n", "session_id", "user")

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "\ud800", "a\udfffb", "<tool_call>", "</tool_call>{", "<|end|>", "\x00\x1b",
                     "x" * 3000, "{\"name\": \"next_page\"}"]),
)
numbers = st.one_of(st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=False),
                    st.sampled_from([0, 1, -1, 2**63, 1e308, "7", None, True]))
json_values = st.recursive(st.none() | st.booleans() | numbers | texts,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
                           max_leaves=12)


@st.composite
def tool_call(draw) -> Any:
    return draw(st.one_of(
        st.fixed_dictionaries({"id": texts, "type": st.sampled_from(["function", "other"]),
                               "function": st.fixed_dictionaries({"name": texts,
                                                                  "arguments": st.one_of(texts, json_values)})}),
        json_values))


@st.composite
def message(draw) -> Any:
    role = draw(st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", "bogus", None]))
    out: dict[str, Any] = {"role": role}
    if draw(st.booleans()):
        out["content"] = draw(st.one_of(texts, st.none(), st.lists(
            st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]), "text": texts}), max_size=3),
            json_values))
    if role == "assistant" and draw(st.booleans()):
        out["tool_calls"] = draw(st.lists(tool_call(), max_size=2))
    if role == "tool" or draw(st.booleans()):
        out["tool_call_id"] = draw(st.one_of(texts, st.none(), st.sampled_from(["call_1"])))
    return out if draw(st.integers(0, 9)) else draw(json_values)


tool_spec = st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": st.one_of(texts, st.just("next_page")), "description": texts,
         "parameters": st.one_of(st.just({"type": "object", "properties": {}}), json_values)},
        optional={"strict": st.booleans()})}),
    json_values)

field_values = {
    "model": st.one_of(st.just("docqa-small"), texts),
    "messages": st.one_of(st.lists(message(), min_size=1, max_size=4), json_values),
    "tools": st.one_of(st.lists(tool_spec, max_size=2), json_values),
    "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required", "next_page"]), json_values),
    "max_tokens": numbers, "max_completion_tokens": numbers, "temperature": numbers, "seed": numbers,
    "stop": st.one_of(st.lists(texts, max_size=3), texts, json_values),
    "stream": st.one_of(st.booleans(), json_values),
    "stream_options": st.one_of(st.just({"include_usage": True}), json_values),
    "response_format": st.one_of(st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
                                 st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": st.one_of(
                                     st.fixed_dictionaries({"name": texts, "schema": json_values}), json_values)}),
                                 json_values),
    "n": numbers, "session_id": st.one_of(texts, json_values), "user": texts,
}


@st.composite
def request_body(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    body = {"model": "docqa-small", "messages": [{"role": "user", "content": "Read the document."}]}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True)):
        body[name] = draw(field_values[name])
    if draw(st.integers(0, 9)) == 0:
        body[draw(texts)] = draw(json_values)  # an unknown field
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def server():
    from sleepagent.serve import ServeConfig, serve_in_background

    cfg = ServeConfig(model="docqa-small", api_keys=KEYS, max_request_bytes=50_000, max_prompt_tokens=2000,
                      max_completion_tokens=48)
    with serve_in_background(cfg) as url, httpx.Client(base_url=url, timeout=60,
                                                      headers={"Authorization": "Bearer key-alice",
                                                               "Content-Type": "application/json"}) as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(body=request_body())
@example(body=json.dumps({"model": "docqa-small", "seed": 2**70,
                          "messages": [{"role": "user", "content": "hi"}]}).encode())
@example(body=json.dumps({"model": "docqa-small", "messages": [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                          "function": {"name": "next_page", "arguments": "{\"a\": \"\\ud800\"}"}}]},
    {"role": "tool", "tool_call_id": "c", "content": "p"}]}).encode())
@example(body=json.dumps({"model": "docqa-small", "messages": [{"role": "user", "content": "hi"}],
                          "stop": 2666}).encode())  # found by this test: a number for stop was a 500
def test_no_request_gets_a_server_error(server, body):
    r = server.post("/chat/completions", content=body)  # raises on a hang (the client's timeout)
    assert r.status_code < 500, (r.status_code, r.text[:300], body[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["message"], error
    elif r.headers.get("content-type", "").startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]"), r.text[-200:]
    else:
        assert r.json()["object"] == "chat.completion"
