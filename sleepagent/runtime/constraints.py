"""A turn's constraint, built in one place for every door; and what of a turn a client sees.

A byte-level model spells a tool's name and its arguments one byte at a time, often long after
the system prompt that listed the tools left its attention window; one wrong byte makes a call
unusable. As structured-output engines (vLLM's guided decoding, llama.cpp grammars) do, the
runtime masks the logits (:mod:`.grammar`): a call names a registered tool and its arguments are
valid against that tool's JSON schema; a structured answer (``Agent(output_type=...)``, the
server's ``response_format``) is one JSON value valid against its schema. The model still chooses
among the allowed tokens (greedy or sampled).

``tool_choice`` (the OpenAI / LangChain setting): "auto" (the model decides), "none" (it may not
call: ``<tool_call>`` is masked), "required" (the turn is calls), or a tool's name (the turn is one
call of that tool). With no tools, nothing may be called.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from .grammar import LIMITS_LADDER, GrammarConstraint, supports_tokenizer, tool_call_constraint, tool_schemas

__all__ = ["FREE_ARGUMENTS", "normalize_tool_choice", "turn_constraint", "visible_text"]

logger = logging.getLogger(__name__)

FREE_ARGUMENTS: dict[str, Any] = {"type": "object"}
"""The arguments schema a non-strict tool falls back to when its own cannot be enforced (a remote
``$ref``, a keyword the grammar engine lacks): any JSON object, bounded like every value."""


def turn_constraint(tokenizer: Any, tools: Iterable[Any], tool_choice: str = "auto", *, max_tokens: int,
                    output: Mapping[str, Any] | type | None = None,
                    strict: Collection[str] | bool = False) -> GrammarConstraint | None:
    """The constraint one assistant turn is written under, from every door: calls of ``tools``
    (:class:`~sleepagent.tools.Tool` objects, OpenAI function specs or name -> parameters schema)
    under ``tool_choice`` (normalised, :func:`normalize_tool_choice`), with names and arguments
    valid; and, when ``output`` (a JSON schema or a pydantic model class) is given, an answer that
    is one JSON value valid against it instead of free text. ``max_tokens``: the turn's budget,
    its end token included.

    ``strict``: the tools (names, or True for all) whose schema must be enforced as given; a
    schema of one that cannot be is a :class:`ConfigError` (``field="tools"``). Any other tool
    whose schema cannot be enforced falls back to :data:`FREE_ARGUMENTS` (logged), as
    OpenAI's non-strict function calling is best effort. An output schema that cannot be
    enforced, or a budget that cannot hold the answer, is a :class:`ConfigError`
    (``field="output"`` or ``"max_tokens"``). A turn that must call ("required", a tool's name)
    on a budget too small for any call gets the tightest caps and is cut where the budget ends.

    None when the tokenizer has no grammar vocabulary and nothing structured is asked (calls are
    then free text, checked when they are executed).
    """
    schemas = tool_schemas(tools)
    if not supports_tokenizer(tokenizer):
        if output is not None:
            raise ConfigError(f"structured output needs a grammar vocabulary; a {type(tokenizer).__name__} has none",
                              field="output")
        return None
    strict_names = set(schemas) if strict is True else set(strict or ())
    try:
        return tool_call_constraint(tokenizer, schemas, tool_choice, max_tokens=max_tokens, output=output)
    except ConfigError as first:
        if first.field == "max_tokens" and tool_choice not in ("auto", "none"):
            # the turn must call, but no call fits the budget: the tightest caps, the call cut
            # where the budget ends (finish "length"), as it would be without a grammar
            logger.warning("max_tokens=%d cannot hold a call: it will be cut", max_tokens)
            return tool_call_constraint(tokenizer, schemas, tool_choice, max_tokens=1 << 20,
                                        limits=LIMITS_LADDER[-1])
        if first.field in ("max_tokens", "tool_choice"):
            raise
    # find what failed: the output schema, a strict tool (both errors), or loose tools (fall back)
    if output is not None:
        try:
            tool_call_constraint(tokenizer, {}, "none", max_tokens=max_tokens, output=output)
        except ConfigError as e:
            field = e.field if e.field == "max_tokens" else "output"
            raise ConfigError(f"the output schema cannot be enforced: {e}", field=field) from None
    fixed = dict(schemas)
    for name, schema in schemas.items():
        try:
            tool_call_constraint(tokenizer, {name: schema}, name, max_tokens=max(max_tokens, 1 << 16))
        except ConfigError as e:
            if name in strict_names:
                raise ConfigError(f"tool {name!r}: its parameters schema cannot be enforced ({e})",
                                  field="tools") from None
            logger.warning("tool %r: its parameters schema cannot be enforced (%s); its arguments are free", name, e)
            fixed[name] = FREE_ARGUMENTS
    return tool_call_constraint(tokenizer, fixed, tool_choice, max_tokens=max_tokens, output=output)


def normalize_tool_choice(choice: object, tool_names: Sequence[str]) -> str:
    """``"auto" | "none" | "required"`` or a registered tool's name, from the forms OpenAI and
    LangChain use (``"any"``, ``True``, ``{"type": "function", "function": {"name": ...}}``)."""
    if choice is None or choice == "auto" or choice is False:
        return "auto"
    if choice in ("any", "required") or choice is True:
        return "required"
    if choice == "none":
        return "none"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"tool_choice {choice!r} names no function", field="tool_choice")
        choice = name
    if isinstance(choice, str):
        if choice not in tool_names:
            raise ConfigError(
                f"tool_choice {choice!r} is not one of the tools ({', '.join(tool_names) or 'none'})",
                field="tool_choice",
            )
        return choice
    raise ConfigError(f"tool_choice must be 'auto', 'none', 'required' or a tool name, got {choice!r}",
                      field="tool_choice")


_OPEN, _CLOSE, _HEAD = "<tool_call>", "</tool_call>", '{"name"'


def visible_text(text: str) -> str:
    """What a client sees as the reply's content: the text without its tool calls, and never a
    piece of their markup.

    Hidden: every ``<tool_call>...</tool_call>`` block (and one still being written); a call
    written without its opening tag (``{"name"`` up to a ``</tool_call>``, as a model that may not
    open a call, ``tool_choice="none"``, sometimes writes one), and a stray ``</tool_call>``; and,
    at the end of the text, what could still become one of these (a prefix of a tag, of
    ``{"name"``). It only grows as tokens arrive, so streamed deltas of it add up to the
    non-streamed content exactly."""
    out, pos = [], 0
    while pos < len(text):
        # the next place a hidden part may start: a tag, a call head, or a stray close
        starts = [(i, m) for m in (_OPEN, _HEAD, _CLOSE) if (i := text.find(m, pos)) != -1]
        if not starts:
            out.append(_without_partial_marker(text[pos:]))
            break
        i, marker = min(starts)
        out.append(text[pos:i])
        if marker == _CLOSE:  # a close with nothing open: drop the tag
            pos = i + len(_CLOSE)
            continue
        end = text.find(_CLOSE, i)
        if end == -1:  # a call (or what may become one) still being written: hide the rest
            break
        pos = end + len(_CLOSE)
    return "".join(out)


def _without_partial_marker(tail: str) -> str:
    """``tail`` less a last piece that is a proper prefix of a tag or a call head (it may still
    become one)."""
    for n in range(min(len(tail), max(len(_OPEN), len(_CLOSE), len(_HEAD)) - 1), 0, -1):
        end = tail[-n:]
        if any(m.startswith(end) for m in (_OPEN, _CLOSE, _HEAD)):
            return tail[:-n]
    return tail
