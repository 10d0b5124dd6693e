"""Bad configs fail at construction with a ConfigError naming the field."""

from __future__ import annotations

import pytest

from sleepagent.errors import ConfigError
from sleepagent.model import SleepHybridConfig

OK = dict(vocab_size=64, d_model=32, n_layers=2, window=16)


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        (dict(evict="sliding", keep=16), "keep", "keep=16 must be smaller than window=16"),
        (dict(keep=4), "keep", "only applies to evict='sliding'"),
        (dict(layer_types=("gdn", "mamba")), "layer_types", "layer_types"),
        (dict(layer_types=("gdn",)), "layer_types", "n_layers"),
        (dict(n_heads=5), "n_heads", "does not divide d_model"),
        (dict(gdn_heads=3), "gdn_heads", "does not divide d_model"),
        (dict(gdn_heads=2, gdn_v_heads=3), "gdn_v_heads", "multiple of gdn_heads"),
        (dict(window=0), "window", "greater than 0"),
        (dict(loop_layers=(1, 1)), "loop_layers", "start < stop"),
        (dict(evict="lru"), "evict", "evict"),
        (dict(colour="blue"), "colour", "colour"),
    ],
)
def test_bad_config_names_the_field(overrides, field, words):
    with pytest.raises(ConfigError) as info:
        SleepHybridConfig(**{**OK, **overrides})
    assert field in str(info.value)
    assert words in str(info.value)


def test_defaults_and_json_round_trip():
    cfg = SleepHybridConfig(**OK, evict="sliding", keep=4, loop_layers=(0, 1))
    assert cfg.layer_types == ("gdn", "attn")
    again = SleepHybridConfig.from_json(cfg.to_json())
    assert again == cfg and again.to_json() == cfg.to_json()
    with pytest.raises(ConfigError):
        SleepHybridConfig.from_json("[1, 2]")


def test_an_attention_only_model_is_a_baseline_that_forgets_evicted_windows():
    """No GDN layer: a study baseline. Its training forward runs, and after a hard eviction its
    predictions cannot depend on the evicted window (nothing carries across); with a window that
    holds the whole sequence they do. The runtime, which needs fast weights, refuses it by name."""
    import torch

    from sleepagent.model import SleepHybridLM

    def logits(window: int, ids: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        model = SleepHybridLM(SleepHybridConfig(**{**OK, "layer_types": ("attn", "attn"), "window": window}))
        return model(ids, loops=3, return_logits=True).logits

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 40), generator=gen)
    other = ids.clone()
    other[:, :16] = torch.randint(0, 64, (2, 16), generator=gen)  # a different first window
    torch.testing.assert_close(logits(16, ids)[:, 16:], logits(16, other)[:, 16:], rtol=0, atol=0)
    assert (logits(64, ids)[:, 16:] - logits(64, other)[:, 16:]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="attention-only"):
        SleepHybridLM(SleepHybridConfig(**{**OK, "layer_types": ("attn", "attn")})).new_state()
