"""Transformers hybrids: batched decode / prefill over sessions, and sleep reusing the wake pass
(tiny random qwen3_5 checkpoint; each result against the same work done one session at a time)."""

from __future__ import annotations

import copy

import anyio
import pytest
import torch
from torch.testing import assert_close

pytest.importorskip("transformers")
from sleepagent.engine import Engine
from sleepagent.model import SleepModel
from sleepagent.model.hf import HFHybridLM, HFState
from sleepagent.model.hf_tiny import save_tiny_hybrid
from sleepagent.policy import SleepPolicy


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_hybrid(tmp_path_factory.mktemp("hfb") / "qwen3_5", "qwen3_5", seed=1)


def lm_of(path, **kw) -> HFHybridLM:
    lm = SleepModel.from_pretrained(path, **{"window": 32, "loops": 3, **kw}).model
    assert isinstance(lm, HFHybridLM)
    return lm


def same_state(a: HFState, b: HFState) -> None:
    assert a.window_ids == b.window_ids and a.consolidate_mask == b.consolidate_mask
    assert a.tokens_seen == b.tokens_seen
    wa, wb = a.working, b.working
    assert_close(wa.S, wb.S)
    assert_close(wa.conv, wb.conv)
    for li in (3,):  # the attention layer's KV: exactly the window's, no padding
        assert a.cache.layers[li].keys.shape[-2] == a.window_len
        assert_close(a.cache.layers[li].keys, b.cache.layers[li].keys)
        assert_close(a.cache.layers[li].values, b.cache.layers[li].values)


def sessions(lm: HFHybridLM, g: torch.Generator, lengths=(0, 3, 9, 14, 6)) -> list[HFState]:
    out = []
    for n in lengths:
        st = lm.new_state()
        if n:
            lm.prefill(torch.randint(0, 256, (1, n), generator=g), st, torch.rand(1, n, generator=g) > 0.25)
        out.append(st)
    return out


def test_step_many_equals_separate_steps_across_a_sleep(ckpt):
    lm = lm_of(ckpt)
    g = torch.Generator().manual_seed(0)
    states = sessions(lm, g)
    ref = copy.deepcopy(states)
    for k in range(6):
        if k == 3:  # one session sleeps mid-way (its window restarts at 0), the others go on
            states[2], ref[2] = lm.consolidate(states[2], 2), lm.consolidate(ref[2], 2)
        toks = torch.randint(0, 256, (len(states),), generator=g)
        flags = [bool(f) for f in torch.rand(len(states), generator=g) > 0.3]
        out = lm.step_many(toks, states, flags)
        want = torch.cat([lm.step(toks[i : i + 1], r, f) for i, (r, f) in enumerate(zip(ref, flags, strict=True))])
        assert out.shape == (len(states), lm.config.vocab_size)
        assert_close(out, want)
    for a, b in zip(states, ref, strict=True):
        same_state(a, b)
    # and a sleep after batched steps commits what one after separate steps does
    for a, b in zip(states, ref, strict=True):
        ca, cb = lm.consolidate(a, 2), lm.consolidate(b, 2)
        assert_close(ca.fast.S, cb.fast.S)
        assert_close(ca.fast.conv, cb.fast.conv)


def test_prefill_many_equals_separate_prefills(ckpt):
    lm = lm_of(ckpt)
    g = torch.Generator().manual_seed(1)
    states = sessions(lm, g)
    ref = copy.deepcopy(states)
    for lengths in ((5, 2, 7, 5, 1), (4, 4, 4, 4, 4)):
        pieces = [(torch.randint(0, 256, (n,), generator=g).tolist(),
                   [bool(f) for f in torch.rand(n, generator=g) > 0.2]) for n in lengths]
        out = lm.prefill_many(pieces, states)
        want = torch.cat([lm.prefill(torch.tensor([ids]), r, torch.tensor([fl]))[:, -1]
                          for (ids, fl), r in zip(pieces, ref, strict=True)])
        assert_close(out, want)
    for a, b in zip(states, ref, strict=True):
        same_state(a, b)


