"""Chat rendering: messages to the exact token ids the model reads.

Every front door renders here, so a conversation reads the same whether it arrives as an
:class:`~sleepagent.Agent` run, an OpenAI request or a LangChain call. A checkpoint trained on
these tokens (``sleepagent.train.docqa`` renders its transcripts with the same functions) sees at
run time exactly what it saw in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..tools import ToolRegistry, ToolResult, render_tool_call, render_tool_response

__all__ = ["DEFAULT_SYSTEM_PROMPT", "ChatTurn", "render_system_turn", "render_tool_prompt", "render_turns"]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class ChatTurn:
    """One message of a history a caller replays (LangChain, an OpenAI client): ``calls`` are the
    assistant's tool calls as (name, arguments); ``call_ids`` their ids when the caller has them,
    and ``call_id`` the call a tool message answers."""

    role: str  # system | user | assistant | tool
    text: str
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    is_error: bool = False
    call_ids: tuple[str | None, ...] = ()
    call_id: str | None = None


def render_tool_prompt(tools: ToolRegistry | list[dict[str, Any]]) -> str:
    """The tool list appended to the system prompt: one compact line per tool.

    ``tools``: a registry, or OpenAI-format tool specs. Byte-level models pay for every
    character of context, so the full JSON schemas (which the runtime still uses to validate
    arguments) are summarised as ``name(arg: type): summary``.
    """
    specs = tools.specs() if isinstance(tools, ToolRegistry) else list(tools)
    if not specs:
        return ""
    lines = []
    for spec in specs:
        fn = spec["function"]
        params = fn["parameters"].get("properties", {})
        args = ", ".join(f"{name}: {_type_name(p)}" for name, p in params.items())
        desc = (fn.get("description") or "").split(". ")[0].strip()
        lines.append(f"- {fn['name']}({args}): {desc}")
    return "\nTools (call as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>):\n" + "\n".join(lines)


def _type_name(schema: dict[str, Any]) -> str:
    if "type" in schema:
        return str(schema["type"])
    options = [o.get("type", "any") for o in schema.get("anyOf", [])]
    return "|".join(o for o in options if o != "null") + ("?" if "null" in options else "") if options else "any"


def render_system_turn(tok: Any, text: str, specs: list[dict[str, Any]]) -> list[int]:
    """The system turn with the tool list: in the tokenizer's own format when it has one (the
    chat template of a transformers model), else as :func:`render_tool_prompt` text."""
    if hasattr(tok, "render_system"):
        return tok.render_system(text, specs)
    return tok.render_turn("system", text + render_tool_prompt(specs), trusted=True)


def render_turns(
    tok: Any, turns: Sequence[ChatTurn], specs: list[dict[str, Any]], *, first: bool, system_prompt: str,
    allows: Callable[[str], bool] = lambda text: True,
) -> list[tuple[list[int], bool]]:
    """Token segments ``(ids, consolidate)`` for messages a caller sends, ending with the
    generation prompt. ``first``: nothing was read yet, so the system turn (the caller's, else
    ``system_prompt``) carries the tool list. ``allows(text)``: whether a turn may be consolidated
    (the memory policy), asked of every turn's whole text, the system turn's included."""
    out: list[tuple[list[int], bool]] = []
    if first and not any(t.role == "system" for t in turns):
        out.append((render_system_turn(tok, system_prompt, specs), allows(system_prompt)))
    for t in turns:
        if t.role == "system":
            out.append((render_system_turn(tok, t.text, specs if first else []), allows(t.text)))
        elif t.role == "user":
            out.append((tok.render_turn("user", t.text), allows(t.text)))
        elif t.role == "assistant":
            body = t.text + "".join(render_tool_call(name, args) for name, args in t.calls)
            out.append((tok.generation_prompt() + tok.encode(body) + tok.close_turn(), allows(body)))
        elif t.role == "tool":
            result = ToolResult(call_id="", name="", content=t.text, is_error=t.is_error)
            out.append((tok.render_tool_result(render_tool_response(result)), allows(t.text)))
        else:
            raise ConfigError(f"unsupported message role {t.role!r}")
    out.append((tok.generation_prompt(), True))
    return out
