"""``sleepagent bench agent``: an agent reading a document, sleeping in tool pauses or only when full.

The tool's latency is where a pause-scheduled sleep hides; the "full" schedule exposes the same
sleep on the hot path, and N = 1 is the plain hybrid's baseline.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..model import SleepHybridConfig, SleepModel

__all__ = ["bench_agent"]


def bench_agent(
    *,
    latency: float = 0.2,
    loops: int = 4,
    page_chars: int = 300,
    pages: int = 12,
    device: str = "cpu",
    config: SleepHybridConfig | None = None,
    busy: int = 0,
) -> dict:
    """An agent reads a long document through the paged reader (each page takes ``latency``
    seconds to arrive), under three schedules: sleep in pauses, sleep only when the window is
    full, and no extra passes (N = 1, full). Reports time and exposed vs hidden sleep.

    ``busy``: that many other processes keep a core each busy while the schedules run (a shared
    machine: a sleep then takes longer than on a quiet one, and must still hide in the pauses)."""
    import anyio

    from ..agent import Agent
    from ..policy import SleepPolicy
    from ..testing import FunctionModel, tool_call
    from ..tools import END_MARKER, DocumentReader

    config = config or SleepHybridConfig(
        vocab_size=268, d_model=256, n_layers=4, n_heads=4, gdn_heads=4, window=512
    )
    sm = SleepModel.from_config(config, seed=0, device=device)
    line = "Record {i}: the courier left depot {a} at {b} o'clock carrying parcel {c}.\n"
    text = "".join(line.format(i=i, a=i * 37 % 101, b=i % 12 + 1, c=i * 7919 % 10007) for i in range(10_000))
    text = text[: pages * page_chars]

    def script(messages, info) -> str:
        last = messages[-1]
        if last.role == "tool" and END_MARKER in last.content:
            return "I have read the whole document."
        return "Reading on." + tool_call("next_page")

    schedules = {
        "pause": SleepPolicy(loops=loops, when="pause", min_fill=0.3),
        "full": SleepPolicy(loops=loops, when="full"),
        "none": SleepPolicy(loops=1, when="full"),
    }

    async def one(policy: SleepPolicy, doc: str) -> dict:
        reader = DocumentReader.from_text(doc, page_chars=page_chars, latency=latency)
        agent = Agent(FunctionModel(script, base=sm), tools=reader.tools, sleep=policy, max_steps=10_000,
                      system_prompt="Read the document.")
        async with agent.session() as session:
            t0 = time.perf_counter()
            result = await session.run("Read the document, page by page.")
            total = time.perf_counter() - t0
        agent.close()
        s = result.sleep
        return {
            "total_s": total,
            "sleep_s": s.sleep_s_total,
            "hidden_s": s.sleep_s_hidden,
            "exposed_s": s.sleep_s_exposed,
            "hidden_fraction": s.hidden_fraction,
            "sleeps": s.sleeps,
            "forced_sleeps": s.forced_sleeps,
            "tool_wait_s": reader.pages_read * latency,
            "wake_ms_per_token": s.wake_ms_per_token,
            "tokens": result.usage.total_tokens,
        }

    async def main() -> dict:
        await one(schedules["pause"], text[: 2 * page_chars])  # warm-up, untimed
        return {name: await one(policy, text) for name, policy in schedules.items()}

    with busy_cores(busy):
        results = anyio.run(main)
    return {
        "busy_cores": busy,
        "device": str(device),
        "latency_s": latency,
        "loops": loops,
        "pages": pages,
        "window": config.window,
        "schedules": results,
        "pause_over_full_total": results["pause"]["total_s"] / results["full"]["total_s"],
    }


@contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """``n`` child processes spinning a core each, for the length of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()
