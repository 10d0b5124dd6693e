"""Sleep for pretrained transformers Gated-DeltaNet hybrids (qwen3_5, qwen3_next, olmo_hybrid).

``SleepModel.from_pretrained(local_dir)`` lands here when ``local_dir/config.json`` is a
transformers config. The adapter gives the engine the same wake/sleep interface as
:class:`~sleepagent.model.SleepHybridLM`:

- **wake** goes through the model's own ``forward`` and a transformers ``DynamicCache`` that
  holds the window: the attention KV of the tokens read since the last sleep, and the working
  linear-attention (GDN) states. Positions restart at 0 in every window (as in SleepHybridLM:
  RoPE positions within the window). Several sessions wake in one forward (``step_many``,
  ``prefill_many``): their caches stacked into one batch (attention KV left-padded under a padding
  mask, positions per row), the results written back into each session's cache.
- **the paper's pieces**: ``embed``, ``blocks(h, fast, start, stop)`` and ``head``, as on
  SleepHybridLM. ``blocks`` is one call of the model's own decoder forward on a fresh cache
  holding ``fast``, in which the layers outside ``[start, stop)`` pass their input through.
- **sleep** is the paper's Algorithm 1 over the window: ``h = embed(window)``; the layers before
  the looped span once, the span N times (each pass from the previous pass's hidden states and
  its end recurrent + conv states; attention causal within the window, its KV rebuilt from the
  pass's h), the layers after the span once over the final h. Pass 1 is wake's own (its end
  states from the cache, its h the span's output that wake keeps while nothing is excluded), so N
  passes cost N - 1. Then the attention KV is dropped: the next window starts a new cache seeded
  with the committed states.
- **training** goes through :func:`sleepagent.model.algorithm1.training_forward`, the same
  function SleepHybridLM trains through, over ``embed`` / ``blocks`` / ``head``.
- **CPU safety**: when flash-linear-attention is importable, transformers binds its Triton
  kernels at import time and they crash on a machine without a GPU ("0 active drivers"). On CPU
  the adapter rebinds only its own GDN modules' ``forward`` to the PyTorch reference kernels
  (a per-instance copy of the function with its own globals); nothing global is patched.

Snapshots hold the committed fast weights (+ conv tails) and the window's token ids; loading one
re-reads the window through the model's forward, which rebuilds its KV and working state.
"""

from __future__ import annotations

import inspect
import json
import types
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from ..errors import (
    CheckpointError,
    ConfigError,
    FingerprintMismatch,
    ShapeError,
    SnapshotCorrupted,
    StateMismatch,
    WindowFull,
)
from .algorithm1 import LMOutput, check_ids, check_loops, training_forward
from .config import LEGACY_LOOPS_KEY
from .hf_state import HF_STATE_FORMAT, HFState
from .hf_tokenizer import HFChatTokenizer
from .hybrid import weights_digest
from .state import FastState, read_header

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "HFChatTokenizer",
    "HFHybridLM",
    "HFSleepConfig",
    "HFState",
    "is_transformers_checkpoint",
    "load_hf_lm",
]

SUPPORTED_MODEL_TYPES = ("qwen3_5", "qwen3_5_text", "qwen3_next", "olmo_hybrid")
# module-level kernel names the GDN forwards call; transformers binds fla's versions when fla imports
_KERNEL_NAMES = (
    "torch_chunk_gated_delta_rule",
    "torch_recurrent_gated_delta_rule",
    "causal_conv1d_fn",
    "causal_conv1d_update",
)


def is_transformers_checkpoint(path: Path) -> bool:
    """A directory whose config.json names a transformers ``model_type`` (ours never does)."""
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "model_type" in data


@dataclass
class HFSleepConfig:
    """What the runtime needs to know about a wrapped transformers hybrid."""

    model_type: str
    n_layers: int
    linear_layers: tuple[int, ...]
    attn_layers: tuple[int, ...]
    vocab_size: int
    window: int = 1024
    loops: int = 4
    loop_layers: tuple[int, int] | None = None
    evict: str = "hard"
    keep: int = 0

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ConfigError(f"window must be >= 2, got {self.window}", field="window")
        check_loops(self.loops, 1)
        if self.loop_layers is not None:
            a, b = self.loop_layers
            if not 0 <= a < b <= self.n_layers:
                raise ConfigError(
                    f"loop_layers must be (start, stop) with 0 <= start < stop <= {self.n_layers}, "
                    f"got {self.loop_layers}",
                    field="loop_layers",
                )
        if not self.linear_layers:
            raise ConfigError(
                "the model has no linear-attention (GDN) layers: nothing to sleep into", field="layer_types"
            )

    @property
    def span(self) -> tuple[int, int]:
        return tuple(self.loop_layers) if self.loop_layers else (0, self.n_layers)  # type: ignore[return-value]

    def fingerprint_json(self) -> str:
        """The settings hashed into the fingerprint (N under its first key, ``"sleep_loops"``, so
        that renaming the field changed no fingerprint)."""
        return json.dumps(
            {"model_type": self.model_type, "window": self.window, LEGACY_LOOPS_KEY: self.loops,
             "loop_layers": list(self.span), "evict": self.evict}, sort_keys=True,
        )


