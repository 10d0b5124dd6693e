"""The gated delta rule: a chunked PyTorch kernel, its token-by-token reference, and fla on CUDA.

The recurrence (fla's ``naive_recurrent_gated_delta_rule`` convention, state K-first)::

    S_t = e^{g_t} S_{t-1} + k_t (beta_t (v_t - e^{g_t} S_{t-1}^T k_t))^T      S: [K, V]
    o_t = S_t^T (scale q_t)

Layout (fla's; no head-first variant):

    q, k:  [B, T, H, K]
    v:     [B, T, HV, V]       HV a multiple of H (grouped value heads: head j reads q/k head j // (HV/H))
    g:     [B, T, HV]          log-space decay (<= 0)
    beta:  [B, T, HV]          write strength in (0, 1)
    initial_state / final_state: [B, HV, K, V] float32

:func:`naive_recurrent_gated_delta_rule` is the specification: a per-token loop, obviously right and
slow. :func:`chunk_gated_delta_rule` computes the same thing with chunk-parallel matmuls (the WY
form: inside a chunk the delta-rule updates are a unit-lower-triangular system, solved in one
call), and is differentiable through every input including ``initial_state``. The fla Triton
kernels are used only for CUDA tensors: fla + Triton on a CPU machine crash at launch.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError

__all__ = [
    "chunk_gated_delta_rule",
    "fla_available",
    "gated_delta_rule",
    "gdn_decode_step",
    "l2norm",
    "naive_gdn_decode_step",
    "naive_recurrent_gated_delta_rule",
]

Backend = Literal["auto", "torch_chunk", "torch_recurrent", "fla"]


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise the last dim to unit length, as fla's ``l2norm`` (eps inside the sqrt)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


@functools.cache
def fla_available() -> bool:
    """True when fla's gated-delta-rule kernels import (checked once, lazily)."""
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except Exception:  # ImportError, or Triton failing to find a driver
        return False
    return True


@functools.cache
def fla_backward_ok(device: torch.device) -> bool:
    """False where fla refuses its gated chunk backward: Hopper GPUs (compute capability 9.x) with
    Triton >= 3.4.0 and < 3.7.1 compute wrong gradients there (fla issue #640), and fla 0.6 raises
    at the first backward unless tilelang is installed. Training then uses ``torch_chunk``."""
    import importlib.util

    import triton
    from packaging.version import Version

    if torch.cuda.get_device_capability(device)[0] != 9:
        return True
    if Version("3.4.0") <= Version(triton.__version__.split("+")[0]) < Version("3.7.1"):
        return importlib.util.find_spec("tilelang") is not None
    return True


