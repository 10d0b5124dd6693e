"""``sleepagent bench kernels``: the chunked gated delta rule against the token-by-token reference.

The ratio (recurrent time / chunked time, forward and forward + backward) is what the target is
stated in, because wall-clock numbers depend on the machine and the ratio does not.
"""

from __future__ import annotations

import torch

from ..model.ops import Backend, fla_available, fla_backward_ok, gated_delta_rule
from .timing import timeit

__all__ = ["bench_kernels"]


def bench_kernels(
    lengths: tuple[int, ...] = (512, 2048, 8192),
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    fast_backend: Backend = "auto",
) -> dict:
    """Chunked (or fla, on CUDA with backend auto) vs recurrent, forward and forward+backward."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    cases = []
    for T in lengths:
        shape = (batch, T, heads, head_dim)

        def rand(*s, scale=1.0):
            return (torch.randn(*s, generator=gen) * scale).to(device).requires_grad_()

        q, k, v = rand(*shape), rand(*shape), rand(*shape)
        g = (-torch.rand(batch, T, heads, generator=gen) * 0.1).to(device).requires_grad_()
        beta = torch.rand(batch, T, heads, generator=gen).to(device).requires_grad_()
        S0 = rand(batch, heads, head_dim, head_dim, scale=0.1)
        inputs = (q, k, v, g, beta)

        def run(backend: Backend, backward: bool, inputs: tuple[torch.Tensor, ...] = inputs, S0: torch.Tensor = S0):
            def fn():
                with torch.set_grad_enabled(backward):
                    o, S = gated_delta_rule(
                        *inputs, initial_state=S0, output_final_state=True, use_qk_l2norm=True, backend=backend
                    )
                    if backward:
                        (o.sum() + S.sum()).backward()

            return fn

        row: dict[str, float] = {"T": T}
        cases_by_backend: tuple[tuple[str, Backend], ...] = (("chunk", fast_backend), ("recurrent", "torch_recurrent"))
        for name, backend in cases_by_backend:
            row[f"{name}_fwd_s"] = timeit(run(backend, False), repeats=repeats, device=device)
            row[f"{name}_fwdbwd_s"] = timeit(run(backend, True), repeats=repeats, device=device)
        row["fwd_ratio"] = row["recurrent_fwd_s"] / row["chunk_fwd_s"]
        row["fwdbwd_ratio"] = row["recurrent_fwdbwd_s"] / row["chunk_fwdbwd_s"]
        cases.append(row)
    used: str = fast_backend if fast_backend != "auto" else "torch_chunk"
    if device.type == "cuda" and fast_backend == "auto" and fla_available():
        # "auto" trains with torch_chunk where fla's backward is known wrong (see fla_backward_ok)
        used = "fla" if fla_backward_ok(device) else "fla forward, torch_chunk forward+backward"
    return {"device": str(device), "backend": used, "batch": batch, "heads": heads, "head_dim": head_dim,
            "cases": cases}
