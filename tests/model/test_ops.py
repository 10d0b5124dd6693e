"""The gated delta rule kernels against an independent float64 reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from sleepagent.errors import ConfigError, ShapeError
from sleepagent.model.ops import gated_delta_rule, gdn_decode_step, naive_gdn_decode_step


def reference(q, k, v, g, beta, scale, S0):
    """The recurrence written straight from DESIGN.md, one head and one token at a time, float64.

    Deliberately shares no code with sleepagent.model.ops.
    """
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    group = HV // H
    out = torch.zeros(B, T, HV, V, dtype=torch.float64)
    finals = []
    for b in range(B):
        per_head = []
        for hv in range(HV):
            h = hv // group
            S = torch.zeros(K, V, dtype=torch.float64) if S0 is None else S0[b, hv].double()
            for t in range(T):
                kt, vt, qt = k[b, t, h].double(), v[b, t, hv].double(), q[b, t, h].double()
                decay = torch.exp(g[b, t, hv].double())
                S = decay * S
                delta = beta[b, t, hv].double() * (vt - S.T @ kt)
                S = S + torch.outer(kt, delta)
                out[b, t, hv] = S.T @ (scale * qt)
            per_head.append(S)
        finals.append(torch.stack(per_head))
    return out, torch.stack(finals)


def make_inputs(B, T, H, HV, K, V, *, dtype=torch.float64, with_state=True, seed=None):
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T, HV, V, generator=gen, dtype=dtype)
    g = -torch.rand(B, T, HV, generator=gen, dtype=dtype) * 0.5  # log decay in (-0.5, 0]
    beta = torch.rand(B, T, HV, generator=gen, dtype=dtype)
    S0 = torch.randn(B, HV, K, V, generator=gen, dtype=dtype) * 0.3 if with_state else None
    return q, k, v, g, beta, S0


CASES = [
    # B, T, H, HV, K, V, chunk, with_state
    (2, 37, 2, 2, 8, 8, 16, True),   # odd length, not a multiple of the chunk
    (1, 64, 1, 1, 16, 8, 16, False),  # exact multiple, no initial state
    (2, 23, 2, 4, 8, 12, 8, True),   # grouped value heads (HV = 2H), V != K
    (1, 5, 1, 3, 4, 4, 64, True),    # shorter than one chunk, HV = 3H
]


@pytest.mark.parametrize("backend", ["torch_chunk", "torch_recurrent"])
@pytest.mark.parametrize("B,T,H,HV,K,V,chunk,with_state", CASES)
def test_forward_matches_float64_reference(backend, B, T, H, HV, K, V, chunk, with_state):
    q, k, v, g, beta, S0 = make_inputs(B, T, H, HV, K, V, with_state=with_state)
    scale = K**-0.5
    o, S = gated_delta_rule(
        q, k, v, g, beta, initial_state=S0, output_final_state=True, backend=backend, chunk_size=chunk
    )
    o_ref, S_ref = reference(q, k, v, g, beta, scale, S0)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("B,T,H,HV,K,V,chunk,with_state", CASES)
def test_chunk_gradients_match_recurrent(B, T, H, HV, K, V, chunk, with_state):
    """Gradients of a random projection of (o, S_T) w.r.t. every input, including initial_state."""
    inputs = [
        x.requires_grad_() if x is not None else None for x in make_inputs(B, T, H, HV, K, V, with_state=with_state)
    ]
    leaves = [x for x in inputs if x is not None]
    q, k, v, g, beta, S0 = inputs
    gen = torch.Generator().manual_seed(1)
    w_o = torch.randn(B, T, HV, V, generator=gen, dtype=torch.float64)
    w_s = torch.randn(B, HV, K, V, generator=gen, dtype=torch.float64)
    grads = {}
    for backend in ("torch_chunk", "torch_recurrent"):
        o, S = gated_delta_rule(
            q, k, v, g, beta, initial_state=S0, output_final_state=True, backend=backend, chunk_size=chunk
        )
        grads[backend] = torch.autograd.grad((o * w_o).sum() + (S * w_s).sum(), leaves)
    for a, b in zip(grads["torch_chunk"], grads["torch_recurrent"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    if S0 is not None:
        assert grads["torch_chunk"][-1].abs().sum() > 0


def test_chunk_gradcheck_small():
    q, k, v, g, beta, S0 = make_inputs(1, 7, 1, 2, 3, 3, seed=3)
    args = [x.requires_grad_() for x in (q, k, v, g, beta, S0)]

    def f(q, k, v, g, beta, S0):
        o, S = gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=True,
                                backend="torch_chunk", chunk_size=4)
        return o, S

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("split", [1, 13, 32, 49])
def test_split_and_carry_equals_one_pass(split):
    q, k, v, g, beta, S0 = make_inputs(2, 50, 2, 2, 8, 8)
    kw = dict(output_final_state=True, backend="torch_chunk", chunk_size=16)
    o, S = gated_delta_rule(q, k, v, g, beta, initial_state=S0, **kw)
    a = slice(0, split)
    b = slice(split, None)
    o1, S1 = gated_delta_rule(q[:, a], k[:, a], v[:, a], g[:, a], beta[:, a], initial_state=S0, **kw)
    o2, S2 = gated_delta_rule(q[:, b], k[:, b], v[:, b], g[:, b], beta[:, b], initial_state=S1, **kw)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S2, S, rtol=1e-10, atol=1e-10)


def test_float32_inputs_match_float64_reference():
    q, k, v, g, beta, S0 = make_inputs(2, 45, 2, 4, 16, 16, dtype=torch.float32)
    o, S = gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=True, use_qk_l2norm=True)
    qn = torch.nn.functional.normalize(q.double(), dim=-1, eps=0)
    kn = torch.nn.functional.normalize(k.double(), dim=-1, eps=0)
    o_ref, S_ref = reference(qn, kn, v, g, beta, 16**-0.5, S0)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S.double(), S_ref, rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise_clear_errors():
    q, k, v, g, beta, S0 = make_inputs(1, 4, 2, 3, 4, 4, seed=0)  # HV=3 not a multiple of H=2
    with pytest.raises(ShapeError, match="multiple"):
        gated_delta_rule(q, k, v, g, beta)
    q, k, v, g, beta, S0 = make_inputs(1, 4, 1, 1, 4, 4, seed=0)
    with pytest.raises(ShapeError):
        gated_delta_rule(q, k[:, :3], v, g, beta)
    with pytest.raises(ShapeError):
        gated_delta_rule(q, k, v, g, beta, initial_state=S0[:, :, :2])
    with pytest.raises(ConfigError, match="CUDA"):
        gated_delta_rule(q, k, v, g, beta, backend="fla")
    with pytest.raises(ConfigError, match="unknown backend"):
        gated_delta_rule(q, k, v, g, beta, backend="triton")  # type: ignore[arg-type]


def decode_reference(qk, v, a, b, S, neg_A, dt_bias, scale, eps):
    """One GDN decode token in float64 from the formulas in DESIGN.md: the gates, the l2-norm of
    q and k (eps inside the sqrt), then :func:`reference` for one token."""
    qk, v, a, b, S, neg_A, dt_bias = (x.double() for x in (qk, v, a, b, S, neg_A, dt_bias))
    beta = torch.sigmoid(b)
    g = neg_A * torch.log1p(torch.exp(a + dt_bias))  # softplus, written out
    q, k = (x / torch.sqrt((x * x).sum(-1, keepdim=True) + eps) for x in (qk[:, 0], qk[:, 1]))
    o, S_new = reference(q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None], scale, S)
    return o[:, 0], S_new


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,H,HV,K,V", [(1, 4, 4, 32, 32), (3, 2, 4, 8, 12), (2, 1, 3, 16, 8)])
@pytest.mark.parametrize("unit_scale", [False, True])
def test_decode_step_matches_float64_reference(dtype, B, H, HV, K, V, unit_scale):
    """The fused decode step and its spelt-out reference, on fresh random inputs, against float64
    (``scale=1.0`` too: the layer's decode passes it and folds the query scale elsewhere)."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    qk = torch.randn(B, 2, H, K, generator=gen, dtype=dtype) * 2
    v = torch.randn(B, HV, V, generator=gen, dtype=dtype)
    a, b = (torch.randn(B, HV, generator=gen, dtype=dtype) * 2 for _ in range(2))
    S = (torch.randn(B, HV, K, V, generator=gen) * 0.3).to(dtype)
    neg_A = -torch.empty(HV).uniform_(1, 16, generator=gen).to(dtype)
    dt_bias = torch.randn(HV, generator=gen, dtype=dtype)
    scale, eps = 1.0 if unit_scale else K**-0.5, 1e-6
    o_ref, S_ref = decode_reference(qk, v, a, b, S, neg_A, dt_bias, scale, eps)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for fn in (gdn_decode_step, naive_gdn_decode_step):
        S_in = S.clone()
        o, S_new = fn(qk, v, a, b, S, neg_A, dt_bias, scale, eps)
        assert o.shape == (B, HV, V) and o.dtype == dtype and S_new.shape == (B, HV, K, V)
        torch.testing.assert_close(o.double(), o_ref, **tol)
        torch.testing.assert_close(S_new.double(), S_ref, **tol)
        assert torch.equal(S, S_in)  # the input state is never written


def test_decode_step_equals_gated_delta_rule_one_token():
    """The decode step is gated_delta_rule (use_qk_l2norm) over one token, gates given as g/beta."""
    q, k, v, g, beta, S0 = make_inputs(2, 1, 2, 4, 8, 8, dtype=torch.float32, seed=3)
    # a, b such that the step's gates reproduce g and beta: neg_A = -1, softplus(a) = -g
    a = torch.log(torch.expm1(-g[:, 0]))
    b = torch.logit(beta[:, 0])
    o, S = gdn_decode_step(torch.stack([q[:, 0], k[:, 0]], 1), v[:, 0], a, b, S0,
                           -torch.ones(4), torch.zeros(4), 8**-0.5)
    o_ref, S_ref = gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=True,
                                    use_qk_l2norm=True, backend="torch_recurrent")
    torch.testing.assert_close(o, o_ref[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S, S_ref, rtol=1e-5, atol=1e-5)