def _needs_grad(*xs: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def _compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    # float64 inputs stay float64 so tests can compare against a float64 reference and gradcheck;
    # everything else (bf16, fp16, fp32) accumulates in float32, as fla does.
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _check_inputs(q, k, v, g, beta, initial_state) -> tuple[int, int, int, int, int, int]:
    if q.dim() != 4:
        raise ShapeError(f"q must be [B, T, H, K], but got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ShapeError(f"q and k must have the same shape, but got q {tuple(q.shape)} and k {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:2] != (B, T):
        raise ShapeError(f"v must be [B={B}, T={T}, HV, V], but got shape {tuple(v.shape)}")
    HV, V = v.shape[2], v.shape[3]
    if HV % H:
        raise ShapeError(f"v's heads HV={HV} must be a multiple of q/k's heads H={H}")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, HV):
            raise ShapeError(f"{name} must be [B, T, HV] = {(B, T, HV)}, but got {tuple(x.shape)}")
    if initial_state is not None and initial_state.shape != (B, HV, K, V):
        raise ShapeError(
            f"initial_state must be [B, HV, K, V] = {(B, HV, K, V)}, but got {tuple(initial_state.shape)}"
        )
    devices = {x.device for x in (q, k, v, g, beta)} | ({initial_state.device} if initial_state is not None else set())
    if len(devices) > 1:
        raise ShapeError(f"all inputs must be on one device, but got {sorted(map(str, devices))}")
    return B, T, H, HV, K, V


def _expand_heads(x: torch.Tensor, HV: int) -> torch.Tensor:
    """[B, T, H, K] -> [B, T, HV, K]: value head j reads query/key head j // (HV // H)."""
    H = x.shape[2]
    return x if H == HV else x.repeat_interleave(HV // H, dim=2)


def naive_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token reference (the specification). Inputs already validated and head-expanded.

    q, k: [B, T, HV, K]; v: [B, T, HV, V]; g, beta: [B, T, HV].
    Returns o: [B, T, HV, V] in v's dtype, and final_state [B, HV, K, V] if output_final_state.
    """
    dt = _compute_dtype(q, k, v, g, beta)
    B, T, HV, K = q.shape
    V = v.shape[-1]
    q, k, v, g, beta = (x.to(dt) for x in (q, k, v, g, beta))
    S = q.new_zeros(B, HV, K, V) if initial_state is None else initial_state.to(dt)
    outs = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        recalled = torch.einsum("bhkv,bhk->bhv", S, k[:, t])  # what the memory returns for k_t
        delta = (v[:, t] - recalled) * beta[:, t, :, None]
        S = S + k[:, t, :, :, None] * delta[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, HV, V, dtype=dt)
    return o.to(v.dtype), (S if output_final_state else None)


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunk-parallel gated delta rule in plain PyTorch (differentiable, incl. initial_state).

    Same contract as :func:`naive_recurrent_gated_delta_rule`. Inside a chunk of C tokens, with
    gamma_t the cumulative log-decay since the chunk start and S0 the state entering the chunk, the
    "new values" u_t = beta_t (v_t - e^{g_t} S_{t-1}^T k_t) satisfy a unit-lower-triangular system

        (I + A) U = beta V - diag(beta e^gamma) K S0,   A_ts = beta_t e^{gamma_t - gamma_s} k_t.k_s  (s < t)

    so each chunk needs one triangular solve and a few matmuls; only the [K, V] state crosses
    chunk boundaries, in a Python loop of T/C steps instead of T.
    """
    dt = _compute_dtype(q, k, v, g, beta)
    B, T, HV, K = q.shape
    V = v.shape[-1]
    # A sequence shorter than one chunk is one chunk of its own length: padding it to
    # chunk_size would only multiply zeros (short windows, small prefills).
    C = max(1, min(chunk_size, T))
    # [B, T, HV, *] -> [B, HV, T, *], compute dtype
    q, k, v = (x.transpose(1, 2).to(dt) for x in (q, k, v))
    g, beta = (x.transpose(1, 2).to(dt) for x in (g, beta))
    q = q * scale
    pad = (-T) % C
    if pad:
        # Padded steps have g = 0 (no decay), beta = 0 and k = 0: they leave the state unchanged.
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    n = (T + pad) // C
    q, k, v = (x.reshape(B, HV, n, C, -1) for x in (q, k, v))  # [B, HV, n, C, *]
    g, beta = (x.reshape(B, HV, n, C) for x in (g, beta))

    gamma = g.cumsum(-1)  # [B, HV, n, C] log-decay from the chunk start, inclusive
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # decay[t, s] = e^{gamma_t - gamma_s} for s <= t, else 0 (mask before exp: no overflow)
    decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf")).exp()

    k_beta = k * beta[..., None]
    A = (k_beta @ k.transpose(-1, -2)) * decay
    A = A.masked_fill(causal.logical_not().logical_or(torch.eye(C, dtype=torch.bool, device=q.device)), 0.0)
    L = A + torch.eye(C, dtype=dt, device=q.device)  # unit lower triangular
    # U = L^{-1}(beta V) - L^{-1}(beta e^gamma K) S0; the two solves are state-independent.
    rhs = torch.cat([v * beta[..., None], k_beta * gamma.exp()[..., None]], dim=-1)
    sol = torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True)
    u_v, w_k = sol[..., :V], sol[..., V:]  # [B, HV, n, C, V], [B, HV, n, C, K]

    qk = (q @ k.transpose(-1, -2)) * decay  # intra-chunk attention, diagonal included
    q_decayed = q * gamma.exp()[..., None]  # reads the entering state, decayed to step t
    k_to_end = k * (gamma[..., -1:] - gamma).exp()[..., None]  # writes, decayed to the chunk end
    chunk_decay = gamma[..., -1].exp()[..., None, None]  # [B, HV, n, 1, 1]

    S = q.new_zeros(B, HV, K, V) if initial_state is None else initial_state.to(dt)
    outs = []
    for i in range(n):
        u = u_v[:, :, i] - w_k[:, :, i] @ S  # [B, HV, C, V]
        outs.append(q_decayed[:, :, i] @ S + qk[:, :, i] @ u)
        S = S * chunk_decay[:, :, i] + k_to_end[:, :, i].transpose(-1, -2) @ u
    o = torch.stack(outs, dim=2).reshape(B, HV, n * C, V)[:, :, :T]
    o = o.transpose(1, 2).to(v.dtype)
    return o, (S if output_final_state else None)


_CONSTANTS: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}


