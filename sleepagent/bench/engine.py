"""``sleepagent bench engine``: concurrent sessions' decode throughput, batched against serial."""

from __future__ import annotations

import time

from ..model import SleepHybridConfig, SleepModel

__all__ = ["bench_engine"]


def bench_engine(
    *, sessions: int = 10, tokens: int = 64, device: str = "cpu", config: SleepHybridConfig | None = None
) -> dict:
    """Throughput of concurrent sessions' decode on one engine, batched vs one step at a time."""
    import anyio

    from ..engine import Engine
    from ..policy import SleepPolicy

    config = config or SleepHybridConfig(
        vocab_size=268, d_model=256, n_layers=4, n_heads=4, gdn_heads=4, window=512
    )
    sm = SleepModel.from_config(config, seed=0, device=device)

    async def run(batch: bool) -> float:
        with Engine(sm, batch_wake=batch) as engine:
            ss = [engine.session(policy=SleepPolicy(loops=1, when="full")) for _ in range(sessions)]
            for i, s in enumerate(ss):
                await engine.prefill(s, list(range(1, 20 + i)))

            async def decode(s) -> None:
                for t in range(tokens):
                    await engine.decode(s, (t * 31) % 256)

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for s in ss:
                    tg.start_soon(decode, s)
            return time.perf_counter() - t0

    async def main() -> dict:
        await run(True)  # warm-up
        serial, batched = await run(False), await run(True)
        n = sessions * tokens
        return {"sessions": sessions, "tokens_per_session": tokens,
                "serial_tok_s": n / serial, "batched_tok_s": n / batched, "speedup": serial / batched}

    return {"device": str(device), **anyio.run(main)}
