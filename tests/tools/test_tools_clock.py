"""clock and wait."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sleepagent.tools import ToolCall, ToolRegistry, clock, wait


async def test_clock_returns_current_utc_iso8601() -> None:
    text = await clock.call({})
    stamp = datetime.fromisoformat(text)
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stamp) < timedelta(seconds=5)


async def test_wait_sleeps_for_the_requested_time() -> None:
    started = time.perf_counter()
    assert await wait.call({"seconds": 0.1}) == "waited 0.1 s"
    assert time.perf_counter() - started >= 0.09


async def test_wait_is_bounded() -> None:
    registry = ToolRegistry([wait])
    for seconds in (-1, 61, "soon"):
        result = await registry.execute(ToolCall(name="wait", arguments={"seconds": seconds}))
        assert result.error_kind == "invalid_arguments", seconds
    assert wait.json_schema["properties"]["seconds"]["maximum"] == 60


async def test_wait_can_time_out_via_the_registry() -> None:
    result = await ToolRegistry([wait]).execute(
        ToolCall(name="wait", arguments={"seconds": 30}), timeout=0.05
    )
    assert result.error_kind == "timeout"
