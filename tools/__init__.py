"""Agent tools, shipped as ``sleepagent.tools``.

- :mod:`.base`: the ``@tool`` decorator, :class:`Tool` and :class:`ToolRegistry` (safe execution).
- :mod:`.calls`: the text wire format (``<tool_call>`` / ``<tool_response>``) and its data types.
- built-in tools: :class:`DocumentReader`, :data:`calculator`, :data:`clock`, :data:`wait`.
"""

from __future__ import annotations

from .base import Tool, ToolRegistry, to_text, tool
from .calculator import calculator, evaluate
from .calls import (
    ErrorKind,
    MalformedToolCall,
    ToolCall,
    ToolResult,
    new_call_id,
    parse_tool_calls,
    render_tool_call,
    render_tool_response,
    split_text_and_calls,
)
from .clock import clock, wait
from .document import END_MARKER, DocumentReader, paginate

__all__ = [  # noqa: RUF022 (grouped by module, like the docstring and the imports above)
    # base
    "Tool",
    "ToolRegistry",
    "tool",
    "to_text",
    # wire format
    "ErrorKind",
    "MalformedToolCall",
    "ToolCall",
    "ToolResult",
    "new_call_id",
    "parse_tool_calls",
    "render_tool_call",
    "render_tool_response",
    "split_text_and_calls",
    # built-in tools
    "DocumentReader",
    "END_MARKER",
    "paginate",
    "calculator",
    "evaluate",
    "clock",
    "wait",
]
