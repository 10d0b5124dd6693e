"""``sleepagent bench serve``: simulated conversations against a real ``sleepagent serve`` over HTTP.

Streaming requests, so time to first token and inter-token latency come from the SSE chunks as a
client sees them; with replicas, the same load on Ray Serve and a timed failover.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from .server_process import metrics, server_process
from .timing import percentile_ms

__all__ = ["HF_SWEEP_MODEL", "SWEEP_HF_SECTION", "SWEEP_SECTION", "bench_serve", "bench_serve_sweep", "sweep_markdown"]


def bench_serve(*, conversations: int = 8, concurrency: int | None = None, rounds: int = 2, tool_s: float = 0.3,
                think_s: float = 0.3, model: str = "docqa-small", replicas: tuple[int, ...] = ()) -> dict:
    """``K`` simulated conversations against a real ``sleepagent serve`` on a free port, over HTTP
    with streaming: read a document through a tool call (the tool takes ``tool_s``), then
    ``rounds`` questions with ``think_s`` of user think time before each. Reports throughput, time
    to first token and inter-token latency (p50/p99, from the SSE chunks), and the share of sleep
    hidden in the pauses (from the server's metrics).

    ``replicas``: also run the same load on Ray Serve with each number of engine replicas (a local
    Ray, a temporary PostgreSQL store), and time a failover: the replica holding a conversation is
    killed, and the next request's first token is timed (kill to first token)."""
    import httpx

    from ..serve import ServeConfig, serve_in_background

    with serve_in_background(ServeConfig(model=model, no_auth=True, max_in_flight=max(64, conversations))) as url:
        out = _drive(url, model, conversations, concurrency, rounds, tool_s, think_s)
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text

    def metric(name: str) -> float:
        return next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))

    hidden, exposed = metric("sleepagent_sleep_hidden_seconds_total"), metric("sleepagent_sleep_exposed_seconds_total")
    out.update({"sleeps": metric("sleepagent_sleeps_total"), "sleep_hidden_s": hidden, "sleep_exposed_s": exposed,
                "hidden_share": hidden / (hidden + exposed) if hidden + exposed else 1.0})
    if replicas:
        out["ray"] = {
            str(k): _bench_ray(k, model, conversations, concurrency, rounds, tool_s, think_s) for k in replicas
        }
    return out


_PAGE = "The road from K leads to M. The road from M leads to Q. The road from Q leads to K.\n[end of document]"
_TOOLS = [{"type": "function", "function": {"name": "next_page", "description": "Read the next page of the document.",
                                            "parameters": {"type": "object", "properties": {}}}}]


async def _stream_turn(
    client, url: str, model: str, messages: list, session: str | None, record=None, max_tokens: int | None = None
) -> tuple[dict, str]:
    """One streamed request; returns (the assistant message, the session id). ``record(kind, s)``
    gets "ttft" and "itl" times and "tokens" counts."""
    import json as _json

    body = {"model": model, "messages": messages, "tools": _TOOLS, "stream": True,
            "stream_options": {"include_usage": True}}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    headers = {"X-Session-Id": session} if session else {}
    t0 = time.perf_counter()
    first: float | None = None
    last = t0  # set at the first token, before any interval is measured
    content: str = ""
    calls: dict[int, dict[str, Any]] = {}
    async with client.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:150]}")
        sid = r.headers.get("x-session-id", session)
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = _json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(data["error"]["message"])
            if data.get("usage") and record:
                record("tokens", data["usage"]["completion_tokens"])
            for ch in data.get("choices", []):
                delta = ch.get("delta", {})
                if delta.get("content") or delta.get("tool_calls"):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                        record and record("ttft", now - t0)
                    else:  # a content piece, or a piece of a streamed tool call's arguments
                        record and record("itl", now - last)
                    last = now
                    content += delta.get("content") or ""
                    for piece in delta.get("tool_calls") or []:  # OpenAI's stream: id and name, then arguments
                        call = calls.setdefault(piece["index"], {"id": "", "type": "function",
                                                                 "function": {"name": "", "arguments": ""}})
                        call["id"] = piece.get("id") or call["id"]
                        fn = piece.get("function") or {}
                        call["function"]["name"] += fn.get("name") or ""
                        call["function"]["arguments"] += fn.get("arguments") or ""
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, sid


