"""The wire format between the model and its tools.

A small byte-level model cannot use a structured function-calling API, so tool use is plain text
it learns to emit and read:

- a call, emitted by the model::

      <tool_call>{"name": "calculator", "arguments": {"expression": "2 + 2"}}</tool_call>

- a successful result, written back into the context (content verbatim)::

      <tool_response>4</tool_response>

- a failed result (a JSON object with a single ``"error"`` key, so the model can tell the
  difference and react, e.g. retry with fixed arguments)::

      <tool_response>{"error": "unknown tool 'calc'; available tools: calculator"}</tool_response>

Parsing is lenient where models are commonly sloppy (``"arguments"`` sent as a JSON-encoded string,
missing ``"arguments"``, a Markdown code fence around the JSON) and strict everywhere else: anything
the runtime cannot act on becomes a :class:`MalformedToolCall` whose ``reason`` is meant to be shown
to the model, never an exception.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "RESPONSE_CLOSE",
    "RESPONSE_OPEN",
    "ErrorKind",
    "MalformedToolCall",
    "ToolCall",
    "ToolResult",
    "new_call_id",
    "parse_tool_calls",
    "render_tool_call",
    "render_tool_response",
    "split_text_and_calls",
]

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
RESPONSE_OPEN = "<tool_response>"
RESPONSE_CLOSE = "</tool_response>"

ErrorKind = Literal["unknown_tool", "invalid_arguments", "tool_exception", "timeout", "malformed"]
"""Why a tool call failed; lets the runtime count and react to failures without parsing text."""

# A Markdown fence some models wrap around JSON: ```json ... ``` (language tag optional).
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(?P<body>.*?)\n?```$", re.DOTALL)


def new_call_id() -> str:
    """A short id (``call_1a2b3c4d``) that pairs a call with its result in logs and transcripts."""
    return f"call_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    """A well-formed call the registry can dispatch. ``raw`` is the full ``<tool_call>`` block."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)
    raw: str = ""
    id: str = field(default_factory=new_call_id)


@dataclass(frozen=True, kw_only=True)
class MalformedToolCall:
    """A ``<tool_call>`` block the runtime cannot act on.

    ``reason`` says what is wrong in words meant for the model; ``name`` is filled in when the
    block got far enough to name a tool, so the error can be attributed.
    """

    raw: str
    reason: str
    name: str | None = None
    id: str = field(default_factory=new_call_id)


@dataclass(frozen=True, kw_only=True)
class ToolResult:
    """The outcome of one call, success or failure; failures carry ``error_kind``.

    ``content`` is the text for the model (the tool's output, or an error explanation);
    ``elapsed_s`` is the wall-clock time the call took, in seconds.
    """

    call_id: str
    name: str
    content: str
    is_error: bool = False
    error_kind: ErrorKind | None = None
    elapsed_s: float = 0.0

    def render(self) -> str:
        """Shorthand for :func:`render_tool_response`."""
        return render_tool_response(self)


# --- parsing ------------------------------------------------------------------------------------


def parse_tool_calls(text: str) -> list[ToolCall | MalformedToolCall]:
    """Every ``<tool_call>`` block in ``text``, in order, each parsed or explained as malformed.

    A block that is opened but not closed before the next ``<tool_call>`` (or the end of the
    text) is malformed: the model was cut off or forgot the closing tag.
    """
    return [parsed for _, _, parsed in _scan(text)]


def split_text_and_calls(text: str) -> tuple[str, list[ToolCall | MalformedToolCall]]:
    """``text`` with every call block removed (and stripped), plus the parsed calls.

    The remaining text is what the model "said" around its calls, e.g. to show to a user.
    """
    pieces: list[str] = []
    calls: list[ToolCall | MalformedToolCall] = []
    cursor = 0
    for start, end, parsed in _scan(text):
        pieces.append(text[cursor:start])
        calls.append(parsed)
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces).strip(), calls


def _scan(text: str) -> list[tuple[int, int, ToolCall | MalformedToolCall]]:
    """``(start, end, parsed)`` for every call block; ``text[start:end]`` is the raw block."""
    found: list[tuple[int, int, ToolCall | MalformedToolCall]] = []
    start = text.find(CALL_OPEN)
    while start != -1:
        body_start = start + len(CALL_OPEN)
        close = text.find(CALL_CLOSE, body_start)
        reopen = text.find(CALL_OPEN, body_start)
        if close == -1 or (reopen != -1 and reopen < close):
            # Unclosed: the block runs up to the next opening tag, or to the end of the text.
            end = reopen if reopen != -1 else len(text)
            raw = text[start:end]
            found.append((start, end, MalformedToolCall(raw=raw, reason=_unclosed_reason())))
            start = reopen
            continue
        end = close + len(CALL_CLOSE)
        found.append((start, end, _parse_body(text[body_start:close], raw=text[start:end])))
        start = text.find(CALL_OPEN, end)
    return found


