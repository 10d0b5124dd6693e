"""``sleepagent bench soak``: does a server stay bounded over thousands of conversations?

A real ``sleepagent serve`` runs in a process of its own (its resident memory is then its own),
on loopback. Clients hold thousands of short tool conversations with it, a few at a time: read a
document through a tool call, then one question; some are abandoned after the call (the client
never sends the tool's result), as real clients abandon conversations. Every ``every``
conversations the benchmark records the server's resident set size (RSS), its live sessions and
what its session table remembers and the bytes of its live sessions' state against its budget
(``/metrics``), and the p99 latency of the requests since the
last record; requests that failed are counted as lost.

Bounded means a plateau: the live sessions are capped (``max_sessions``, their state's bytes by
``max_state_mb``, and idle ones are released after ``idle_release_s``), and everything else a
conversation leaves behind must be released with it. The check the report states: RSS at the last
record within 10% of RSS at half-way, and no request lost; beside it, the largest live state
recorded against the budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .timing import percentile_ms

__all__ = ["bench_soak"]

_TOOLS = [{"type": "function", "function": {"name": "next_page", "description": "Read the next page of the document.",
                                            "parameters": {"type": "object", "properties": {}}}}]
_PAGE = "The road from {a} leads to {b}. The road from {b} leads to {a}.\n[end of document]"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# runs in the server's own process: a ServeConfig from JSON, served on a port
_SERVER = """
import json, sys
from sleepagent.serve import ServeConfig
from sleepagent.serve.runner import serve
serve(ServeConfig(**json.loads(sys.argv[1])), port=int(sys.argv[2]), log_level="warning")
"""


def rss_mb(pid: int) -> float:
    """A process's resident set size in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def bench_soak(*, conversations: int = 2000, concurrency: int = 4, abandon: float = 0.2, every: int = 250,
               max_sessions: int = 256, idle_release_s: float = 30.0, store: bool = True,
               model: str = "docqa-small", max_state_mb: float | None = None, progress: Any = None) -> dict[str, Any]:
    """Run the soak (module docstring) and return its records and verdict.

    ``abandon``: the share of conversations left after the tool call; ``store``: the server
    releases idle sessions to a SQLite store in a temporary directory (resumes, snapshots and
    the table's memory of released sessions are exercised), else it drops them. ``max_state_mb``:
    the server's budget for its live sessions' state (None: its default, a quarter of memory)."""
    import anyio
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        cfg: dict[str, Any] = {"model": model, "no_auth": True, "max_sessions": max_sessions,
                               "idle_release_s": idle_release_s, "max_in_flight": max(64, 2 * concurrency)}
        if max_state_mb is not None:
            cfg["max_state_mb"] = max_state_mb
        if store:
            cfg["store"] = f"sqlite:///{Path(tmp) / 'soak.db'}"
        port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        # the server's log goes to a file: a pipe nobody reads fills up and stalls the server
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115 (closed after the server stops, below)
        proc = subprocess.Popen([sys.executable, "-c", _SERVER, json.dumps(cfg), str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=log, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_up(url, proc, Path(tmp) / "server.log")
            state: dict[str, Any] = {"done": 0, "lost": 0, "requests": 0, "latencies": [], "records": [],
                                     "all_latencies": [], "errors": {}}
            state["records"].append(_record(url, proc.pid, state))
            t0 = time.perf_counter()

            async def main() -> None:
                limiter = anyio.Semaphore(concurrency)
                async with httpx.AsyncClient(timeout=120) as client, anyio.create_task_group() as tg:
                    for i in range(conversations):
                        await limiter.acquire()
                        tg.start_soon(_conversation, client, url, model, i, abandon, state, limiter, every,
                                      proc.pid, progress)

            anyio.run(main)
            elapsed = time.perf_counter() - t0
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    records = state["records"]
    half = min(records, key=lambda r: abs(r["conversations"] - conversations / 2))
    last = records[-1]
    growth = last["rss_mb"] / half["rss_mb"] - 1
    state_peak = max((r["state_mb"] for r in records if r["state_mb"] == r["state_mb"]), default=float("nan"))
    over = sum(r["state_mb"] > r["state_budget_mb"] for r in records)
    return {"conversations": conversations, "concurrency": concurrency, "abandon": abandon,
            "max_sessions": max_sessions, "idle_release_s": idle_release_s, "store": store, "model": model,
            "max_state_mb": last["state_budget_mb"], "state_peak_mb": state_peak,
            "state_within_budget": not state_peak > last["state_budget_mb"], "records_over_budget": over,
            "requests": state["requests"], "lost": state["lost"], "seconds": elapsed,
            "requests_per_s": state["requests"] / elapsed, "p99_ms": percentile_ms(state["all_latencies"], 0.99),
            "records": records, "rss_growth_second_half": growth, "errors": state["errors"],
            "bounded": abs(growth) <= 0.10 and state["lost"] == 0}


async def _conversation(client, url: str, model: str, i: int, abandon: float, state: dict, limiter, every: int,
                        pid: int, progress) -> None:
    try:
        letters = _LETTERS[i % 26], _LETTERS[(i // 26) % 26]
        messages: list = [{"role": "user", "content": "Read the document."}]
        first = await _ask(client, url, model, messages, state)
        calls = (first or {}).get("tool_calls") or []
        # abandoned after the call: deterministic, every (1 / abandon)-th conversation
        if first is None or not calls or (abandon and i % round(1 / abandon) == 0):
            return
        messages += [first, {"role": "tool", "tool_call_id": calls[0]["id"],
                             "content": _PAGE.format(a=letters[0], b=letters[1])}]
        second = await _ask(client, url, model, messages, state)
        if second is None:
            return
        messages += [second, {"role": "user", "content": f"Where does 1 road from {letters[0]} lead?"}]
        await _ask(client, url, model, messages, state)
    finally:
        state["done"] += 1
        if state["done"] % every == 0:
            state["records"].append(_record(url, pid, state))
            if progress is not None:
                r = state["records"][-1]
                progress(f"{r['conversations']} conversations: RSS {r['rss_mb']:.0f} MB, {r['live']:.0f} live "
                         f"({r['state_mb']:.1f} MB of state, budget {r['state_budget_mb']:.1f}), "
                         f"p99 {r['p99_ms']:.0f} ms, {state['lost']} lost")
        limiter.release()


async def _ask(client, url: str, model: str, messages: list, state: dict) -> dict | None:
    t0 = time.perf_counter()
    state["requests"] += 1
    try:
        r = await client.post(f"{url}/v1/chat/completions", json={"model": model, "messages": messages,
                                                                  "tools": _TOOLS, "max_tokens": 64})
    except Exception as e:
        state["lost"] += 1
        state["errors"][type(e).__name__] = state["errors"].get(type(e).__name__, 0) + 1
        return None
    dt = time.perf_counter() - t0
    state["latencies"].append(dt)
    state["all_latencies"].append(dt)
    if r.status_code != 200:
        state["lost"] += 1
        key = f"{r.status_code} {r.json().get('error', {}).get('message', '')[:80]}"
        state["errors"][key] = state["errors"].get(key, 0) + 1
        return None
    return r.json()["choices"][0]["message"]


def _record(url: str, pid: int, state: dict) -> dict[str, Any]:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text

    def metric(name: str) -> float:
        values = (float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))
        return next(values, float("nan"))

    lat, state["latencies"] = state["latencies"], []
    return {"conversations": state["done"], "rss_mb": rss_mb(pid), "live": metric("sleepagent_sessions"),
            "remembered": metric("sleepagent_sessions_remembered"), "fork_points": metric("sleepagent_fork_points"),
            "released": metric("sleepagent_sessions_released_total"),
            "state_mb": metric("sleepagent_state_bytes") / 2**20,
            "state_budget_mb": metric("sleepagent_state_budget_bytes") / 2**20,
            "p99_ms": percentile_ms(lat, 0.99) if lat else float("nan"), "lost": state["lost"]}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


def report(r: dict[str, Any]) -> str:
    """The soak as markdown (the section of ``docs/benchmarks.md``)."""
    lines = [f"{r['conversations']} conversations over HTTP on loopback, {r['concurrency']} at a time, "
             f"{100 * r['abandon']:.0f}% abandoned after the tool call; server `max_sessions={r['max_sessions']}`, "
             f"`idle_release_s={r['idle_release_s']:g}`, `max_state_mb={r['max_state_mb']:.1f}`, "
             f"{'a SQLite store' if r['store'] else 'no store'}, "
             f"model {r['model']}. {r['requests']} requests in {r['seconds']:.0f} s "
             f"({r['requests_per_s']:.1f}/s), p99 {r['p99_ms']:.0f} ms, {r['lost']} lost.", "",
             "| conversations | server RSS (MB) | live sessions | live state (MB) | released (total) | remembered "
             "| fork points | p99 latency (ms) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["records"]:
        lines.append(f"| {x['conversations']} | {x['rss_mb']:.0f} | {x['live']:.0f} | {x['state_mb']:.1f} | "
                     f"{x['released']:.0f} | "
                     f"{x['remembered']:.0f} | {x['fork_points']:.0f} | {x['p99_ms']:.0f} |")
    verdict = "bounded" if r["bounded"] else "NOT bounded"
    lines += ["", f"RSS from half-way to the end: {100 * r['rss_growth_second_half']:+.1f}% ({verdict}: within 10% "
              f"and nothing lost). Live state at most {r['state_peak_mb']:.1f} MB of a {r['max_state_mb']:.1f} MB "
              f"budget, over it at {r['records_over_budget']} of {len(r['records'])} records (the budget is "
              f"enforced as a session is made and at every idle sweep; in between, requests and sleeps in "
              f"progress grow their sessions' state)."]
    return "\n".join(lines)


SECTION = "## Soak: thousands of conversations against one server (`sleepagent bench soak`)"
