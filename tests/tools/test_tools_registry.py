"""ToolRegistry.execute: successes, every error kind, timeouts and cancellation."""

from __future__ import annotations

import time

import anyio
import pytest
from sleepagent.tools import MalformedToolCall, Tool, ToolCall, ToolRegistry, parse_tool_calls, tool

from sleepagent.errors import ConfigError, ToolError


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@tool
async def echo(text: str, times: int = 1) -> str:
    """Repeat text."""
    await anyio.sleep(0)
    return text * times


@tool
def explode(message: str) -> str:
    """Always fails with a ToolError."""
    raise ToolError(message)


@tool
def buggy() -> str:
    """Fails with an unexpected exception."""
    return {}["missing"]  # type: ignore[return-value]


@tool(timeout=0.05)
async def sleepy(seconds: float = 5.0) -> str:
    """Sleep for a while (per-tool timeout 0.05 s)."""
    await anyio.sleep(seconds)
    return "woke up"


@tool
async def patient(seconds: float = 5.0) -> str:
    """Sleep for a while (no per-tool timeout)."""
    await anyio.sleep(seconds)
    return "done"


@tool
def own_timeout() -> str:
    """Raises TimeoutError itself (e.g. a network timeout)."""
    raise TimeoutError("upstream did not answer")


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([multiply, echo, explode, buggy, sleepy, patient, own_timeout])


def test_registry_is_a_mapping_with_specs(registry: ToolRegistry) -> None:
    assert registry["echo"] is echo
    assert "multiply" in registry and "nope" not in registry
    assert len(registry) == 7
    assert [s["function"]["name"] for s in registry.specs()] == list(registry)


def test_duplicate_names_are_rejected() -> None:
    other = tool(name="echo")(lambda: "x")
    with pytest.raises(ConfigError, match="echo"):
        ToolRegistry([echo, other])


def test_non_callables_are_rejected() -> None:
    with pytest.raises(ConfigError, match="not a tool"):
        ToolRegistry(["echo"])  # type: ignore[list-item]


def test_tools_are_hashable_by_identity() -> None:
    assert len({echo, multiply, echo}) == 2


def test_plain_functions_are_wrapped() -> None:
    def shout(text: str) -> str:
        """Upper-case text."""
        return text.upper()

    registry = ToolRegistry([shout])
    assert isinstance(registry["shout"], Tool)


async def test_sync_tool_success(registry: ToolRegistry) -> None:
    call = ToolCall(name="multiply", arguments={"a": 6, "b": "7"})
    result = await registry.execute(call)
    assert not result.is_error and result.error_kind is None
    assert result.content == "42.0"
    assert result.call_id == call.id and result.name == "multiply"
    assert result.elapsed_s >= 0


async def test_async_tool_success(registry: ToolRegistry) -> None:
    result = await registry.execute(ToolCall(name="echo", arguments={"text": "ab", "times": 3}))
    assert (result.is_error, result.content) == (False, "ababab")


async def test_unknown_tool(registry: ToolRegistry) -> None:
    result = await registry.execute(ToolCall(name="calc", arguments={}))
    assert result.is_error and result.error_kind == "unknown_tool"
    assert "'calc'" in result.content and "multiply" in result.content
    assert result.name == "calc"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"a": 1}, "b: missing required argument"),
        ({"a": 1, "b": 2, "c": 3}, "c: unexpected argument"),
        ({"a": "one", "b": 2}, "a: Input should be a valid number"),
    ],
)
async def test_invalid_arguments(registry: ToolRegistry, arguments: dict, expected: str) -> None:
    result = await registry.execute(ToolCall(name="multiply", arguments=arguments))
    assert result.is_error and result.error_kind == "invalid_arguments"
    assert expected in result.content
    assert "errors.pydantic.dev" not in result.content  # concise, no URLs


async def test_tool_error_message_reaches_the_model(registry: ToolRegistry) -> None:
    result = await registry.execute(ToolCall(name="explode", arguments={"message": "disk on fire"}))
    assert result.is_error and result.error_kind == "tool_exception"
    assert "disk on fire" in result.content


async def test_unexpected_exception_is_reported_not_raised(registry: ToolRegistry) -> None:
    result = await registry.execute(ToolCall(name="buggy"))
    assert result.is_error and result.error_kind == "tool_exception"
    assert "KeyError" in result.content


