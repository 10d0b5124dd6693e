"""One training forward for both models (sleepagent.model.algorithm1).

The native hybrid and the transformers adapter both train through ``training_forward``; here
both are checked against one reference written in this file from the public pieces alone
(``embed``, ``blocks``, ``head``), on configs both can express: the same windows, the same
looped span, the same N. The windows are those the runtime reads; the input checks and their
typed errors are the same for both models.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from sleepagent.errors import ConfigError, ShapeError
from sleepagent.model import SleepHybridConfig, SleepModel, algorithm1
from sleepagent.model.algorithm1 import Window, commit, split_windows

from ..conftest import tiny_model

pytest.importorskip("transformers")
from sleepagent.model.hf_tiny import save_tiny_hybrid

# what both kinds of model express: 4 layers (3 GDN, then attention), window 8, N = 2 by default
HF_LAYERS = ["linear_attention", "linear_attention", "linear_attention", "full_attention"]
NATIVE_LAYERS = ("gdn", "gdn", "gdn", "attn")
SETTINGS = {
    "hard": dict(),
    "hard-span": dict(loop_layers=(1, 3)),
    "sliding": dict(evict="sliding", keep=3),
    "sliding-span": dict(evict="sliding", keep=3, loop_layers=(0, 2)),
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_tiny_hybrid(tmp_path_factory.mktemp("hf") / "qwen", "qwen3_5", layer_types=HF_LAYERS)


def native(setting: str):
    kw = dict(SETTINGS[setting])
    return tiny_model(n_layers=4, layer_types=NATIVE_LAYERS, window=8, loops=2, **kw)


def adapter(hf_dir, setting: str):
    kw = dict(SETTINGS[setting])
    lm = SleepModel.from_pretrained(hf_dir, window=8, loops=2, loop_layers=kw.pop("loop_layers", None)).model
    lm.config.evict, lm.config.keep = kw.get("evict", "hard"), kw.get("keep", 0)
    return lm


def make(kind: str, setting: str, hf_dir):
    return native(setting) if kind == "native" else adapter(hf_dir, setting)


def ids_for(model, B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, min(model.config.vocab_size, 250), (B, T), generator=torch.Generator().manual_seed(seed))


# windows as literals, not computed: what the runtime reads for W = 8 (sliding: keep 3, stride 5)
WINDOWS = {
    "hard": [(0, 8, 0, 8), (8, 16, 0, 8), (16, 19, 0, 0)],
    "sliding": [(0, 8, 0, 5), (5, 13, 3, 5), (10, 18, 3, 5), (15, 19, 3, 0)],
}


def reference(model, ids, mask, loops, windows):
    """Algorithm 1, the plain way: per window a full wake pass from the committed state (its
    logits score the new tokens), then a separate consolidation: embed the committed tokens,
    blocks before the span once, the span ``loops`` times, blocks after it once."""
    a, b = model.config.span
    n = model.config.n_layers
    fast = model.new_fast(ids.shape[0])
    logits = []
    for start, end, scored_from, committed in windows:
        h, _ = model.blocks(model.embed(ids[:, start:end]), fast, 0, n)
        logits.append(model.head(h)[:, scored_from:])
        if committed:
            h, f = model.blocks(model.embed(ids[:, start : start + committed]), fast, 0, a)
            for _ in range(loops):
                h, f = model.blocks(h, f, a, b)
            fast = model.blocks(h, f, b, n)[1]
    logits = torch.cat(logits, 1)
    m = mask[:, 1:]
    loss = F.cross_entropy(logits[:, :-1][m].float(), ids[:, 1:][m])
    return loss, logits


def test_windows_are_the_runtimes():
    assert split_windows(19, window=8) == [Window(*w) for w in WINDOWS["hard"]]
    assert split_windows(19, window=8, evict="sliding", keep=3) == [Window(*w) for w in WINDOWS["sliding"]]
    assert split_windows(8, window=8) == [Window(0, 8, 0, 0)]  # one window: nothing to consolidate
    assert split_windows(19, window=8, window_lengths=[3, 8, 8]) == [Window(0, 3, 0, 3), Window(3, 11, 0, 8),
                                                                     Window(11, 19, 0, 0)]


@pytest.mark.parametrize("kind", ["native", "hf"])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("loops", [1, 3])
def test_the_training_forward_is_algorithm_1(hf_dir, kind, setting, loops):
    """Loss and logits of ``model(ids, mask, loops)`` equal the reference, for both models."""
    model = make(kind, setting, hf_dir)
    ids = ids_for(model, 2, 19)
    mask = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[:, 0] = False
    windows = WINDOWS["sliding" if "sliding" in setting else "hard"]
    with torch.no_grad():
        out = model(ids, mask, loops=loops, return_logits=True)
        want_loss, want_logits = reference(model, ids, mask, loops, windows)
    assert out.n_targets == int(mask[:, 1:].sum())
    assert_close(out.logits, want_logits, rtol=1e-4, atol=1e-5)
    assert_close(out.loss, want_loss, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("setting", ["hard", "sliding-span"])
def test_both_models_go_through_one_function_with_the_same_windows(hf_dir, monkeypatch, setting):
    """Each model's forward is algorithm1.training_forward: every window of either model passes
    through its one window step, and on the same settings both models see the same windows."""
    seen: dict[str, list[Window]] = {}
    step = algorithm1._window_step

    def spy(model, win, *args):
        seen.setdefault(type(model).__name__, []).append(win)
        return step(model, win, *args)

    monkeypatch.setattr(algorithm1, "_window_step", spy)
    for kind in ("native", "hf"):
        model = make(kind, setting, hf_dir)
        with torch.no_grad():
            model(ids_for(model, 1, 19), loops=2)
    assert seen["SleepHybridLM"] == seen["HFHybridLM"] == split_windows(
        19, window=8, evict=SETTINGS[setting].get("evict", "hard"), keep=SETTINGS[setting].get("keep", 0))


@pytest.mark.parametrize("kind", ["native", "hf"])
@pytest.mark.parametrize("loops", [1, 2, 3])
def test_sleep_commits_what_the_training_forward_carries(hf_dir, kind, loops):
    """The runtime's sleep (consolidate) commits exactly algorithm1.commit over the window."""
    model = make(kind, "hard-span", hf_dir)
    ids = ids_for(model, 1, 7, seed=3)
    with torch.no_grad():
        state = model.new_state()
        model.prefill(ids, state)
        got = model.consolidate(state, loops=loops).fast
        want = commit(model, ids, model.new_fast(1), loops)
    for x, y in zip(got.flatten(), want.flatten(), strict=True):
        assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["native", "hf"])
