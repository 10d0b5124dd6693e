"""Constrained decoding of tool calls: a call names a tool that exists; and what of a turn a client sees.

A byte-level model spells a tool's name one byte at a time, often long after the system prompt
that listed the tools left its attention window; one wrong byte makes the call unusable. As
structured-output engines (vLLM's guided decoding, llama.cpp grammars) do for JSON, the runtime
masks the logits while a call's head is being written: after ``<tool_call>`` only bytes that keep
the text a prefix of ``{"name": "<a registered tool>", "arguments": `` are allowed. The model
still chooses among them (greedy or sampled), and everything after the head is free.

``tool_choice`` (the OpenAI / LangChain setting): "auto" (the model decides), "none" (it may not
call: ``<tool_call>`` is masked), "required" (the turn starts with a call), or a tool's name (the
turn starts with a call of that tool). With no tools, nothing may be called.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError

__all__ = ["ToolCallConstraint", "normalize_tool_choice", "visible_text"]


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


class ToolCallConstraint:
    """Masks logits so that every call names one of ``tool_names`` (see module docstring).

    ``tokenizer`` must have ``<tool_call>`` as a single special token (the byte tokenizer); for
    other tokenizers use :meth:`for_tokenizer`, which returns None (no constraint).
    """

    def __init__(self, tokenizer, tool_names: Sequence[str], tool_choice: str = "auto") -> None:
        self.open_id: int = tokenizer.special_ids["<tool_call>"]
        self.names = list(tool_names)
        self.choice = tool_choice
        chosen = self.names if tool_choice in ("auto", "required", "none") else [tool_choice]
        self.heads = [
            tuple(tokenizer.encode(f'{{"name": "{name}", "arguments": ', specials=False)) for name in chosen
        ]

    @classmethod
    def for_tokenizer(cls, tokenizer, tool_names: Sequence[str], tool_choice: str = "auto") -> ToolCallConstraint | None:
        if "<tool_call>" not in getattr(tokenizer, "special_ids", {}):
            return None  # a model's own tokenizer (transformers): calls are free text
        return cls(tokenizer, tool_names, tool_choice)

    def allowed(self, emitted: Sequence[int]) -> list[int] | None:
        """The token ids allowed next, after ``emitted`` (this turn's tokens so far); None = any
        except what :meth:`banned` lists."""
        if not emitted and self.choice != "auto" and self.choice != "none" and self.heads:
            return [self.open_id]  # required / a named tool: the turn opens with a call
        if self.open_id not in emitted:
            return None
        last = len(emitted) - 1 - list(reversed(emitted)).index(self.open_id)
        cur = tuple(emitted[last + 1 :])
        nxt = {h[len(cur)] for h in self.heads if len(h) > len(cur) and h[: len(cur)] == cur}
        return sorted(nxt) or None

    def banned(self) -> list[int]:
        """Token ids never allowed: ``<tool_call>`` when no tool may be called."""
        return [self.open_id] if self.choice == "none" or not self.heads else []

    def apply(self, logits: torch.Tensor, emitted: Sequence[int]) -> torch.Tensor:
        """``logits`` [vocab] with every disallowed token at -inf (a new tensor)."""
        allowed = self.allowed(emitted)
        banned = self.banned()
        if allowed is None and not banned:
            return logits
        out = logits.clone()
        if allowed is not None:
            keep = out[allowed].clone()
            out.fill_(float("-inf"))
            out[allowed] = keep
        if banned:
            out[banned] = float("-inf")
        return out


def visible_text(text: str) -> str:
    """What a client sees as the reply's content: the text without its ``<tool_call>`` blocks (and
    without a block still being written). It only grows as tokens arrive, so streamed deltas of
    it add up to the non-streamed content exactly."""
    out, pos = [], 0
    while True:
        start = text.find("<tool_call>", pos)
        if start == -1:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:start])
        end = text.find("</tool_call>", start)
        if end == -1:
            return "".join(out)
        pos = end + len("</tool_call>")