async def test_tool_raising_timeout_error_is_not_a_timeout(registry: ToolRegistry) -> None:
    result = await registry.execute(ToolCall(name="own_timeout"))
    assert result.error_kind == "tool_exception"
    assert "upstream did not answer" in result.content


async def test_per_tool_timeout(registry: ToolRegistry) -> None:
    started = time.perf_counter()
    result = await registry.execute(ToolCall(name="sleepy"))
    assert result.is_error and result.error_kind == "timeout"
    assert "0.05" in result.content
    assert time.perf_counter() - started < 1.0
    assert 0.04 <= result.elapsed_s < 1.0


async def test_per_call_timeout(registry: ToolRegistry) -> None:
    result = await registry.execute(ToolCall(name="patient"), timeout=0.05)
    assert result.error_kind == "timeout"
    # The stricter limit wins: the tool's own 0.05 s beats a lenient per-call 10 s.
    result = await registry.execute(ToolCall(name="sleepy"), timeout=10)
    assert result.error_kind == "timeout" and result.elapsed_s < 1.0
    # Fast calls are unaffected by a timeout.
    result = await registry.execute(ToolCall(name="patient", arguments={"seconds": 0}), timeout=1)
    assert (result.is_error, result.content) == (False, "done")


async def test_timeout_applies_to_sync_tools_too() -> None:
    @tool(timeout=0.05)
    def blocking() -> str:
        time.sleep(0.5)
        return "late"

    started = time.perf_counter()
    result = await ToolRegistry([blocking]).execute(ToolCall(name="blocking"))
    assert result.error_kind == "timeout"
    assert time.perf_counter() - started < 0.4  # the worker thread is abandoned, not awaited


async def test_malformed_calls_become_error_results(registry: ToolRegistry) -> None:
    texts = [
        '<tool_call>{"name": "echo", "arguments": {</tool_call>',
        '<tool_call>{"arguments": {"text": "x"}}</tool_call>',
        '<tool_call>{"name": "echo", "arguments": {"text": "x"}',
    ]
    for text in texts:
        (call,) = parse_tool_calls(text)
        assert isinstance(call, MalformedToolCall)
        result = await registry.execute(call)
        assert result.is_error and result.error_kind == "malformed"
        assert call.reason in result.content
        assert result.call_id == call.id


async def test_arguments_given_as_string_execute(registry: ToolRegistry) -> None:
    (call,) = parse_tool_calls(
        '<tool_call>{"name": "echo", '
        '"arguments": "{\\"text\\": \\"hi\\", \\"times\\": 2}"}</tool_call>'
    )
    result = await registry.execute(call)
    assert (result.is_error, result.content) == (False, "hihi")


async def test_execute_all_keeps_order(registry: ToolRegistry) -> None:
    calls = parse_tool_calls(
        '<tool_call>{"name": "echo", "arguments": {"text": "a"}}</tool_call>'
        '<tool_call>{"name": "nope"}</tool_call>'
        '<tool_call>{"name": "multiply", "arguments": {"a": 2, "b": 3}}</tool_call>'
    )
    results = await registry.execute_all(calls)
    assert [r.content for r in (results[0], results[2])] == ["a", "6.0"]
    assert results[1].error_kind == "unknown_tool"
    assert [r.call_id for r in results] == [c.id for c in calls]


async def test_cancellation_propagates_and_is_not_a_timeout() -> None:
    observed: list[str] = []

    @tool
    async def long_running() -> str:
        try:
            await anyio.sleep(10)
        finally:
            observed.append("tool saw cancellation")
        return "unreachable"

    local = ToolRegistry([long_running])
    reached_after_execute = False
    started = time.perf_counter()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_after, scope, 0.05)
            # A lenient per-call timeout must not turn the outer cancellation into a result.
            await local.execute(ToolCall(name="long_running"), timeout=5)
            reached_after_execute = True
    assert scope.cancelled_caught
    assert not reached_after_execute
    assert observed == ["tool saw cancellation"]
    assert time.perf_counter() - started < 1.0


async def test_deadline_of_caller_propagates_as_cancellation(registry: ToolRegistry) -> None:
    with anyio.move_on_after(0.05) as scope:
        await registry.execute(ToolCall(name="patient"))
        pytest.fail("execute should have been cancelled")
    assert scope.cancelled_caught


async def _cancel_after(scope: anyio.CancelScope, delay: float) -> None:
    await anyio.sleep(delay)
    scope.cancel()