class HFHybridLM(torch.nn.Module):
    """A transformers GDN hybrid behind SleepHybridLM's wake/sleep interface (see module doc)."""

    def __init__(self, hf_model: torch.nn.Module, config: HFSleepConfig) -> None:
        super().__init__()
        # The architectures differ in class but name their parts alike (model.layers, embed_tokens,
        # norm, lm_head, the GDN modules' sizes), and torch types a part read by name as Tensor |
        # Module: the wrapped model and its parts are Any here.
        model: Any = hf_model
        self.hf: Any = model.eval()
        self.config = config
        self.text_config = model.config.get_text_config()
        self.decoder: Any = model.model
        self.layers: Any = self.decoder.layers
        self.gdn: dict[int, Any] = {i: _gdn_module(self.layers[i]) for i in config.linear_layers}
        for i, layer in enumerate(self.layers):
            _skip_outside_span(layer, i)
        if self.device.type != "cuda":
            for module in self.gdn.values():
                pin_torch_kernels(module)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    # --- states -----------------------------------------------------------------------------

    def new_fast(self, batch_size: int = 1) -> FastState:
        """The zero FastState (S: [B, HV, K, V] float32; conv: [B, conv_dim, kernel])."""
        S, conv = [], []
        for i in self.config.linear_layers:
            m = self.gdn[i]
            S.append(torch.zeros(batch_size, m.num_v_heads, m.head_k_dim, m.head_v_dim, device=self.device))
            conv.append(torch.zeros(batch_size, m.conv_dim, m.conv_kernel_size, device=self.device, dtype=self.dtype))
        return FastState(S=tuple(S), conv=tuple(conv))

    def _cache(self, fast: FastState, functional: bool = False) -> Any:
        """A fresh cache (no attention KV) whose GDN layers start from ``fast``.

        ``functional``: the cache holds the given tensors and every update rebinds instead of
        writing in place (transformers' caches copy into fixed buffers, which autograd cannot
        differentiate through, and which would alias ``fast``): the cache of :meth:`blocks`.
        """
        from transformers import (
            DynamicCache,  # transformers loads only with a transformers model
        )

        cache = DynamicCache(config=self.text_config)
        for j, li in enumerate(self.config.linear_layers):
            # a linear-attention layer (transformers types cache.layers as every kind of layer, and
            # its state dicts as holding None until lazy_initialization fills them)
            layer: Any = cache.layers[li]
            conv, S = fast.conv[j], fast.S[j]
            layer.lazy_initialization(conv_states=conv, recurrent_states=S, conv_kernel_size=conv.shape[-1])
            if functional:
                layer.conv_states[0], layer.recurrent_states[0] = conv, S
                _rebinding_updates(layer)
            else:
                layer.conv_states[0].copy_(conv)
                layer.recurrent_states[0].copy_(S)
            layer.has_previous_state[0] = True
        return cache

    def new_state(self, batch_size: int = 1, device=None) -> HFState:
        if batch_size != 1:
            raise ShapeError(f"transformers hybrids serve one sequence per state, got batch_size={batch_size}")
        fast = self.new_fast()
        return HFState(fast=fast, cache=self._cache(fast), window=self.config.window,
                       linear_layers=self.config.linear_layers)

    def _check_state(self, state: Any) -> None:
        if not isinstance(state, HFState):
            raise StateMismatch(f"expected an HFState, got {type(state).__name__}")
        if state.window != self.config.window or len(state.fast.S) != len(self.config.linear_layers):
            raise StateMismatch("the state was made for a model with another window or layer layout")

    # --- the paper's pieces -----------------------------------------------------------------

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> hidden states [B, T, d]: what decoder layer 0 reads."""
        check_ids(ids, self.config.vocab_size)
        return self.decoder.embed_tokens(ids.to(self.device))

    def blocks(
        self, h: torch.Tensor, fast: FastState, start: int = 0, stop: int | None = None
    ) -> tuple[torch.Tensor, FastState]:
        """Decoder layers ``[start, stop)`` once over ``h`` [B, T, d] from ``fast``, positions
        0..T-1 (attention causal within ``h``, no KV kept); differentiable.

        One call of the model's own decoder forward on a fresh cache holding ``fast``: layers
        outside the span pass their input through untouched (:func:`_skip_outside_span`), so
        layer ``start`` reads ``h``, and layer ``stop - 1``'s output (before the final norm) is
        the returned h. Pure: ``fast`` is not modified; the returned FastState carries the
        span's GDN layers advanced and ``fast``'s entries for the others.
        """
        stop = self.config.n_layers if stop is None else stop
        if start >= stop:
            return h, fast
        if len(fast.S) != len(self.config.linear_layers) or fast.batch_size != h.shape[0]:
            raise StateMismatch(f"FastState of {len(fast.S)} layers and batch size {fast.batch_size} does not fit "
                                f"{len(self.config.linear_layers)} GDN layers and hidden states {tuple(h.shape)}")
        cache = self._cache(fast, functional=True)
        B, T = h.shape[:2]
        pos = torch.arange(T, device=h.device)[None].expand(B, -1)  # positions within the window
        span = _Span(start, stop)
        token = _SPAN.set(span)
        try:
            self.decoder(inputs_embeds=h, position_ids=pos, cache=cache, use_cache=True)
        finally:
            _SPAN.reset(token)
        assert span.out is not None
        layers = [cache.layers[i] for i in self.config.linear_layers]
        end = FastState(S=tuple(layer.recurrent_states[0] for layer in layers),
                        conv=tuple(layer.conv_states[0] for layer in layers))
        return span.out, end

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The last layer's output [B, T, d] -> logits [B, T, vocab] (final norm, then lm_head)."""
        return self.hf.lm_head(self.decoder.norm(h))

    # --- wake -------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, state: HFState, consolidate: bool | torch.Tensor = True) -> torch.Tensor:
        """Wake: read ``ids`` [1, T] through the model's own forward; returns logits [1, T, vocab]."""
        self._check_state(state)
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ShapeError(f"prefill expects ids of shape [1, T], got {tuple(ids.shape)}")
        T = ids.shape[1]
        if T == 0:
            raise ShapeError("prefill needs at least one token")
        if state.window_len + T > state.window:
            raise WindowFull(window=state.window, used=state.window_len, requested=T)
        check_ids(ids, self.config.vocab_size)
        mask = consolidate.flatten().tolist() if isinstance(consolidate, torch.Tensor) else [bool(consolidate)] * T
        return self._wake(ids.to(self.device), [state], [[bool(m) for m in mask]])

    def step(self, ids: torch.Tensor, state: HFState, consolidate: bool | torch.Tensor = True) -> torch.Tensor:
        """Wake: one token; returns logits [1, vocab]."""
        return self.prefill(ids.reshape(1, 1), state, consolidate)[:, -1]

    @torch.no_grad()
    def step_many(
        self, ids: torch.Tensor, states: list[HFState], consolidate: list[bool] | None = None
    ) -> torch.Tensor:
        """One token for each of several single-sequence states, in one batched forward; returns
        logits [n, vocab]. Equals :meth:`step` on each state alone, up to float rounding (see
        :meth:`_wake` for how the states share a cache)."""
        n = len(states)
        flags = list(consolidate) if consolidate is not None else [True] * n
        ids = ids.reshape(-1)
        if ids.numel() != n or len(flags) != n or n == 0:
            raise ShapeError(f"step_many: {ids.numel()} tokens and {len(flags)} flags for {n} states")
        self._check_batch(states, [1] * n)
        check_ids(ids, self.config.vocab_size)
        return self._wake(ids.to(self.device)[:, None], states, [[bool(f)] for f in flags], keep=1)[:, -1]

    @torch.no_grad()
    def prefill_many(self, pieces: list[tuple[list[int], list[bool]]], states: list[HFState]) -> torch.Tensor:
        """Wake: read one piece of tokens into each of several single-sequence states; returns the
        logits after each piece's last token, [n, vocab] (as :meth:`SleepHybridLM.prefill_many`).

        Batched in rounds: each round reads, in one forward over every row still reading, as many
        tokens as the shortest remaining piece has left (a GDN layer has no exact padding: a
        padded token would still decay its state), so n pieces of k distinct lengths take k
        forwards. Equals :meth:`prefill` on each state alone, up to float rounding."""
        n = len(states)
        if len(pieces) != n or n == 0:
            raise ShapeError(f"prefill_many: {len(pieces)} pieces for {n} states")
        lengths = [len(ids) for ids, _ in pieces]
        for (_ids, flags), T in zip(pieces, lengths, strict=True):
            if T == 0 or len(flags) != T:
                raise ShapeError(f"prefill_many: a piece needs at least one token and one flag per token, got "
                                 f"{T} tokens and {len(flags)} flags")
        self._check_batch(states, lengths)
        check_ids(torch.tensor([t for ids, _ in pieces for t in ids]), self.config.vocab_size)
        out: list[torch.Tensor | None] = [None] * n
        done = [0] * n
        active = list(range(n))
        while active:
            c = min(lengths[r] - done[r] for r in active)
            ids = torch.tensor([pieces[r][0][done[r] : done[r] + c] for r in active], device=self.device)
            masks = [[bool(f) for f in pieces[r][1][done[r] : done[r] + c]] for r in active]
            logits = self._wake(ids, [states[r] for r in active], masks, keep=1)
            for i, r in enumerate(active):
                done[r] += c
                if done[r] == lengths[r]:
                    out[r] = logits[i, -1]
            active = [r for r in active if done[r] < lengths[r]]
        return torch.stack([o for o in out if o is not None])

    def _check_batch(self, states: list[HFState], lengths: list[int]) -> None:
        if len({id(s) for s in states}) != len(states):
            raise StateMismatch("a batched wake takes each state once")
        for st, T in zip(states, lengths, strict=True):
            self._check_state(st)
            if st.window_len + T > st.window:
                raise WindowFull(window=st.window, used=st.window_len, requested=T)

    def _wake(self, ids: torch.Tensor, states: list[HFState], masks: list[list[bool]], keep: int = 0) -> torch.Tensor:
        """Read ``ids`` [B, T] (checked) into ``states`` (one row each) in one forward; logits
        [B, T or keep, vocab].

        One state reads through its own cache. Several share a batch cache for the forward: the
        GDN layers' recurrent and conv states stacked, the attention KV left-padded to the longest
        window with a padding mask (each row's positions its own window's), then each row's new
        states and KV (without the padding) are written back into its cache. While a state may
        still reuse wake for sleep (nothing excluded, nothing shed) the looped span's output over
        its window is kept (:attr:`HFState.window_h`)."""
        B, T = ids.shape
        capture = [self._keeps_h(st, m) for st, m in zip(states, masks, strict=True)]
        rec = _Span(0, self.config.span[1]) if any(capture) else None
        token = _WAKE.set(rec)
        try:
            if B == 1:
                st = states[0]
                if st.cache is None:
                    st.cache = self._cache(st.fast)
                pos = torch.arange(st.window_len, st.window_len + T, device=self.device)[None]
                out = self.hf(input_ids=ids, position_ids=pos, cache=st.cache, use_cache=True, logits_to_keep=keep)
            else:
                cache, attn_mask, pos = self._batch_cache(states, T)
                out = self.hf(input_ids=ids, attention_mask=attn_mask, position_ids=pos, cache=cache,
                              use_cache=True, logits_to_keep=keep)
                self._scatter(cache, states, T)
        finally:
            _WAKE.reset(token)
        for r, st in enumerate(states):
            if capture[r] and rec is not None and rec.out is not None:
                h, end = rec.out[r : r + 1], st.window_len + T
                if st.window_h is None or st.window_h.shape[1] < end:  # grown by doubling, up to the window
                    grown = h.new_zeros(1, min(st.window, max(end, 64, 2 * st.window_len)), h.shape[-1])
                    if st.window_h is not None:
                        grown[:, : st.window_len] = st.window_h[:, : st.window_len]
                    st.window_h = grown
                st.window_h[:, st.window_len : end] = h
            else:
                st.window_h = None  # this window's sleep cannot reuse wake: nothing to keep
            st.window_ids.extend(int(t) for t in ids[r].tolist())
            st.consolidate_mask.extend(masks[r])
            st.tokens_seen += T
        return out.logits.float()

    @staticmethod
    def _keeps_h(state: HFState, mask: list[bool]) -> bool:
        """Whether ``state``'s sleep may still reuse wake after reading tokens flagged ``mask``."""
        return not state.shed and all(mask) and (state.window_len == 0 or state.window_h is not None)

    def _batch_cache(self, states: list[HFState], T: int) -> tuple[Any, torch.Tensor | None, torch.Tensor]:
        """A cache holding ``states``' working states as one batch, the 2D padding mask over
        [past, new] (None when no row is padded) and each row's positions [B, T]."""
        from transformers import DynamicCache

        for st in states:
            if st.cache is None:
                st.cache = self._cache(st.fast)
        lens = [st.window_len for st in states]
        B, Lmax = len(states), max(lens)
        cache = DynamicCache(config=self.text_config)
        for li in self.config.linear_layers:
            layer: Any = cache.layers[li]
            conv = torch.cat([st.cache.layers[li].conv_states[0] for st in states])
            S = torch.cat([st.cache.layers[li].recurrent_states[0] for st in states])
            layer.lazy_initialization(conv_states=conv, recurrent_states=S, conv_kernel_size=conv.shape[-1])
            layer.conv_states[0], layer.recurrent_states[0] = conv, S
            layer.has_previous_state[0] = True
            layer.cumulative_length_linear.fill_(Lmax)
        if Lmax:
            for li in self.config.attn_layers:
                src = [st.cache.layers[li] for st in states]
                ref = next(lay for lay, n in zip(src, lens, strict=True) if n)
                k = ref.keys.new_zeros(B, ref.keys.shape[1], Lmax, ref.keys.shape[3])
                v = ref.values.new_zeros(B, ref.values.shape[1], Lmax, ref.values.shape[3])
                for r, (lay, n) in enumerate(zip(src, lens, strict=True)):
                    if n:
                        k[r, :, Lmax - n :] = lay.keys[0]
                        v[r, :, Lmax - n :] = lay.values[0]
                dst: Any = cache.layers[li]
                dst.lazy_initialization(k, v)
                dst.keys, dst.values = k, v
        attn_mask = None
        if min(lens) != Lmax:
            attn_mask = torch.ones(B, Lmax + T, dtype=torch.long, device=self.device)
            for r, n in enumerate(lens):
                attn_mask[r, : Lmax - n] = 0
        pos = torch.tensor(lens, device=self.device)[:, None] + torch.arange(T, device=self.device)[None]
        return cache, attn_mask, pos

    def _scatter(self, cache: Any, states: list[HFState], T: int) -> None:
        """Write each row of a batch cache after a forward of T tokens back into its state's cache."""
        lens = [st.window_len for st in states]
        Lmax = max(lens)
        for r, st in enumerate(states):
            for li in self.config.linear_layers:
                src, dst = cache.layers[li], st.cache.layers[li]
                dst.conv_states[0].copy_(src.conv_states[0][r : r + 1])
                dst.recurrent_states[0].copy_(src.recurrent_states[0][r : r + 1])
                dst.cumulative_length_linear.fill_(lens[r] + T)
            for li in self.config.attn_layers:
                src, dst = cache.layers[li], st.cache.layers[li]
                k = src.keys[r : r + 1, :, Lmax - lens[r] :].contiguous()
                v = src.values[r : r + 1, :, Lmax - lens[r] :].contiguous()
                if not dst.is_initialized:
                    dst.lazy_initialization(k, v)
                dst.keys, dst.values = k, v

    # --- sleep ------------------------------------------------------------------------------

    @torch.no_grad()
    def drop_excluded(self, state: HFState) -> HFState:
        """The window without its never-consolidate tokens, the others read again from the
        committed state (see :meth:`SleepHybridLM.drop_excluded`)."""
        self._check_state(state)
        kept = [t for t, m in zip(state.window_ids, state.consolidate_mask, strict=True) if m]
        new = HFState(fast=state.fast, cache=self._cache(state.fast), window=state.window,
                      linear_layers=state.linear_layers)
        if kept:
            self.prefill(torch.tensor([kept], device=self.device), new, True)
        new.tokens_seen, new.tokens_consolidated, new.sleeps = (
            state.tokens_seen,
            state.tokens_consolidated,
            state.sleeps,
        )
        new.shed = True
        new.window_h = None  # a shed window's sleep recomputes pass 1 (see HybridState.shed)
        return new

    def begin_sleep(self, state: HFState, loops: int | None = None) -> HFSleepJob:
        return HFSleepJob(self, state, check_loops(loops, self.config.loops))

    def consolidate(self, state: HFState, loops: int | None = None) -> HFState:
        """Sleep: all N passes of Algorithm 1, then a fresh window (``state`` is untouched)."""
        job = self.begin_sleep(state, loops)
        while not job.done:
            job.run_pass()
        return job.commit()

    # --- training forward -------------------------------------------------------------------

    def forward(
        self,
        ids: torch.Tensor,
        loss_mask: torch.Tensor | None = None,
        loops: int | None = None,
        *,
        checkpoint: bool = False,
        detach_every: int | None = None,
        return_logits: bool = False,
        fast: FastState | None = None,
        window_lengths: list[int] | None = None,
    ) -> LMOutput:
        """The training forward of Algorithm 1 through the transformers model:
        :func:`sleepagent.model.algorithm1.training_forward`, the function SleepHybridLM trains
        through, over this adapter's :meth:`embed`, :meth:`blocks` and :meth:`head`."""
        return training_forward(
            self, ids, loss_mask, loops, checkpoint=checkpoint, detach_every=detach_every,
            return_logits=return_logits, fast=fast, window_lengths=window_lengths,
        )

    # --- snapshots --------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """sha256 of the adapter config, the transformers config and every weight (recomputed on
        each call, like SleepHybridLM's: ``SleepModel`` keeps the value and refreshes it)."""
        return weights_digest(self.hf, self.config.fingerprint_json(), self.text_config.to_json_string(use_diff=False))

    def save_state(self, state: HFState) -> bytes:
        return state.to_bytes(self.fingerprint())

    @torch.no_grad()
    def load_state(self, data: bytes, fingerprint: str | None = None) -> HFState:
        """Inverse of :meth:`save_state`: restores the committed state, then re-reads the window."""
        meta = read_header(data)
        if meta.get("format") != HF_STATE_FORMAT:
            raise SnapshotCorrupted(f"not a transformers-hybrid state (format={meta.get('format')!r})")
        expected = fingerprint or self.fingerprint()
        if meta.get("fingerprint") != expected:
            raise FingerprintMismatch(expected=expected, found=str(meta.get("fingerprint")))
        try:
            t = st_load(data)
            counters = json.loads(meta["counters"])
            n = len(self.config.linear_layers)
            fast = FastState(S=tuple(t[f"fast.S.{i}"].to(self.device) for i in range(n)),
                             conv=tuple(t[f"fast.conv.{i}"].to(self.device) for i in range(n)))
            ids, mask = t["window.ids"], t["window.mask"]
        except (SafetensorError, KeyError, ValueError) as e:
            raise SnapshotCorrupted(f"state payload is unreadable: {e}") from None
        if counters["window"] != self.config.window:
            raise StateMismatch(f"state has window {counters['window']}, model has window {self.config.window}")
        state = HFState(fast=fast, cache=self._cache(fast), window=self.config.window,
                        linear_layers=self.config.linear_layers)
        if ids.numel():
            self.prefill(ids, state, mask)
        state.tokens_seen = counters["tokens_seen"]
        state.tokens_consolidated = counters["tokens_consolidated"]
        state.sleeps = counters["sleeps"]
        return state


