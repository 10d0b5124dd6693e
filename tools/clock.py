"""Time tools: what time it is, and a deliberate wait.

``wait`` exists mostly for tests and benchmarks of tool latency: it is the simplest tool that keeps
the agent waiting for a known time without doing any work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import anyio
from pydantic import Field

from .base import tool

__all__ = ["MAX_WAIT_SECONDS", "clock", "wait"]

MAX_WAIT_SECONDS = 60.0
"""Upper bound for ``wait``: a model asking for an hour is almost certainly confused."""


@tool
def clock() -> str:
    """Return the current UTC date and time in ISO-8601 format."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@tool
async def wait(
    seconds: Annotated[
        float, Field(ge=0, le=MAX_WAIT_SECONDS, description="how long to wait, in seconds")
    ],
) -> str:
    """Wait for the given number of seconds (at most 60), then return."""
    await anyio.sleep(seconds)
    return f"waited {seconds:g} s"