def bench_serve_sweep(levels: tuple[int, ...] = (1, 4, 8, 16), *, per_slot: int = 2, rounds: int = 2,
                      tool_s: float = 0.3, think_s: float = 0.3, model: str = "docqa-small",
                      threads: int = 1, max_tokens: int | None = None, ramp_s: float = 0.0,
                      baseline: int = 8) -> dict[str, Any]:
    """The same conversations (:func:`bench_serve`'s) at several concurrencies against ONE server
    in a process of its own (``threads`` torch threads): at concurrency ``c``, ``c * per_slot``
    conversations, ``c`` at a time. Each row's throughput, time to first token, inter-token
    latency and share of sleep hidden (from the server's metrics before and after the row), and
    its ratios to the concurrency-1 row measured first on the same server (the baseline).

    ``model``: a shipped checkpoint's name or a checkpoint directory (a transformers hybrid too),
    or ``"hf"`` (:data:`HF_SWEEP_MODEL`: ``bench engine --model hf``'s 27M-parameter qwen3_5
    hybrid, random weights, saved to a temporary directory with a 384-token window and N = 2);
    ``max_tokens``: each request's completion budget (a random model writes up to it).
    ``baseline``: the concurrency-1 row's conversations (at least ``per_slot``): every ratio
    divides by that row, and a p99 over a handful of requests is just their slowest.

    Each level's conversations start together (a burst: identical conversations then keep in
    step, so their sleeps fall in the same pauses). ``ramp_s`` > 0: the levels above 1 again
    (``ramped_rows``), their first ``c`` conversations starting evenly over ``ramp_s`` seconds
    (vLLM's benchmark ramps arrivals up the same way), which tells a burst's tail from a
    saturated engine's. Every row's ``busy_share`` is the engine worker's busy seconds (from the
    server's metrics) over the row's time between its two reads of them: near 1, the engine is
    saturated and requests queue for compute, whatever the order it serves them in."""
    if model == "hf":
        with tempfile.TemporaryDirectory() as tmp:
            r = bench_serve_sweep(levels, per_slot=per_slot, rounds=rounds, tool_s=tool_s, think_s=think_s,
                                  model=str(_hf_checkpoint(Path(tmp))), threads=threads, max_tokens=max_tokens,
                                  ramp_s=ramp_s, baseline=baseline)
        return {**r, "model": HF_SWEEP_MODEL}
    levels = tuple(sorted(set(levels) | {1}))
    baseline = max(per_slot, baseline)
    cfg = {"model": model, "no_auth": True, "max_in_flight": max(64, 2 * levels[-1]),
           "max_sessions": max(1024, 4 * per_slot * sum(levels))}
    rows: list[dict[str, Any]] = []
    ramped: list[dict[str, Any]] = []
    with server_process(cfg, threads=threads) as (url, _):
        import httpx

        served = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]  # a directory's name
        _drive(f"{url}/v1", served, 1, 1, 0, 0.0, 0.0, max_tokens)  # warm up: first-call allocations, the grammar cache

        def row(c: int, ramp: float) -> dict[str, Any]:
            t0 = time.perf_counter()  # the busy share's interval holds both reads of the metrics
            before = metrics(url)
            n = baseline if c == 1 else c * per_slot
            r = _drive(f"{url}/v1", served, n, c, rounds, tool_s, think_s, max_tokens, ramp)
            after = metrics(url)
            span = time.perf_counter() - t0

            def delta(name: str) -> float:
                return after.get(name, 0.0) - before.get(name, 0.0)

            hidden, exposed = delta("sleepagent_sleep_hidden_seconds_total"), delta(
                "sleepagent_sleep_exposed_seconds_total")
            r.update({"sleeps": delta("sleepagent_sleeps_total"), "sleep_hidden_s": hidden, "sleep_exposed_s": exposed,
                      "hidden_share": hidden / (hidden + exposed) if hidden + exposed else 1.0,
                      "busy_share": delta("sleepagent_engine_busy_seconds_total") / span})
            return r

        rows = [row(c, 0.0) for c in levels]
        if ramp_s > 0:
            ramped = [row(c, ramp_s) for c in levels if c > 1]
    base = rows[0]
    for r in rows + ramped:
        r["tokens_per_s_ratio"] = r["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else 0.0
        r["requests_per_s_ratio"] = r["requests_per_s"] / base["requests_per_s"] if base["requests_per_s"] else 0.0
        r["ttft_p99_ratio"] = r["ttft_p99_ms"] / base["ttft_p99_ms"] if base["ttft_p99_ms"] else 0.0
    out = {"model": model, "max_tokens": max_tokens, "levels": list(levels), "per_slot": per_slot,
           "baseline": baseline, "rounds": rounds, "tool_s": tool_s, "think_s": think_s, "threads": threads,
           "rows": rows}
    if ramp_s > 0:
        out.update({"ramp_s": ramp_s, "ramped_rows": ramped})
    return out


SWEEP_SECTION = "## Serving at several concurrencies (`sleepagent bench serve --concurrency ...`)"
SWEEP_HF_SECTION = "## Serving a transformers hybrid at several concurrencies (`sleepagent bench serve --model hf`)"
HF_SWEEP_MODEL = "a 27.4M-parameter qwen3_5 hybrid (random weights; window 384, N = 2)"


# the turns of a simulated conversation whose times to first token are also kept apart, and
# their labels in the sweep's table
_TURNS = {"first": "first turn (document request)", "after_tool": "after the tool call (its page)",
          "question": "the questions"}


def _hf_checkpoint(root: Path) -> Path:
    """``bench engine --model hf``'s qwen3_5 hybrid as a checkpoint directory a server loads, its
    sleep settings in ``sleepagent.json``: a window that holds its 288-token system turn with the
    tools (so that the prefix cache keeps it, as for the shipped model) and that the tool's page
    overflows (so that the conversation sleeps in the tool call's pause, as the shipped model's
    does in its 256-token window)."""
    from ..model.hf_tiny import save_tiny_hybrid
    from .engine import HF_BENCH_LAYERS, HF_BENCH_SIZES

    path = save_tiny_hybrid(root / "qwen3_5-27M", "qwen3_5_text", seed=0, layer_types=HF_BENCH_LAYERS,
                            sizes=HF_BENCH_SIZES)
    (path / "sleepagent.json").write_text(json.dumps({"window": 384, "loops": 2}))
    return path


def sweep_markdown(r: dict[str, Any], command: str) -> str:
    """:func:`bench_serve_sweep` as the markdown of its ``docs/benchmarks.md`` section."""
    budget = f", at most {r['max_tokens']} tokens a reply" if r.get("max_tokens") else ""
    lines = [f"`{command}`: one server in its own process ({r['threads']} torch thread(s), model {r['model']}"
             f"{budget}); at "
             f"concurrency c, {r['per_slot']}c conversations{_baseline_note(r)}, c at a time, each reading a "
             "document through a tool "
             f"call ({r['tool_s']} s) and asking {r['rounds']} question(s) after {r['think_s']} s of think time. "
             "Ratios against the concurrency-1 row, measured first on the same server.", "",
             *_rows_table(r["rows"])]
    lines += _turns_table(r["rows"], "Time to first token by turn, p50 / p99 ms (n): which turns hold the tail.")
    if r.get("ramped_rows"):
        lines += ["", f"The same levels with each level's first c conversations starting evenly over "
                  f"{r['ramp_s']:g} s instead of together (`--ramp {r['ramp_s']:g}`; ratios against the same "
                  "concurrency-1 row): no burst, the same closed loop.", "", *_rows_table(r["ramped_rows"])]
        lines += _turns_table(r["ramped_rows"], "By turn, starts spread, p50 / p99 ms (n).")
    return "\n".join(lines)


def _baseline_note(r: dict[str, Any]) -> str:
    """The concurrency-1 row's conversations, where they are not ``per_slot`` (the baseline)."""
    n = r.get("baseline", r["per_slot"])
    return f" (at concurrency 1, the baseline: {n})" if n != r["per_slot"] else ""


def _rows_table(rows: list[dict[str, Any]]) -> list[str]:
    """The sweep's main table; "engine busy" (when measured): the worker's busy share of the row's time."""
    busy = all("busy_share" in x for x in rows)
    lines = ["| concurrency | requests | lost | requests/s | tokens/s | tokens/s ratio | TTFT p50 / p99 (ms) "
             "| TTFT p99 ratio | inter-token p50 / p99 (ms) | sleep hidden |" + (" engine busy |" if busy else ""),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if busy else "")]
    for x in rows:
        lines.append(f"| {x['concurrency']} | {x['requests']} | {x['lost']} | {x['requests_per_s']:.1f} | "
                     f"{x['tokens_per_s']:.0f} | **{x['tokens_per_s_ratio']:.2f}x** | {x['ttft_p50_ms']:.0f} / "
                     f"{x['ttft_p99_ms']:.0f} | {x['ttft_p99_ratio']:.2f}x | {x['itl_p50_ms']:.1f} / "
                     f"{x['itl_p99_ms']:.1f} | {100 * x['hidden_share']:.0f}% |"
                     + (f" {100 * x['busy_share']:.0f}% |" if busy else ""))
    return lines


