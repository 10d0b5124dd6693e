"""Fuzzing the HTTP API: no request, however malformed, gets a 5xx or hangs.

Two fuzzers, one real server (the shipped model, a completion budget of 48 tokens, so a request
that does generate is quick):

- schemathesis, from the server's own OpenAPI document (``/openapi.json``, i.e.
  ``create_app(cfg).openapi()``, whose chat operation describes :class:`ChatRequest`'s body):
  every operation, with valid data (positive) and data that breaks the schema (negative: wrong
  types, missing required fields, unknown roles, out-of-range numbers, non-JSON bodies), the
  served model's name swapped in for four chat bodies in five (past the model check),
  and a right, wrong or missing API key;
- hypothesis, around the shape of :class:`~sleepagent.serve.protocol.ChatRequest` (the fields its
  JSON schema lists, each drawn from valid values, wrong types, extremes and text with lone
  surrogates, control characters and markup), plus arbitrary JSON and raw bytes: what a schema
  generator does not write.

Every answer must be under 500, an error must have OpenAI's shape, and each request must finish
within its timeout (the client's, 30 to 60 s). Bounded by ``max_examples`` (150 each): about
30 s for the file on two loaded cores. Found cases stay below as explicit examples.
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


SERVED = "docqa-small"


@pytest.fixture(scope="module")
def base_url():
    from sleepagent.serve import ServeConfig, serve_in_background

    cfg = ServeConfig(model=SERVED, api_keys=KEYS, max_request_bytes=50_000, max_prompt_tokens=2000,
                      max_completion_tokens=48)
    with serve_in_background(cfg) as url:
        yield url


@pytest.fixture(scope="module")
def server(base_url):
    with httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": "Bearer key-alice",
                                                              "Content-Type": "application/json"}) as client:
        yield client


def check_answer(status: int, content_type: str, text: str, where: Any) -> None:
    """No 5xx; an error in OpenAI's shape; a stream that ends; a completion that is one."""
    assert status < 500, (status, text[:300], where)
    if status >= 400:
        body = json.loads(text)
        assert set(body) == {"error"}, (body, where)
        error = body["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["message"], (error, where)
    elif content_type.startswith("text/event-stream"):
        assert text.rstrip().endswith("data: [DONE]"), (text[-200:], where)
    elif content_type.startswith("application/json"):
        json.loads(text)


# --- schemathesis, from the server's own OpenAPI document -------------------------------------------


@pytest.fixture(scope="module")
def openapi(base_url):
    """What the server publishes: ``create_app(cfg).openapi()``."""
    r = httpx.get(base_url.removesuffix("/v1") + "/openapi.json", timeout=60)
    r.raise_for_status()
    return r.json()


def test_the_openapi_document_describes_the_chat_body(openapi):
    """The chat endpoint reads its raw body itself; the document still says what that body is."""
    import jsonschema  # the dev extra

    from .error_cases import TOOLS, USER, ask
    body = openapi["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == ["model", "messages"] and "$ref" not in json.dumps(schema)
    jsonschema.validate(ask([USER], tools=TOOLS, stop="\n", response_format={"type": "json_object"}), schema)
    jsonschema.validate(ask([USER], stop=["a", "b"]), schema)
    for bad in (ask([{"role": "wizard", "content": "hi"}]), ask([]), {"model": SERVED}, ask([USER], n=2)):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.fixture(scope="module")
def openapi_cases(openapi):
    """Every operation of the document, each with valid (positive) and invalid (negative) data."""
    import schemathesis  # the dev extra
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(openapi)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {("POST", "/v1/chat/completions"),
                                                                  ("GET", "/v1/models")}
    return st.one_of([op.as_strategy(generation_mode=mode) for op in operations for mode in GenerationMode])


KEY_HEADERS = st.sampled_from([{"Authorization": "Bearer key-alice"}] * 8
                              + [{"Authorization": "Bearer wrong"}, {"Authorization": ""}])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_request_from_the_openapi_document_gets_a_server_error(base_url, openapi_cases, data):
    import requests

    case = data.draw(openapi_cases, label="case")
    if isinstance(case.body, dict) and data.draw(st.integers(0, 4), label="not the served model"):
        case.body["model"] = SERVED  # past the model check, into the runtime (and sometimes the model)
    kwargs = case.as_transport_kwargs(base_url=base_url.removesuffix("/v1"), headers=data.draw(KEY_HEADERS))
    where = {k: kwargs.get(k) for k in ("method", "url", "params", "json", "data")} | {
        "authorization": kwargs["headers"].get("Authorization")}
    r = requests.request(**kwargs, timeout=30)  # raises on a hang
    check_answer(r.status_code, r.headers.get("content-type", ""), r.text, where)


# --- hypothesis, around ChatRequest's fields -----------------------------------------------------


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
@example(body=json.dumps({"model": "docqa-small", "messages": [{"role": "user", "content": "hi"}],
                          "temperature": 2.2e-304}).encode())  # found by this test: logits / t overflowed to NaN
def test_no_request_gets_a_server_error(server, body):
    r = server.post("/chat/completions", content=body)  # raises on a hang (the client's timeout)
    check_answer(r.status_code, r.headers.get("content-type", ""), r.text, body[:300])
    if r.status_code < 400 and not r.headers.get("content-type", "").startswith("text/event-stream"):
        assert r.json()["object"] == "chat.completion"
