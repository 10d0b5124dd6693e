"""HFState: one sequence's state for the transformers adapter (:mod:`sleepagent.model.hf`),
and its safetensors form.

The committed FastState (the fast weights and conv tails sleep wrote) is the state; the
transformers cache over the window (attention KV, working GDN states) is rebuilt from it and the
window's ids whenever it is needed, so a snapshot holds only those.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import save as st_save

from .state import FastState, canonical_bytes

__all__ = ["HF_STATE_FORMAT", "HFState", "read_fast"]

HF_STATE_FORMAT = "sleepagent.HFState"


@dataclass(kw_only=True, eq=False)
class HFState:
    """One sequence's state for :class:`HFHybridLM` (batch size 1).

    fast:   committed FastState at the window's start (S: GDN recurrent states [1, HV, K, V];
            conv: the conv tails [1, conv_dim, kernel]), one per linear-attention layer.
    cache:  the transformers cache over the window (attention KV + working GDN states).
    window_h: the looped span's output over the window's tokens [1, capacity, d] (rows
            ``:window_len`` written; the capacity grows by doubling, up to the window), kept by
            wake while the window's sleep may reuse it (nothing excluded or shed; else None):
            sleep's pass 2 starts from it instead of recomputing pass 1. Derived, never saved.
    """

    fast: FastState
    cache: Any
    window: int
    linear_layers: tuple[int, ...]
    window_ids: list[int] = field(default_factory=list)
    consolidate_mask: list[bool] = field(default_factory=list)
    tokens_seen: int = 0
    tokens_consolidated: int = 0
    sleeps: int = 0
    shed: bool = False  # never-consolidate tokens were shed from this window (see HybridState.shed)
    window_h: torch.Tensor | None = None

    batch_size = 1

    @property
    def window_len(self) -> int:
        return len(self.window_ids)

    @property
    def device(self) -> torch.device:
        return self.fast.S[0].device

    @property
    def fast_weights(self) -> list[torch.Tensor]:
        return list(self.fast.S)

    @property
    def working(self) -> FastState:
        """The GDN states advanced over the window so far (read from the cache)."""
        return read_fast(self.cache, self.linear_layers)

    @property
    def nbytes(self) -> int:
        kv = 0
        for layer in self.cache.layers if self.cache is not None else ():
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    kv += t.numel() * t.element_size()
        h = self.window_h.numel() * self.window_h.element_size() if self.window_h is not None else 0
        return 2 * self.fast.nbytes + kv + h

    def clone(self) -> HFState:
        """An independent copy (what the engine's prefix cache keeps, and what a hit starts
        from): the transformers cache deep-copied, so that reading on into one leaves the other."""
        return HFState(
            fast=self.fast.clone(), cache=copy.deepcopy(self.cache), window=self.window,
            linear_layers=self.linear_layers, window_ids=list(self.window_ids),
            consolidate_mask=list(self.consolidate_mask), tokens_seen=self.tokens_seen,
            tokens_consolidated=self.tokens_consolidated, sleeps=self.sleeps, shed=self.shed,
            window_h=None if self.window_h is None else self.window_h.clone(),
        )

    def without_window(self) -> HFState:
        """The committed state alone (what a snapshot holds when the raw window must not persist)."""
        return HFState(
            fast=self.fast, cache=None, window=self.window, linear_layers=self.linear_layers,
            # the consolidated tokens, not tokens_seen: that counts never-consolidate tokens too
            tokens_seen=self.tokens_consolidated, tokens_consolidated=self.tokens_consolidated,
            sleeps=self.sleeps,
        )

    def for_snapshot(self, keep_window: bool) -> HFState:
        """What a snapshot may hold: the committed state, and with ``keep_window`` the window's
        ids minus those marked never-consolidate (loading re-reads them, as for every HFState)."""
        if not keep_window:
            return self.without_window()
        kept = [t for t, m in zip(self.window_ids, self.consolidate_mask, strict=True) if m]
        return HFState(
            fast=self.fast, cache=None, window=self.window, linear_layers=self.linear_layers,
            window_ids=kept, consolidate_mask=[True] * len(kept),
            tokens_seen=self.tokens_consolidated + len(kept),
            tokens_consolidated=self.tokens_consolidated, sleeps=self.sleeps,
        )

    def to_bytes(self, fingerprint: str, dtype: torch.dtype | None = None) -> bytes:
        """Safetensors bytes (``dtype`` is accepted for the interface; transformers states are
        stored at their own precision)."""
        tensors = {f"fast.S.{i}": s for i, s in enumerate(self.fast.S)}
        tensors |= {f"fast.conv.{i}": c for i, c in enumerate(self.fast.conv)}
        tensors["window.ids"] = torch.tensor([self.window_ids], dtype=torch.long)
        tensors["window.mask"] = torch.tensor([self.consolidate_mask], dtype=torch.bool)
        tensors = {k: t.detach().cpu().clone().contiguous() for k, t in tensors.items()}
        counters = {"window_len": self.window_len, "window": self.window, "tokens_seen": self.tokens_seen,
                    "tokens_consolidated": self.tokens_consolidated, "sleeps": self.sleeps}
        meta = {"format": HF_STATE_FORMAT, "format_version": "1", "fingerprint": fingerprint,
                "counters": json.dumps(counters)}
        return canonical_bytes(st_save(tensors, metadata=meta))


def read_fast(cache: Any, linear_layers: tuple[int, ...]) -> FastState:
    layers = [cache.layers[i] for i in linear_layers]
    return FastState(
        S=tuple(layer.recurrent_states[0].clone() for layer in layers),
        conv=tuple(layer.conv_states[0].clone() for layer in layers),
    )
