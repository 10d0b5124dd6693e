"""Building blocks of the hybrid: RMSNorm, SwiGLU MLP, window attention and Gated DeltaNet.

Layers are thin: projections, reshapes and the call into :mod:`sleepagent.model.ops`. No
recurrence math lives here, so a kernel can be swapped or fixed without touching modules or
checkpoints. Every mixer takes its recurrent inputs explicitly and returns the updated ones; none
keeps state on ``self``, which is what lets the same weights run a wake pass and N sleep passes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import SleepHybridConfig
from .ops import Backend, gated_delta_rule, gdn_decode_step

__all__ = [
    "MLP",
    "AttnDecodeWeights",
    "GDNDecodeWeights",
    "GatedDeltaNet",
    "MLPDecodeWeights",
    "RMSNorm",
    "WindowAttention",
    "apply_rope",
    "decode_projection",
    "rope_at",
    "rope_rows",
    "rope_tables",
    "stream_norm",
]


# --- the decode step's weights ------------------------------------------------------------------
# A decode step of a small model is dispatch-bound (about 10 us of matrix work per projection, a
# few us of overhead per op), so the one-token path runs on weights prepared once per set of
# parameters, projections transposed so that a step is one ``mm`` per matrix, and the GDN decay
# rate as -exp(A_log). Its residual stream carries one extra element, the constant
# c = sqrt(d * eps), which the projections that read the stream ignore (a zero row) and those
# that write it leave alone (a zero column). Then RMSNorm is a vector norm and a division:
#
#     h * rsqrt(mean(h^2) + eps) * w  =  [h, c] / ||[h, c]|| * sqrt(d) * w
#
# with sqrt(d) * w (the norm's weight) folded into the projection that reads it. Derived tensors
# only: nothing here enters the state_dict, so fingerprints and saved states are unchanged
# (SleepHybridLM rebuilds them when a weight changes).


def decode_projection(
    weight: torch.Tensor, norm_weight: torch.Tensor | None = None, *, reads_stream: bool = False,
    writes_stream: bool = False,
) -> torch.Tensor:
    """``weight`` [out, in] as the decode step's [in', out'] right-hand operand: with
    ``norm_weight`` (the RMSNorm before it), that weight times sqrt(in) folded into its columns;
    ``reads_stream`` adds a zero row for the stream's constant element, ``writes_stream`` a zero
    column so the constant passes through the residual add unchanged (see the note above)."""
    w = weight.detach().float()
    if norm_weight is not None:
        w = w * (norm_weight.detach().float() * w.shape[1] ** 0.5)[None, :]
    if reads_stream:
        w = torch.cat([w, w.new_zeros(w.shape[0], 1)], dim=1)
    if writes_stream:
        w = torch.cat([w, w.new_zeros(1, w.shape[1])], dim=0)
    # [in, out] contiguous: a one-row mm reads it row after row (about a fifth faster than the
    # transpose of a contiguous [out, in], which is how the floor's mv reads it; measured)
    return w.to(weight.dtype).t().contiguous()


def _out(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """``x @ w``, plus ``residual`` in the same op (addmm) when given: the residual add is free."""
    return torch.mm(x, w) if residual is None else torch.addmm(residual, x, w)


def stream_norm(h: torch.Tensor) -> torch.Tensor:
    """The decode step's RMSNorm of the extended residual stream (weight folded elsewhere)."""
    return h / torch.linalg.vector_norm(h, dim=-1, keepdim=True)


class MLPDecodeWeights(NamedTuple):
    gate_up: torch.Tensor  # [d + 1, 2 * hidden], norm2 folded in
    down: torch.Tensor  # [hidden, d + 1]


class AttnDecodeWeights(NamedTuple):
    qkv: torch.Tensor  # [d + 1, (H + 2 Hkv) D], norm1 and q's D^-0.5 folded in
    out: torch.Tensor  # [H D, d + 1]
    rope_cos: torch.Tensor  # [W, D] and
    rope_sin: torch.Tensor  # [W, D]: rope_rows