def _unclosed_reason() -> str:
    return f"the {CALL_OPEN} block is not closed with {CALL_CLOSE}"


def _parse_body(body: str, *, raw: str) -> ToolCall | MalformedToolCall:
    """Decode one block's body into a call, or say precisely why it cannot be one."""
    body = body.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group("body").strip()
    if not body:
        return MalformedToolCall(raw=raw, reason="the tool call is empty; expected a JSON object")
    if body.startswith("<function="):
        return _parse_xml_body(body, raw=raw)
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        return MalformedToolCall(raw=raw, reason=f"the tool call is not valid JSON ({exc})")
    if not isinstance(payload, dict):
        return MalformedToolCall(
            raw=raw, reason=f"the tool call must be a JSON object, not {_json_type(payload)}"
        )

    name = payload.get("name")
    if "name" not in payload:
        return MalformedToolCall(raw=raw, reason='the tool call has no "name"')
    if not isinstance(name, str) or not name.strip():
        return MalformedToolCall(
            raw=raw, reason=f'"name" must be a non-empty string, not {_json_type(name)}'
        )
    name = name.strip()

    arguments = payload.get("arguments")
    if arguments is None:  # missing or null: a call without arguments
        arguments = {}
    if isinstance(arguments, str):
        # Some models JSON-encode the arguments object a second time; accept that.
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return MalformedToolCall(
                raw=raw,
                name=name,
                reason='"arguments" is a string that does not contain a JSON object',
            )
    if not isinstance(arguments, dict):
        return MalformedToolCall(
            raw=raw,
            name=name,
            reason=f'"arguments" must be a JSON object, not {_json_type(arguments)}',
        )
    return ToolCall(name=name, arguments=arguments, raw=raw)


_XML_FUNCTION = re.compile(r"^<function=(?P<name>[^>\n]*)>(?P<params>.*)</function>$", re.DOTALL)
_XML_PARAM = re.compile(r"<parameter=(?P<name>[^>\n]+)>\n?(?P<value>.*?)\n?</parameter>", re.DOTALL)


def _parse_xml_body(body: str, *, raw: str) -> ToolCall | MalformedToolCall:
    """The XML call format of Qwen3.5-style chat templates::

        <function=name>
        <parameter=city>
        Paris
        </parameter>
        </function>

    A parameter value that parses as JSON (numbers, objects, true) is taken as that value.
    """
    m = _XML_FUNCTION.match(body)
    if m is None:
        return MalformedToolCall(raw=raw, reason="the <function=...> block is not closed with </function>")
    name = m.group("name").strip()
    if not name:
        return MalformedToolCall(raw=raw, reason="the <function=...> tag names no function")
    arguments: dict[str, Any] = {}
    for p in _XML_PARAM.finditer(m.group("params")):
        value = p.group("value")
        try:
            arguments[p.group("name").strip()] = json.loads(value)
        except json.JSONDecodeError:
            arguments[p.group("name").strip()] = value
    return ToolCall(name=name, arguments=arguments, raw=raw)


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages the model can understand."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- rendering ----------------------------------------------------------------------------------


def render_tool_call(name: str, arguments: dict[str, Any] | None = None) -> str:
    """The exact text the model is trained to emit for a call (used for prompts and fine-tuning).

    Non-ASCII stays as UTF-8 rather than ``\\u`` escapes: a byte-level model reads bytes, and
    escapes would make the same text look different in calls and in documents.
    """
    payload = {"name": name, "arguments": arguments or {}}
    return f"{CALL_OPEN}{json.dumps(payload, ensure_ascii=False)}{CALL_CLOSE}"


def render_tool_response(result: ToolResult) -> str:
    """The text written back into the model's context for one result.

    Success: the content verbatim. Error: ``{"error": "<content>"}``. A literal
    ``</tool_response>`` inside the content is escaped as ``<\\/tool_response>`` so tool output
    can never close the block early and pose as something the runtime wrote.
    """
    content = (
        json.dumps({"error": result.content}, ensure_ascii=False)
        if result.is_error
        else result.content
    )
    content = content.replace(RESPONSE_CLOSE, "<\\/tool_response>")
    return f"{RESPONSE_OPEN}{content}{RESPONSE_CLOSE}"
