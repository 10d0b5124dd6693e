"""What an agent run produces and consumes: messages, usage, limits, results and stream events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import UsageLimitExceeded
from .tools import MalformedToolCall, ToolCall, ToolResult

if TYPE_CHECKING:
    from .engine import SleepStats

__all__ = [
    "Event",
    "FinalEvent",
    "Message",
    "RunResult",
    "SleepEvent",
    "TokenEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "Usage",
    "UsageLimits",
]


@dataclass
class Message:
    """One turn of a conversation.

    ``consolidate=False`` marks a message that may be used while it is in the attention window
    but must never enter the fast weights (a never-consolidate span).
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    consolidate: bool = True
    tool_calls: list[ToolCall | MalformedToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    tool_name: str | None = None
    is_error: bool = False


@dataclass
class Usage:
    """Counters of one run (or a session, summed): model requests, tool calls and tokens."""

    requests: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.requests + other.requests,
            self.tool_calls + other.tool_calls,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )


class UsageLimits(BaseModel):
    """Caps on one run, in the spirit of pydantic-ai's ``UsageLimits``; None = unlimited.

    Exceeding one raises :class:`~sleepagent.errors.UsageLimitExceeded` carrying the messages so far.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    request_limit: int | None = Field(default=50, ge=1)
    tool_calls_limit: int | None = Field(default=None, ge=0)
    input_tokens_limit: int | None = Field(default=None, ge=1)
    output_tokens_limit: int | None = Field(default=None, ge=1)
    total_tokens_limit: int | None = Field(default=None, ge=1)

    def check_before_request(self, usage: Usage, messages: list[Message]) -> None:
        if self.request_limit is not None and usage.requests >= self.request_limit:
            raise UsageLimitExceeded(
                f"the next request would exceed request_limit={self.request_limit}", messages=list(messages)
            )

    def check_tool_calls(self, usage: Usage, new_calls: int, messages: list[Message]) -> None:
        if self.tool_calls_limit is not None and usage.tool_calls + new_calls > self.tool_calls_limit:
            raise UsageLimitExceeded(
                f"{usage.tool_calls + new_calls} tool calls would exceed tool_calls_limit={self.tool_calls_limit}",
                messages=list(messages),
            )

    def check_input(self, usage: Usage, new_tokens: int, messages: list[Message]) -> None:
        """Before reading ``new_tokens`` more: refuse input that would pass an input limit, so an
        oversized message is rejected unread instead of after the engine has read it all."""
        for name, value, limit in (
            ("input_tokens", usage.input_tokens + new_tokens, self.input_tokens_limit),
            ("total_tokens", usage.total_tokens + new_tokens, self.total_tokens_limit),
        ):
            if limit is not None and value > limit:
                raise UsageLimitExceeded(
                    f"reading {new_tokens} more token(s) would make {name}={value}, over {name}_limit={limit}",
                    messages=list(messages),
                )

    def check_tokens(self, usage: Usage, messages: list[Message]) -> None:
        for name, value, limit in (
            ("input_tokens", usage.input_tokens, self.input_tokens_limit),
            ("output_tokens", usage.output_tokens, self.output_tokens_limit),
            ("total_tokens", usage.total_tokens, self.total_tokens_limit),
        ):
            if limit is not None and value > limit:
                raise UsageLimitExceeded(f"{name}={value} exceeds {name}_limit={limit}", messages=list(messages))


@dataclass
class RunResult:
    """The outcome of one run: the final answer (the text, or with ``output_type`` the validated
    value), this run's messages, usage and sleep stats."""

    output: Any
    messages: list[Message]
    usage: Usage
    sleep: SleepStats
    session_id: str = ""


@dataclass
class Event:
    kind: str


@dataclass
class TokenEvent(Event):
    text: str = ""
    kind: str = "token"


@dataclass
class ToolCallEvent(Event):
    call: ToolCall | MalformedToolCall | None = None
    kind: str = "tool_call"


@dataclass
class ToolResultEvent(Event):
    result: ToolResult | None = None
    kind: str = "tool_result"


@dataclass
class SleepEvent(Event):
    """``kind`` is "sleep_started" or "sleep_finished"; ``data`` has reason, loops/passes, committed."""

    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinalEvent(Event):
    result: RunResult | None = None
    kind: str = "final"
