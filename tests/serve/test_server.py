"""The server's contract: tenants, errors in OpenAI's shape, bounded requests, sessions that are
reused, released and resumed, disconnects that cancel, metrics, and a bounded load test."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi", reason="the serve extra: pip install 'sleepagent[serve]'")

from sleepagent.serve import ServeConfig, serve_in_background
from sleepagent.serve.app import load_api_keys

KEYS = {"key-alice": "alice", "key-bob": "bob"}
TOOLS = [{"type": "function", "function": {"name": "next_page", "description": "Read the next page of the document.",
                                           "parameters": {"type": "object", "properties": {}}}}]
PAGE = "The road from K leads to M. The road from M leads to K.\n[end of document]"


def post(url: str, body: dict, key: str | None = "key-alice", **headers) -> httpx.Response:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{url}/chat/completions", json=body, headers=headers, timeout=120)


def call_id(r: httpx.Response) -> str:
    """The id of the (first) tool call a response made: what the tool message answers."""
    return r.json()["choices"][0]["message"]["tool_calls"][0]["id"]


def metric(text: str, name: str) -> float:
    """A sample's value from Prometheus text."""
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def ask(messages: list, **kw) -> dict:
    return {"model": "docqa-small", "messages": messages, **kw}


@pytest.fixture(scope="module")
def url():
    with serve_in_background(ServeConfig(api_keys=KEYS, max_request_bytes=200_000, max_prompt_tokens=4000,
                                         max_completion_tokens=300)) as base:
        yield base


def test_keys_map_to_tenants_and_a_foreign_session_is_the_same_404(url):
    assert post(url, ask([{"role": "user", "content": "hi"}]), key=None).status_code == 401
    bad = post(url, ask([{"role": "user", "content": "hi"}]), key="wrong")
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
    r = post(url, ask([{"role": "user", "content": "Read the document."}], tools=TOOLS))
    sid = r.headers["x-session-id"]
    assert r.status_code == 200 and r.headers["x-session-status"] == "new"
    foreign = post(url, ask([{"role": "user", "content": "hi"}]), key="key-bob", **{"X-Session-Id": sid})
    missing = post(url, ask([{"role": "user", "content": "hi"}]), key="key-bob", **{"X-Session-Id": "no-such-id"})
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["message"].replace(sid, "X") == missing.json()["error"]["message"].replace(
        "no-such-id", "X"
    )
    # bob resending alice's exact history is not recognised as alice's conversation
    history = [{"role": "user", "content": "Read the document."}, r.json()["choices"][0]["message"],
               {"role": "tool", "tool_call_id": call_id(r), "content": PAGE}]
    as_bob = post(url, ask(history, tools=TOOLS), key="key-bob")
    assert as_bob.json()["session"]["status"] == "new" and as_bob.headers["x-session-id"] != sid
    as_alice = post(url, ask(history, tools=TOOLS))
    assert as_alice.json()["session"] == {
        "id": sid,
        "status": "reused",
        "prompt_tokens_cached": as_alice.json()["usage"]["prompt_tokens_details"]["cached_tokens"],
    }


def test_errors_have_openai_shape_and_status(url):
    cases = [
        (ask([{"role": "user", "content": "hi"}], model="gpt-4"), 404, "model_not_found"),
        ({"model": "docqa-small", "messages": []}, 400, None),
        (ask([{"role": "wizard", "content": "hi"}]), 400, None),
        (ask([{"role": "user", "content": "hi"}], n=2), 400, None),
        (ask([{"role": "user", "content": "hi"}], tool_choice="nope", tools=TOOLS), 400, None),
        (ask([{"role": "user", "content": "x" * 5000}]), 413, "prompt_too_long"),
        (ask([{"role": "user", "content": "hi"}], max_tokens=10_000), 413, "max_tokens_too_large"),
        (ask([{"role": "user", "content": "y" * 250_000}]), 413, "request_too_large"),
    ]
    for body, status, code in cases:
        r = post(url, body)
        assert r.status_code == status, (body.get("model"), r.text[:200])
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        if code:
            assert err["code"] == code
    r = httpx.post(f"{url}/chat/completions", content=b"{not json", headers={"Authorization": "Bearer key-alice"})
    assert r.status_code == 400 and "error" in r.json()


