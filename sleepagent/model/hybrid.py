"""SleepHybridLM: a windowed-attention + Gated DeltaNet hybrid that wakes and sleeps.

The paper's pieces are public: ``h = model.embed(ids)``, ``h, fast = model.blocks(h, fast)``,
``logits = model.head(h)``. Everything else is built from them:

- **wake** (:meth:`SleepHybridLM.prefill`, :meth:`SleepHybridLM.step`): one pass over new tokens,
  attention over the window's KV, GDN layers advancing the *working* fast state. Mutates the
  state in place; never depends on the number of sleep loops.
- **sleep** (:meth:`SleepHybridLM.consolidate`, or :meth:`SleepHybridLM.begin_sleep` pass by
  pass): Algorithm 1 over the window's tokens, from the *committed* fast state at the window's
  start: ``h = embed(c); N times: h, F = blocks(h, F)``. Returns a new state; the input state is
  never touched, so an aborted sleep loses nothing.
- **training forward** (``model(ids, loss_mask, loops=N)``): the same computation over a long
  sequence split into windows, differentiable through every pass and window; written once, in
  :mod:`sleepagent.model.algorithm1`, over ``embed`` / ``blocks`` / ``head``.

With ``loop_layers=(a, b)`` only blocks ``[a, b)`` loop; blocks before run once before the loop
and blocks after run once after it, over the loop's final hidden states.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError, StateMismatch, WindowFull
from .algorithm1 import LMOutput, check_ids, check_loops, training_forward
from .config import SleepHybridConfig
from .layers import MLP, GatedDeltaNet, MLPDecodeWeights, RMSNorm, WindowAttention, decode_projection, stream_norm
from .state import FastState, HybridState

__all__ = ["LMOutput", "SleepHybridLM", "SleepJob", "weights_digest"]


def weights_digest(module: nn.Module, *configs: str) -> str:
    """sha256 of ``configs`` and every tensor of ``module.state_dict()``: name, dtype, shape, bytes."""
    digest = hashlib.sha256()
    for text in configs:
        digest.update(text.encode())
    for name, p in sorted(module.state_dict().items()):
        t = p.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class Block(nn.Module):
    """Pre-norm residual block: mixer (GDN or window attention), then SwiGLU MLP."""

    def __init__(self, cfg: SleepHybridConfig, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer: nn.Module = GatedDeltaNet(cfg) if kind == "gdn" else WindowAttention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.mlp_hidden)


class _DecodePlan(NamedTuple):
    """The decode step's prepared weights (see ``layers.MLPDecodeWeights`` and the note above it)."""

    epoch: int  # _PARAM_EPOCH when built
    params: tuple[nn.Parameter, ...]  # the parameters they came from
    versions: list[int]  # and their versions and data pointers then
    ptrs: list[int]
    # every residual RMSNorm has the same eps (the stream carries one constant), else no plan runs
    one_eps: bool
    emb: torch.Tensor  # [vocab, d + 1]: the embedding, and the stream's constant sqrt(d * eps)
    # per block: kind, slot, the mixer and its decode weights, the MLP's weights
    blocks: tuple[tuple[str, int, Any, tuple, MLPDecodeWeights], ...]
    head: torch.Tensor


# bumped whenever a module anywhere registers a parameter (``module.weight = nn.Parameter(...)``):
# a decode plan built before may hold a parameter its model no longer has
_PARAM_EPOCH = [0]


