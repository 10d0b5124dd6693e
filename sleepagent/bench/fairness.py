"""``sleepagent bench fairness``: an active session's latency while other sessions sleep."""

from __future__ import annotations

import time

from ..model import SleepModel
from .timing import percentile_ms

__all__ = ["bench_fairness"]


def bench_fairness(*, sleepers: int = 8, turns: int = 20, tokens: int = 24, pause_s: float = 0.03, loops: int = 4,
                   model: str = "docqa-small", device: str = "cpu") -> dict:
    """An active session's latency while ``sleepers`` other sessions on the same engine sleep
    (N = ``loops``, each over a full window), against the same run with those sessions idle. The
    active session works in turns, as a conversation does: a
    short message read, ``tokens`` tokens written, then a pause of ``pause_s`` (the client's round
    trip) in which the sleepers run. Reported: time to first token (read + first step) and the
    inter-token step latency, p50/p99, and the sleep passes the others got done meanwhile.
    Public :class:`Engine` API, the shipped model."""
    import anyio

    from ..engine import Engine
    from ..policy import SleepPolicy

    sm = SleepModel.from_pretrained(model, device=device if device != "cpu" else None)
    W = sm.config.window
    tok = sm.tokenizer
    filler = tok.encode("The road from K leads to M. " * (W // 28 + 1))[: W - 8]
    message = tok.render_turn("user", "Where does 1 road from K lead?") + tok.generation_prompt()

    async def run(sleeping: bool) -> tuple[list[float], list[float], int, int]:
        with Engine(sm) as engine:
            # the active session's own sleeps are kept out of its timings (consolidated between
            # turns, untimed): what is measured is what the others' sleep costs it
            active = engine.session(policy=SleepPolicy(loops=loops, when="full"))
            others = [engine.session(policy=SleepPolicy(loops=loops, min_fill=0.1)) for _ in range(sleepers)]
            for s in others:
                await engine.prefill(s, filler)
            if sleeping:  # their windows are full: they all go to sleep, with nothing else to do
                for s in others:
                    engine.pause(s)
            ttft: list[float] = []
            itl: list[float] = []
            during = 0
            for _ in range(turns):
                during += any(s.sleeping for s in others)
                if active.state.window_len + len(message) + tokens > W:
                    await engine.consolidate(active)
                await anyio.sleep(pause_s)  # the client's round trip: sleepers run now
                t0 = time.perf_counter()
                logits = await engine.prefill(active, message)
                logits = await engine.decode(active, int(logits.argmax()))
                ttft.append(time.perf_counter() - t0)
                for _ in range(tokens - 1):
                    t1 = time.perf_counter()
                    logits = await engine.decode(active, int(logits.argmax()))
                    itl.append(time.perf_counter() - t1)
            passes = sum(s.stats.passes for s in others)
        return ttft, itl, passes, during

    async def main() -> dict:
        await run(False)  # warm-up
        idle_ttft, idle_itl, _, _ = await run(False)
        ttft, itl, passes, during = await run(True)
        return {
            "idle_ttft_p50_ms": percentile_ms(idle_ttft, 0.5), "idle_ttft_p99_ms": percentile_ms(idle_ttft, 0.99),
            "sleeping_ttft_p50_ms": percentile_ms(ttft, 0.5), "sleeping_ttft_p99_ms": percentile_ms(ttft, 0.99),
            "idle_step_p50_ms": percentile_ms(idle_itl, 0.5), "idle_step_p99_ms": percentile_ms(idle_itl, 0.99),
            "sleeping_step_p50_ms": percentile_ms(itl, 0.5), "sleeping_step_p99_ms": percentile_ms(itl, 0.99),
            "step_p99_ratio": percentile_ms(itl, 0.99) / percentile_ms(idle_itl, 0.99),
            "ttft_p99_ratio": percentile_ms(ttft, 0.99) / percentile_ms(idle_ttft, 0.99),
            "sleep_passes_meanwhile": passes, "turns_while_others_slept": during,
        }

    return {"model": model, "sleepers": sleepers, "loops": loops, "turns": turns, "tokens": tokens,
            "pause_s": pause_s, **anyio.run(main)}