class HFSleepJob:
    """One consolidation of an HFState's window, a pass at a time (same contract as SleepJob).

    Pass 1 runs the decoder layers up to the looped span's end over the embeddings, each later
    pass the span over the previous pass's h, and the commit runs the layers after the span once
    over the final h. With nothing masked, pass 1 plus the suffix is the wake pass: pass 1 is
    wake's (its end states from the cache, its h the span's output wake kept in
    :attr:`HFState.window_h`), so N passes cost N - 1 and N = 1 commits exactly what the plain
    model's cache holds. A window whose wake h was not kept (tokens excluded, shed, or a state
    from before it was kept) recomputes pass 1 before pass 2.
    """

    def __init__(self, model: HFHybridLM, state: HFState, loops: int) -> None:
        model._check_state(state)
        self.model, self.state, self.loops = model, state, loops
        keep = [t for t, m in zip(state.window_ids, state.consolidate_mask, strict=True) if m]
        self.ids = torch.tensor([keep], dtype=torch.long, device=model.device)
        self.n_consolidated = len(keep)
        self.reuse_wake = self.n_consolidated == state.window_len and not state.shed
        self.passes_done = 0
        self._h: torch.Tensor | None = None
        self._wake_h: torch.Tensor | None = None
        self._fast: FastState = state.fast

    @property
    def done(self) -> bool:
        return self.passes_done >= self.loops or self.n_consolidated == 0

    def run_step(self) -> bool:
        """One pass (the transformers modules run a pass as one call): True, a pass completed."""
        self.run_pass()
        return True

    @torch.no_grad()
    def run_pass(self) -> None:
        if self.done:
            return
        m, st = self.model, self.state
        a, b = m.config.span
        if self.passes_done == 0 and self.reuse_wake:
            self._fast = st.working
            if st.window_h is not None:
                self._wake_h = st.window_h[:, : st.window_len]
        elif self._h is None and self._wake_h is not None:  # pass 2 from wake's pass 1
            # pass 1's end states: wake's for the layers it ran (those before the span's end);
            # the layers after the span have not run yet (the commit runs them over the final h)
            own = [li < b for li in m.config.linear_layers]
            fast = FastState(
                S=tuple(w if o else f for w, f, o in zip(self._fast.S, st.fast.S, own, strict=True)),
                conv=tuple(w if o else f for w, f, o in zip(self._fast.conv, st.fast.conv, own, strict=True)),
            )
            self._h, self._fast = m.blocks(self._wake_h, fast, a, b)
            self._wake_h = None
        elif self._h is None:  # pass 1 (again, when wake's end state stood for it so far)
            self._h, self._fast = m.blocks(m.embed(self.ids), st.fast, 0, b)
            if self.passes_done:
                self._h, self._fast = m.blocks(self._h, self._fast, a, b)
        else:
            self._h, self._fast = m.blocks(self._h, self._fast, a, b)
        self.passes_done += 1

    @torch.no_grad()
    def commit(self) -> HFState:
        m, st = self.model, self.state
        if self.n_consolidated and self.passes_done == 0:
            raise StateMismatch("commit() needs at least one pass: call run_pass() first")
        fast = self._fast if self.n_consolidated else st.fast
        if self._h is not None and m.config.span[1] < m.config.n_layers:
            # the layers after the looped span run once, over the loop's final hidden states
            fast = m.blocks(self._h, fast, m.config.span[1], m.config.n_layers)[1]
        return HFState(
            fast=fast, cache=m._cache(fast), window=st.window, linear_layers=st.linear_layers,
            tokens_seen=st.tokens_seen, tokens_consolidated=st.tokens_consolidated + self.n_consolidated,
            sleeps=st.sleeps + bool(self.n_consolidated),  # a sleep over excluded tokens only is not counted
        )