def test_named_session_continues_and_tool_choice_none_forbids_calls(url):
    first = post(url, ask([{"role": "user", "content": "Read the document."}], tools=TOOLS, tool_choice="none"))
    assert first.status_code == 200 and "tool_calls" not in first.json()["choices"][0]["message"]
    sid = first.headers["x-session-id"]
    msgs = [{"role": "user", "content": "Read the document."}, first.json()["choices"][0]["message"],
            {"role": "user", "content": "Where does 1 road from K lead?"}]
    named = post(url, ask(msgs, session_id=sid))
    assert named.json()["session"]["status"] == "reused" and named.headers["x-session-id"] == sid
    use = named.json()["usage"]
    assert use["prompt_tokens"] - use["prompt_tokens_details"]["cached_tokens"] < 40  # only the new question was read


def test_health_models_and_metrics(url):
    assert httpx.get(f"{url.removesuffix('/v1')}/health").json()["status"] == "ok"
    models = httpx.get(f"{url}/models", headers={"Authorization": "Bearer key-bob"}).json()
    assert models["data"][0]["id"] == "docqa-small"
    post(url, ask([{"role": "user", "content": "hello"}]))
    text = httpx.get(f"{url.removesuffix('/v1')}/metrics").text
    for name in ("sleepagent_prompt_tokens_total", "sleepagent_completion_tokens_total", "sleepagent_sleeps_total",
                 "sleepagent_sleep_hidden_seconds_total", "sleepagent_sleep_exposed_seconds_total",
                 "sleepagent_sessions ", "sleepagent_queue_depth"):
        assert name in text, name


def test_idle_sessions_are_released_to_the_store_and_resumed(tmp_path):
    cfg = ServeConfig(no_auth=True, store=f"sqlite:///{tmp_path / 'serve.db'}", idle_release_s=0.3)
    with serve_in_background(cfg) as url:
        first = post(url, ask([{"role": "user", "content": "Read the document."}], tools=TOOLS), key=None)
        sid = first.headers["x-session-id"]
        history = [{"role": "user", "content": "Read the document."}, first.json()["choices"][0]["message"],
                   {"role": "tool", "tool_call_id": call_id(first), "content": PAGE}]
        deadline = time.monotonic() + 20
        while metric(httpx.get(f"{url.removesuffix('/v1')}/metrics").text, "sleepagent_sessions_released_total") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        again = post(url, ask(history, tools=TOOLS), key=None)  # recognised, and back from the store
        assert again.json()["session"]["status"] == "resumed" and again.headers["x-session-id"] == sid
        assert again.json()["choices"][0]["message"]["content"] == "Done."
        use = again.json()["usage"]
        assert use["prompt_tokens"] - use["prompt_tokens_details"]["cached_tokens"] < 120  # the new tool result only
    # a new process (same store) resumes the named session: its snapshot counted the messages read
    with serve_in_background(cfg) as url2:
        history += [
            again.json()["choices"][0]["message"],
            {"role": "user", "content": "Where does 1 road from M lead?"},
        ]
        later = post(url2, ask(history, session_id=sid), key=None)
        assert later.json()["session"]["status"] == "resumed"
        assert later.json()["choices"][0]["message"]["content"] == "K"


@pytest.mark.slow
def test_a_client_that_disconnects_cancels_its_read(tmp_path):
    cfg = ServeConfig(no_auth=True, max_request_bytes=2_000_000, max_prompt_tokens=1_000_000)
    with serve_in_background(cfg) as url:
        from sleepagent.serve.app import _Server  # noqa: F401  (the app's state is reachable for the check)

        body = ask([{"role": "user", "content": "z" * 400_000}])
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/chat/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
        time.sleep(0.5)
        metrics = httpx.get(f"{url.removesuffix('/v1')}/metrics").text
        in_flight = metric(metrics, "sleepagent_requests_in_flight")
        assert in_flight == 0  # the request ended with its client, long before 400,000 tokens were read
        assert post(url, ask([{"role": "user", "content": "hello"}]), key=None).status_code == 200


