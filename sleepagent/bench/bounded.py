"""``sleepagent bench bounded``: work stays bounded while one session reads a huge tool output.

Measures the refusal of a 1 MB task against an input limit, an active session's decode latency
while another session reads, and how many tokens the engine reads after the read is cancelled.
"""

from __future__ import annotations

import time

from ..model import SleepModel
from .timing import percentile_ms

__all__ = ["bench_bounded"]


def bench_bounded(*, read_mb: float = 2.0, steps: int = 200, model: str = "docqa-small", device: str = "cpu") -> dict:
    """Bounded work, on the shipped model: (1) a 1 MB task against ``input_tokens_limit=10_000``:
    seconds until it raises; (2) an active session's decode-step latency while another session on
    the same engine reads a ``read_mb`` tool output, against the same steps with nobody reading
    (ratio of p99s); (3) the read is then cancelled: tokens the engine read after the cancel."""
    import anyio

    from ..agent import Agent
    from ..engine import Engine
    from ..errors import UsageLimitExceeded
    from ..messages import UsageLimits
    from ..policy import SleepPolicy

    sm = SleepModel.from_pretrained(model, device=device if device != "cpu" else None)
    agent = Agent(sm, max_input_chars=2_000_000, sleep=SleepPolicy(loops=1, when="full"))
    t0 = time.perf_counter()
    try:
        agent.run_sync("x" * 1_000_000, usage_limits=UsageLimits(input_tokens_limit=10_000))
        refused_s = None
    except UsageLimitExceeded:
        refused_s = time.perf_counter() - t0
    agent.close()

    async def main() -> dict:
        with Engine(sm) as engine:
            talker = engine.session(policy=SleepPolicy(loops=4, when="full"))
            await engine.prefill(talker, sm.tokenizer.encode("hello there"))

            async def decode_steps() -> list[float]:
                out = []
                for i in range(steps):
                    if talker.state.window_len >= talker.state.window - 1:  # keep sleeps out of the timing
                        await engine.consolidate(talker)
                    t = time.perf_counter()
                    await engine.decode(talker, 65 + i % 26)
                    out.append(time.perf_counter() - t)
                return out

            await decode_steps()  # warm-up
            idle = await decode_steps()
            reader = engine.session(policy=SleepPolicy(loops=4, when="full"))
            n_read = int(read_mb * 1_000_000)
            loaded: list[float] = []
            stopped_after: int = 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.prefill, reader, [113] * n_read)
                while reader.state.tokens_seen == 0:
                    await anyio.sleep(0.001)
                loaded = await decode_steps()
                read_when_done = reader.state.tokens_seen
                tg.cancel_scope.cancel()
            at_cancel = reader.state.tokens_seen
            await anyio.sleep(0.5)
            stopped_after = reader.state.tokens_seen - at_cancel
            engine.close_session(reader)

        return {
            "idle_p50_ms": percentile_ms(idle, 0.5), "idle_p99_ms": percentile_ms(idle, 0.99),
            "reading_p50_ms": percentile_ms(loaded, 0.5), "reading_p99_ms": percentile_ms(loaded, 0.99),
            "p99_ratio": percentile_ms(loaded, 0.99) / percentile_ms(idle, 0.99),
            "read_tokens": n_read, "read_while_measuring": read_when_done,
            "read_after_cancel": stopped_after, "prefill_chunk": engine.prefill_chunk,
        }

    return {"model": model, "device": str(device), "refused_1mb_s": refused_s, "steps": steps, **anyio.run(main)}
