"""Sleep for pretrained transformers Gated-DeltaNet hybrids (qwen3_5, qwen3_next, olmo_hybrid).

``SleepModel.from_pretrained(local_dir)`` lands here when ``local_dir/config.json`` is a
transformers config. The adapter gives the engine the same wake/sleep interface as
:class:`~sleepagent.model.SleepHybridLM`:

- **wake** goes through the model's own ``forward`` and a transformers ``DynamicCache`` that
  holds the window: the attention KV of the tokens read since the last sleep, and the working
  linear-attention (GDN) states. Positions restart at 0 in every window (as in SleepHybridLM:
  RoPE positions within the window).
- **sleep** is the paper's Algorithm 1 over the window: ``h = embed(window)``; then N times the
  looped span of decoder layers, each pass starting from the previous pass's hidden states and
  its end recurrent + conv states (attention causal within the window, its KV rebuilt from the
  pass's h). Each pass is one call of the model's own forward on a fresh cache seeded with the
  committed states, with hooks that feed layer ``start`` the previous pass's h and read layer
  ``stop - 1``'s output. Layers outside the span restart from the committed state every pass, so
  in effect they run once (before the span on the embeddings, after it on the final h). Then the
  attention KV is dropped: the next window starts a new cache seeded with the committed states.
- **CPU safety**: when flash-linear-attention is importable, transformers binds its Triton
  kernels at import time and they crash on a machine without a GPU ("0 active drivers"). On CPU
  the adapter rebinds only its own GDN modules' ``forward`` to the PyTorch reference kernels
  (a per-instance copy of the function with its own globals); nothing global is patched.

Snapshots hold the committed fast weights (+ conv tails) and the window's token ids; loading one
re-reads the window through the model's forward, which rebuilds its KV and working state.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import CheckpointError, ConfigError, FingerprintMismatch, ShapeError, SnapshotCorrupted, StateMismatch, WindowFull
from .hybrid import weights_digest
from .state import FastState, read_header

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "HFSleepConfig",
    "HFState",
    "HFHybridLM",
    "HFChatTokenizer",
    "is_transformers_checkpoint",
    "load_transformers_hybrid",
]

SUPPORTED_MODEL_TYPES = ("qwen3_5", "qwen3_5_text", "qwen3_next", "olmo_hybrid")
HF_STATE_FORMAT = "sleepagent.HFState"
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
    sleep_loops: int = 4
    loop_layers: tuple[int, int] | None = None
    evict: str = "hard"
    keep: int = 0

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ConfigError(f"window must be >= 2, got {self.window}", field="window")
        if self.sleep_loops < 1:
            raise ConfigError(f"sleep_loops must be >= 1, got {self.sleep_loops}", field="sleep_loops")
        if self.loop_layers is not None:
            a, b = self.loop_layers
            if not 0 <= a < b <= self.n_layers:
                raise ConfigError(
                    f"loop_layers must be (start, stop) with 0 <= start < stop <= {self.n_layers}, got {self.loop_layers}",
                    field="loop_layers",
                )
        if not self.linear_layers:
            raise ConfigError("the model has no linear-attention (GDN) layers: nothing to sleep into", field="layer_types")

    @property
    def span(self) -> tuple[int, int]:
        return tuple(self.loop_layers) if self.loop_layers else (0, self.n_layers)  # type: ignore[return-value]

    def to_json(self) -> str:
        return json.dumps(
            {"model_type": self.model_type, "window": self.window, "sleep_loops": self.sleep_loops,
             "loop_layers": list(self.span), "evict": self.evict}, sort_keys=True,
        )


@dataclass(kw_only=True, eq=False)
class HFState:
    """One sequence's state for :class:`HFHybridLM` (batch size 1).

    fast:   committed FastState at the window's start (S: GDN recurrent states [1, HV, K, V];
            conv: the conv tails [1, conv_dim, kernel]), one per linear-attention layer.
    cache:  the transformers cache over the window (attention KV + working GDN states).
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
        return _read_fast(self.cache, self.linear_layers)

    @property
    def nbytes(self) -> int:
        kv = 0
        for layer in self.cache.layers if self.cache is not None else ():
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    kv += t.numel() * t.element_size()
        return 2 * self.fast.nbytes + kv

    def without_window(self) -> HFState:
        """The committed state alone (what a snapshot holds when the raw window must not persist)."""
        return HFState(
            fast=self.fast, cache=None, window=self.window, linear_layers=self.linear_layers,
            tokens_seen=self.tokens_seen - self.window_len, tokens_consolidated=self.tokens_consolidated,
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
            tokens_seen=self.tokens_seen - self.window_len + len(kept),
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
        return st_save(tensors, metadata=meta)


def _read_fast(cache: Any, linear_layers: tuple[int, ...]) -> FastState:
    layers = [cache.layers[i] for i in linear_layers]
    return FastState(
        S=tuple(layer.recurrent_states[0].clone() for layer in layers),
        conv=tuple(layer.conv_states[0].clone() for layer in layers),
    )


class HFHybridLM(torch.nn.Module):
    """A transformers GDN hybrid behind SleepHybridLM's wake/sleep interface (see module doc)."""

    def __init__(self, hf_model: torch.nn.Module, config: HFSleepConfig) -> None:
        super().__init__()
        self.hf = hf_model.eval()
        self.config = config
        self.text_config = hf_model.config.get_text_config()
        self.decoder = hf_model.model
        self.layers = self.decoder.layers
        self.gdn = {i: _gdn_module(self.layers[i]) for i in config.linear_layers}
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

    def _zero_fast(self, batch_size: int = 1) -> FastState:
        S, conv = [], []
        for i in self.config.linear_layers:
            m = self.gdn[i]
            S.append(torch.zeros(batch_size, m.num_v_heads, m.head_k_dim, m.head_v_dim, device=self.device))
            conv.append(torch.zeros(batch_size, m.conv_dim, m.conv_kernel_size, device=self.device, dtype=self.dtype))
        return FastState(S=tuple(S), conv=tuple(conv))

    def _cache(self, fast: FastState, seed_from: FastState | None = None, functional: bool = False) -> Any:
        """A fresh cache (no attention KV) whose GDN layers start from ``fast``.

        With ``seed_from``, layers inside the looped span start from ``seed_from`` instead.
        ``functional``: the cache holds the given tensors and every update rebinds instead of
        writing in place (transformers' caches copy into fixed buffers, which autograd cannot
        differentiate through): the training forward's cache.
        """
        from transformers import DynamicCache

        cache = DynamicCache(config=self.text_config)
        a, b = self.config.span
        for j, li in enumerate(self.config.linear_layers):
            src = seed_from if (seed_from is not None and a <= li < b) else fast
            layer = cache.layers[li]
            conv, S = src.conv[j], src.S[j]
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
        fast = self._zero_fast()
        return HFState(fast=fast, cache=self._cache(fast), window=self.config.window,
                       linear_layers=self.config.linear_layers)

    def _check_state(self, state: Any) -> None:
        if not isinstance(state, HFState):
            raise StateMismatch(f"expected an HFState, got {type(state).__name__}")
        if state.window != self.config.window or len(state.fast.S) != len(self.config.linear_layers):
            raise StateMismatch("the state was made for a model with another window or layer layout")

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
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ShapeError(f"token ids must lie in [0, {self.config.vocab_size})")
        if state.cache is None:
            state.cache = self._cache(state.fast)
        pos = torch.arange(state.window_len, state.window_len + T, device=self.device)[None]
        out = self.hf(input_ids=ids.to(self.device), position_ids=pos, cache=state.cache, use_cache=True)
        mask = consolidate.flatten().tolist() if isinstance(consolidate, torch.Tensor) else [bool(consolidate)] * T
        state.window_ids.extend(int(t) for t in ids[0])
        state.consolidate_mask.extend(bool(m) for m in mask)
        state.tokens_seen += T
        return out.logits.float()

    def step(self, ids: torch.Tensor, state: HFState, consolidate: bool | torch.Tensor = True) -> torch.Tensor:
        """Wake: one token; returns logits [1, vocab]."""
        return self.prefill(ids.reshape(1, 1), state, consolidate)[:, -1]

    def step_many(self, ids: torch.Tensor, states: list[HFState], consolidate: list[bool] | None = None) -> torch.Tensor:
        """One token for each of several states (one after another: no batching for HF caches)."""
        flags = consolidate or [True] * len(states)
        return torch.cat([self.step(ids[i : i + 1], s, flags[i]) for i, s in enumerate(states)])

    # --- sleep ------------------------------------------------------------------------------

    def begin_sleep(self, state: HFState, loops: int | None = None) -> HFSleepJob:
        return HFSleepJob(self, state, loops or self.config.sleep_loops)

    def consolidate(self, state: HFState, loops: int | None = None) -> HFState:
        """Sleep: all N passes of Algorithm 1, then a fresh window (``state`` is untouched)."""
        job = self.begin_sleep(state, loops)
        while not job.done:
            job.run_pass()
        return job.commit()

    @torch.no_grad()
    def _pass(self, ids: torch.Tensor, fast: FastState, h: torch.Tensor | None, span_fast: FastState | None):
        """One pass of the stack over ``ids``: returns (h at the span's end, end FastState).

        ``h``: the previous pass's span output, fed to layer ``start`` (None on pass 1).
        """
        cache = self._cache(fast, seed_from=span_fast)
        with self._span_hooks(h) as captured:
            pos = torch.arange(ids.shape[1], device=self.device)[None]  # positions within the window
            self.decoder(input_ids=ids.to(self.device), position_ids=pos, cache=cache, use_cache=True)
        return captured["h"], _read_fast(cache, self.config.linear_layers)

    @contextlib.contextmanager
    def _span_hooks(self, h: torch.Tensor | None) -> Iterator[dict[str, torch.Tensor]]:
        """While open, the looped span's first layer takes ``h`` as its input (unless None: pass
        1 reads the embeddings) and its last layer's output is captured as ``captured["h"]``."""
        a, b = self.config.span
        captured: dict[str, torch.Tensor] = {}

        def feed(module, args, kwargs):
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}

        def read(module, args, output):
            captured["h"] = output[0] if isinstance(output, tuple) else output

        hooks = [self.layers[b - 1].register_forward_hook(read)]
        if h is not None:
            hooks.append(self.layers[a].register_forward_pre_hook(feed, with_kwargs=True))
        try:
            yield captured
        finally:
            for hook in hooks:
                hook.remove()

    # --- training forward -------------------------------------------------------------------

    def _train_pass(self, ids: torch.Tensor, fast: FastState, h: torch.Tensor | None, span_fast: FastState | None,
                    logits: bool = False):
        """One pass with autograd (:meth:`_pass` for training): (h at the span's end, end
        FastState, logits of the last layer or None)."""
        cache = self._cache(fast, seed_from=span_fast, functional=True)
        with self._span_hooks(h) as captured:
            pos = torch.arange(ids.shape[1], device=self.device)[None].expand(ids.shape[0], -1)
            out = self.decoder(input_ids=ids.to(self.device), position_ids=pos, cache=cache, use_cache=True)
        end = FastState(S=tuple(cache.layers[i].recurrent_states[0] for i in self.config.linear_layers),
                        conv=tuple(cache.layers[i].conv_states[0] for i in self.config.linear_layers))
        head = self.hf.lm_head(out.last_hidden_state) if logits else None
        return captured["h"], end, head

    def _consolidate_train(self, ids: torch.Tensor, fast: FastState, loops: int,
                           first: tuple[torch.Tensor, FastState] | None = None) -> FastState:
        """Algorithm 1 over ``ids`` from ``fast``, differentiably; ``first``: pass 1's (h, end
        state) when the wake pass already computed it over exactly these tokens."""
        h, end = first if first is not None else self._train_pass(ids, fast, None, None)[:2]
        for _ in range(loops - 1):
            h, end, _ = self._train_pass(ids, fast, h, end)
        return end

    def forward(
        self,
        ids: torch.Tensor,
        loss_mask: torch.Tensor | None = None,
        loops: int | None = None,
        *,
        window_lengths: list[int] | None = None,
        detach_every: int | None = None,
        checkpoint: bool = False,
        return_logits: bool = False,
    ):
        """The training forward of Algorithm 1 through the transformers model, as
        :meth:`SleepHybridLM.forward` (same arguments, an :class:`LMOutput`): the sequence is split
        into windows as the runtime splits it (``window``, hard or sliding eviction with ``keep``,
        or explicit ``window_lengths``); each window's wake pass, from the committed state, gives
        the loss on its targets; then N passes of the looped span over the window (hidden states
        and linear-attention/conv states chained) give the next window's committed state.
        Backprop runs through every pass and window; ``checkpoint`` recomputes each window in
        backward; ``detach_every=k`` truncates backprop every k windows."""
        from torch.nn import functional as F
        from torch.utils.checkpoint import checkpoint as activation_checkpoint

        from .hybrid import LMOutput

        if ids.dim() != 2:
            raise ShapeError(f"forward expects token ids [batch, tokens], got {tuple(ids.shape)}")
        B, T = ids.shape
        if loss_mask is None:
            loss_mask = torch.ones(B, T, dtype=torch.bool, device=ids.device)
            loss_mask[:, 0] = False
        loops = loops or self.config.sleep_loops
        cfg = self.config
        W = cfg.window
        sliding = cfg.evict == "sliding"
        stride = W - cfg.keep if sliding else W
        targets = torch.full_like(ids, -100)
        targets[:, :-1] = torch.where(loss_mask[:, 1:].bool(), ids[:, 1:], -100)
        n_targets = int((targets != -100).sum())
        if window_lengths is not None and (sliding or sum(window_lengths) != T or not all(0 < n <= W for n in window_lengths)):
            raise ShapeError(f"window_lengths must be positive, at most window={W}, sum to {T}, with hard eviction")
        fast = self._zero_fast(B)
        total = torch.zeros((), device=self.device)
        logits_out = []
        start, k = 0, 0
        while True:
            end = min(start + (window_lengths[k] if window_lengths is not None else W), T)
            last = end >= T
            new_from = cfg.keep if sliding and k else 0
            consolidate_len = 0 if last else end - start if window_lengths is not None else min(stride, end - start)
            win, tgt = ids[:, start:end], targets[:, start:end].clone()
            tgt[:, :new_from] = -100  # kept tokens were scored in the previous window

            def window(*flat: torch.Tensor, win=win, tgt=tgt, consolidate_len=consolidate_len):
                n = len(flat) // 2
                fs = FastState(S=tuple(flat[:n]), conv=tuple(flat[n:]))
                h, wake_end, logits = self._train_pass(win, fs, None, None, logits=True)
                flat_logits = logits.flatten(0, 1)
                if flat_logits.dtype in (torch.float16, torch.bfloat16):  # the loss in float32 (or float64)
                    flat_logits = flat_logits.float()
                loss_sum = F.cross_entropy(flat_logits, tgt.flatten().to(self.device), ignore_index=-100,
                                           reduction="sum")
                if consolidate_len == 0:
                    nxt = fs
                elif consolidate_len == win.shape[1]:  # the whole window: the wake pass is pass 1
                    nxt = self._consolidate_train(win, fs, loops, first=(h, wake_end))
                else:
                    nxt = self._consolidate_train(win[:, :consolidate_len], fs, loops)
                return (loss_sum, logits if return_logits else torch.empty(0), *nxt.S, *nxt.conv)

            args = (*fast.S, *fast.conv)
            if checkpoint and torch.is_grad_enabled():
                loss_sum, logits, *flat = activation_checkpoint(window, *args, use_reentrant=False)
            else:
                loss_sum, logits, *flat = window(*args)
            total = total + loss_sum
            if return_logits:
                logits_out.append(logits[:, new_from:])
            if last:
                break
            n = len(fast.S)
            fast = FastState(S=tuple(flat[:n]), conv=tuple(flat[n:]))
            k += 1
            if detach_every and k % detach_every == 0:
                fast = fast.detach()
            start = end if window_lengths is not None else start + stride
        return LMOutput(loss=total / max(n_targets, 1), logits=torch.cat(logits_out, 1) if return_logits else None,
                        n_targets=n_targets)

    # --- snapshots --------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """sha256 of the adapter config, the transformers config and every weight (recomputed on
        each call, like SleepHybridLM's: ``SleepModel`` keeps the value and refreshes it)."""
        return weights_digest(self.hf, self.config.to_json(), self.text_config.to_json_string(use_diff=False))

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

    With nothing masked, pass 1's end state is the wake's working state: N = 1 commits exactly
    what the plain model's cache holds. Pass 2 then needs pass 1's hidden states, which wake did
    not keep: it recomputes pass 1 first (one extra pass, once per sleep).
    """

    def __init__(self, model: HFHybridLM, state: HFState, loops: int) -> None:
        model._check_state(state)
        self.model, self.state, self.loops = model, state, loops
        keep = [t for t, m in zip(state.window_ids, state.consolidate_mask, strict=True) if m]
        self.ids = torch.tensor([keep], dtype=torch.long)
        self.n_consolidated = len(keep)
        self.reuse_wake = self.n_consolidated == state.window_len
        self.passes_done = 0
        self._h: torch.Tensor | None = None
        self._fast: FastState = state.fast

    @property
    def done(self) -> bool:
        return self.passes_done >= self.loops or self.n_consolidated == 0

    def run_step(self) -> bool:
        """One pass (the transformers modules run a pass as one call): True, a pass completed."""
        self.run_pass()
        return True

    def run_pass(self) -> None:
        if self.done:
            return
        m, st = self.model, self.state
        if self.passes_done == 0:
            if self.reuse_wake:
                self._fast = st.working
            else:
                self._h, self._fast = m._pass(self.ids, st.fast, None, None)
        else:
            if self._h is None:  # pass 1 reused wake's state; its hidden states are needed now
                self._h, _ = m._pass(self.ids, st.fast, None, None)
            self._h, self._fast = m._pass(self.ids, st.fast, self._h, self._fast)
        self.passes_done += 1

    def commit(self) -> HFState:
        st = self.state
        if self.n_consolidated and self.passes_done == 0:
            raise StateMismatch("commit() needs at least one pass: call run_pass() first")
        fast = self._fast if self.n_consolidated else st.fast
        return HFState(
            fast=fast, cache=self.model._cache(fast), window=st.window, linear_layers=st.linear_layers,
            tokens_seen=st.tokens_seen, tokens_consolidated=st.tokens_consolidated + self.n_consolidated,
            sleeps=st.sleeps + 1,
        )


def _rebinding_updates(layer: Any) -> None:
    """Replace a linear-attention cache layer's state updates (in place, into fixed buffers) by
    ones that rebind the new tensors: the same values, and autograd can follow them."""
    from torch.nn import functional as F

    def update_conv_state(conv_states, state_idx=0, conv_kernel_size=None, **kwargs):
        k = layer.conv_kernel_size[state_idx] or conv_kernel_size
        if layer.has_previous_state[state_idx]:
            full = torch.cat([layer.conv_states[state_idx], conv_states], dim=-1)
        else:
            full = F.pad(conv_states, (max(k - conv_states.shape[-1], 0), 0))
        layer.conv_states[state_idx] = full[..., -k:]
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


# --- tokenizer ------------------------------------------------------------------------------------

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


def load_transformers_hybrid(
    path: Path,
    *,
    device=None,
    window: int | None = None,
    loops: int | None = None,
    loop_layers: tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
):
    """Load a local transformers GDN hybrid as a :class:`~sleepagent.model.SleepModel`.

    Sleep settings come from the arguments, else from ``sleepagent.json`` in the directory
    (``{"window": ..., "sleep_loops": ..., "loop_layers": [a, b], "evict": ..., "keep": ...}``,
    as ``sleepagent train --base`` writes it), else defaults; ``prompt.json`` gives the system
    prompt it was trained with.
    """
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - transformers is a dependency
        raise CheckpointError(f"loading a transformers checkpoint needs transformers: {e}") from None
    from .pretrained import SleepModel, read_prompt

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
        sleep_loops=loops or extra.get("sleep_loops", 4),
        loop_layers=tuple(loop_layers or extra.get("loop_layers") or ()) or None,
        evict=extra.get("evict", "hard"),
        keep=int(extra.get("keep", 0)),
    )
    lm = HFHybridLM(hf.to(device) if device else hf, cfg)
    return SleepModel(lm, HFChatTokenizer(tok), name=path.name, prompt=read_prompt(path))