def _turns_table(rows: list[dict[str, Any]], caption: str) -> list[str]:
    turns = list(_TURNS.items())
    if not all("ttft_by_turn" in x for x in rows):
        return []
    lines = ["", caption, "", "| concurrency | " + " | ".join(label for _, label in turns) + " |",
             "|---:|" + "---:|" * len(turns)]
    for x in rows:
        cells = []
        for turn, _ in turns:
            t = x["ttft_by_turn"].get(turn)
            cells.append(f"{t['p50_ms']:.0f} / {t['p99_ms']:.0f} ({t['n']})" if t else "-")
        lines.append(f"| {x['concurrency']} | " + " | ".join(cells) + " |")
    return lines


def _drive(url: str, model: str, conversations: int, concurrency: int | None, rounds: int, tool_s: float,
           think_s: float, max_tokens: int | None = None, ramp_s: float = 0.0) -> dict:
    """The simulated conversations of :func:`bench_serve` against ``url``; the first ``concurrency``
    start evenly over ``ramp_s`` seconds (0: together), the others as slots free up."""
    import anyio
    import httpx

    times: dict[str, list[float]] = {"ttft": [], "itl": []}
    counts = {"tokens": 0, "requests": 0, "lost": 0}
    errors: dict[str, int] = {}

    def record(kind: str, value: float) -> None:
        if kind == "tokens":
            counts["tokens"] += int(value)
        else:
            times[kind].append(value)

    def record_turn(turn: str):
        """``record`` that also files a time to first token under its turn: which turns hold
        the tail is what the table of turns shows."""
        def rec(kind: str, value: float) -> None:
            record(kind, value)
            if kind == "ttft":
                times.setdefault(f"ttft_{turn}", []).append(value)
        return rec

    async def conversation(limiter: anyio.CapacityLimiter, client: httpx.AsyncClient, delay: float) -> None:
        async with limiter:
            await anyio.sleep(delay)  # the ramp: this slot's first conversation starts later
            try:
                messages = [{"role": "user", "content": "Read the document."}]
                reply, sid = await _stream_turn(client, url, model, messages, None, record_turn("first"), max_tokens)
                counts["requests"] += 1
                messages.append(reply)
                for call in reply.get("tool_calls", []):
                    await anyio.sleep(tool_s)  # the tool runs: the server sleeps meanwhile
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": _PAGE})
                if reply.get("tool_calls"):
                    reply, sid = await _stream_turn(client, url, model, messages, sid, record_turn("after_tool"),
                                                    max_tokens)
                    counts["requests"] += 1
                    messages.append(reply)
                for q in range(rounds):
                    await anyio.sleep(think_s)  # the user reads and thinks
                    messages.append({"role": "user", "content": f"Where does 1 road from {'KMQ'[q % 3]} lead?"})
                    reply, sid = await _stream_turn(client, url, model, messages, sid, record_turn("question"),
                                                    max_tokens)
                    counts["requests"] += 1
                    messages.append(reply)
            except (RuntimeError, httpx.HTTPError) as e:
                counts["lost"] += 1
                errors[str(e)[:200]] = errors.get(str(e)[:200], 0) + 1

    async def main() -> float:
        n = concurrency or conversations
        limiter = anyio.CapacityLimiter(n)
        # one client (one connection pool) for all conversations, made before the clock starts:
        # making a client loads a TLS context (16 took 460 ms of CPU on a loaded 2-core host), and
        # a client made per conversation blocked this event loop while the first conversations'
        # replies streamed in, so that time counted in their time to first token at 16
        limits = httpx.Limits(max_connections=max(100, n), max_keepalive_connections=n)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(conversations):
                    tg.start_soon(conversation, limiter, client, ramp_s * i / n if i < n else 0.0)
            return time.perf_counter() - t0

    wall = anyio.run(main)

    return {
        "model": model,
        "conversations": conversations,
        "concurrency": concurrency or conversations,
        "rounds": rounds,
        "tool_s": tool_s,
        "think_s": think_s,
        "ramp_s": ramp_s,
        "wall_s": wall,
        "requests": counts["requests"],
        "lost": counts["lost"],
        "errors": errors,
        "requests_per_s": counts["requests"] / wall,
        "tokens_per_s": counts["tokens"] / wall,
        "ttft_p50_ms": percentile_ms(times["ttft"], 0.5),
        "ttft_p99_ms": percentile_ms(times["ttft"], 0.99),
        "itl_p50_ms": percentile_ms(times["itl"], 0.5),
        "itl_p99_ms": percentile_ms(times["itl"], 0.99),
        # each turn's times to first token: the document's first turn, the one after the tool
        # call (its page), the questions
        "ttft_by_turn": {turn: {"n": len(times[f"ttft_{turn}"]), "p50_ms": percentile_ms(times[f"ttft_{turn}"], 0.5),
                                "p99_ms": percentile_ms(times[f"ttft_{turn}"], 0.99)}
                         for turn in _TURNS if times.get(f"ttft_{turn}")},
    }


