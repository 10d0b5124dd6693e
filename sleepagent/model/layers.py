"""Building blocks of the hybrid: RMSNorm, SwiGLU MLP, window attention and Gated DeltaNet.

Layers are thin: projections, reshapes and the call into :mod:`sleepagent.model.ops`. No
recurrence math lives here, so a kernel can be swapped or fixed without touching modules or
checkpoints. Every mixer takes its recurrent inputs explicitly and returns the updated ones; none
keeps state on ``self``, which is what lets the same weights run a wake pass and N sleep passes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import SleepHybridConfig
from .ops import Backend, gated_delta_rule

__all__ = ["MLP", "GatedDeltaNet", "RMSNorm", "WindowAttention", "apply_rope", "rope_tables"]


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
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, enable_gqa=H != Hkv)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.out(y), k, v

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
            new_tail = seq[:, :, seq.shape[2] - (self.conv_size - 1) :]
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
