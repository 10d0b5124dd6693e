"""The tokenizer of a transformers checkpoint behind the runtime's tokenizer interface.

:class:`HFChatTokenizer` gives a transformers model's own tokenizer and chat template the
interface of :class:`~sleepagent.tokenizer.ByteTokenizer` (encode, decode, one rendered turn at a
time), so the agent, the server and the docqa task read and write a transformers hybrid's chat
format without knowing which kind of model they hold.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError

__all__ = ["HFChatTokenizer"]

_SENTINEL = "\x00SLEEPAGENT\x00"


class HFChatTokenizer:
    """The model's own tokenizer and chat template behind ByteTokenizer's interface.

    Turns are rendered with the chat template (the difference between the rendering with and
    without the turn), and the content inside a turn is tokenised on its own: untrusted text
    (user, tool, document) never becomes special tokens.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise CheckpointError("the transformers tokenizer has no chat_template: the agent needs one")
        vocab = tokenizer.get_vocab()
        end = next((t for t in ("<|im_end|>", "<|eot_id|>", "<|end|>") if t in vocab), None)
        self.eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else vocab.get(end)
        self.end_id = vocab[end] if end is not None else self.eos_id
        if self.end_id is None:
            raise CheckpointError("the tokenizer has neither an end-of-turn token nor an eos token")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self._gen_prompt: list[int] | None = None
        self._close: list[int] | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str, *, specials: bool = True) -> list[int]:
        return list(self.tok(text, add_special_tokens=False, split_special_tokens=not specials)["input_ids"])

    def decode(self, ids, *, skip_specials: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_specials)

    def _render(self, messages: list[dict], **kw: Any) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, **kw)

    def _turn(self, before: list[dict], message: dict, content: str, trusted: bool, **kw: Any) -> list[int]:
        """Ids of ``message`` (whose content is the sentinel) rendered after ``before``."""
        full = self._render([*before, message], **kw)
        prefix = self._render(before, **kw) if before else ""
        text = full[len(prefix):] if full.startswith(prefix) else self._render([message], **kw)
        head, _, tail = text.partition(_SENTINEL)
        return self.encode(head) + self.encode(content, specials=trusted) + self.encode(tail)

    def render_turn(self, role: str, content: str, *, trusted: bool = False) -> list[int]:
        if role == "system":
            return self.render_system(content)
        before = [{"role": "user", "content": "hi"}] if role == "assistant" else [{"role": "system", "content": "s"}]
        return self._turn(before, {"role": role, "content": _SENTINEL}, content, trusted)

    def render_system(self, content: str, tools: list[dict] | None = None) -> list[int]:
        """The system turn; ``tools`` (OpenAI-format specs) rendered the way the template says."""
        return self._turn([], {"role": "system", "content": _SENTINEL}, content, True, tools=tools or None)

    def render_tool_result(self, rendered_response: str) -> list[int]:
        body = rendered_response.removeprefix("<tool_response>").removesuffix("</tool_response>")
        before = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "ok"}]
        return self._turn(before, {"role": "tool", "content": _SENTINEL}, body, False)

    def close_turn(self) -> list[int]:
        """What the template writes after an assistant turn's content (e.g. ``<|im_end|>\n``)."""
        if self._close is None:
            before = [{"role": "user", "content": "hi"}]
            text = self._render([*before, {"role": "assistant", "content": _SENTINEL}])
            tail = text.partition(_SENTINEL)[2]
            ids = self.encode(tail)
            self._close = ids if self.end_id in ids[:1] else [self.end_id]
        return list(self._close)

    def generation_prompt(self) -> list[int]:
        if self._gen_prompt is None:
            msgs = [{"role": "user", "content": "hi"}]
            full = self._render(msgs, add_generation_prompt=True)
            base = self._render(msgs)
            self._gen_prompt = self.encode(full[len(base):] if full.startswith(base) else "")
        return list(self._gen_prompt)

    def to_dict(self) -> dict:
        return {"type": "transformers", "name": getattr(self.tok, "name_or_path", "")}