@pytest.mark.parametrize("loop_layers", [None, (1, 3)])
@pytest.mark.parametrize("excluded", [False, True])
@pytest.mark.parametrize("loops", [1, 2, 4])
def test_sleep_reuses_wake_and_commits_what_recomputing_does(ckpt, loops, excluded, loop_layers):
    lm = lm_of(ckpt, loops=loops, loop_layers=loop_layers)
    g = torch.Generator().manual_seed(loops)
    st = lm.new_state()
    other = lm.new_state()
    lm.prefill(torch.randint(0, 256, (1, 7), generator=g), other)
    # read in pieces, batched with another session and alone
    lm.prefill(torch.randint(0, 256, (1, 9), generator=g), st)
    lm.prefill_many([(torch.randint(0, 256, (4,), generator=g).tolist(), [True, not excluded, True, True]),
                     ([5, 6], [True, True])], [st, other])
    lm.step_many(torch.tensor([7, 8]), [st, other])
    assert (st.window_h is None) == excluded  # kept only while sleep may reuse it
    recompute = copy.deepcopy(st)
    recompute.window_h = None

    calls = []
    blocks = lm.blocks

    def counting(h, fast, start=0, stop=None):
        calls.append((start, stop, h.shape[1]))
        return blocks(h, fast, start, stop)

    lm.blocks = counting  # type: ignore[method-assign]
    try:
        got = lm.consolidate(st)
        n_reuse = len(calls)
        want = lm.consolidate(recompute)
    finally:
        del lm.blocks
    assert_close(got.fast.S, want.fast.S)
    assert_close(got.fast.conv, want.fast.conv)
    a, b = lm.config.span
    after = int(b < lm.config.n_layers)
    # reused: passes 2..N only (+ the layers after the span once, when a pass ran here);
    # excluded: pass 1 recomputed too
    assert n_reuse == (loops - 1 + after * (loops > 1) if not excluded else loops + after)
    assert excluded or all(start == a for start, _, _ in calls[: loops - 1])


def test_window_h_is_dropped_with_the_window(ckpt):
    lm = lm_of(ckpt, window=64)
    st = lm.new_state()
    lm.prefill(torch.tensor([[1, 2, 3]]), st)
    assert st.window_h is not None and st.window_h.shape[1] <= st.window
    for t in range(40):  # grows up to the window, and holds what blocks computes over it
        lm.step(torch.tensor([t]), st)
    assert st.window_h.shape[1] == st.window
    ids = torch.tensor([st.window_ids])
    assert_close(st.window_h[:, : st.window_len], lm.blocks(lm.embed(ids), st.fast)[0])
    lm.step(torch.tensor([4]), st, False)  # a never-consolidate token: sleep can no longer reuse wake
    assert st.window_h is None
    lm.step(torch.tensor([5]), st)
    assert st.window_h is None
    assert lm.drop_excluded(st).window_h is None
    assert lm.consolidate(st).window_h is None
    assert st.for_snapshot(True).window_h is None


async def _greedy(engine: Engine, n: int) -> dict[int, list[int]]:
    ss = [engine.session(policy=SleepPolicy(loops=2, when="full")) for _ in range(n)]
    results: dict[int, list[int]] = {}

    async def run(i: int) -> None:
        logits = await engine.prefill(ss[i], list(range(10, 15 + 3 * i)))
        out = []
        for _ in range(40):  # crosses the 32-token window: sessions sleep and go on
            t = int(logits.argmax()) % 256
            out.append(t)
            logits = await engine.decode(ss[i], t)
        results[i] = out

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(run, i)
    return results


def test_engine_over_a_transformers_hybrid_batches(ckpt):
    sm = SleepModel.from_pretrained(ckpt, window=32, loops=2)
    with Engine(sm, batch_wake=True) as batched:
        got = anyio.run(_greedy, batched, 4)
        assert batched.batched_steps > 0
    with Engine(sm, batch_wake=False) as serial:
        want = anyio.run(_greedy, serial, 4)
        assert serial.batched_steps == 0
    assert got == want


@pytest.mark.parametrize("model_type", ["qwen3_next", "olmo_hybrid"])
def test_other_architectures_batch_and_reuse_wake(tmp_path, model_type):
    lm = lm_of(save_tiny_hybrid(tmp_path / model_type, model_type, seed=1))
    g = torch.Generator().manual_seed(2)
    states = sessions(lm, g, lengths=(0, 4, 9))
    ref = copy.deepcopy(states)
    toks = torch.randint(0, 256, (3,), generator=g)
    assert_close(lm.step_many(toks, states), torch.cat([lm.step(toks[i : i + 1], r) for i, r in enumerate(ref)]))
    pieces = [(torch.randint(0, 256, (n,), generator=g).tolist(), [True] * n) for n in (3, 1, 3)]
    want = torch.cat([lm.prefill(torch.tensor([ids]), r)[:, -1] for (ids, _), r in zip(pieces, ref, strict=True)])
    assert_close(lm.prefill_many(pieces, states), want)
    for a, b in zip(states, ref, strict=True):
        same_state(a, b)
    st = lm.new_state()
    lm.prefill(torch.randint(0, 256, (1, 12), generator=g), st)
    recompute = copy.deepcopy(st)
    recompute.window_h = None
    assert_close(lm.consolidate(st, 2).fast.S, lm.consolidate(recompute, 2).fast.S)