def test_one_set_of_input_checks(hf_dir, kind):
    model = make(kind, "hard", hf_dir)
    ids = ids_for(model, 2, 19)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError) as info:
            model(ids, loops=bad)
        assert info.value.field == "loops"
    with pytest.raises(ShapeError, match=r"must lie in \[0, "):
        model(torch.full((1, 4), model.config.vocab_size))
    with pytest.raises(ShapeError, match="integer"):
        model(ids.float())
    with pytest.raises(ShapeError, match=r"\[batch, tokens\]"):
        model(ids[0])
    with pytest.raises(ShapeError, match="at least one token"):
        model(ids[:, :0])
    with pytest.raises(ShapeError, match="loss_mask shape"):
        model(ids, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ShapeError, match="sum to 19"):
        model(ids, window_lengths=[8, 8])
    with pytest.raises(ShapeError, match="at most window"):
        model(ids, window_lengths=[10, 9])
    with pytest.raises(ConfigError, match="evict='hard'"):
        make(kind, "sliding", hf_dir)(ids, window_lengths=[8, 8, 3])
    with pytest.raises(ConfigError) as info:
        model.begin_sleep(model.new_state(), loops=0)
    assert info.value.field == "loops"


def test_adapter_blocks_compose_and_a_deep_copy_runs_its_own_layers(hf_dir):
    """``blocks`` over [0, a) then [a, n) equals [0, n) in one call; a deep copy of the adapter
    runs the copy's layers (the per-instance layer wrappers bind to the copy)."""
    lm = adapter(hf_dir, "hard")
    ids = ids_for(lm, 1, 8)
    with torch.no_grad():
        fast = commit(lm, ids_for(lm, 1, 8, seed=2), lm.new_fast(), 2)
        h = lm.embed(ids)
        whole = lm.blocks(h, fast)
        part = lm.blocks(*lm.blocks(h, fast, 0, 2), 2, 4)
        for x, y in zip((whole[0], *whole[1].flatten()), (part[0], *part[1].flatten()), strict=True):
            assert_close(x, y, rtol=1e-5, atol=1e-6)
        twin = copy.deepcopy(lm)
        for p in twin.layers[1].parameters():
            p.mul_(0.5)
        assert not torch.allclose(twin.blocks(h, fast)[0], whole[0])
        assert_close(lm.blocks(h, fast)[0], whole[0])


def test_n_is_loops_everywhere_and_old_checkpoints_load(hf_dir, tmp_path):
    """The config field is ``loops``; config JSON written as "sleep_loops" (shipped checkpoints,
    runs that are still training) loads, and the shipped model's fingerprint did not change."""
    cfg = SleepHybridConfig(vocab_size=61, d_model=32, n_layers=2, window=16, loops=3)
    assert json.loads(cfg.to_json())["loops"] == 3 and "sleep_loops" not in cfg.to_json()
    old = json.loads(cfg.to_json())
    old["sleep_loops"] = old.pop("loops")
    assert SleepHybridConfig.from_json(json.dumps(old)) == cfg
    with pytest.raises(ConfigError, match="disagree"):
        SleepHybridConfig(**{**old, "loops": 2})
    shipped = SleepModel.from_pretrained("docqa-small")
    assert shipped.config.loops == 4
    assert shipped.fingerprint == "b555e5f3bcf98ae805f9dcf06a8ef93247a7e0589133b915ee6d6dcdb0b5fa5f"
    run = shutil.copytree(hf_dir, tmp_path / "run")  # a `train --base` run written before the rename
    (run / "sleepagent.json").write_text(json.dumps({"window": 8, "sleep_loops": 3}))
    assert SleepModel.from_pretrained(run).config.loops == 3
