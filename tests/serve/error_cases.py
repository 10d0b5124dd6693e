"""One table of bad requests and the answer each must get, from the single server and from every
Ray Serve replica alike (tests/serve/test_errors.py, tests/serve/test_ray.py).

Each case: a name, the HTTP method and path, the JSON body (or raw bytes), extra headers, the
API key (None: none sent), and the status and error ``code`` expected. Servers under test are
configured with :data:`LIMITS` and :data:`KEYS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

KEYS = {"key-alice": "alice", "key-bob": "bob"}
LIMITS = dict(max_request_bytes=200_000, max_prompt_tokens=4000, max_completion_tokens=300)
TOOLS = [{"type": "function", "function": {"name": "next_page", "description": "Read the next page of the document.",
                                           "parameters": {"type": "object", "properties": {}}}}]
USER = {"role": "user", "content": "Read the document."}
CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "next_page", "arguments": "{}"}}]}


def ask(messages: list, **kw: Any) -> dict[str, Any]:
    return {"model": "docqa-small", "messages": messages, **kw}


def with_args(arguments: str) -> dict[str, Any]:
    """An assistant tool call whose arguments string is ``arguments``."""
    return {
        **CALL,
        "tool_calls": [{**CALL["tool_calls"][0], "function": {"name": "next_page", "arguments": arguments}}],
    }


@dataclass
class Case:
    name: str
    body: Any
    status: int
    code: str | None = None
    key: str | None = "key-alice"
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    path: str = "/chat/completions"


CASES = [
    Case("no key", ask([USER]), 401, "invalid_api_key", key=None),
    Case("wrong key", ask([USER]), 401, "invalid_api_key", key="wrong"),
    Case("models without a key", None, 401, "invalid_api_key", key=None, method="GET", path="/models"),
    Case("not json", b"{not json", 400),
    Case("a json array", [1, 2], 400),
    Case("an empty object", {}, 400),
    Case("no messages field", {"model": "docqa-small"}, 400),
    Case("messages not a list", {"model": "docqa-small", "messages": "hi"}, 400),
    Case("no messages", ask([]), 400),
    Case("unknown role", ask([{"role": "wizard", "content": "hi"}]), 400),
    Case("content a number", ask([{"role": "user", "content": 7}]), 400),
    Case("an image part", ask([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400),
    Case("n = 2", ask([USER], n=2), 400),
    Case("temperature 3", ask([USER], temperature=3), 400),
    Case("temperature -1", ask([USER], temperature=-1), 400),
    Case("max_tokens 0", ask([USER], max_tokens=0), 400),
    Case("max_completion_tokens 0", ask([USER], max_completion_tokens=0), 400),
    Case("max_tokens over the cap", ask([USER], max_tokens=10_000), 413, "max_tokens_too_large"),
    Case("five stop strings", ask([USER], stop=["a", "b", "c", "d", "e"]), 400),
    Case("seed 2**70", ask([USER], seed=2**70), 400),
    Case("seed -2**70", ask([USER], seed=-(2**70)), 400),
    Case("stream not a boolean", ask([USER], stream="yes"), 400),
    Case("unknown model", ask([USER], model="gpt-4"), 404, "model_not_found"),
    Case("unknown model, streamed", ask([USER], model="gpt-4", stream=True), 404, "model_not_found"),
    Case("a tool name with spaces", ask([USER], tools=[{"type": "function", "function": {"name": "bad name"}}]), 400),
    Case("tool_choice of no tool", ask([USER], tools=TOOLS, tool_choice="nope"), 400),
    Case(
        "tool_choice of a missing function",
        ask([USER], tools=TOOLS, tool_choice={"type": "function", "function": {"name": "missing"}}),
        400,
    ),
    Case("tool_choice required without tools", ask([USER], tool_choice="required"), 400),
    Case("tool_choice none without tools", ask([USER], tool_choice="none"), 400),
    Case(
        "a tool message with no call before it",
        ask([USER, {"role": "tool", "tool_call_id": "call_1", "content": "page"}], tools=TOOLS),
        400,
    ),
    Case(
        "a tool message after a user message",
        ask([USER, CALL, USER, {"role": "tool", "tool_call_id": "call_1", "content": "page"}], tools=TOOLS),
        400,
    ),
    Case(
        "a tool message answering no call",
        ask([USER, CALL, {"role": "tool", "tool_call_id": "call_9", "content": "page"}], tools=TOOLS),
        400,
    ),
    Case(
        "a tool message without tool_call_id", ask([USER, CALL, {"role": "tool", "content": "page"}], tools=TOOLS), 400
    ),
    Case(
        "a tool message, streamed",
        ask([USER, {"role": "tool", "tool_call_id": "x", "content": "p"}], tools=TOOLS, stream=True),
        400,
    ),
    Case("arguments not json", ask([USER, with_args("{oops"), USER], tools=TOOLS), 400),
    Case("arguments a json array", ask([USER, with_args("[1]"), USER], tools=TOOLS), 400),
    Case("arguments with a lone surrogate", ask([USER, with_args('{"q": "\\ud800"}'), USER], tools=TOOLS), 400),
    Case(
        "a lone surrogate in content",
        b'{"model": "docqa-small", "messages": [{"role": "user", "content": "\\udc00"}]}',
        400,
    ),
    Case("a prompt over the cap", ask([{"role": "user", "content": "x" * 5000}]), 413, "prompt_too_long"),
    Case("a body over the cap", ask([{"role": "user", "content": "y" * 250_000}]), 413, "request_too_large"),
    Case("an empty session_id", ask([USER], session_id=""), 400),
    Case("an unknown session header", ask([USER]), 404, "session_not_found", headers={"X-Session-Id": "no-such-id"}),
    Case("an unknown session_id", ask([USER], session_id="no-such-id"), 404, "session_not_found"),
    Case("response_format of no type", ask([USER], response_format={"type": "xml"}), 400),
    Case("GET on the chat endpoint", None, 405, "method_not_allowed", method="GET"),
    Case("an unknown path", ask([USER]), 404, "not_found", path="/nope"),
]


def send(url: str, case: Case) -> httpx.Response:
    """``case`` sent to the server at ``url`` (``http://host:port/v1``)."""
    headers = dict(case.headers)
    if case.key:
        headers["Authorization"] = f"Bearer {case.key}"
    if isinstance(case.body, bytes):
        content, headers["Content-Type"] = case.body, "application/json"
    else:
        content = None
    return httpx.request(case.method, f"{url}{case.path}", headers=headers, content=content,
                         json=None if case.body is None or isinstance(case.body, bytes) else case.body, timeout=120)


def check(case: Case, r: httpx.Response) -> dict[str, Any]:
    """The case's answer is right: its status, OpenAI's error shape, its code; returns the body."""
    assert r.status_code == case.status, (case.name, r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, (case.name, body)
    assert body["error"]["message"], case.name
    if case.code:
        assert body["error"]["code"] == case.code, (case.name, body)
    return body