def _bump_param_epoch(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    _PARAM_EPOCH[0] += 1


nn.modules.module.register_module_parameter_registration_hook(_bump_param_epoch)

_POSITIONS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _position(L: int, device: torch.device) -> torch.Tensor:
    """Window position L as a [1] long tensor (one per position and device, made once)."""
    t = _POSITIONS.get((L, device))
    if t is None:
        t = _POSITIONS[(L, device)] = torch.tensor([L], device=device)
    return t


class SleepHybridLM(nn.Module):
    """The sleep-enabled hybrid language model (see module docstring)."""

    #: :meth:`step` takes the one-token decode path (prepared weights, in-place KV writes, the
    #: fused GDN step); False runs a step as a one-token :meth:`prefill`, the path it must equal.
    fast_decode: bool = True
    #: with :attr:`fast_decode`, run the step's blocks as one graph compiled by torch.compile
    #: (inductor; a C++ compiler on CPU): compiled once, on the first step, for all window
    #: lengths. Opt-in: see ``sleepagent bench decode`` for its compile time and step time.
    compile_decode: bool = False

    def __init__(self, config: SleepHybridConfig) -> None:
        super().__init__()
        self.config = config
        assert config.layer_types is not None
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, kind) for kind in config.layer_types)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # layer index -> slot in FastState (GDN) or in the KV cache lists (attention)
        self._gdn_slot = {layer: j for j, layer in enumerate(config.gdn_layers)}
        self._attn_slot = {layer: j for j, layer in enumerate(config.attn_layers)}
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2 style: residual output projections shrink with depth.
                scaled = name.endswith(("out.weight", "down.weight"))
                nn.init.normal_(p, 0.0, std / (2 * self.config.n_layers) ** 0.5 if scaled else std)
        for layer in self.layers:
            if isinstance(layer.mixer, GatedDeltaNet):
                layer.mixer.reset_gates()

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_emb.weight.dtype

    # --- the paper's pieces ---------------------------------------------------------------------

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> hidden states [B, T, d]."""
        self._check_ids(ids)
        return self.tok_emb(ids)

    def blocks(
        self, h: torch.Tensor, fast: FastState, start: int = 0, stop: int | None = None
    ) -> tuple[torch.Tensor, FastState]:
        """Run blocks ``[start, stop)`` once over ``h`` (attention causal within ``h``, no KV kept).

        Pure: ``fast`` is not modified; the returned FastState carries the advanced S and conv
        tails of the GDN layers in the range and ``fast``'s entries for the others.
        """
        stop = self.config.n_layers if stop is None else stop
        self._check_fast(fast, h.shape[0])
        h, fast, _ = self._run(h, fast, start, stop)
        return h, fast

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., d] -> logits [..., vocab]."""
        return self.lm_head(self.norm(h))

    def _run(
        self,
        h: torch.Tensor,
        fast: FastState,
        lo: int,
        hi: int,
        state: HybridState | None = None,
        attend: Callable[[int, WindowAttention, torch.Tensor], tuple[torch.Tensor, ...]] | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, FastState, list[tuple[int, torch.Tensor, torch.Tensor]]]:
        """Blocks [lo, hi) over h. With ``state``, attention also sees the window's cached KV;
        ``attend(slot, mixer, x) -> (y, k, v)`` replaces the attention call altogether;
        ``valid`` [B, T] marks real tokens of right-padded rows (GDN layers skip the padding).

        Returns the new h, the advanced FastState and, per attention layer run, its slot and the
        new tokens' (k, v) for the caller to cache.
        """
        S, conv = list(fast.S), list(fast.conv)
        new_kv: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        L = state.window_len if state is not None else 0
        for i in range(lo, hi):
            block = cast(Block, self.layers[i])
            x = block.norm1(h)
            if block.kind == "gdn":
                j = self._gdn_slot[i]
                y, S[j], conv[j] = block.mixer(x, S[j], conv[j], valid=valid)
            else:
                j = self._attn_slot[i]
                if attend is not None:
                    y, k, v = attend(j, cast(WindowAttention, block.mixer), x)
                elif state is not None and L:
                    y, k, v = block.mixer(x, state.k_cache[j][:, :, :L], state.v_cache[j][:, :, :L])
                else:
                    y, k, v = block.mixer(x)
                new_kv.append((j, k, v))
            h = h + y
            h = h + block.mlp(block.norm2(h))
        return h, FastState(S=tuple(S), conv=tuple(conv)), new_kv

    # --- wake -----------------------------------------------------------------------------------

    def new_state(self, batch_size: int = 1, device=None) -> HybridState:
        """A fresh state: zero fast weights, empty window."""
        if batch_size < 1:
            raise ShapeError(f"batch_size must be >= 1, got {batch_size}")
        if not self.config.gdn_layers:
            raise ConfigError("an attention-only model (no 'gdn' layer) has no fast weights to sleep into or to carry "
                              "across windows: it is a baseline for studies, scored through its training forward "
                              "(`sleepagent eval`); the runtime needs at least one GDN layer", field="layer_types")
        return HybridState.empty(
            self.config, batch_size, device=device or self.device, h_dtype=self.dtype
        )

    @torch.no_grad()
    def prefill(
        self, ids: torch.Tensor, state: HybridState, consolidate: bool | torch.Tensor = True
    ) -> torch.Tensor:
        """Wake: read ``ids`` [B, T] into the window; returns logits [B, T, vocab].

        ``consolidate=False`` (or a [B, T] bool mask) marks tokens that sleep must leave out of
        the fast weights (never-consolidate spans); they are still visible while in the window.
        Raises :class:`WindowFull` if the tokens do not fit: sleep first.
        """
        if ids.dim() != 2:
            raise ShapeError(f"prefill expects token ids of shape [batch, tokens], got {tuple(ids.shape)}")
        B, T = ids.shape
        self._check_state(state)
        if B != state.batch_size:
            raise StateMismatch(f"ids have batch size {B} but the state holds {state.batch_size} sequences")
        L, W = state.window_len, state.window
        if T == 0:
            return torch.empty(B, 0, self.config.vocab_size, device=self.device, dtype=self.dtype)
        if L + T > W:
            raise WindowFull(window=W, used=L, requested=T)
        ids = ids.to(state.device)
        mask = self._mask_tensor(consolidate, B, T, state.device)
        _a, b = self.config.span
        n = self.config.n_layers
        h = self.embed(ids)
        h, working, kv1 = self._run(h, state.working, 0, b, state)
        state.window_h[:, L : L + T] = h
        if b < n:
            h, working, kv2 = self._run(h, working, b, n, state)
            kv1 += kv2
        logits = self.head(h)
        self._append(state, ids, mask, state.window_h[:, L : L + T], kv1, working)
        return logits

    @staticmethod
    def _append(
        state: HybridState,
        ids: torch.Tensor,
        mask: torch.Tensor,
        h_span: torch.Tensor,
        new_kv: list[tuple[int, torch.Tensor, torch.Tensor]],
        working: FastState,
    ) -> None:
        """Record T new tokens in the window: ids/mask [B, T], h_span [B, T, d], KV [B, H, T, D]."""
        L, T = state.window_len, ids.shape[1]
        for j, k, v in new_kv:
            state.k_cache[j][:, :, L : L + T] = k
            state.v_cache[j][:, :, L : L + T] = v
        state.working = working
        state.window_h[:, L : L + T] = h_span
        state.window_ids[:, L : L + T] = ids
        state.consolidate_mask[:, L : L + T] = mask
        state.window_len = L + T
        state.tokens_seen += T

    @torch.no_grad()
    def step(self, ids: torch.Tensor, state: HybridState, consolidate: bool | torch.Tensor = True) -> torch.Tensor:
        """Wake: decode one token per sequence (ids [B] or [B, 1]); returns logits [B, vocab].

        Equals a one-token :meth:`prefill` up to float rounding, in a fraction of the ops: see
        :attr:`fast_decode` and :meth:`_decode`."""
        if ids.dim() == 1:
            ids = ids[:, None]
        if ids.dim() != 2 or ids.shape[1] != 1:
            raise ShapeError(f"step expects one token per sequence ([B] or [B, 1]), got {tuple(ids.shape)}")
        if not self.fast_decode or self.training:
            return self.prefill(ids, state, consolidate)[:, -1]
        plan = self._decode_plan()
        if not plan.one_eps:
            return self.prefill(ids, state, consolidate)[:, -1]
        return self._decode(ids, state, consolidate, plan)

    def __getstate__(self) -> dict:
        # the decode step's caches are derived (rebuilt on the next step); a compiled graph
        # neither pickles nor deep-copies
        state = dict(super().__getstate__())
        state.pop("_plan", None)
        state.pop("_compiled", None)
        return state

    def _decode_plan(self) -> _DecodePlan:
        """The decode step's prepared weights, rebuilt when any parameter was written in place
        (an optimizer step, ``load_state_dict``), moved (``.to()``) or replaced by another."""
        plan: _DecodePlan | None = self.__dict__.get("_plan")
        if (
            plan is not None
            and plan.epoch == _PARAM_EPOCH[0]
            and [p._version for p in plan.params] == plan.versions
            and [p.data_ptr() for p in plan.params] == plan.ptrs
        ):
            return plan
        params = tuple(self.parameters())
        versions, ptrs = [p._version for p in params], [p.data_ptr() for p in params]
        epoch = _PARAM_EPOCH[0]
        eps = self.norm.eps
        one_eps = all(cast(Block, b).norm1.eps == eps == cast(Block, b).norm2.eps for b in self.layers)
        with torch.no_grad():
            blocks = []
            for i, layer in enumerate(self.layers):
                block = cast(Block, layer)
                nw = block.norm1.weight
                if block.kind == "gdn":
                    gdn = cast(GatedDeltaNet, block.mixer)
                    mixer: tuple[str, int, nn.Module, tuple] = ("gdn", self._gdn_slot[i], gdn, gdn.decode_weights(nw))
                else:
                    attn = cast(WindowAttention, block.mixer)
                    mixer = ("attn", self._attn_slot[i], attn, attn.decode_weights(nw, self.config.window))
                mlp = cast(MLP, block.mlp).decode_weights(block.norm2.weight)
                blocks.append((*mixer, mlp))
            head = decode_projection(self.lm_head.weight, self.norm.weight, reads_stream=True)
            emb = self.tok_emb.weight.detach()
            const = (emb.shape[1] * self.norm.eps) ** 0.5  # the stream's constant (layers.decode_projection)
            emb = torch.cat([emb, emb.new_full((emb.shape[0], 1), const)], dim=1)
            plan = _DecodePlan(epoch, params, versions, ptrs, one_eps, emb, tuple(blocks), head)
        self.__dict__["_plan"] = plan  # a plain attribute: not a buffer, not in the state_dict
        return plan

    def _decode(
        self, ids: torch.Tensor, state: HybridState, consolidate: bool | torch.Tensor, plan: _DecodePlan
    ) -> torch.Tensor:
        """:meth:`step` for ids [B, 1]: the checks and state updates of :meth:`prefill`, the
        blocks through their ``decode`` methods (one ``mm`` per weight matrix, KV written in
        place into slot ``window_len`` of the state's preallocated caches, the fused GDN step);
        with :attr:`compile_decode`, the blocks run as one compiled graph (:meth:`_decode_graph`)."""
        B = ids.shape[0]
        self._check_state(state)
        if B != state.batch_size:
            raise StateMismatch(f"ids have batch size {B} but the state holds {state.batch_size} sequences")
        L, W = state.window_len, state.window
        if L + 1 > W:
            raise WindowFull(window=W, used=L, requested=1)
        ids = ids.to(state.device).view(B)
        values = ids.tolist() if ids.dtype in (torch.int64, torch.int32) else None
        if values is None or min(values) < 0 or max(values) >= self.config.vocab_size:
            self._check_ids(ids)  # raises, with the message prefill gives
        if isinstance(consolidate, bool):
            mask: bool | torch.Tensor = consolidate
        else:
            mask = self._mask_tensor(consolidate, B, 1, state.device)[:, 0]
        if self.compile_decode:
            fn = self._compiled_graph()
            # contiguous inputs: a conv tail a prefill left as a view of a longer sequence has
            # other strides, and the graph would recompile for each
            logits, S, conv = fn(
                plan, ids, tuple(s.contiguous() for s in state.working.S),
                tuple(c.contiguous() for c in state.working.conv),
                tuple(state.k_cache), tuple(state.v_cache), state.window_h, _position(L, state.device),
            )
        else:
            S_list, conv_list = list(state.working.S), list(state.working.conv)
            h = F.embedding(ids, plan.emb)  # [B, d + 1]: the extended stream (layers.stream_norm)
            keep_at = self.config.span[1] - 1
            for i, (kind, j, mixer, weights, mlp) in enumerate(plan.blocks):
                x = stream_norm(h)
                # each block's output projections add the residual in the same op (addmm)
                if kind == "gdn":
                    h, S_list[j], conv_list[j] = mixer.decode(x, weights, S_list[j], conv_list[j], h)
                else:
                    h = mixer.decode(x, weights, state.k_cache[j], state.v_cache[j], L, h)
                h = MLP.decode(stream_norm(h), mlp, h)
                if i == keep_at:
                    state.window_h[:, L] = h[:, :-1]
            logits = torch.mm(stream_norm(h), plan.head)
            S, conv = tuple(S_list), tuple(conv_list)
        state.working = FastState(S=S, conv=conv)
        state.window_ids[:, L] = ids
        state.consolidate_mask[:, L] = mask
        state.window_len = L + 1
        state.tokens_seen += 1
        return logits

    def _decode_graph(
        self,
        plan: _DecodePlan,
        ids: torch.Tensor,
        S_in: tuple[torch.Tensor, ...],
        conv_in: tuple[torch.Tensor, ...],
        k_caches: tuple[torch.Tensor, ...],
        v_caches: tuple[torch.Tensor, ...],
        window_h: torch.Tensor,
        pos: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The decode step's blocks with shapes that never depend on the window length
        (attention over all W slots, masked after ``pos``, a [1] tensor): what
        :attr:`compile_decode` compiles once. Writes the token's keys, values and kept hidden
        state into slot ``pos`` of the caches and ``window_h``; returns the logits and the new
        S and conv tails."""
        S, conv = list(S_in), list(conv_in)
        h = F.embedding(ids, plan.emb)
        keep_at = self.config.span[1] - 1
        for i, (kind, j, mixer, weights, mlp) in enumerate(plan.blocks):
            x = stream_norm(h)
            if kind == "gdn":
                h, S[j], tail = mixer.decode(x, weights, S[j], conv[j], h)
                conv[j] = tail.contiguous()  # the next step's input: same strides every step
            else:
                h = mixer.decode_masked(x, weights, k_caches[j], v_caches[j], pos, h)
            h = MLP.decode(stream_norm(h), mlp, h)
            if i == keep_at:
                window_h.index_copy_(1, pos, h[:, None, :-1])
        logits = torch.mm(stream_norm(h), plan.head)
        return logits, tuple(S), tuple(conv)

    def _compiled_graph(self) -> Callable:
        fn = self.__dict__.get("_compiled")
        if fn is None:
            # cpp_wrapper: the graph's kernels are called from C++, not from a Python wrapper
            # (measured: about a fifth off a compiled step; `sleepagent bench decode`)
            fn = torch.compile(self._decode_graph, dynamic=False, fullgraph=True, options={"cpp_wrapper": True})
            self.__dict__["_compiled"] = fn
        return fn

    def warm_compiled_decode(self) -> float:
        """Turn :attr:`compile_decode` on and compile its graph now, on a scratch state, so that
        no request waits for the compiler (what a server does at startup, as vLLM captures its
        CUDA graphs before it serves); returns the seconds it took. A machine that cannot compile
        (no C++ compiler on CPU) raises :class:`~sleepagent.errors.ConfigError` and leaves it off."""
        import time

        t0 = time.perf_counter()
        self.compile_decode = True
        try:
            state = self.new_state(1, device=self.tok_emb.weight.device)
            self.prefill(torch.zeros(1, 2, dtype=torch.long, device=state.device), state)
            self.step(torch.zeros(1, dtype=torch.long, device=state.device), state)
        except Exception as e:
            self.compile_decode = False
            self.__dict__.pop("_compiled", None)
            raise ConfigError(f"compile_decode: torch.compile could not build the decode step ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); on a CPU it needs a C++ compiler",
                              field="compile_decode") from None
        return time.perf_counter() - t0

    @torch.no_grad()
    def step_many(
        self, ids: torch.Tensor, states: list[HybridState], consolidate: list[bool] | None = None
    ) -> torch.Tensor:
        """Wake: decode one token for each of several single-sequence states in one batched pass.

        ``ids``: [n] tokens, one per state; states may hold windows of different lengths. Gives
        the same logits as ``step`` on each state alone (up to float rounding) at a fraction of
        the cost, which is how the engine serves many sessions at once. ``consolidate``: per
        state, whether its token may enter the fast weights (default all). Returns [n, vocab].
        With :attr:`fast_decode`, runs through the decode plan (:meth:`_decode_many`).
        """
        n = len(states)
        flags = [True] * n if consolidate is None else [bool(c) for c in consolidate]
        if len(flags) != n:
            raise ShapeError(f"step_many: {len(flags)} consolidate flags for {n} states")
        if ids.shape != (n,):
            raise ShapeError(f"step_many expects one token per state: ids shape {tuple(ids.shape)}, {n} states")
        for st in states:
            self._check_state(st)
            if st.batch_size != 1:
                raise StateMismatch("step_many takes single-sequence states (batch size 1)")
            if st.window_len + 1 > st.window:
                raise WindowFull(window=st.window, used=st.window_len, requested=1)
        if self.fast_decode and not self.training:
            plan = self._decode_plan()
            if plan.one_eps:
                return self._decode_many(ids, states, flags, plan)
        device = states[0].device
        ids = ids.to(device)[:, None]
        lengths = torch.tensor([st.window_len for st in states], device=device)
        Lmax = int(lengths.max())
        working = FastState(
            S=tuple(torch.cat(t) for t in zip(*(st.working.S for st in states), strict=True)),
            conv=tuple(torch.cat(t) for t in zip(*(st.working.conv for st in states), strict=True)),
        )

        def attend(j: int, mixer: WindowAttention, x: torch.Tensor):
            past_k = torch.cat([st.k_cache[j][:, :, :Lmax] for st in states])
            past_v = torch.cat([st.v_cache[j][:, :, :Lmax] for st in states])
            return mixer.forward_rows(x, past_k, past_v, lengths)

        b = self.config.span[1]
        h_span, working, new_kv = self._run(self.embed(ids), working, 0, b, attend=attend)
        h, working, kv2 = self._run(h_span, working, b, self.config.n_layers, attend=attend)
        new_kv += kv2
        logits = self.head(h)[:, 0]
        S, conv = working.S, working.conv
        for r, st in enumerate(states):
            row = slice(r, r + 1)
            self._append(
                st, ids[row], torch.full_like(ids[row], flags[r], dtype=torch.bool), h_span[row],
                [(j, k[row], v[row]) for j, k, v in new_kv],
                _own_rows(S, conv, row),
            )
        return logits

    def _decode_many(
        self, ids: torch.Tensor, states: list[HybridState], flags: list[bool], plan: _DecodePlan
    ) -> torch.Tensor:
        """:meth:`step_many` through the decode plan (see :meth:`_decode`): the states' fast
        weights and conv tails stacked into B rows for the fused GDN step, attention by
        :meth:`WindowAttention.decode_rows` (each row's key and value written in place into its
        own state's caches, at its own window position)."""
        n = len(states)
        device = states[0].device
        ids = ids.to(device)
        values = ids.tolist() if ids.dtype in (torch.int64, torch.int32) else None
        if values is None or (n and (min(values) < 0 or max(values) >= self.config.vocab_size)):
            self._check_ids(ids[:, None])  # raises, with the message prefill gives
        lengths = [st.window_len for st in states]
        S_list = [torch.cat(t) for t in zip(*(st.working.S for st in states), strict=True)]
        conv_list = [torch.cat(t) for t in zip(*(st.working.conv for st in states), strict=True)]
        h = F.embedding(ids, plan.emb)  # [n, d + 1]: the extended stream (layers.stream_norm)
        keep_at = self.config.span[1] - 1
        for i, (kind, j, mixer, weights, mlp) in enumerate(plan.blocks):
            x = stream_norm(h)
            if kind == "gdn":
                h, S_list[j], conv_list[j] = mixer.decode(x, weights, S_list[j], conv_list[j], h)
            else:
                h = mixer.decode_rows(x, weights, [st.k_cache[j] for st in states],
                                      [st.v_cache[j] for st in states], lengths, h)
            h = MLP.decode(stream_norm(h), mlp, h)
            if i == keep_at:
                for r, st in enumerate(states):
                    st.window_h[:, lengths[r]] = h[r : r + 1, :-1]
        logits = torch.mm(stream_norm(h), plan.head)
        S, conv = tuple(S_list), tuple(conv_list)
        for r, st in enumerate(states):
            L = lengths[r]
            st.working = _own_rows(S, conv, slice(r, r + 1))
            st.window_ids[:, L] = ids[r]
            st.consolidate_mask[:, L] = flags[r]
            st.window_len = L + 1
            st.tokens_seen += 1
        return logits

    @torch.no_grad()
    def prefill_many(
        self, pieces: list[tuple[list[int], list[bool]]], states: list[HybridState]
    ) -> torch.Tensor:
        """Wake: read one piece of tokens into each of several single-sequence states, in one
        batched pass (rows right-padded to the longest piece); returns the logits after each
        piece's last token, [n, vocab].

        ``pieces[r]``: (ids, consolidate flags), one flag per token; each must fit its state's
        window. Equals :meth:`prefill` on each state alone, up to float rounding: padding enters
        no state (GDN layers skip it, attention never looks at it from a real token), which is how
        the engine reads many sessions' inputs at once (see :meth:`step_many` for decode)."""
        n = len(states)
        if len(pieces) != n or n == 0:
            raise ShapeError(f"prefill_many: {len(pieces)} pieces for {n} states")
        lengths = [len(ids) for ids, _ in pieces]
        for (_ids, flags), st, T in zip(pieces, states, lengths, strict=True):
            self._check_state(st)
            if st.batch_size != 1:
                raise StateMismatch("prefill_many takes single-sequence states (batch size 1)")
            if T == 0 or len(flags) != T:
                raise ShapeError(f"prefill_many: a piece needs at least one token and one flag per token, got "
                                 f"{T} tokens and {len(flags)} flags")
            if st.window_len + T > st.window:
                raise WindowFull(window=st.window, used=st.window_len, requested=T)
        device = states[0].device
        Tmax = max(lengths)
        ids = torch.zeros(n, Tmax, dtype=torch.long, device=device)
        valid = torch.zeros(n, Tmax, dtype=torch.bool, device=device)
        for r, (piece, _) in enumerate(pieces):
            ids[r, : lengths[r]] = torch.as_tensor(piece, dtype=torch.long, device=device)
            valid[r, : lengths[r]] = True
        self._check_ids(ids)
        past = torch.tensor([st.window_len for st in states], device=device)
        Lmax = int(past.max())
        working = FastState(
            S=tuple(torch.cat(t) for t in zip(*(st.working.S for st in states), strict=True)),
            conv=tuple(torch.cat(t) for t in zip(*(st.working.conv for st in states), strict=True)),
        )

        def attend(j: int, mixer: WindowAttention, x: torch.Tensor):
            past_k = torch.cat([st.k_cache[j][:, :, :Lmax] for st in states])
            past_v = torch.cat([st.v_cache[j][:, :, :Lmax] for st in states])
            return mixer.forward_padded(x, past_k, past_v, past)

        b = self.config.span[1]
        h_span, working, new_kv = self._run(self.embed(ids), working, 0, b, attend=attend, valid=valid)
        h, working, kv2 = self._run(h_span, working, b, self.config.n_layers, attend=attend, valid=valid)
        new_kv += kv2
        last = torch.tensor(lengths, device=device) - 1
        logits = self.head(h[torch.arange(n, device=device), last])
        S, conv = working.S, working.conv
        for r, st in enumerate(states):
            row, T = slice(r, r + 1), lengths[r]
            self._append(
                st, ids[row, :T], torch.tensor([pieces[r][1]], dtype=torch.bool, device=device), h_span[row, :T],
                [(j, k[row, :, :T], v[row, :, :T]) for j, k, v in new_kv],
                _own_rows(S, conv, row),
            )
        return logits

    # --- sleep ----------------------------------------------------------------------------------

    def begin_sleep(self, state: HybridState, loops: int | None = None) -> SleepJob:
        """Start a consolidation of ``state``'s window that runs one pass per :meth:`SleepJob.run_pass`.

        The engine uses this to run sleep in the gaps of wake work and to stop between passes.
        """
        return SleepJob(self, state, self._loops(loops))

    @torch.no_grad()
    def consolidate(self, state: HybridState, loops: int | None = None) -> HybridState:
        """Sleep: run all passes of Algorithm 1 and return the new state (``state`` is untouched)."""
        job = self.begin_sleep(state, loops)
        while not job.done:
            job.run_pass()
        return job.commit()

    @torch.no_grad()
    def drop_excluded(self, state: HybridState) -> HybridState:
        """The window without its never-consolidate tokens: the committed fast weights, and the
        window's other tokens read again from them, at the front of a fresh window.

        The engine does this instead of a forced sleep while the window holds excluded tokens:
        they leave the window as a sleep would have evicted them, and the other tokens stay, to
        be consolidated with the turns after them exactly when they would have been had the
        excluded tokens never been read. So an excluded turn, however long, does not move which
        tokens sleep together, and nothing consolidated depends on it. ``state`` is untouched."""
        self._check_state(state)
        if state.batch_size != 1:
            raise StateMismatch("drop_excluded takes a single-sequence state")
        L = state.window_len
        ids = state.window_ids[:, :L][:, state.consolidate_mask[0, :L]]
        new = HybridState.empty(self.config, 1, device=state.device, h_dtype=state.window_h.dtype, fast=state.fast)
        if ids.shape[1]:
            self.prefill(ids, new, True)
        new.tokens_seen, new.tokens_consolidated, new.sleeps = (
            state.tokens_seen,
            state.tokens_consolidated,
            state.sleeps,
        )
        new.shed = True
        return new

    def _loops(self, loops: int | None) -> int:
        return check_loops(loops, self.config.loops)

    # --- training forward -----------------------------------------------------------------------

    def new_fast(self, batch_size: int = 1) -> FastState:
        """The zero FastState a sequence starts from (no window, no KV: see :meth:`new_state`)."""
        return FastState.zeros(self.config, batch_size, device=self.device, dtype=self.dtype)

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
        """Algorithm 1 over a long sequence, split into windows exactly as wake would split it:
        :func:`sleepagent.model.algorithm1.training_forward` (the transformers adapter trains
        through the same function)."""
        return training_forward(
            self, ids, loss_mask, loops, checkpoint=checkpoint, detach_every=detach_every,
            return_logits=return_logits, fast=fast, window_lengths=window_lengths,
        )

    # --- identity -------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """sha256 of the canonical config JSON and every parameter's name, dtype, shape and bytes.

        A snapshot restores only into a model with the same fingerprint: fast weights written by
        one set of weights mean nothing to another.
        """
        return weights_digest(self, self.config.fingerprint_json())

    def save_state(self, state: HybridState) -> bytes:
        """Serialise ``state`` (safetensors bytes tagged with this model's fingerprint)."""
        return state.to_bytes(self.fingerprint())

    def load_state(self, data: bytes, fingerprint: str | None = None) -> HybridState:
        """Inverse of :meth:`save_state`; raises FingerprintMismatch for another model's state.

        A snapshot that holds the window's ids alone (:meth:`HybridState.for_snapshot`) is
        re-read from its committed state here, which rebuilds the KV and the working state."""
        state = HybridState.from_bytes(
            data, cfg=self.config, fingerprint=fingerprint or self.fingerprint(), device=self.device
        )
        if not state.replay:
            return state
        out = HybridState.empty(self.config, state.batch_size, device=self.device, h_dtype=self.dtype, fast=state.fast)
        if state.window_len:
            self.prefill(state.ids(), out)
        out.tokens_seen = state.tokens_seen
        out.tokens_consolidated, out.sleeps = state.tokens_consolidated, state.sleeps
        return out

    # --- validation -----------------------------------------------------------------------------

    def _check_ids(self, ids: torch.Tensor) -> None:
        check_ids(ids, self.config.vocab_size)

    def _check_fast(self, fast: FastState, batch: int) -> None:
        if len(fast.S) != len(self.config.gdn_layers):
            raise StateMismatch(
                f"FastState has {len(fast.S)} fast-weight matrices, model has {len(self.config.gdn_layers)} GDN layers"
            )
        if fast.S and fast.batch_size != batch:  # an attention-only baseline carries no state
            raise StateMismatch(f"FastState batch size {fast.batch_size} != hidden states batch size {batch}")

    def _check_state(self, state: HybridState) -> None:
        if not isinstance(state, HybridState):
            raise StateMismatch(f"expected a HybridState, got {type(state).__name__}")
        if state.window != self.config.window or len(state.k_cache) != len(self.config.attn_layers):
            raise StateMismatch("the state was made for a model with another window or layer layout")
        self._check_fast(state.working, state.batch_size)

    @staticmethod
    def _mask_tensor(consolidate: bool | torch.Tensor, B: int, T: int, device) -> torch.Tensor:
        if isinstance(consolidate, bool):
            return torch.full((B, T), consolidate, dtype=torch.bool, device=device)
        if consolidate.shape != (B, T):
            raise ShapeError(f"consolidate mask shape {tuple(consolidate.shape)} must be {(B, T)}")
        return consolidate.to(device=device, dtype=torch.bool)


class SleepJob:
    """One consolidation of a window, run a pass at a time (see :meth:`SleepHybridLM.begin_sleep`).

    ``run_pass()`` runs the next pass; ``commit()`` returns the new state from the passes run so
    far (at least one; committing early is ``on_wake="commit"``). Dropping the job is an abort:
    the source state was never modified. Pass 1 reuses what wake computed when the whole window
    is consolidated (hard eviction, nothing masked), so N = 1 commits exactly the working state.
    """

    def __init__(self, model: SleepHybridLM, state: HybridState, loops: int) -> None:
        model._check_state(state)
        self.model, self.state, self.loops = model, state, loops
        cfg = model.config
        L = state.window_len
        if cfg.evict == "sliding":
            self.evict_len = max(L - cfg.keep, 0)
        else:
            self.evict_len = L
        mask = state.consolidate_mask[:, : self.evict_len]
        if mask.shape[0] > 1 and not bool((mask == mask[:1]).all()):
            raise StateMismatch(
                "sequences in this batched state mask different tokens out of consolidation; "
                "consolidate them as separate states"
            )
        self._keep_cols = mask[0].nonzero().flatten() if mask.shape[1] else mask.new_zeros(0, dtype=torch.long)
        self.n_consolidated = int(self._keep_cols.numel())
        self.reuse_wake = cfg.evict == "hard" and self.n_consolidated == L and not state.shed
        self.passes_done = 0
        self._h: torch.Tensor | None = None
        self._fast: FastState = state.fast
        # the pass in progress, a block at a time: (h, fast, next block, stop block)
        self._cursor: tuple[torch.Tensor, FastState, int, int] | None = None

    @property
    def done(self) -> bool:
        return self.passes_done >= self.loops or self.n_consolidated == 0

    @torch.no_grad()
    def run_step(self) -> bool:
        """Run the next block of the pass in progress; True when that completed a pass.

        The engine runs sleep a block at a time so that another session's wake step waits for
        one block at most, never a whole pass. Blocks run in order over the same tensors, so a
        pass run block by block equals :meth:`run_pass` bit for bit."""
        if self.done:
            return True
        if self._reuse():
            return True
        h, fast, i, _ = self._next_block()
        h, fast, _ = self.model._run(h, fast, i, i + 1)
        return self._block_done(h, fast)

    def _reuse(self) -> bool:
        """Pass 1 from what wake computed, when it may be reused (no compute); True if it was."""
        if self.passes_done == 0 and self.reuse_wake:
            st = self.state
            self._h = st.window_h[:, : st.window_len]
            self._fast = st.working
            self.passes_done = 1
            return True
        return False

    def _next_block(self) -> tuple[torch.Tensor, FastState, int, int]:
        """The pass in progress: (h, fast, the block to run next, the pass's stop block)."""
        if self._cursor is None:
            m, st = self.model, self.state
            a, b = m.config.span
            if self.passes_done == 0:
                h, fast, lo = m.embed(st.window_ids[:, self._keep_cols]), st.fast, 0
            else:
                assert self._h is not None
                h, fast, lo = self._h, self._fast, a
            self._cursor = (h, fast, lo, b)
        return self._cursor

    def _block_done(self, h: torch.Tensor, fast: FastState) -> bool:
        """Record the block just run; True when it completed a pass."""
        assert self._cursor is not None
        _, _, i, stop = self._cursor
        if i + 1 < stop:
            self._cursor = (h, fast, i + 1, stop)
            return False
        self._cursor = None
        self._h, self._fast = h, fast
        self.passes_done += 1
        return True

    @staticmethod
    @torch.no_grad()
    def run_steps(jobs: list[SleepJob]) -> list[bool]:
        """:meth:`run_step` for several sessions' sleeps at once: jobs at the same block run it
        in one batched pass over their windows (right-padded; padding enters no state: GDN
        layers skip it, and a sleep's attention is causal within the window, so no real token
        sees it). Equal to stepping each job alone, up to float rounding (test); how the engine
        consolidates many sessions' windows in the time of a few."""
        out: list[bool | None] = [None] * len(jobs)
        groups: dict[int, list[int]] = {}
        for r, job in enumerate(jobs):
            if job.done or job._reuse():
                out[r] = True
            else:
                groups.setdefault(job._next_block()[2], []).append(r)
        for i, rows in groups.items():
            if len(rows) == 1:
                job = jobs[rows[0]]
                h, fast, _, _ = job._next_block()
                h, fast, _ = job.model._run(h, fast, i, i + 1)
                out[rows[0]] = job._block_done(h, fast)
                continue
            cursors = [jobs[r]._next_block() for r in rows]
            lengths = [c[0].shape[1] for c in cursors]
            T = max(lengths)
            h = torch.cat([F.pad(c[0], (0, 0, 0, T - n)) for c, n in zip(cursors, lengths, strict=True)])
            valid = torch.arange(T, device=h.device)[None, :] < torch.tensor(lengths, device=h.device)[:, None]
            fast = FastState(S=tuple(torch.cat(t) for t in zip(*(c[1].S for c in cursors), strict=True)),
                             conv=tuple(torch.cat(t) for t in zip(*(c[1].conv for c in cursors), strict=True)))
            h, fast, _ = jobs[rows[0]].model._run(h, fast, i, i + 1, valid=valid)
            for k, (r, n) in enumerate(zip(rows, lengths, strict=True)):
                row = slice(k, k + 1)
                out[r] = jobs[r]._block_done(h[row, :n], _own_rows(fast.S, fast.conv, row))
        return [bool(x) for x in out]

    @torch.no_grad()
    def run_pass(self) -> None:
        """Run the rest of the current pass (a no-op once all ``loops`` passes ran)."""
        while not self.done and not self.run_step():
            pass

    @torch.no_grad()
    def commit(self) -> HybridState:
        """The new state: committed = the consolidated FastState; window cleared or cut."""
        m, st, cfg = self.model, self.state, self.model.config
        if self.n_consolidated == 0 and self.evict_len == 0:
            return st.clone()
        if self.n_consolidated and self.passes_done == 0:
            self.run_pass()
        fast = self._fast
        n, b = cfg.n_layers, cfg.span[1]
        if self.n_consolidated and b < n and not (self.reuse_wake and self.passes_done == 1):
            # the blocks after the looped span run once, from their committed state, over the
            # loop's final hidden states
            assert self._h is not None
            fast = m._run(self._h, self._merge_suffix(fast), b, n)[1]
        new = HybridState.empty(cfg, st.batch_size, device=st.device, h_dtype=st.window_h.dtype, fast=fast)
        kept = st.window_len - self.evict_len
        if kept:
            lo = self.evict_len
            m.prefill(st.window_ids[:, lo : st.window_len], new, st.consolidate_mask[:, lo : st.window_len])
        new.tokens_seen = st.tokens_seen
        new.tokens_consolidated = st.tokens_consolidated + self.n_consolidated
        # a sleep over never-consolidate tokens alone changes nothing stored, and is not counted:
        # a stored count of such sleeps would tell how long an excluded turn was
        new.sleeps = st.sleeps + bool(self.n_consolidated)
        return new

    def _merge_suffix(self, fast: FastState) -> FastState:
        """``fast`` with the suffix GDN layers' entries reset to the committed state's."""
        cfg, committed = self.model.config, self.state.fast
        b = cfg.span[1]
        S, conv = list(fast.S), list(fast.conv)
        for j, layer in enumerate(cfg.gdn_layers):
            if layer >= b:
                S[j], conv[j] = committed.S[j], committed.conv[j]
        return FastState(S=tuple(S), conv=tuple(conv))


def _own_rows(S: tuple[torch.Tensor, ...], conv: tuple[torch.Tensor, ...], row: slice) -> FastState:
    """One row of a batched pass's fast state, copied: a view would keep the whole batch's
    tensors alive for as long as any of its sessions keeps its state (a live-state budget
    counts storage, so idle sessions would hold other sessions' rows)."""
    return FastState(S=tuple(s[row].clone() for s in S), conv=tuple(c[row].clone() for c in conv))