def _constant(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-d tensor of ``value``, made once per value, dtype and device (no op per call)."""
    if torch.compiler.is_compiling():  # a constant of the graph; a traced cache would be guarded on
        return torch.tensor(value, dtype=dtype, device=device)
    t = _CONSTANTS.get((value, dtype, device))
    if t is None:
        t = _CONSTANTS[(value, dtype, device)] = torch.tensor(value, dtype=dtype, device=device)
    return t


def naive_gdn_decode_step(
    qk: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    S: torch.Tensor,
    neg_A: torch.Tensor,
    dt_bias: torch.Tensor,
    scale: float,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`gdn_decode_step`: one token of a Gated DeltaNet layer, spelt out.

    qk: [B, 2, H, K] (q then k, before the l2-norm); v: [B, HV, V]; a, b: [B, HV] (the raw
    gate projections); S: [B, HV, K, V]; neg_A: [HV] (``-exp(A_log)``); dt_bias: [HV].
    beta = sigmoid(b), g = neg_A * softplus(a + dt_bias), then one step of
    :func:`naive_recurrent_gated_delta_rule` with l2-normalised q, k. Returns o [B, HV, V] in v's
    dtype and the new state (float32, or float64 for float64 inputs).
    """
    dt = _compute_dtype(qk, v, a, b, S)
    HV = v.shape[1]
    beta = b.to(dt).sigmoid()
    g = neg_A.to(dt) * F.softplus(a.to(dt) + dt_bias.to(dt))
    q, k = l2norm(qk[:, 0].to(dt), eps), l2norm(qk[:, 1].to(dt), eps)
    q, k = _expand_heads(q[:, None], HV), _expand_heads(k[:, None], HV)
    o, S_new = naive_recurrent_gated_delta_rule(
        q, k, v[:, None].to(dt), g[:, None], beta[:, None], scale, S.to(dt), output_final_state=True
    )
    assert S_new is not None
    return o[:, 0].to(v.dtype), S_new


def gdn_decode_step(
    qk: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    S: torch.Tensor,
    neg_A: torch.Tensor,
    dt_bias: torch.Tensor,
    scale: float,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token of a Gated DeltaNet layer in few ops: the l2-norm of q and k, the gates,
    the rank-1 delta-rule update and the readout (same contract as :func:`naive_gdn_decode_step`).

    The decode step of a small model is dispatch-bound, not compute-bound, so this keeps the op
    count down rather than the flops: q and k are normalised together (they come out of the
    conv as one tensor), the heads are broadcast elementwise ops, and ``scale=1.0`` skips the
    readout's scaling (a caller that normalises o next folds the scale into its eps). ``S`` is
    read, never written.
    """
    dt = _compute_dtype(qk, v, a, b, S)
    B, H = qk.shape[0], qk.shape[2]
    HV, V = v.shape[1], v.shape[2]
    if qk.dtype != dt or v.dtype != dt or S.dtype != dt:  # (a no-op .to still costs a call)
        qk, v, S = qk.to(dt), v.to(dt), S.to(dt)
    # l2norm of q and k at once: x / sqrt(|x|^2 + eps) = x / hypot(|x|, sqrt(eps))
    qk = qk / torch.hypot(torch.linalg.vector_norm(qk, dim=-1, keepdim=True), _constant(eps**0.5, dt, qk.device))
    if H != HV:
        qk = qk.repeat_interleave(HV // H, dim=2)
    # the heads as broadcast elementwise ops on [B, HV, K, V], not bmm: no reshape of strided rows
    # (a batch's q/k/v are columns of one [B, *] tensor), and an outer product by addcmul costs
    # half a baddbmm (measured)
    q, k = qk.unsqueeze(-1).unbind(1)  # [B, HV, K, 1] each
    decay = torch.exp(neg_A.to(dt) * F.softplus(a.to(dt) + dt_bias.to(dt)))  # e^g, [B, HV]
    S_dec = S * decay.view(B, HV, 1, 1)
    recalled = (k * S_dec).sum(2, keepdim=True)  # what the memory returns for k: [B, HV, 1, V]
    delta = (v.view(B, HV, 1, V) - recalled) * torch.sigmoid(b.to(dt)).view(B, HV, 1, 1)
    S_new = torch.addcmul(S_dec, k, delta)  # S_dec + k delta^T
    o = (q * S_new).sum(2)  # [B, HV, V]
    if scale != 1.0:
        o = o * scale
    return o.to(v.dtype), S_new


def _fla_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, needs_grad):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fla_recurrent

    # fla's own layer picks the fused recurrent kernel for short inference inputs (decode steps).
    fn = fla_recurrent if q.shape[1] <= 64 and not needs_grad else fla_chunk
    # keywords, not positions: the fused recurrent kernel's fifth parameter is gk, not beta
    o, S = fn(
        q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state,
    )
    return o, S


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
    backend: Backend = "auto",
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the gated delta rule over a sequence (see module docstring for the math and layout).

    Args:
        q, k: [B, T, H, K]. v: [B, T, HV, V]. g, beta: [B, T, HV] (g in log space).
        scale: query scale; default K ** -0.5 as in fla.
        initial_state: [B, HV, K, V] state entering the sequence (zeros if None).
        output_final_state: also return the state after the last token.
        use_qk_l2norm: L2-normalise q and k over K first (as fla's ``use_qk_l2norm_in_kernel``).
        backend: "torch_chunk" (differentiable), "torch_recurrent" (the reference), "fla" (CUDA
            only), or "auto": fla for CUDA tensors when it imports (and, when gradients are
            needed, when its backward is usable: see :func:`fla_backward_ok`), else torch_chunk.

    Returns:
        o: [B, T, HV, V] in v's dtype; final_state: [B, HV, K, V] float32 (float64 for float64
        inputs) if output_final_state else None.
    """
    _B, _T, _H, HV, K, _V = _check_inputs(q, k, v, g, beta, initial_state)
    if scale is None:
        scale = K**-0.5
    needs_grad = _needs_grad(q, k, v, g, beta, initial_state)
    if backend == "auto":
        usable = q.is_cuda and fla_available() and (not needs_grad or fla_backward_ok(q.device))
        backend = "fla" if usable else "torch_chunk"
    if backend == "fla":
        if not q.is_cuda:
            raise ConfigError(
                "backend='fla' needs CUDA tensors: fla's Triton kernels crash on CPU; use 'torch_chunk'",
                field="backend",
            )
        if not fla_available():
            raise ConfigError(
                "backend='fla' needs flash-linear-attention: pip install 'sleepagent[cuda]'", field="backend"
            )
        if needs_grad and not fla_backward_ok(q.device):
            raise ConfigError(
                "backend='fla' cannot train on this GPU: fla's gated backward is wrong on Hopper with "
                "Triton >= 3.4, < 3.7.1 (fla #640); upgrade Triton, install tilelang, or use 'auto'",
                field="backend",
            )
    elif backend not in ("torch_chunk", "torch_recurrent"):
        raise ConfigError(
            f"unknown backend {backend!r}; choose 'auto', 'torch_chunk', 'torch_recurrent' or 'fla'",
            field="backend",
        )
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q, k = _expand_heads(q, HV), _expand_heads(k, HV)
    if backend == "fla":
        return _fla_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, needs_grad)
    if backend == "torch_recurrent":
        return naive_recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state)
    return chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size)
