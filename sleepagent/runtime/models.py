"""What a front door runs: weights that compute, and a way to choose each turn's tokens.

:class:`TurnModel` is the interface: ``weights`` (the :class:`~sleepagent.SleepModel` whose wake
and sleep passes run, or None to run on whatever engine it is given) and ``picker(...)``, which
returns the :class:`~sleepagent.runtime.generate.TokenPicker` of one turn. A real model samples
from its logits (:class:`SampledModel`); the test doubles of :mod:`sleepagent.testing` script the
text while every token still goes through the real weights. Like pydantic-ai's ``FunctionModel``,
which *is* a ``Model``, the doubles implement this interface, so the Agent never asks which kind
it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..model import SleepModel
from .generate import Constraint, Sampler, TokenPicker

if TYPE_CHECKING:
    from ..engine import SleepStats
    from ..messages import Message

__all__ = ["SampledModel", "TurnInfo", "TurnModel"]


@dataclass
class TurnInfo:
    """What a turn is written with: the session, the request number within the run, the tools
    (OpenAI-format specs) and the session's sleep counters so far."""

    session_id: str
    step: int
    tools: list[dict[str, Any]]
    stats: SleepStats


class TurnModel(ABC):
    """A model a front door can run (see the module docstring)."""

    @property
    @abstractmethod
    def weights(self) -> SleepModel | None:
        """The weights that compute; None: the engine's, or :meth:`default_weights`."""

    def default_weights(self) -> SleepModel:
        """The weights to load when neither ``weights`` nor an engine gives any."""
        raise NotImplementedError(f"{type(self).__name__} names no weights: give it a model, or an engine")

    @abstractmethod
    async def picker(self, history: list[Message], info: TurnInfo, *, tokenizer: Any, max_tokens: int,
                     temperature: float, generator: torch.Generator,
                     constraint: Constraint | None) -> TokenPicker:
        """How the next turn's tokens are chosen (``history``: the conversation so far)."""


class SampledModel(TurnModel):
    """A trained model: every token is sampled from its logits (greedy at temperature 0)."""

    def __init__(self, model: SleepModel) -> None:
        self.model = model

    @property
    def weights(self) -> SleepModel:
        return self.model

    async def picker(self, history: list[Message], info: TurnInfo, *, tokenizer: Any, max_tokens: int,
                     temperature: float, generator: torch.Generator,
                     constraint: Constraint | None) -> TokenPicker:
        return Sampler(temperature, generator, constraint)
