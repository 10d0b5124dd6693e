"""The ship recipe: the model and its twin differ in N alone, and publishing ships loadable weights."""

from __future__ import annotations

import json

from sleepagent.model import SleepModel
from sleepagent.train.ship import ARM, PRESETS, publish_checkpoints, ship_configs
from sleepagent.train.trainer import TrainConfig, train


def test_the_model_and_its_twin_differ_in_n_alone():
    for preset in PRESETS:
        runs = ship_configs(preset)
        assert runs["main"].loops == 4 and runs["twin"].loops == 1
        assert runs["main"].model_dump(exclude={"loops"}) == runs["twin"].model_dump(exclude={"loops"})
        assert runs["main"].task == "docqa" and runs["main"].task_kwargs["varied"]
    assert ARM in {"same", "kv64", "vheads8", "heads8", "gdn3"}


def test_publishing_ships_loadable_checkpoints_without_optimizer_state(tmp_path):
    cfg = TrainConfig(task="docqa", task_kwargs=dict(n_places=[3, 3], hops=[1], questions=2, window=64, name_len=1,
                                                     page_chars=40), steps=1, batch_size=1, d_model=32,
                      n_layers=2, n_heads=2, conv_size=12, save_every=1, loops=2)
    for name in ("main", "twin"):
        train(cfg, tmp_path / name, progress=False)
    shipped = publish_checkpoints(tmp_path / "main", tmp_path / "twin", into=tmp_path / "checkpoints")
    for path in shipped.values():
        files = sorted(p.name for p in (tmp_path / "checkpoints").joinpath(path.rsplit("/", 1)[1]).iterdir())
        assert "optimizer.safetensors" not in files and "model.safetensors" in files
        assert "optimizer_scalars" not in json.loads((tmp_path / "checkpoints" / path.rsplit("/", 1)[1] /
                                                      "train.json").read_text())
        assert SleepModel.from_pretrained(path).config.d_model == 32  # a shipped model the runtime loads
