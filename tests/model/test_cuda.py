"""The CUDA path: fla's Triton kernels and the whole model on a GPU, against CPU float64.

Skipped where there is no GPU (CI has none); run on a GPU machine with
``pip install -e '.[cuda]'`` (on a CUDA torch) and ``pytest tests/model/test_cuda.py``.
fla's kernels compute in float32 with TF32 matrix products, so the tolerances are relative to
the magnitude of the float64 reference, not float32 round-off.
"""

from __future__ import annotations

import random

import pytest
import torch

from sleepagent.errors import ConfigError
from sleepagent.model import SleepHybridLM
from sleepagent.model.ops import fla_available, fla_backward_ok, gated_delta_rule

from ..conftest import tiny_config
from .test_ops import make_inputs, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-2) -> None:
    """Equal up to ``rel`` times the reference's largest magnitude (TF32 products)."""
    want = want.double().cpu()
    torch.testing.assert_close(got.double().cpu(), want, rtol=rel, atol=rel * float(want.abs().max()))


def test_fla_is_installed():
    assert fla_available(), "pip install -e '.[cuda]' installs flash-linear-attention"


@pytest.mark.parametrize("T", [5, 64, 200])  # decode-sized (fused recurrent kernel), one chunk, several
@pytest.mark.parametrize("with_state", [True, False])
def test_fla_forward_and_backward_match_float64_reference(T, with_state):
    B, H, K, V = 2, 2, 32, 32
    inputs = make_inputs(B, T, H, H, K, V, dtype=torch.float64, with_state=with_state)
    q, k, v, g, beta, S0 = inputs
    scale = K**-0.5
    want_o, want_S = reference(q, k, v, g, beta, scale, S0)
    cuda = [x.float().cuda().requires_grad_() if x is not None else None for x in inputs]

    # inference: fla's fused recurrent kernel for T <= 64, its chunk kernel beyond
    with torch.no_grad():
        o, S = gated_delta_rule(*cuda[:5], scale=scale, initial_state=cuda[5], output_final_state=True, backend="fla")
    close(o, want_o)
    close(S, want_S)

    # training: fla's chunk kernel, or where its backward is known wrong (Hopper with Triton
    # 3.4 to 3.7.0), a clear error for backend="fla" and torch_chunk under "auto"
    backend = "fla"
    if not fla_backward_ok(q.new_empty(0).cuda().device):
        with pytest.raises(ConfigError, match="Hopper"):
            gated_delta_rule(*cuda[:5], scale=scale, initial_state=cuda[5], backend="fla")
        backend = "auto"
    o, S = gated_delta_rule(*cuda[:5], scale=scale, initial_state=cuda[5], output_final_state=True, backend=backend)
    close(o, want_o)
    close(S, want_S)
    ref = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    ro, rS = reference(*ref[:5], scale, ref[5])
    wo, wS = torch.randn_like(ro), torch.randn_like(rS)
    ((ro * wo).sum() + (rS * wS).sum()).backward()
    ((o * wo.float().cuda()).sum() + (S * wS.float().cuda()).sum()).backward()
    for name, got, want in zip(["q", "k", "v", "g", "beta", "S0"], cuda, ref, strict=True):
        if want is None:
            continue
        assert got.grad is not None, name
        close(got.grad, want.grad, rel=2e-2)


def test_fla_matches_torch_chunk_on_gpu():
    """The two fast backends agree on the same CUDA tensors (bf16-free, float32)."""
    q, k, v, g, beta, S0 = (x.float().cuda() for x in make_inputs(3, 150, 2, 4, 16, 24, dtype=torch.float64))
    o1, S1 = gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=True, backend="fla")
    o2, S2 = gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=True, backend="torch_chunk")
    close(o1, o2)
    close(S1, S2)


@pytest.mark.parametrize("loops", [1, 4])
def test_model_on_gpu_matches_cpu_float64(loops):
    """The training forward (Algorithm 1 per window) on CUDA with fla equals CPU float64."""
    torch.manual_seed(0)
    cpu = SleepHybridLM(tiny_config()).double().eval()
    gpu = SleepHybridLM(tiny_config()).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    W = cpu.config.window
    ids = torch.randint(0, cpu.config.vocab_size, (2, 3 * W + 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = cpu(ids, loops=loops, return_logits=True)
        got = gpu(ids.cuda(), loops=loops, return_logits=True)
    close(got.logits, want.logits)
    close(got.loss, want.loss)


def test_wake_and_sleep_on_gpu_match_cpu():
    """prefill + consolidate (the runtime's path) on CUDA equals the same on CPU float64."""
    torch.manual_seed(0)
    cpu = SleepHybridLM(tiny_config()).double().eval()
    gpu = SleepHybridLM(tiny_config()).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    W = cpu.config.window
    ids = torch.randint(0, cpu.config.vocab_size, (2, W), generator=torch.Generator().manual_seed(2))
    states = {}
    for name, model, x in (("cpu", cpu, ids), ("gpu", gpu, ids.cuda())):
        with torch.no_grad():
            state = model.new_state(2)
            model.prefill(x, state)
            state = model.consolidate(state, loops=4)
            logits = model.step(x[:, :1], state)
        states[name] = (state, logits)
    for got, want in zip(states["gpu"][0].fast.S, states["cpu"][0].fast.S, strict=True):
        close(got, want)
    close(states["gpu"][1], states["cpu"][1])


def test_training_on_gpu_learns_and_reloads_on_cpu(tmp_path):
    """A few depo steps on CUDA lower the loss; the checkpoint loads on CPU with the same logits."""
    from sleepagent.train.tasks import collate, make_task
    from sleepagent.train.trainer import TrainConfig, load_checkpoint, train

    cfg = TrainConfig(task="depo", task_kwargs=dict(n_max=6, k_max=2, m=8, max_len=1, window=16, edge_windows=1,
                                                    queries=4),
                      loops=4, steps=60, batch_size=16, d_model=32, n_layers=3, n_heads=2,
                      layer_types=("gdn", "attn", "attn"), adam_lr=3e-3, device="cuda", save_every=60)
    result = train(cfg, tmp_path / "run", progress=False)
    first = sum(h["loss"] for h in result["history"][:2]) / 2
    assert result["history"][-1]["loss"] < first
    on_gpu, _ = load_checkpoint(tmp_path / "run", "cuda")
    on_cpu, _ = load_checkpoint(tmp_path / "run", "cpu")
    task = make_task("depo", **cfg.task_kwargs)
    ids, mask = collate([task.sample(random.Random(0), 2)], task.pad_id)
    with torch.no_grad():
        a = on_gpu.eval()(ids.cuda(), mask.cuda(), loops=4, return_logits=True).logits
        b = on_cpu.eval().double()(ids, mask, loops=4, return_logits=True).logits
    close(a, b)