@dataclass
class _Span:
    """The decoder layers a :meth:`HFHybridLM.blocks` call runs, and the output of the last."""

    start: int
    stop: int
    out: torch.Tensor | None = None


# Set only while a `blocks` call runs the decoder (per thread and task: an engine thread waking
# another session meanwhile sees None and runs every layer).
_SPAN: ContextVar[_Span | None] = ContextVar("sleepagent_hf_span", default=None)
# Set while a wake forward runs whose states keep the looped span's output (HFState.window_h).
_WAKE: ContextVar[_Span | None] = ContextVar("sleepagent_hf_wake", default=None)


def _skip_outside_span(layer: torch.nn.Module, index: int) -> None:
    """Let decoder layer ``index`` sit out a :meth:`HFHybridLM.blocks` call that does not include
    it (this instance only; outside such a call it runs as always).

    The decoder's own forward computes what its layers need (rotary tables, masks per layer type,
    positions), so running a span of layers through it keeps the model's code in charge; a layer
    outside the span returns its input, which costs nothing and feeds layer ``start`` the span's
    h. A layer's forward cannot be skipped from a hook, hence the per-instance method (bound with
    ``MethodType``, so a deep copy of the model binds it to the copy).
    """
    own = layer.__dict__.get("forward")  # a wrapper installed before (accelerate's device hooks)

    def forward(self, hidden_states, *args, **kwargs):
        span = _SPAN.get()
        if span is not None and not span.start <= index < span.stop:
            return hidden_states
        out = (own or types.MethodType(type(self).forward, self))(hidden_states, *args, **kwargs)
        if span is None:
            span = _WAKE.get()  # a wake forward keeping the looped span's output
        if span is not None and index == span.stop - 1:
            span.out = out[0] if isinstance(out, tuple) else out
        return out

    layer.forward = types.MethodType(forward, layer)


