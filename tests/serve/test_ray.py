"""Scale-out on Ray Serve, on a local Ray (2 CPUs, 2 engine replicas), the shipped model and a
real PostgreSQL: affinity, failover with no committed turn lost, tenants kept apart."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'sleepagent[ray]'")
pytest.importorskip("fastapi", reason="the serve extra: pip install 'sleepagent[serve]'")

pytestmark = pytest.mark.slow

TOOLS = [{"type": "function", "function": {"name": "next_page", "description": "Read the next page of the document.",
                                           "parameters": {"type": "object", "properties": {}}}}]
PAGE = "The road from K leads to M. The road from M leads to Q. The road from Q leads to K.\n[end of document]"
KEYS = {"key-alice": "alice", "key-bob": "bob"}



def uncached(response: dict) -> int:
    """Prompt tokens a request made the engine read (OpenAI's prompt_tokens count the cached ones too)."""
    use = response["usage"]
    return use["prompt_tokens"] - use["prompt_tokens_details"]["cached_tokens"]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(postgres_server):
    from ray import serve

    from sleepagent.serve.app import ServeConfig
    from sleepagent.serve.ray_serve import build_app
    from sleepagent.storage.pgtemp import create_database

    store = create_database(postgres_server)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = ServeConfig(model="docqa-small", api_keys=KEYS, store=store, persist_window=True)
        serve.run(build_app(cfg, replicas=2), name="sleepagent", route_prefix="/")
        yield f"http://127.0.0.1:{port}/v1", store
    finally:
        serve.shutdown()
        ray.shutdown()


def post(url: str, messages: list, key: str = "key-alice", session: str | None = None, retries: int = 0) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if session:
        headers["X-Session-Id"] = session
    for attempt in range(retries + 1):
        r = httpx.post(f"{url}/chat/completions", json={"model": "docqa-small", "messages": messages, "tools": TOOLS},
                       headers=headers, timeout=120)
        if r.status_code < 500 or attempt == retries:
            return r
        time.sleep(1)  # a replica just died: Ray is routing around it
    return r


def conversation(url: str, key: str = "key-alice", kill_before: int | None = None) -> list[dict]:
    """Read the page, then three questions; returns each response's session info and answer.
    ``kill_before``: kill the replica holding the session before that turn."""
    messages = [{"role": "user", "content": "Read the document."}]
    r = post(url, messages, key)
    sid = r.headers["x-session-id"]
    out = [r.json()]
    messages += [r.json()["choices"][0]["message"], {"role": "tool", "tool_call_id": "c", "content": PAGE}]
    for turn, question in enumerate([None, "Where does 1 road from K lead?", "Where do 2 roads from M lead?"], 1):
        if question:
            messages += [{"role": "user", "content": question}]
        if kill_before == turn:
            kill_replica(out[-1]["session"]["replica"])
        r = post(url, messages, key, session=sid, retries=10 if kill_before == turn else 0)
        assert r.status_code == 200, r.text
        out.append(r.json())
        messages.append(r.json()["choices"][0]["message"])
    return out


def kill_replica(replica_id: str) -> None:
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if replica_id in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)


def answers(responses: list[dict]) -> list[str | None]:
    return [r["choices"][0]["message"]["content"] for r in responses]


def test_a_session_stays_on_its_replica(cluster):
    url, _ = cluster
    responses = conversation(url)
    replicas = {r["session"]["replica"] for r in responses}
    assert len(replicas) == 1
    assert [r["session"]["status"] for r in responses] == ["new", "reused", "reused", "reused"]
    assert answers(responses)[1:3] == ["Done.", "M"]
    # each continuation read only its new message: the history stayed in the replica's state
    assert all(uncached(r) < 120 for r in responses[1:])


def test_killing_the_replica_mid_conversation_loses_no_turn(cluster):
    url, _ = cluster
    reference = conversation(url)
    moved = conversation(url, kill_before=2)
    assert answers(moved) == answers(reference)  # the same continuation as an uninterrupted run
    after = moved[2]["session"]
    assert after["status"] == "resumed" and after["replica"] != moved[1]["session"]["replica"]
    assert after["lost_tokens"]["window"] == 0 and after["lost_tokens"]["unread"] == 0  # persist_window
    assert uncached(moved[2]) == uncached(reference[2])  # nothing re-read


def test_tenants_stay_apart_across_replicas(cluster):
    url, _ = cluster
    alice = conversation(url, key="key-alice")
    sid = alice[0]["session"]["id"]
    stolen = post(url, [{"role": "user", "content": "hi"}], key="key-bob", session=sid)
    missing = post(url, [{"role": "user", "content": "hi"}], key="key-bob", session="no-such-session")
    assert stolen.status_code == missing.status_code == 404
    assert stolen.json()["error"]["message"].replace(sid, "X") == missing.json()["error"]["message"].replace(
        "no-such-session", "X")
    bob = conversation(url, key="key-bob")
    assert bob[0]["session"]["id"] != sid and answers(bob)[1] == "Done."
