"""OpenTelemetry spans (sleepagent.tracing), read back from the SDK's in-memory exporter: a run has
one span per turn, per tool call and per sleep, named and attributed as the GenAI conventions say,
and the engine's sleeps (written on its worker thread) sit in the run's trace."""

from __future__ import annotations

import time

import anyio
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the dev extra: pip install 'sleepagent[dev]'")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sleepagent import (
    Agent,
    SleepPolicy,
    tool,
    tracing,
)
from sleepagent.testing import TestModel, tiny_model, tool_call


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    yield exporter
    tracing.set_tracer_provider(None)
    provider.shutdown()


@tool
async def slow_double(x: int) -> int:
    """Double x, slowly (the model sleeps meanwhile)."""
    await anyio.sleep(0.3)
    return 2 * x


def by_op(finished, op: str) -> list:
    return [s for s in finished if s.attributes.get("gen_ai.operation.name") == op]


def wait_for(exporter, name: str, n: int, timeout: float = 10.0) -> list:
    """The sleep after a reply ends on the worker thread after the run returned: wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in exporter.get_finished_spans() if s.name == name]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


async def test_a_run_has_one_span_per_turn_tool_call_and_sleep(spans):
    model = TestModel([tool_call("slow_double", x=2) + tool_call("slow_double", x=3), "It is 10."],
                      base=tiny_model(window=512))  # room for the run: its sleeps are the pauses
    agent = Agent(model, tools=[slow_double], sleep=SleepPolicy(loops=2, min_fill=0.0), name="doubler")
    async with agent.session() as session:
        result = await session.run("Double 2 and 3, then add.")
        await agent.engine.wait_idle(session.engine_session)  # the sleep after the answer too
        stats = session.stats.copy()
    agent.close()
    assert result.output == "It is 10."
    sleeps = wait_for(spans, "sleep", stats.sleeps + stats.aborted_sleeps)
    finished = spans.get_finished_spans()

    [run] = by_op(finished, "invoke_agent")
    assert run.name == "invoke_agent doubler"
    assert run.attributes["gen_ai.agent.name"] == "doubler" and run.attributes["gen_ai.conversation.id"] == session.id
    assert run.attributes["gen_ai.usage.input_tokens"] == result.usage.input_tokens
    assert run.attributes["gen_ai.usage.output_tokens"] == result.usage.output_tokens

    turns = by_op(finished, "chat")
    assert len(turns) == result.usage.requests == 2
    assert [t.attributes["gen_ai.response.finish_reasons"] for t in turns] == [("tool_calls",), ("stop",)]
    # each turn's tokens read; the last turn's closing token is read with the next run's first turn
    closing = len(agent.model.tokenizer.close_turn())
    assert sum(t.attributes["gen_ai.usage.input_tokens"] for t in turns) + closing == result.usage.input_tokens
    assert sum(t.attributes["gen_ai.usage.output_tokens"] for t in turns) == result.usage.output_tokens
    assert all(t.name == f"chat {agent.model.name}" and t.attributes["gen_ai.provider.name"] == "sleepagent"
               for t in turns)

    calls = by_op(finished, "execute_tool")
    assert sorted(c.attributes["gen_ai.tool.call.id"] for c in calls) == sorted(
        c.id for m in result.messages for c in m.tool_calls)
    assert {c.name for c in calls} == {"execute_tool slow_double"}
    assert all(c.attributes["gen_ai.tool.type"] == "function" for c in calls)

    # one span per consolidation, each a child of the run, from the engine's worker thread
    assert len(sleeps) == stats.sleeps + stats.aborted_sleeps >= 1
    for s in sleeps:
        a = s.attributes
        assert a["sleepagent.sleep.loops"] == 2 and a["sleepagent.sleep.reason"] == "pause"
        assert a["sleepagent.sleep.passes"] <= 2 and a["sleepagent.sleep.hidden_s"] >= 0
        assert a["sleepagent.sleep.exposed_s"] >= 0 and "sleepagent.sleep.committed" in a
    assert sum(s.attributes["sleepagent.sleep.hidden_s"] for s in sleeps) == pytest.approx(stats.sleep_s_hidden)
    for child in [*turns, *calls, *sleeps]:
        assert child.context.trace_id == run.context.trace_id and child.parent.span_id == run.context.span_id


async def test_a_failed_tool_call_marks_its_span(spans):
    agent = Agent(TestModel([tool_call("slow_double", x="not a number"), "Sorry."]), tools=[slow_double])
    await agent.run("Double it.")
    agent.close()
    [call] = by_op(spans.get_finished_spans(), "execute_tool")
    assert call.attributes["error.type"] == "invalid_arguments" and not call.status.is_ok