class GDNDecodeWeights(NamedTuple):
    in_proj: torch.Tensor  # [d + 1, P], norm1 folded in
    conv: torch.Tensor  # [conv_dim, conv_size]
    neg_A: torch.Tensor  # [HV] float32: -exp(A_log)
    dt_bias: torch.Tensor  # [HV] float32
    out: torch.Tensor  # [HV V, d + 1], o_norm's weight (per head, tiled) and sqrt(V) folded in
    o_eps: torch.Tensor  # 0-d: sqrt(V * o_norm.eps) / K^-0.5 (the query scale, see decode)


def rope_rows(
    window: int, dim: int, theta: float, dtype: torch.dtype, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two [window, dim] tables, cos and signed sin per position, such that :func:`apply_rope`
    of x [..., dim] at p is :func:`rope_at` ``(x, cos[p], sin[p])``: cos repeated over both
    halves, sin negated on the first half (which reads the second half, rolled in)."""
    cos, sin = rope_tables(torch.arange(window, device=device), dim, theta, torch.float32)
    return torch.cat([cos, cos], dim=1).to(dtype), torch.cat([-sin, sin], dim=1).to(dtype)


def rope_at(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of x [..., D] at one position, from its :func:`rope_rows` rows cos, sin [D]."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: bf16 sums of squares lose the small components.
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)

    def decode_weights(self, norm_weight: torch.Tensor | None = None) -> MLPDecodeWeights:
        return MLPDecodeWeights(
            decode_projection(self.gate_up.weight, norm_weight, reads_stream=True),
            decode_projection(self.down.weight, writes_stream=True),
        )

    @staticmethod
    def decode(xn: torch.Tensor, w: MLPDecodeWeights, residual: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row: xn [B, d + 1] the normalised stream (see :func:`stream_norm`)."""
        gate, up = torch.mm(xn, w.gate_up).chunk(2, dim=1)
        return _out(F.silu(gate) * up, w.down, residual)


def rope_tables(positions: torch.Tensor, dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables [T, dim/2] for integer positions [T] (rotate-half convention)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [T, D/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class WindowAttention(nn.Module):
    """Causal softmax attention over the current window only, RoPE positions within the window.

    ``forward(x, past_k, past_v)`` attends from the new tokens to the cached window prefix plus
    themselves and returns the new tokens' keys and values for the caller to cache. Keys are
    cached after RoPE: positions are window-relative, and a window is always rebuilt from
    position 0 after an eviction, so cached keys never need re-rotating.
    """

    def __init__(self, cfg: SleepHybridConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.attn_kv_heads
        self.head_dim = cfg.attn_head_dim
        self.theta = cfg.rope_theta
        self.qkv = nn.Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, past_k: torch.Tensor | None = None, past_v: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [B, T, d]; past_k/past_v: [B, Hkv, L, D] (the window so far) or None.

        Returns y [B, T, d] and the new tokens' k, v: [B, Hkv, T, D].
        """
        B, T, _ = x.shape
        D, H, Hkv = self.head_dim, self.n_heads, self.n_kv_heads
        L = 0 if past_k is None else past_k.shape[2]
        q, k, v = self.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # [B, Hkv, T, D]
        v = v.view(B, T, Hkv, D).transpose(1, 2)
        cos, sin = rope_tables(torch.arange(L, L + T, device=x.device), D, self.theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_all = k if past_k is None else torch.cat([past_k, k], dim=2)
        v_all = v if past_v is None else torch.cat([past_v, v], dim=2)
        if L == 0:
            y = F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True, enable_gqa=H != Hkv)
        else:
            # query i sits at window position L + i and sees keys 0..L+i
            mask = torch.ones(T, L + T, dtype=torch.bool, device=x.device).tril(diagonal=L)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask[None], enable_gqa=H != Hkv)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.out(y), k, v

    def decode_weights(self, norm_weight: torch.Tensor | None, window: int) -> AttnDecodeWeights:
        w = self.qkv.weight
        cos, sin = rope_rows(window, self.head_dim, self.theta, w.dtype, w.device)
        # the attention scale D^-0.5 folded into q's rows (RoPE is linear: it commutes)
        scale = torch.ones(w.shape[0], device=w.device)
        scale[: self.n_heads * self.head_dim] = self.head_dim**-0.5
        qkv = decode_projection(w.detach().float() * scale[:, None], norm_weight, reads_stream=True)
        return AttnDecodeWeights(
            qkv.to(w.dtype), decode_projection(self.out.weight, writes_stream=True), cos, sin
        )

    def decode(
        self, xn: torch.Tensor, w: AttnDecodeWeights, k_cache: torch.Tensor, v_cache: torch.Tensor, L: int,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One token per row at window position ``L`` (every row's window holds L tokens): xn
        [B, d + 1] the normalised stream (:func:`stream_norm`); writes the token's key and value into slot L of the
        preallocated caches [B, Hkv, W, D] and attends over slots [0, L]. Equals :meth:`forward`
        with past_k/past_v = the caches' first L slots, up to float rounding."""
        B = xn.shape[0]
        D, H, Hkv = self.head_dim, self.n_heads, self.n_kv_heads
        qkv = torch.mm(xn, w.qkv)  # [B, (H + 2 Hkv) D]; q already scaled by D^-0.5
        qk, v = qkv.split([(H + Hkv) * D, Hkv * D], dim=1)
        q, k = rope_at(qk.view(B, H + Hkv, D), w.rope_cos[L], w.rope_sin[L]).split([H, Hkv], dim=1)
        k_cache.select(2, L).copy_(k)
        v_cache.select(2, L).copy_(v.view(B, Hkv, D))
        keys, values = k_cache.narrow(2, 0, L + 1), v_cache.narrow(2, 0, L + 1)
        if H != Hkv:
            y = F.scaled_dot_product_attention(q[:, :, None], keys, values, enable_gqa=True, scale=1.0)
        else:  # one query: three batched ops are cheaper than SDPA's setup
            scores = torch.bmm(q.reshape(B * H, 1, D), keys.view(B * H, L + 1, D).transpose(1, 2))
            y = torch.bmm(torch.softmax(scores, dim=-1), values.view(B * H, L + 1, D))
        return _out(y.view(B, H * D), w.out, residual)

    def decode_rows(
        self, xn: torch.Tensor, w: AttnDecodeWeights, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor],
        lengths: list[int], residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`decode` for rows of different windows (batched decode over several states):
        row b is at window position ``lengths[b]`` of its own caches ``k_caches[b]``,
        ``v_caches[b]`` [1, Hkv, W, D]. Writes each row's key and value into slot lengths[b] of
        its caches and attends over their first max(lengths) + 1 slots, stacked, with the slots
        after lengths[b] masked out. Equals :meth:`decode` on each row alone up to float rounding."""
        B = xn.shape[0]
        D, H, Hkv = self.head_dim, self.n_heads, self.n_kv_heads
        Lmax = max(lengths)
        pos = torch.tensor(lengths, device=xn.device)
        qkv = torch.mm(xn, w.qkv)  # q already scaled by D^-0.5
        qk, v = qkv.split([(H + Hkv) * D, Hkv * D], dim=1)
        q, k = rope_at(qk.view(B, H + Hkv, D), w.rope_cos[pos][:, None], w.rope_sin[pos][:, None]).split([H, Hkv], 1)
        v = v.view(B, Hkv, D)
        for b, L in enumerate(lengths):
            k_caches[b].select(2, L).copy_(k[b : b + 1])
            v_caches[b].select(2, L).copy_(v[b : b + 1])
        if B == 1:
            keys, values = k_caches[0].narrow(2, 0, Lmax + 1), v_caches[0].narrow(2, 0, Lmax + 1)
        else:
            keys = torch.cat([c.narrow(2, 0, Lmax + 1) for c in k_caches])  # [B, Hkv, Lmax + 1, D]
            values = torch.cat([c.narrow(2, 0, Lmax + 1) for c in v_caches])
        slots = torch.arange(Lmax + 1, device=xn.device)
        mask = torch.zeros(B, Lmax + 1, dtype=qk.dtype, device=xn.device).masked_fill(
            slots[None, :] > pos[:, None], float("-inf"))  # [B, Lmax + 1]
        if H != Hkv:
            y = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask[:, None, None, :],
                                               enable_gqa=True, scale=1.0)
        else:
            scores = torch.baddbmm(
                mask[:, None, :].expand(B, H, Lmax + 1).reshape(B * H, 1, Lmax + 1),
                q.reshape(B * H, 1, D), keys.reshape(B * H, Lmax + 1, D).transpose(1, 2),
            )
            y = torch.bmm(torch.softmax(scores, dim=-1), values.reshape(B * H, Lmax + 1, D))
        return _out(y.reshape(B, H * D), w.out, residual)

    def decode_masked(
        self, xn: torch.Tensor, w: AttnDecodeWeights, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`decode` with shapes that never depend on the window length (what a compiled
        step needs so that it does not recompile every token): the position is a [1] long
        tensor, the token's key and value are written into slot ``pos`` with ``index_copy_``, and
        it attends over all W slots with the slots after ``pos`` masked out."""
        B = xn.shape[0]
        D, H, Hkv = self.head_dim, self.n_heads, self.n_kv_heads
        qkv = torch.mm(xn, w.qkv)
        # pos is a [1] tensor: an index, never a Python int the graph would specialise on
        qk = rope_at(qkv[:, : (H + Hkv) * D].view(B, H + Hkv, D), w.rope_cos[pos][0], w.rope_sin[pos][0])
        k_cache.index_copy_(2, pos, qk[:, H:, None])
        v_cache.index_copy_(2, pos, qkv[:, (H + Hkv) * D :].view(B, Hkv, 1, D))
        slots = torch.arange(k_cache.shape[2], device=xn.device)
        mask = torch.zeros(slots.shape, dtype=qk.dtype, device=xn.device).masked_fill(slots > pos, float("-inf"))
        if H != Hkv:
            y = F.scaled_dot_product_attention(qk[:, :H, None], k_cache, v_cache, attn_mask=mask[None],
                                               enable_gqa=True, scale=1.0)  # q is pre-scaled
        else:  # written out, so that inductor fuses it (its SDPA call costs more than the math)
            scores = torch.matmul(qk[:, :H, None], k_cache.transpose(2, 3)) + mask  # [B, H, 1, W]
            y = torch.matmul(torch.softmax(scores, dim=-1), v_cache)
        return _out(y.reshape(B, H * D), w.out, residual)

    def forward_padded(
        self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Several new tokens per row, rows right-padded, windows of different lengths (batched
        prefill).

        x: [B, T, d]; past_k/past_v: [B, Hkv, Lmax, D] whose slots >= lengths[b] are padding;
        lengths: [B] long. Row b's token t sits at window position lengths[b] + t and sees keys
        0..lengths[b]-1 and the row's new tokens up to itself, exactly as :meth:`forward` with
        that row alone; a padded token's output is garbage and never read.
        """
        B, T, _ = x.shape
        D, H, Hkv = self.head_dim, self.n_heads, self.n_kv_heads
        Lmax = past_k.shape[2]
        q, k, v = self.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, Hkv, D).transpose(1, 2)
        v = v.view(B, T, Hkv, D).transpose(1, 2)
        positions = lengths[:, None] + torch.arange(T, device=x.device)[None, :]  # [B, T]
        cos, sin = rope_tables(positions.flatten(), D, self.theta, q.dtype)
        cos, sin = cos.view(B, 1, T, D // 2), sin.view(B, 1, T, D // 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_all = torch.cat([past_k, k], dim=2)
        v_all = torch.cat([past_v, v], dim=2)
        slots = torch.arange(Lmax, device=x.device)
        past_ok = (slots[None, :] < lengths[:, None])[:, None, :].expand(B, T, Lmax)  # [B, T, Lmax]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None].expand(B, T, T)
        mask = torch.cat([past_ok, causal], dim=2)  # [B, T, Lmax + T]
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask[:, None], enable_gqa=H != Hkv)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.out(y), k, v

    def forward_rows(
        self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new token per row, rows with different window lengths (batched decode).

        x: [B, 1, d]; past_k/past_v: [B, Hkv, Lmax, D] whose slots >= lengths[b] are padding;
        lengths: [B] long. Row b's token sits at window position lengths[b] and sees keys
        0..lengths[b]-1 plus itself, exactly as :meth:`forward` with that row alone.
        """
        B, T, _ = x.shape
        assert T == 1
        D, H, Hkv = self.head_dim, self.n_heads, self.n_kv_heads
        Lmax = past_k.shape[2]
        q, k, v = self.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, 1, H, D).transpose(1, 2)
        k = k.view(B, 1, Hkv, D).transpose(1, 2)
        v = v.view(B, 1, Hkv, D).transpose(1, 2)
        cos, sin = rope_tables(lengths, D, self.theta, q.dtype)  # [B, D/2]
        cos, sin = cos[:, None, None, :], sin[:, None, None, :]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_all = torch.cat([past_k, k], dim=2)
        v_all = torch.cat([past_v, v], dim=2)
        slots = torch.arange(Lmax + 1, device=x.device)
        mask = (slots[None, :] < lengths[:, None]) | (slots[None, :] == Lmax)  # [B, Lmax + 1]
        y = F.scaled_dot_product_attention(
            q, k_all, v_all, attn_mask=mask[:, None, None, :], enable_gqa=H != Hkv
        )
        y = y.transpose(1, 2).reshape(B, 1, H * D)
        return self.out(y), k, v


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet token mixer; its recurrent state S [B, HV, K, V] is the fast weights.

    q, k, v go through a short causal depthwise conv and SiLU; q, k are L2-normalised in the
    kernel; beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias); the output is
    RMSNorm(o) * silu(gate) per head, then projected back to d_model.
    """

    def __init__(self, cfg: SleepHybridConfig) -> None:
        super().__init__()
        self.H, self.HV = cfg.gdn_heads, cfg.v_heads
        self.K, self.V = cfg.head_k_dim, cfg.head_v_dim
        self.conv_size = cfg.conv_size
        self.chunk_size = cfg.chunk_size
        self.conv_dim = cfg.conv_dim
        # One fused input projection: [q | k | v | a | b | gate].
        self.split_sizes = [self.conv_dim, self.HV, self.HV, self.HV * self.V]
        self.in_proj = nn.Linear(cfg.d_model, sum(self.split_sizes), bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, 1, self.conv_size))
        self.A_log = nn.Parameter(torch.empty(self.HV))
        self.dt_bias = nn.Parameter(torch.empty(self.HV))
        self.o_norm = RMSNorm(self.V, cfg.norm_eps)
        self.out = nn.Linear(self.HV * self.V, cfg.d_model, bias=False)
        self.reset_gates()

    @torch.no_grad()
    def reset_gates(self) -> None:
        """Mamba-style init: decay rates A in [1, 16], time steps dt log-uniform in [1e-3, 0.1]."""
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))
        self.A_log.copy_(torch.empty(self.HV).uniform_(1, 16).log())
        dt = torch.exp(torch.empty(self.HV).uniform_(math.log(1e-3), math.log(0.1))).clamp(min=1e-4)
        # inverse of softplus, so that softplus(dt_bias) == dt at init
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(
        self, x: torch.Tensor, S: torch.Tensor, conv_tail: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [B, T, d]; S: [B, HV, K, V]; conv_tail: [B, conv_dim, conv_size - 1]; ``valid``
        [B, T]: the real tokens of right-padded rows (padding neither writes nor decays the
        state, and the conv tail is taken at each row's last real token).

        Returns y [B, T, d], the state after the T tokens, and the new conv tail.
        """
        B, T, _ = x.shape
        qkv, a, b, gate = self.in_proj(x).split(self.split_sizes, dim=-1)
        # causal depthwise conv, continuing from the previous tokens' tail
        seq = torch.cat([conv_tail.to(qkv.dtype), qkv.transpose(1, 2)], dim=2)  # [B, C, ks-1+T]
        qkv = F.silu(F.conv1d(seq, self.conv_weight.to(qkv.dtype), groups=self.conv_dim)).transpose(1, 2)
        if valid is None:
            # a copy: a view would keep the whole [B, C, ks-1+T] input alive in the session's state
            new_tail = seq[:, :, seq.shape[2] - (self.conv_size - 1) :].clone()
        else:  # row b's tail: its last conv_size - 1 inputs before the padding
            ends = valid.sum(1)  # [B]
            idx = ends[:, None] + torch.arange(self.conv_size - 1, device=x.device)[None, :]  # [B, ks-1]
            new_tail = seq.gather(2, idx[:, None, :].expand(-1, seq.shape[1], -1))
        q, k, v = qkv.split([self.H * self.K, self.H * self.K, self.HV * self.V], dim=-1)
        q = q.view(B, T, self.H, self.K)
        k = k.view(B, T, self.H, self.K)
        v = v.view(B, T, self.HV, self.V)
        beta = b.float().sigmoid()
        # If the model runs in bf16, A_log.exp() must still be float32 or the decay rounds badly.
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())
        if valid is not None:  # padding: no write (beta 0) and no decay (g 0)
            beta = beta * valid[:, :, None]
            g = g * valid[:, :, None]
        # Decode steps (T == 1) take the recurrent form: one rank-1 update, no chunk padding.
        backend: Backend = "torch_recurrent" if T == 1 and not x.is_cuda else "auto"
        o, S_new = gated_delta_rule(
            q, k, v, g, beta,
            initial_state=S, output_final_state=True, use_qk_l2norm=True,
            backend=backend, chunk_size=self.chunk_size,
        )
        assert S_new is not None  # output_final_state=True
        o = self.o_norm(o) * F.silu(gate.view(B, T, self.HV, self.V))
        return self.out(o.reshape(B, T, self.HV * self.V)), S_new, new_tail

    def decode_weights(self, norm_weight: torch.Tensor | None) -> GDNDecodeWeights:
        # per head, times sqrt(V): decode normalises o by hypot(||o||, sqrt(V eps)) (see decode)
        o_norm = self.o_norm.weight.detach().float().repeat(self.HV) * self.V**0.5  # [HV V]
        out = (self.out.weight.detach().float() * o_norm[None, :]).to(self.out.weight.dtype)
        return GDNDecodeWeights(
            in_proj=decode_projection(self.in_proj.weight, norm_weight, reads_stream=True),
            conv=self.conv_weight.detach()[:, 0].contiguous(),
            neg_A=-self.A_log.detach().float().exp(),
            dt_bias=self.dt_bias.detach().float(),
            out=decode_projection(out, writes_stream=True),
            # over the query scale K^-0.5: decode reads o out unscaled (see decode)
            o_eps=torch.tensor((self.V * self.o_norm.eps * self.K) ** 0.5, dtype=self.out.weight.dtype,
                               device=self.out.weight.device),
        )

    def decode(
        self, xn: torch.Tensor, w: GDNDecodeWeights, S: torch.Tensor, conv_tail: torch.Tensor,
        residual: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token per row: xn [B, d + 1] the normalised stream; S, conv_tail as in :meth:`forward`
        (read, never written). Returns y [B, d], the new state and the new conv tail; equals
        :meth:`forward` over one token up to float rounding (:func:`gdn_decode_step`)."""
        B = xn.shape[0]
        z = torch.mm(xn, w.in_proj)
        x_in, a, b, gate = z.split(self.split_sizes, dim=1)
        seq = torch.cat([conv_tail.to(z.dtype), x_in[:, :, None]], dim=2)  # [B, conv_dim, conv_size]
        c = F.silu((seq * w.conv).sum(2))  # the causal depthwise conv's last output
        qk, v = c.split([2 * self.H * self.K, self.HV * self.V], dim=1)
        o, S_new = gdn_decode_step(
            qk.view(B, 2, self.H, self.K), v.view(B, self.HV, self.V), a, b, S, w.neg_A, w.dt_bias,
            1.0, 1e-6,
        )
        # o_norm: o * rsqrt(mean(o^2) + eps) = sqrt(V) o / hypot(||o||, sqrt(V eps)), sqrt(V) in w.out;
        # o came out without the query scale s = K^-0.5, which the norm removes but for its eps:
        # s o / hypot(||s o||, e) = o / hypot(||o||, e / s), and w.o_eps is e / s
        norm = torch.hypot(torch.linalg.vector_norm(o, dim=-1, keepdim=True), w.o_eps)
        o = o / norm * F.silu(gate.view(B, self.HV, self.V))
        return _out(o.view(B, self.HV * self.V), w.out, residual), S_new, seq[:, :, 1:]
