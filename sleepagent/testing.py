"""Test doubles shipped with the library (in the spirit of pydantic-ai's TestModel/FunctionModel).

An untrained model will not emit tool calls, so tests and examples script *what text* the model
emits, while every token of it still goes through the real model: each emitted token is a real
decode step on the session's real state, and every sleep pass is the real consolidation. Only the
choice of the next token is replaced. The doubles are :class:`~sleepagent.runtime.TurnModel`s, as
a trained model is, so the Agent runs them through the same loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .model import SleepHybridConfig, SleepModel
from .runtime.generate import Constraint, Script, TokenPicker
from .runtime.models import TurnInfo, TurnModel
from .tools import render_tool_call

if TYPE_CHECKING:
    from .messages import Message

__all__ = ["FunctionModel", "TestModel", "tiny_model", "tool_call"]

TINY = dict(vocab_size=268, d_model=64, n_layers=4, n_heads=4, gdn_heads=4, window=128)


def tiny_model(seed: int = 0, **overrides: Any) -> SleepModel:
    """A small random-initialised model (byte tokenizer vocabulary) that runs in ms on CPU."""
    return SleepModel.from_config(SleepHybridConfig(**{**TINY, **overrides}), seed=seed, name="tiny")


class FunctionModel(TurnModel):
    """A model whose turns are written by ``function(messages, info) -> str`` (sync or async).

    ``base`` is the real model whose compute runs (default: the engine's model when the agent is
    given an engine, else :func:`tiny_model`). A scripted turn longer than the agent's
    ``max_tokens`` is cut there, as a generated one would be.
    """

    def __init__(
        self,
        function: Callable[[list[Message], TurnInfo], str | Awaitable[str]],
        base: SleepModel | None = None,
    ) -> None:
        self.function = function
        self.base = base

    @property
    def weights(self) -> SleepModel | None:
        return self.base

    def default_weights(self) -> SleepModel:
        return tiny_model()  # a scripted model still needs real weights to run

    async def respond(self, messages: list[Message], info: TurnInfo) -> str:
        out = self.function(messages, info)
        if inspect.isawaitable(out):
            out = await out
        if not isinstance(out, str):
            raise TypeError(f"a FunctionModel's function must return str, got {type(out).__name__}")
        return out

    async def picker(self, history: list[Message], info: TurnInfo, *, tokenizer: Any, max_tokens: int,
                     temperature: float, generator: torch.Generator,
                     constraint: Constraint | None) -> TokenPicker:
        text = await self.respond(history, info)
        return Script(tokenizer.encode(text)[:max_tokens], tokenizer.end_id)


class TestModel(FunctionModel):
    """Replies with ``responses`` in order, one per model turn (the last one repeats)."""

    __test__ = False  # not a pytest test class

    def __init__(self, responses: Sequence[str], base: SleepModel | None = None) -> None:
        if not responses:
            raise ValueError("TestModel needs at least one response")
        self.responses = list(responses)
        self.calls = 0

        def next_response(messages: list[Message], info: TurnInfo) -> str:
            text = self.responses[min(self.calls, len(self.responses) - 1)]
            self.calls += 1
            return text

        super().__init__(next_response, base)


def tool_call(name: str, **arguments: Any) -> str:
    """The text of one tool call, for scripts: ``tool_call("calculator", expression="2+2")``."""
    return render_tool_call(name, arguments)
