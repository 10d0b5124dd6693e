"""FastState and HybridState: what a sequence carries between wake steps and across sleeps.

Sizes never grow with the number of tokens read: the fast weights are fixed-size matrices, and the
attention KV lives in buffers of exactly ``window`` slots, preallocated once per state.

States serialise to safetensors bytes (never pickle): tensors plus a string header with the
format version and the fingerprint of the model that made them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import FingerprintMismatch, SnapshotCorrupted, StateMismatch

if TYPE_CHECKING:
    from .config import SleepHybridConfig

__all__ = ["STATE_FORMAT_VERSION", "FastState", "HybridState"]

STATE_FORMAT_VERSION = "1"


@dataclass(frozen=True, kw_only=True)
class FastState:
    """All recurrent state of the block stack: the paper's F.

    S:    one [B, HV, K, V] float32 fast-weight matrix per GDN layer (K-first, as fla).
    conv: one [B, conv_dim, conv_size - 1] short-conv tail per GDN layer.

    Frozen and never mutated in place: every pass returns a new FastState, so a committed state
    can be shared by several sleep passes (and an aborted sleep) safely.
    """

    S: tuple[torch.Tensor, ...]
    conv: tuple[torch.Tensor, ...]

    @classmethod
    def zeros(cls, cfg: SleepHybridConfig, batch_size: int, device=None, dtype=torch.float32) -> FastState:
        n = len(cfg.gdn_layers)
        S = tuple(
            torch.zeros(batch_size, cfg.v_heads, cfg.head_k_dim, cfg.head_v_dim, device=device)
            for _ in range(n)
        )
        conv = tuple(
            torch.zeros(batch_size, cfg.conv_dim, cfg.conv_size - 1, device=device, dtype=dtype)
            for _ in range(n)
        )
        return cls(S=S, conv=conv)

    @property
    def batch_size(self) -> int:
        return self.S[0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.S, *self.conv))

    def clone(self) -> FastState:
        return FastState(S=tuple(s.clone() for s in self.S), conv=tuple(c.clone() for c in self.conv))

    def detach(self) -> FastState:
        return FastState(S=tuple(s.detach() for s in self.S), conv=tuple(c.detach() for c in self.conv))

    def flatten(self) -> tuple[torch.Tensor, ...]:
        """``(*S, *conv)``: the form activation checkpointing passes between windows."""
        return (*self.S, *self.conv)

    @classmethod
    def unflatten(cls, tensors) -> FastState:
        """Inverse of :meth:`flatten`."""
        tensors = tuple(tensors)
        n = len(tensors) // 2
        return cls(S=tensors[:n], conv=tensors[n:])

    def equal(self, other: FastState) -> bool:
        """Bit-exact equality of every tensor."""
        return len(self.S) == len(other.S) and all(
            torch.equal(a, b) for a, b in zip((*self.S, *self.conv), (*other.S, *other.conv), strict=True)
        )


@dataclass(kw_only=True, eq=False)
class HybridState:
    """Per-sequence state of a :class:`~sleepagent.model.SleepHybridLM` between calls.

    fast:        committed FastState at the window's start (what sleep wrote).
    working:     FastState advanced over the window's tokens so far (what wake reads).
    k_cache, v_cache: per attention layer [B, Hkv, W, D]; slots [0, window_len) are valid.
    window_ids:  [B, W] token ids in the window.
    consolidate_mask: [B, W] bool; False = leave this token out of the fast weights at sleep.
    window_h:    [B, W, d] the wake pass's hidden states at the end of the looped span; it is the
                 paper's pass-1 output, reused so that sleep pass 1 costs nothing.
    window_len:  tokens currently in the window.
    tokens_seen / tokens_consolidated: running counters (not part of the math).
    """

    fast: FastState
    working: FastState
    k_cache: list[torch.Tensor]
    v_cache: list[torch.Tensor]
    window_ids: torch.Tensor
    consolidate_mask: torch.Tensor
    window_h: torch.Tensor
    window_len: int = 0
    tokens_seen: int = 0
    tokens_consolidated: int = 0
    sleeps: int = field(default=0)
    # a snapshot form (see for_snapshot): the window's ids are stored without the KV, hidden
    # states or working state computed from them; loading re-reads them from ``fast``
    replay: bool = False
    # never-consolidate tokens were shed from this window (Engine, drop_excluded): its first
    # tokens were read with them in view, so a sleep recomputes pass 1 instead of reusing wake
    # (what it consolidates must not depend on them, not even through rounding)
    shed: bool = False

    @property
    def fast_weights(self) -> list[torch.Tensor]:
        """The committed fast-weight matrices, one [B, HV, K, V] per GDN layer."""
        return list(self.fast.S)

    @property
    def batch_size(self) -> int:
        return self.window_ids.shape[0]

    @property
    def window(self) -> int:
        return self.window_ids.shape[1]

    @property
    def device(self) -> torch.device:
        return self.window_ids.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the state's tensors (constant for a given config and batch size)."""
        tensors = [*self.k_cache, *self.v_cache, self.window_ids, self.consolidate_mask, self.window_h]
        return self.fast.nbytes + self.working.nbytes + sum(t.numel() * t.element_size() for t in tensors)

    def without_window(self) -> HybridState:
        """The committed state alone, window empty (a snapshot that must not hold the raw window)."""
        return replace(
            self,
            working=self.fast,
            k_cache=[torch.zeros_like(k) for k in self.k_cache],
            v_cache=[torch.zeros_like(v) for v in self.v_cache],
            window_ids=torch.zeros_like(self.window_ids),
            consolidate_mask=torch.ones_like(self.consolidate_mask),
            window_h=torch.zeros_like(self.window_h),
            window_len=0,
            # what the state holds in any form: the consolidated tokens. Not tokens_seen, which
            # counts never-consolidate tokens too: a stored count would reveal their length
            tokens_seen=self.tokens_consolidated,
        )

    def for_snapshot(self, keep_window: bool) -> HybridState:
        """What a snapshot may hold: the committed fast weights, and with ``keep_window`` the
        window's token ids minus those marked never-consolidate, and nothing computed from the
        window (the KV, hidden states and working state have read every token, secrets
        included): loading re-reads the kept ids from the committed state. ``keep_window=False``
        is :meth:`without_window`."""
        if not keep_window or self.window_len == 0:
            return self.without_window()
        if self.batch_size != 1:
            raise StateMismatch("a snapshot holds one sequence")
        keep = self.window_ids[0, : self.window_len][self.consolidate_mask[0, : self.window_len]]
        n = int(keep.numel())
        ids = torch.zeros_like(self.window_ids)
        ids[0, :n] = keep
        return replace(
            self.without_window(),
            window_ids=ids,
            window_len=n,
            tokens_seen=self.tokens_consolidated + n,
            replay=True,
        )

    def ids(self) -> torch.Tensor:
        """The window's token ids, [B, window_len]."""
        return self.window_ids[:, : self.window_len]

    def clone(self) -> HybridState:
        return replace(
            self,
            fast=self.fast.clone(),
            working=self.working.clone(),
            k_cache=[k.clone() for k in self.k_cache],
            v_cache=[v.clone() for v in self.v_cache],
            window_ids=self.window_ids.clone(),
            consolidate_mask=self.consolidate_mask.clone(),
            window_h=self.window_h.clone(),
        )

    # --- serialisation --------------------------------------------------------------------------

    def to_bytes(self, fingerprint: str, dtype: torch.dtype | None = None) -> bytes:
        """Serialise to safetensors bytes; only the valid window slots are written. ``dtype``
        (e.g. ``torch.bfloat16``) stores the floating tensors in that precision (half the bytes;
        loading casts them back, S to float32: a lossy round trip, 8 significant bits for bf16)."""
        L = self.window_len
        tensors: dict[str, torch.Tensor] = {}
        # After a hard sleep the working state is the committed one: store it once.
        working_is_fast = self.replay or self.working is self.fast or self.working.equal(self.fast)
        pairs = [("fast", self.fast)] if working_is_fast else [("fast", self.fast), ("working", self.working)]
        for prefix, fs in pairs:
            for i, s in enumerate(fs.S):
                tensors[f"{prefix}.S.{i}"] = s
            for i, c in enumerate(fs.conv):
                tensors[f"{prefix}.conv.{i}"] = c
        tensors["window.ids"] = self.window_ids[:, :L]
        if not self.replay:  # a replay snapshot holds the ids alone (for_snapshot)
            for i, (k, v) in enumerate(zip(self.k_cache, self.v_cache, strict=True)):
                tensors[f"kv.k.{i}"] = k[:, :, :L]
                tensors[f"kv.v.{i}"] = v[:, :, :L]
            tensors["window.mask"] = self.consolidate_mask[:, :L]
            tensors["window.h"] = self.window_h[:, :L]
        # clone: after a hard sleep `working` and `fast` share storage, which safetensors refuses
        tensors = {k: t.detach().cpu().clone() for k, t in tensors.items()}
        compute = self.fast.conv[0].dtype if self.fast.conv else self.window_h.dtype
        if dtype is not None:
            tensors = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}
        meta = {
            "format": "sleepagent.HybridState",
            "format_version": STATE_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "counters": json.dumps(
                {
                    "window_len": L,
                    "window": self.window,
                    "tokens_seen": self.tokens_seen,
                    "tokens_consolidated": self.tokens_consolidated,
                    "sleeps": self.sleeps,
                    "working_is_fast": working_is_fast,
                    "replay": self.replay,
                    "stored_dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
                    "compute_dtype": str(compute).removeprefix("torch."),
                }
            ),
        }
        return canonical_bytes(st_save(tensors, metadata=meta))

    @classmethod
    def from_bytes(
        cls, data: bytes, *, cfg: SleepHybridConfig, fingerprint: str, device=None
    ) -> HybridState:
        """Inverse of :meth:`to_bytes`; raises if the bytes were made by another model."""
        meta = read_header(data)
        if meta.get("format") != "sleepagent.HybridState":
            raise SnapshotCorrupted(f"not a sleepagent state (format={meta.get('format')!r})")
        if meta.get("format_version") != STATE_FORMAT_VERSION:
            raise SnapshotCorrupted(
                f"state format version {meta.get('format_version')!r} is not supported "
                f"(this sleepagent reads version {STATE_FORMAT_VERSION})"
            )
        if meta.get("fingerprint") != fingerprint:
            raise FingerprintMismatch(expected=fingerprint, found=str(meta.get("fingerprint")))
        try:
            t = st_load(data)
            counters = json.loads(meta["counters"])
        except (SafetensorError, KeyError, ValueError) as e:
            raise SnapshotCorrupted(f"state payload is unreadable: {e}") from None
        if counters.get("stored_dtype"):  # stored at lower precision: back to the compute dtypes
            compute = getattr(torch, counters.get("compute_dtype") or "float32")
            t = {k: (v.to(torch.float32) if ".S." in k else v.to(compute)) if v.is_floating_point() else v
                 for k, v in t.items()}
        n_gdn, n_attn = len(cfg.gdn_layers), len(cfg.attn_layers)
        L, W = counters["window_len"], counters["window"]
        if W != cfg.window:
            raise StateMismatch(f"state has window {W}, model has window {cfg.window}")
        try:
            fast, working = (
                FastState(
                    S=tuple(t[f"{p}.S.{i}"].to(device) for i in range(n_gdn)),
                    conv=tuple(t[f"{p}.conv.{i}"].to(device) for i in range(n_gdn)),
                )
                for p in ("fast", "fast" if counters.get("working_is_fast") else "working")
            )
            B = t["window.ids"].shape[0]
            replay = bool(counters.get("replay", False))
            # the conv tails carry the hidden-state dtype when the window's h was not stored
            h_dtype = t["window.h"].dtype if "window.h" in t else fast.conv[0].dtype if fast.conv else torch.float32
            state = cls.empty(cfg, B, device=device, h_dtype=h_dtype, fast=fast)
            state.working = working
            state.window_ids[:, :L] = t["window.ids"]
            state.replay = replay
            if not replay:
                for i in range(n_attn):
                    state.k_cache[i][:, :, :L] = t[f"kv.k.{i}"]
                    state.v_cache[i][:, :, :L] = t[f"kv.v.{i}"]
                state.consolidate_mask[:, :L] = t["window.mask"]
                state.window_h[:, :L] = t["window.h"]
        except (KeyError, RuntimeError) as e:
            raise SnapshotCorrupted(f"state payload does not match the model's layout: {e}") from None
        state.window_len = L
        state.tokens_seen = counters["tokens_seen"]
        state.tokens_consolidated = counters["tokens_consolidated"]
        state.sleeps = counters["sleeps"]
        return state

    @classmethod
    def empty(
        cls,
        cfg: SleepHybridConfig,
        batch_size: int,
        *,
        device=None,
        h_dtype: torch.dtype = torch.float32,
        fast: FastState | None = None,
    ) -> HybridState:
        """A state with an empty window whose committed and working state are ``fast`` (zeros)."""
        fast = fast if fast is not None else FastState.zeros(cfg, batch_size, device=device, dtype=h_dtype)
        W, B = cfg.window, batch_size
        kv_shape = (B, cfg.attn_kv_heads, W, cfg.attn_head_dim)
        n_attn = len(cfg.attn_layers)
        return cls(
            fast=fast,
            working=fast,
            k_cache=[torch.zeros(kv_shape, device=device, dtype=h_dtype) for _ in range(n_attn)],
            v_cache=[torch.zeros(kv_shape, device=device, dtype=h_dtype) for _ in range(n_attn)],
            window_ids=torch.zeros(B, W, dtype=torch.long, device=device),
            consolidate_mask=torch.ones(B, W, dtype=torch.bool, device=device),
            window_h=torch.zeros(B, W, cfg.d_model, device=device, dtype=h_dtype),
        )


def canonical_bytes(data: bytes) -> bytes:
    """``data`` (safetensors bytes) with its header's keys in sorted order. safetensors writes
    metadata in hash-map order, which changes from one process to the next, so two identical
    states would be stored as different bytes; sorted, a state has exactly one form (what a
    test that compares stored bytes, and a content hash, rely on). The header keeps its length
    and the tensors their offsets."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # cannot happen for a header safetensors wrote (the same JSON, compact)
        return data
    return data[:8] + text + b" " * (n - len(text)) + data[8 + n :]


def read_header(data: bytes) -> dict[str, str]:
    """The safetensors ``__metadata__`` of a payload, without materialising its tensors."""
    try:
        n = int.from_bytes(data[:8], "little")
        if n <= 0 or n > len(data) - 8:
            raise ValueError("header length out of range")
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise SnapshotCorrupted(f"payload is not a safetensors blob: {e}") from None
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise SnapshotCorrupted("payload metadata is not a string map")
    return meta