def _bench_ray(replicas: int, model: str, conversations: int, concurrency: int | None, rounds: int, tool_s: float,
               think_s: float) -> dict:
    """The same load on Ray Serve with ``replicas`` engines, then a timed failover."""
    import socket

    import anyio
    import ray
    from ray import serve

    from ..serve import ServeConfig
    from ..serve.ray_serve import build_app
    from ..storage.pgtemp import create_database, temporary_postgres

    with temporary_postgres() as server, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        ray.init(num_cpus=max(2, replicas), include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            cfg = ServeConfig(model=model, no_auth=True, store=create_database(server), persist_window=True)
            serve.run(build_app(cfg, replicas=replicas, num_cpus=max(2, replicas) / (replicas + 0.5)),
                      name="sleepagent", route_prefix="/")
            url = f"http://127.0.0.1:{port}/v1"
            out = _drive(url, model, conversations, concurrency, rounds, tool_s, think_s)
            if replicas > 1:
                out["failover_s"] = anyio.run(_failover, url, model)
        finally:
            serve.shutdown()
            ray.shutdown()
    return out


async def _failover(url: str, model: str) -> float:
    """Seconds from killing the replica that holds a conversation to the first token of its next
    reply (resumed on another replica from the store)."""
    import anyio
    import httpx
    import ray

    async with httpx.AsyncClient(timeout=300) as client:
        messages = [{"role": "user", "content": "Read the document."}]
        r = await client.post(f"{url}/chat/completions", json={"model": model, "messages": messages, "tools": _TOOLS})
        sid, replica = r.headers["x-session-id"], r.json()["session"]["replica"]
        messages += [r.json()["choices"][0]["message"], {"role": "tool", "tool_call_id": "c", "content": _PAGE}]
        name = next(a for a in ray.util.list_named_actors(all_namespaces=True) if replica in a["name"])
        t0 = time.perf_counter()
        ray.kill(ray.get_actor(name["name"], namespace=name["namespace"]), no_restart=True)
        first: list[float] = []
        while not first:
            try:
                await _stream_turn(client, url, model, messages, sid,
                                   lambda kind, v: first.append(time.perf_counter()) if kind == "ttft" else None)
            except (RuntimeError, httpx.HTTPError):
                await anyio.sleep(0.05)  # Ray is still routing around the dead replica
        return first[0] - t0