@pytest.mark.slow
async def test_fifty_conversations_eight_at_a_time_lose_nothing_and_stay_in_their_tenant():
    with serve_in_background(ServeConfig(api_keys=KEYS, max_in_flight=8)) as url:
        limiter = anyio.Semaphore(8)
        results = []

        async def conversation(i: int) -> None:
            key = "key-alice" if i % 2 else "key-bob"
            async with limiter, httpx.AsyncClient(timeout=120) as client:
                h = {"Authorization": f"Bearer {key}"}
                # every conversation starts the same way: the server must still keep them apart
                msgs = [{"role": "user", "content": "Read the document."}]
                r1 = await client.post(f"{url}/chat/completions", json=ask(msgs, tools=TOOLS), headers=h)
                page = PAGE.replace("K", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i % 26])
                msgs += [
                    r1.json()["choices"][0]["message"],
                    {"role": "tool", "tool_call_id": call_id(r1), "content": page},
                ]
                r2 = await client.post(f"{url}/chat/completions", json=ask(msgs, tools=TOOLS), headers=h)
                results.append((key, r1.status_code, r2.status_code, r1.headers["x-session-id"],
                                r2.headers.get("x-session-id"), r2.json()["choices"][0]["message"]["content"]))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(conversation, i)
    assert len(results) == 50
    assert all(s1 == s2 == 200 for _, s1, s2, *_ in results)
    # identical first turns, yet every conversation had a session of its own, in its own tenant
    assert len({sid for *_, sid, _, _ in results}) == 50
    assert len({sid for *_, sid, _ in results}) == 50
    assert all(text == "Done." for *_, text in results)


def test_api_keys_file_and_env(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# key tenant\nk1 acme\n\nk2 globex  # comment\n")
    assert load_api_keys(str(f), env="k3=initech") == {"k1": "acme", "k2": "globex", "k3": "initech"}
    from sleepagent.errors import ConfigError

    f.write_text("just-a-key\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_api_keys(str(f), env="")
    with pytest.raises(ConfigError, match="no API keys"), serve_in_background(ServeConfig()):
        pass
    assert json.dumps(load_api_keys(None, env=""))  == "{}"


def test_beyond_max_sessions_the_least_recently_used_is_released_and_resumed(tmp_path):
    cfg = ServeConfig(no_auth=True, store=f"sqlite:///{tmp_path / 's.db'}", max_sessions=2)
    with serve_in_background(cfg) as url:
        ids, histories = [], []
        # three conversations (each calls the tool: a tool message answers a call), room for two
        for opening in ("Read the document.", "Please read the document.", "Read the whole document."):
            msgs = [{"role": "user", "content": opening}]
            r = post(url, ask(msgs, tools=TOOLS), key=None)
            ids.append(r.headers["x-session-id"])
            histories.append(msgs + [r.json()["choices"][0]["message"],
                                     {"role": "tool", "tool_call_id": call_id(r), "content": PAGE}])
        metrics = httpx.get(f"{url.removesuffix('/v1')}/metrics").text
        assert (
            metric(metrics, "sleepagent_sessions") == 2 and metric(metrics, "sleepagent_sessions_released_total") == 1
        )
        first = post(url, ask(histories[0], tools=TOOLS), key=None)  # A was the least recently used
        assert first.json()["session"] == {**first.json()["session"], "id": ids[0], "status": "resumed"}
        assert first.json()["choices"][0]["message"]["content"] == "Done."


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.text() | st.integers() | st.none(),
                    lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids)))
def test_a_streamed_chunk_is_one_line_for_every_client(obj):
    """A data line stays one line whatever the model wrote: httpx's aiter_lines (Python's
    str.splitlines) also splits at NEL and the Unicode line and paragraph separators, which
    json.dumps leaves raw; the server escapes them (the same JSON value)."""
    from sleepagent.serve.app import sse_json

    text = sse_json(obj)
    assert text.splitlines() == [text] and json.loads(text) == obj
