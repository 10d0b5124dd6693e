"""The interface the runtime uses on a sleep-enabled network (``SleepModel.model``).

Both :class:`~sleepagent.model.hybrid.SleepHybridLM` and :class:`~sleepagent.model.hf.HFHybridLM`
satisfy :class:`HybridNetwork`. Their states (``HybridState`` / ``HFState``) and configs
(``SleepHybridConfig`` / ``HFSleepConfig``) share fields but differ too much for one structural
type, so states and configs are typed ``Any`` here: each network checks the states it is given.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

__all__ = ["HybridNetwork", "SleepTask"]


class SleepTask(Protocol):
    """A sleep in progress (``SleepJob`` / ``HFSleepJob``), run a step or a pass at a time."""

    passes_done: int
    n_consolidated: int

    @property
    def done(self) -> bool: ...

    def run_step(self) -> bool: ...

    def run_pass(self) -> None: ...

    def commit(self) -> Any: ...


class HybridNetwork(Protocol):
    """What the engine, the benches and :class:`~sleepagent.model.SleepModel` call on a network.

    ``prefill_many`` is optional (only SleepHybridLM batches reads): callers test it with
    ``hasattr``.
    """

    # SleepHybridConfig or HFSleepConfig (window, vocab_size, ... are shared)
    @property
    def config(self) -> Any: ...

    @property
    def device(self) -> torch.device: ...

    def fingerprint(self) -> str: ...

    def new_state(self, batch_size: int = 1, device: Any = None) -> Any: ...

    def prefill(self, ids: torch.Tensor, state: Any, consolidate: bool | torch.Tensor = True) -> torch.Tensor: ...

    def step(self, ids: torch.Tensor, state: Any, consolidate: bool | torch.Tensor = True) -> torch.Tensor: ...

    def step_many(
        self, ids: torch.Tensor, states: list[Any], consolidate: list[bool] | None = None
    ) -> torch.Tensor: ...

    def begin_sleep(self, state: Any, loops: int | None = None) -> SleepTask: ...

    def consolidate(self, state: Any, loops: int | None = None) -> Any: ...

    def drop_excluded(self, state: Any) -> Any: ...

    def save_state(self, state: Any) -> bytes: ...

    def load_state(self, data: bytes, fingerprint: str | None = None) -> Any: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> Any: ...