def _rebinding_updates(layer: Any) -> None:
    """Replace a linear-attention cache layer's state updates (in place, into fixed buffers) by
    ones that rebind the new tensors: the same values, and autograd can follow them."""

    def update_conv_state(conv_states, state_idx=0, conv_kernel_size=None, **kwargs):
        k = layer.conv_kernel_size[state_idx] or conv_kernel_size
        if layer.has_previous_state[state_idx]:
            full = torch.cat([layer.conv_states[state_idx], conv_states], dim=-1)
        else:
            full = F.pad(conv_states, (max(k - conv_states.shape[-1], 0), 0))
        # contiguous: a committed state must not keep the whole window's conv input alive
        layer.conv_states[state_idx] = full[..., -k:].contiguous()
        layer.has_previous_state[state_idx] = True
        return full

    def update_recurrent_state(recurrent_states, state_idx=0, **kwargs):
        layer.recurrent_states[state_idx] = recurrent_states
        return recurrent_states

    layer.update_conv_state = update_conv_state
    layer.update_recurrent_state = update_recurrent_state


def _gdn_module(layer: torch.nn.Module) -> torch.nn.Module:
    for name in ("linear_attn", "linear_attention", "mixer"):
        m = getattr(layer, name, None)
        if m is not None and hasattr(m, "conv1d"):
            return m
    for m in layer.modules():
        if type(m).__name__.endswith("GatedDeltaNet"):
            return m
    raise CheckpointError(f"cannot find the Gated DeltaNet module in {type(layer).__name__}")


