"""Byte-level tokenizer with chat and tool specials, for the models this project trains and ships.

Ids 0..255 are the UTF-8 bytes; special tokens follow. Any text round-trips, no vocabulary file is
needed, and a tiny model's embedding table stays small. The chat format is::

    <|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|><|tool|><tool_response>...</tool_response><|end|>

Tool calls are plain text inside the assistant turn (``<tool_call>{json}</tool_call>``, see
:mod:`sleepagent.tools.calls`); each tag is one special token, so the model emits it in one step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["SPECIAL_TOKENS", "ByteTokenizer", "PromptConventions", "Role"]

Role = Literal["system", "user", "assistant", "tool"]

SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
    "<|end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
)


class ByteTokenizer:
    """UTF-8 bytes plus :data:`SPECIAL_TOKENS` (ids 256, 257, ...)."""

    def __init__(self, specials: Sequence[str] = SPECIAL_TOKENS) -> None:
        self.specials = tuple(specials)
        self.special_ids = {tok: 256 + i for i, tok in enumerate(self.specials)}
        self._by_id = {i: tok for tok, i in self.special_ids.items()}
        # longest first, so a special that prefixes another never wins
        alternatives = sorted(self.specials, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.specials)

    def __getattr__(self, name: str) -> int:
        # tok.pad_id, tok.eos_id, tok.end_id, ... for the plain specials
        if name.endswith("_id"):
            key = name[: -len("_id")]
            for tok, i in self.__dict__.get("special_ids", {}).items():
                if tok.strip("<|>/") == key:
                    return i
        raise AttributeError(name)

    def token_id(self, special: str) -> int:
        try:
            return self.special_ids[special]
        except KeyError:
            raise KeyError(f"{special!r} is not a special token; specials are {self.specials}") from None

    def encode(self, text: str, *, specials: bool = True) -> list[int]:
        """Text -> ids. With ``specials=False`` special strings are encoded as plain bytes, which is
        how untrusted text (documents, tool output) must enter the context: it cannot forge a turn."""
        if not specials:
            return list(text.encode("utf-8"))
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self.special_ids:
                ids.append(self.special_ids[piece])
            elif piece:
                ids.extend(piece.encode("utf-8"))
        return ids

    def decode(self, ids: Iterable[int], *, skip_specials: bool = False) -> str:
        """Ids -> text; bytes that are not valid UTF-8 (a cut multi-byte char) become U+FFFD."""
        out: list[str] = []
        buf = bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                buf.append(i)
                continue
            if buf:
                out.append(buf.decode("utf-8", errors="replace"))
                buf.clear()
            if not skip_specials:
                out.append(self._by_id.get(i, ""))
        if buf:
            out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def render_turn(self, role: Role, content: str, *, trusted: bool = False) -> list[int]:
        """One chat turn as ids: ``<|role|>content<|end|>``.

        Only trusted text (the system prompt, model output being replayed) may contain special
        tokens; user, tool and document text is encoded byte by byte.
        """
        return (
            [self.special_ids[f"<|{role}|>"]]
            + self.encode(content, specials=trusted)
            + [self.special_ids["<|end|>"]]
        )

    def render_tool_result(self, rendered_response: str) -> list[int]:
        """A tool turn: ``<|tool|><tool_response>body</tool_response><|end|>``; the body is untrusted."""
        open_, close = "<tool_response>", "</tool_response>"
        body = rendered_response.removeprefix(open_).removesuffix(close)
        return (
            [self.special_ids["<|tool|>"], self.special_ids[open_]]
            + self.encode(body, specials=False)
            + [self.special_ids[close], self.special_ids["<|end|>"]]
        )

    def close_turn(self) -> list[int]:
        """The ids that close an assistant turn after its last emitted token."""
        return [self.special_ids["<|end|>"]]

    def generation_prompt(self) -> list[int]:
        """The ids that open the assistant's turn."""
        return [self.special_ids["<|assistant|>"]]

    def to_dict(self) -> dict:
        return {"type": "byte", "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, data: dict) -> ByteTokenizer:
        if data.get("type") != "byte":
            raise ValueError(f"unsupported tokenizer type {data.get('type')!r}")
        return cls(data.get("specials", SPECIAL_TOKENS))


class PromptConventions(BaseModel):
    """What a checkpoint was trained to read, as a transformers checkpoint carries its chat
    template: the system prompt it saw and how the tool list is written into it. Stored as
    ``prompt.json`` beside the weights; :class:`~sleepagent.Agent`,
    :class:`~sleepagent.langchain.ChatSleepModel` and the server use it unless the caller gives
    a system prompt of their own (a small model answers well only in the register it was
    trained in).

    system_prompt: the system turn's text before the tool list (None: the runtime's default).
    tool_format:   "compact": one ``- name(arg: type): first sentence of the docstring`` line per
                   tool after a header naming the call syntax
                   (:func:`sleepagent.agent.render_tool_prompt`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: str | None = None
    tool_format: Literal["compact"] = "compact"
