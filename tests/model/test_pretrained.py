from __future__ import annotations

import json

import pytest
import torch

from sleepagent.errors import CheckpointError, ConfigError
from sleepagent.model import SleepHybridConfig, SleepModel

CFG = dict(vocab_size=268, d_model=32, n_layers=2, n_heads=2, gdn_heads=2, window=16)


def test_save_and_load_round_trip(tmp_path):
    sm = SleepModel.from_config(CFG, seed=3)
    assert SleepModel.from_config(CFG, seed=3).fingerprint == sm.fingerprint
    sm.save_pretrained(tmp_path / "ckpt")
    loaded = SleepModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.fingerprint == sm.fingerprint and loaded.config == sm.config
    ids = torch.tensor([sm.tokenizer.encode("same logits")])
    assert torch.equal(loaded.model.prefill(ids, loaded.model.new_state()), sm.model.prefill(ids, sm.model.new_state()))
    # a state saved by one restores into the other
    state = sm.model.new_state()
    sm.model.prefill(ids, state)
    assert loaded.model.load_state(sm.model.save_state(state)).working.equal(state.working)


def test_unknown_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="never downloads"):
        SleepModel.from_pretrained("no-such-model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_5", "vocab_size": 10}))
    with pytest.raises(CheckpointError, match="transformers"):
        SleepModel.from_pretrained(tmp_path)


def test_corrupt_weights_are_a_clear_error(tmp_path):
    sm = SleepModel.from_config(CFG)
    sm.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"model.safetensors"):
        SleepModel.from_pretrained(tmp_path)


def test_vocab_smaller_than_tokenizer_is_refused():
    with pytest.raises(ConfigError, match="vocab_size"):
        SleepModel.from_config(SleepHybridConfig(**{**CFG, "vocab_size": 100}))