def pin_torch_kernels(module: torch.nn.Module) -> None:
    """Make this one GDN module use transformers' PyTorch reference kernels.

    transformers resolves ``torch_chunk_gated_delta_rule`` & co. to fla's Triton kernels at import
    time whenever fla imports, and those crash without a GPU. The module's ``forward`` is replaced
    (on this instance only) by a copy of the undecorated function whose globals map those names to
    the PyTorch fallbacks; other models in the process are untouched.
    """
    raw = inspect.unwrap(type(module).forward)
    env = dict(raw.__globals__)
    for name in _KERNEL_NAMES:
        if name in env:
            env[name] = _torch_fallback(env[name])
    fn = types.FunctionType(raw.__code__, env, raw.__name__, raw.__defaults__, raw.__closure__)
    fn.__kwdefaults__ = raw.__kwdefaults__
    module.forward = types.MethodType(fn, module)


def _torch_fallback(fn: Any) -> Any:
    """The PyTorch function under transformers' kernel-selection wrappers."""
    inner = inspect.unwrap(fn)
    return inner if getattr(inner, "__module__", "").startswith("transformers.") else fn


def load_hf_lm(
    path: Path,
    *,
    device=None,
    window: int | None = None,
    loops: int | None = None,
    loop_layers: tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[HFHybridLM, HFChatTokenizer]:
    """A local transformers GDN hybrid as an :class:`HFHybridLM` and its tokenizer
    (``SleepModel.from_pretrained`` wraps them).

    Sleep settings come from the arguments, else from ``sleepagent.json`` in the directory
    (``{"window": ..., "loops": ..., "loop_layers": [a, b], "evict": ..., "keep": ...}``, as
    ``sleepagent train --base`` writes it; older runs wrote N as ``"sleep_loops"``), else defaults.
    """
    try:
        import transformers  # only a transformers checkpoint needs it loaded
    except ImportError as e:  # pragma: no cover - transformers is a dependency
        raise CheckpointError(f"loading a transformers checkpoint needs transformers: {e}") from None

    data = json.loads((path / "config.json").read_text())
    model_type = data.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not a supported Gated-DeltaNet hybrid "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    extra = json.loads((path / "sleepagent.json").read_text()) if (path / "sleepagent.json").exists() else {}
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or "auto")
        tok = transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the transformers checkpoint in {path}: {e}") from None
    text = hf.config.get_text_config()
    types_ = list(text.layer_types)
    cfg = HFSleepConfig(
        model_type=model_type,
        n_layers=len(types_),
        linear_layers=tuple(i for i, t in enumerate(types_) if t == "linear_attention"),
        attn_layers=tuple(i for i, t in enumerate(types_) if t != "linear_attention"),
        vocab_size=text.vocab_size,
        window=window or extra.get("window", 1024),
        loops=loops or extra.get("loops", extra.get(LEGACY_LOOPS_KEY, 4)),
        loop_layers=tuple(loop_layers or extra.get("loop_layers") or ()) or None,
        evict=extra.get("evict", "hard"),
        keep=int(extra.get("keep", 0)),
    )
    return HFHybridLM(hf.to(device) if device else hf, cfg), HFChatTokenizer(tok)
