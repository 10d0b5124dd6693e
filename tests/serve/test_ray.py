"""Scale-out on Ray Serve, on a local Ray (2 CPUs, 2 engine replicas), the shipped model and a
real PostgreSQL: affinity with and without a session id (plain OpenAI clients: the openai SDK,
langchain-openai), failover with no committed turn lost, tenants kept apart, and the single
server's error contract. One cluster for the module: starting one takes a while."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from .error_cases import CASES, KEYS, LIMITS, check, send

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'sleepagent[ray]'")
pytest.importorskip("fastapi", reason="the serve extra: pip install 'sleepagent[serve]'")

pytestmark = pytest.mark.slow

TOOLS = [{"type": "function", "function": {"name": "next_page", "description": "Read the next page of the document.",
                                           "parameters": {"type": "object", "properties": {}}}}]
PAGE = "The road from K leads to M. The road from M leads to Q. The road from Q leads to K.\n[end of document]"



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
    from sleepagent.storage.pgtemp import create_database

    from sleepagent.serve.app import ServeConfig
    from sleepagent.serve.ray_serve import build_app

    store = create_database(postgres_server)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = ServeConfig(model="docqa-small", api_keys=KEYS, store=store, persist_window=True, **LIMITS)
        serve.run(build_app(cfg, replicas=2), name="sleepagent", route_prefix="/")
        yield f"http://127.0.0.1:{port}/v1", store
    finally:
        serve.shutdown()
        ray.shutdown()


def post(
    url: str, messages: list, key: str = "key-alice", session: str | None = None, retries: int = 0
) -> httpx.Response:
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
    call = r.json()["choices"][0]["message"]["tool_calls"][0]
    messages += [r.json()["choices"][0]["message"], {"role": "tool", "tool_call_id": call["id"], "content": PAGE}]
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


def test_the_error_table_reads_the_same_as_on_a_single_server(cluster):
    """Every bad request of the table: the same status and body from the Ray router and its
    replicas as from a single server."""
    from sleepagent.serve import ServeConfig, serve_in_background

    url, _ = cluster
    with serve_in_background(ServeConfig(api_keys=KEYS, **LIMITS)) as single:
        for case in CASES:
            assert check(case, send(url, case)) == check(case, send(single, case)), case.name


def _document() -> tuple[list[str], list[str]]:
    """A held-out 9-place document as the shipped model reads it (three pages of about 112
    characters, "[page i/n]" headers, the end marker on the last), and six questions about it."""
    from sleepagent.tools import paginate

    from sleepagent.train.docqa_eval import held_out_sessions

    session = held_out_sessions(1, 9, 1, seed=0)[0]
    body = paginate(session.documents[0], 112)
    pages = [f"[page {i}/{len(body)}]\n{p}" for i, p in enumerate(body, 1)]
    pages[-1] += "\n[end of document]"
    return pages, [q.text for q in session.questions[0][:6]]


PAGES, QUESTIONS = _document()
END = "[end of document] The document has no more pages."


def openai_conversation(url: str, key: str, opening: str, kill_after: int | None = None) -> list:
    """A tool conversation through the openai SDK, no session id: the model pages through the
    document (one call per page), then six questions; ten requests. Returns the responses.
    ``kill_after``: kill the replica that served that request (1-based) before the next."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key=key, max_retries=10)
    messages: list = [{"role": "user", "content": opening}]
    pages, questions, out = list(PAGES), list(QUESTIONS), []
    while len(out) < 10:
        r = client.chat.completions.create(model="docqa-small", messages=messages, tools=TOOLS)
        out.append(r)
        if kill_after == len(out):
            kill_replica(r.model_extra["session"]["replica"])
        msg = r.choices[0].message
        messages.append(msg.model_dump(exclude_none=True))
        if msg.tool_calls:
            page = pages.pop(0) if pages else END
            messages.append({"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": page})
        else:
            messages.append({"role": "user", "content": questions.pop(0) if questions else "Thanks."})
    return out


def langchain_conversation(url: str, key: str, opening: str) -> list:
    """The same conversation through langchain-openai's ChatOpenAI (bound tools, no session id);
    returns each reply's usage and session."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=url, api_key=key, model="docqa-small", temperature=0).bind_tools(TOOLS)
    history: list = [HumanMessage(opening)]
    pages, questions, out = list(PAGES), list(QUESTIONS), []
    while len(out) < 10:
        reply = llm.invoke(history)
        meta = reply.response_metadata
        out.append(reply)
        history.append(reply)
        if reply.tool_calls:
            history.append(ToolMessage(pages.pop(0) if pages else END, tool_call_id=reply.tool_calls[0]["id"]))
        else:
            history.append(HumanMessage(questions.pop(0) if questions else "Thanks."))
        assert meta["finish_reason"] in ("stop", "tool_calls")
    return out


def sdk_uncached(r) -> int:
    return r.usage.prompt_tokens - r.usage.prompt_tokens_details.cached_tokens


def test_plain_clients_without_a_session_id_are_reused_across_replicas(cluster):
    """No session id, two replicas: every request of a conversation reaches the replica that
    holds it, from the second on ``reused``, reading what a single engine reads."""
    from sleepagent.serve import ServeConfig, serve_in_background

    url, _ = cluster
    with serve_in_background(ServeConfig(api_keys=KEYS, **LIMITS)) as single:
        reference = openai_conversation(single, "key-alice", "Read the document.")
    # several conversations at once on two replicas (openings differ: the model calls for each)
    runs = {opening: openai_conversation(url, "key-alice", opening)
            for opening in ("Read the document.", "Please read the document.", "Read the whole document.")}
    for opening, responses in runs.items():
        sessions = [r.model_extra["session"] for r in responses]
        assert [s["status"] for s in sessions] == ["new"] + ["reused"] * 9, (opening, sessions)
        assert len({s["replica"] for s in sessions}) == 1 and len({s["id"] for s in sessions}) == 1, (opening, sessions)
    same = runs["Read the document."]
    assert [sdk_uncached(r) for r in same] == [sdk_uncached(r) for r in reference]
    assert [r.choices[0].message.content for r in same] == [r.choices[0].message.content for r in reference]
    replies = langchain_conversation(url, "key-bob", "Read the document.")
    uses = [r.response_metadata["token_usage"] for r in replies]
    assert [u["prompt_tokens"] - u["prompt_tokens_details"]["cached_tokens"] for u in uses] == \
        [sdk_uncached(r) for r in reference]


def test_a_replica_killed_mid_conversation_costs_one_reread(cluster):
    url, _ = cluster
    responses = openai_conversation(url, "key-bob", "Please read the document.", kill_after=4)
    sessions = [r.model_extra["session"] for r in responses]
    assert [s["status"] for s in sessions[:4]] == ["new"] + ["reused"] * 3
    assert sessions[4]["status"] == "new" and sessions[4]["replica"] != sessions[3]["replica"]  # read once, anew
    assert all(s["status"] == "reused" and s["replica"] == sessions[4]["replica"] for s in sessions[5:])
