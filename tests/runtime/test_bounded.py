"""Bounded work (issue 18, finding 7): no input, however large, stalls the engine or outlives
its cancellation, and closing always exits cleanly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import anyio
import pytest

from sleepagent import Agent, SleepPolicy, UsageLimits, tool
from sleepagent.engine import Engine
from sleepagent.errors import InputTooLarge, UsageLimitExceeded
from sleepagent.testing import TestModel, tiny_model


async def test_an_input_over_the_token_limit_is_refused_unread():
    """A 1 MB task with input_tokens_limit=10_000 raises before the engine reads any of it (it
    used to read 69,000 tokens, 20 s, and raise only then)."""
    agent = Agent(TestModel(["ok"]), sleep=SleepPolicy(loops=1, when="full"), system_prompt="S.",
                  max_input_chars=2_000_000)
    async with agent.session() as s:
        with pytest.raises(UsageLimitExceeded, match="input_tokens_limit=10000"):
            await s.run("x" * 1_000_000, usage_limits=UsageLimits(input_tokens_limit=10_000))
        es = s.engine_session
        assert es.state.tokens_seen == 0 and sum(len(ids) for ids, _ in es.unread()) < 100  # the system turn
        assert (await s.run("hello")).output == "ok"  # the session goes on
    agent.close()


async def test_a_message_over_the_agents_cap_is_a_typed_error():
    agent = Agent(TestModel(["ok"]), system_prompt="S.", max_input_chars=1000)
    with pytest.raises(InputTooLarge, match="max_input_chars") as e:
        await agent.run("y" * 1001)
    assert e.value.limit == 1000
    agent.close()


async def test_tool_output_is_cut_and_the_model_is_told():
    @tool
    def dump() -> str:
        """A tool that returns far too much."""
        return "z" * 50_000

    seen = []

    def respond(messages, info):
        seen.append(messages[-1].content if messages[-1].role == "tool" else None)
        return '<tool_call>{"name": "dump", "arguments": {}}</tool_call>' if info.step == 0 else "done"

    from sleepagent.testing import FunctionModel

    agent = Agent(FunctionModel(respond), tools=[dump], sleep=SleepPolicy(loops=1, when="full"), system_prompt="S.",
                  max_tool_output_chars=1000)
    result = await agent.run("go")
    tool_msg = next(m for m in result.messages if m.role == "tool")
    assert (
        tool_msg.content.startswith("z" * 1000)
        and "[tool output truncated: 1,000 of 50,000 characters shown]" in tool_msg.content
    )
    assert result.usage.input_tokens < 1500
    agent.close()


async def test_a_long_read_is_chunked_and_other_sessions_step_in_between():
    """While one session reads 8,000 tokens, another session's decode steps run between its
    chunks: they all finish before the long read does."""
    with Engine(tiny_model(window=512), prefill_chunk=128) as engine:
        reader, talker = engine.session(), engine.session()
        await engine.prefill(talker, [65, 66, 67])
        order: list[str] = []

        async def read() -> None:
            await engine.prefill(reader, [66] * 8000)
            order.append("read")

        async def talk() -> None:
            while reader.state.tokens_seen == 0:
                await anyio.sleep(0.001)
            for _ in range(5):
                await engine.decode(talker, 65)
            order.append("talk")

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            tg.start_soon(talk)
        assert order == ["talk", "read"]
        assert reader.state.tokens_seen == 8000 and reader.stats.forced_sleeps >= 15


async def test_cancelling_a_read_stops_the_engine_within_one_chunk():
    with Engine(tiny_model(window=512), prefill_chunk=128) as engine:
        s = engine.session()
        with anyio.move_on_after(10) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.prefill, s, [70] * 200_000)
                while s.state.tokens_seen < 300:
                    await anyio.sleep(0.001)
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        at_cancel = s.state.tokens_seen
        await anyio.sleep(0.3)
        assert s.state.tokens_seen - at_cancel <= 128  # at most the chunk in flight
        assert s.state.tokens_seen < 200_000
        # the session is usable: the rest of that input is still queued (nothing was lost)
        assert sum(len(ids) for ids, _ in s.unread()) == 200_000 - s.state.tokens_seen
        s.pending.clear()
        s.pending_offset = 0
        logits = await engine.prefill(s, [71, 72])
        assert logits.shape[-1] == engine.model.config.vocab_size


EXIT_SCRIPT = textwrap.dedent("""
    import anyio, sys
    from sleepagent import Agent, SleepPolicy, tool
    from sleepagent.testing import TestModel

    @tool
    def huge() -> str:
        '''Returns 10 MB.'''
        return "q" * 10_000_000

    agent = Agent(TestModel(['<tool_call>{"name": "huge", "arguments": {}}</tool_call>', "done"]), tools=[huge],
                  sleep=SleepPolicy(loops=1, when="full"), max_tool_output_chars=10_000_000, system_prompt="S.")

    async def main():
        with anyio.move_on_after(1.0):
            await agent.run("read it")
        print("exiting with the read in flight", flush=True)

    anyio.run(main)
    sys.exit(0)
""")


def test_the_process_exits_cleanly_with_a_huge_read_in_flight():
    """A 10 MB tool output used to keep the worker in one torch call for minutes and abort the
    interpreter at exit (code 134); now the read stops at a chunk boundary."""
    out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "exiting with the read in flight" in out.stdout
