"""grow: a larger model that starts out computing what the small one computed, and learns."""

from __future__ import annotations

import pytest
import torch

from sleepagent.errors import CheckpointError, ConfigError
from sleepagent.model import SleepHybridConfig, SleepHybridLM
from sleepagent.train.grow import grow

SHAPES = [
    dict(gdn_heads=4),  # new key heads (and their value heads)
    dict(gdn_v_heads=4),  # two value heads per key head
    dict(gdn_v_heads=8),
    dict(gdn_head_v_dim=24),  # wider values
    dict(insert_gdn=[2]),  # a GDN block between the two pairs
    dict(insert_gdn=[0, 5]),
    dict(gdn_heads=4, gdn_head_v_dim=24, insert_gdn=[1]),
]


def _small(seed: int = 0) -> SleepHybridLM:
    torch.manual_seed(seed)
    cfg = SleepHybridConfig(vocab_size=53, d_model=32, n_layers=4, gdn_heads=2, window=16, conv_size=4, chunk_size=8,
                            tie_embeddings=False, loops=3, norm_eps=1e-12)
    model = SleepHybridLM(cfg).double()
    with torch.no_grad():  # away from the init, so that copied weights are told apart from fresh ones
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_grown_model_computes_the_same_function_and_every_parameter_learns(shape):
    model = _small()
    ids = torch.randint(0, 53, (2, 45))  # three windows: wake, N = 3 sleep passes, wake again
    before = model(ids, loops=3, return_logits=True).logits
    big = grow(model, **shape)
    assert big.config.n_layers == 4 + len(shape.get("insert_gdn", []))
    after = big(ids, loops=3, return_logits=True).logits
    # exact up to float32 rounding (the kernel keeps its state in float32; wider values: and the
    # RMSNorm epsilon, negligible here with norm_eps=1e-12)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # one optimiser step later every parameter has moved: nothing was left at a saddle
    opt = torch.optim.SGD(big.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        big(ids, loops=3).loss.backward()
        opt.step()
    big2 = grow(model, **shape)
    frozen = [n for (n, p), p0 in zip(big.named_parameters(), big2.parameters(), strict=True) if torch.equal(p, p0)]
    assert frozen == []


def test_wider_keys_are_close_not_exact():
    model = _small()
    ids = torch.randint(0, 53, (2, 45))
    before = model(ids, loops=3, return_logits=True).logits
    after = grow(model, gdn_head_k_dim=32)(ids, loops=3, return_logits=True).logits
    assert 0 < (after - before).abs().max() < 0.05 * before.abs().max()


def test_grow_refuses_to_shrink_or_to_change_the_head_ratio():
    model = _small()
    with pytest.raises(ConfigError, match="only grows"):
        grow(model, gdn_head_v_dim=8)
    with pytest.raises(ConfigError, match="multiple"):
        grow(grow(model, gdn_v_heads=4), gdn_heads=4, gdn_v_heads=4)
    with pytest.raises(ConfigError, match="outside"):
        grow(model, insert_gdn=[9])


def test_training_from_a_smaller_checkpoint_grows_it(tmp_path):
    """``init_from`` a checkpoint of another, smaller shape: the run starts from it grown."""
    from sleepagent.train.trainer import TrainConfig, load_checkpoint, train

    small = TrainConfig(task="rule110", task_kwargs=dict(rows=2, steps=(2,)), steps=1, batch_size=2, d_model=32,
                        n_layers=2, n_heads=2, save_every=1, window=32)
    train(small, tmp_path / "small", progress=False)
    big = small.model_copy(update=dict(init_from=str(tmp_path / "small"), gdn_v_heads=4, n_layers=3,
                                       layer_types=("gdn", "gdn", "attn")))
    train(big, tmp_path / "big", progress=False)
    model, _ = load_checkpoint(tmp_path / "big")
    assert model.config.v_heads == 4 and model.config.layer_types == ("gdn", "gdn", "attn")
    other = small.model_copy(update=dict(init_from=str(tmp_path / "small"), d_model=48))
    with pytest.raises(CheckpointError, match="architecture"):
        train(other, tmp_path / "other", progress=False)
