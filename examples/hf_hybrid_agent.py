"""An agent on a local transformers Gated-DeltaNet hybrid (Qwen3.5, Qwen3-Next, OLMo-Hybrid).

    python examples/hf_hybrid_agent.py --model /path/to/Qwen3.5-checkpoint --window 4096 --loops 2
    python examples/hf_hybrid_agent.py --tiny   # a tiny random qwen3_5 written to a temp dir

The checkpoint is read from a local directory (sleepagent never downloads weights). Wake runs the
model's own forward and cache; while the calculator tool "runs" (a simulated latency), the
runtime consolidates the window with N passes of the decoder stack, then drops the attention KV.
On a GPU install ``sleepagent[cuda]`` (flash-linear-attention) first: transformers then uses
fla's kernels for the GDN layers. On a CPU the adapter uses the PyTorch reference kernels.

With --tiny the weights are random: the model's turns are scripted (as in the tests) so that the
tool loop runs; every token still goes through the real model, and every sleep pass is real.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import anyio
import torch
from sleepagent.tools import tool

from sleepagent import Agent, SleepModel, SleepPolicy
from sleepagent.testing import FunctionModel, tool_call


@tool
async def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression (simulated 0.5 s of tool latency)."""
    from sleepagent.tools.calculator import evaluate

    await anyio.sleep(0.5)
    return str(evaluate(expression))


def scripted(base: SleepModel) -> FunctionModel:
    def respond(messages, info):
        if messages[-1].role == "tool":
            return f"The answer is {messages[-1].content}."
        return tool_call("calculator", expression="17 * 23")

    return FunctionModel(respond, base=base)


async def main(model_path: str | None, *, window: int, loops: int, device: str | None, tiny: bool) -> dict:
    if tiny:
        from sleepagent.model.hf_tiny import save_tiny_hybrid

        model_path = str(save_tiny_hybrid(tempfile.mkdtemp(prefix="tiny-qwen3_5-"), "qwen3_5"))
    sm = SleepModel.from_pretrained(model_path, device=device, window=window, loops=loops)
    model = scripted(sm) if tiny else sm
    agent = Agent(model, tools=[calculator], sleep=SleepPolicy(loops=loops, min_fill=0.0), max_tokens=128)
    t0 = time.perf_counter()
    try:
        async with agent.session() as session:
            result = await session.run("What is 17 * 23? Use the calculator.")
            await agent.engine.wait_idle(session.engine_session)
            state = session.engine_session.state
    finally:
        agent.close()
    s = result.sleep
    report = {
        "device": str(sm.device),
        "answer": result.output,
        "sleeps": s.sleeps,
        "sleep_s_hidden": round(s.sleep_s_hidden, 3),
        "sleep_s_exposed": round(s.sleep_s_exposed, 3),
        "wake_ms_per_token": round(s.wake_ms_per_token, 2),
        "fast_weight_bytes": state.fast.nbytes,
        "kv_tokens_now": state.window_len,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    for k, v in report.items():
        print(f"{k:>18}: {v}")
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="local transformers checkpoint directory")
    p.add_argument("--tiny", action="store_true", help="use a tiny random qwen3_5 (scripted turns)")
    p.add_argument("--window", type=int, default=4096)
    p.add_argument("--loops", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else None)
    a = p.parse_args()
    if not a.model and not a.tiny:
        p.error("give --model PATH (a local checkpoint) or --tiny")
    anyio.run(lambda: main(a.model, window=a.window, loops=a.loops, device=a.device, tiny=a.tiny))
