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
        (dict(layer_types=("attn", "attn")), "layer_types", "at least one 'gdn'"),
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
