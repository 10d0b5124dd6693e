"""Wake, sleep and the training forward of SleepHybridLM, against the paper's Algorithm 1."""

from __future__ import annotations

from unittest import mock

import pytest
import safetensors.torch
import torch

from sleepagent.errors import FingerprintMismatch, ShapeError, SnapshotCorrupted, StateMismatch, WindowFull
from sleepagent.model import FastState, HybridState, SleepHybridLM
from sleepagent.model.hybrid import SleepJob
from sleepagent.model.layers import WindowAttention

from ..conftest import tiny_model

MODES = {
    "hard": {},
    "sliding": dict(evict="sliding", keep=5),
    "hard-looped-span": dict(n_layers=5, layer_types=("attn", "gdn", "attn", "gdn", "gdn"), loop_layers=(1, 4)),
    "sliding-looped-span": dict(evict="sliding", keep=3, loop_layers=(0, 2)),
}


def ids_for(model: SleepHybridLM, B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def algorithm1(model: SleepHybridLM, window_ids: torch.Tensor, fast: FastState, loops: int) -> FastState:
    """The paper's loop, written with the public pieces only (looped span, prefix and suffix once)."""
    a, b = model.config.span
    n = model.config.n_layers
    h, fast = model.blocks(model.embed(window_ids), fast, 0, a)
    for _ in range(loops):
        h, fast = model.blocks(h, fast, a, b)
    h, fast = model.blocks(h, fast, b, n)
    return fast


def fill(model: SleepHybridLM, ids: torch.Tensor, state: HybridState, **kw) -> HybridState:
    model.prefill(ids, state, **kw)
    return state


@pytest.mark.parametrize("mode", ["hard", "hard-looped-span"])
def test_consolidate_one_loop_is_the_plain_hybrid(mode):
    """N = 1 commits exactly the working state the wake pass carried (a plain hybrid's state)."""
    model = tiny_model(**MODES[mode])
    state = model.new_state(2)
    for chunk in ids_for(model, 2, 16).split([5, 1, 7, 3], dim=1):
        model.prefill(chunk, state)
    new = model.consolidate(state, loops=1)
    assert new.fast.equal(state.working)
    assert new.working.equal(state.working)
    assert new.window_len == 0


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("loops", [1, 2, 4])
def test_consolidate_commits_algorithm1(mode, loops):
    model = tiny_model(**MODES[mode])
    cfg = model.config
    state = model.new_state(2)
    # one earlier sleep, so the committed state at the window's start is not zeros
    model.prefill(ids_for(model, 2, cfg.window, seed=1), state)
    state = model.consolidate(state, loops=2)
    start_fast = state.fast
    model.prefill(ids_for(model, 2, cfg.window - state.window_len, seed=2), state)
    before = state.clone()

    new = model.consolidate(state, loops=loops)

    evicted = cfg.window - cfg.keep
    expected = algorithm1(model, state.window_ids[:, :evicted], start_fast, loops)
    for got, want in zip((*new.fast.S, *new.fast.conv), (*expected.S, *expected.conv), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the input state is untouched (an aborted sleep loses nothing)
    assert state.fast.equal(before.fast) and state.working.equal(before.working)
    assert torch.equal(state.k_cache[0], before.k_cache[0]) and state.window_len == before.window_len
    assert new.tokens_consolidated == state.tokens_consolidated + evicted
    if cfg.evict == "hard":
        assert new.window_len == 0 and new.working.equal(new.fast)
    else:
        # sliding: the last `keep` tokens stay, and the working state is the committed one
        # advanced over them
        assert new.window_len == cfg.keep
        assert torch.equal(new.ids(), state.window_ids[:, evicted : cfg.window])
        ref = model.new_state(2)
        ref.fast = ref.working = new.fast
        model.prefill(new.ids(), ref)
        assert new.working.equal(ref.working)
        assert torch.equal(new.k_cache[0][:, :, : cfg.keep], ref.k_cache[0][:, :, : cfg.keep])


@pytest.mark.parametrize("mode", list(MODES))
def test_more_loops_commit_different_fast_weights(mode):
    model = tiny_model(**MODES[mode])
    state = fill(model, ids_for(model, 1, model.config.window), model.new_state())
    one, four = model.consolidate(state, loops=1), model.consolidate(state, loops=4)
    assert any(not torch.allclose(a, b) for a, b in zip(one.fast.S, four.fast.S, strict=True))
    assert not one.fast.equal(four.fast)


def test_sleep_job_runs_pass_by_pass_and_commits_early(model):
    state = fill(model, ids_for(model, 1, 12), model.new_state())
    job = model.begin_sleep(state, loops=4)
    job.run_pass()
    job.run_pass()
    assert job.passes_done == 2 and not job.done
    early = job.commit()
    two = model.consolidate(state, loops=2)
    assert early.fast.equal(two.fast)
    assert state.window_len == 12  # the source state still holds its window


@pytest.mark.parametrize("mode", ["hard", "sliding", "hard-looped-span"])
@pytest.mark.parametrize("loops", [1, 3])
def test_masked_tokens_equal_removed_tokens(mode, loops):
    """Tokens with consolidate=False leave exactly the fast weights of the window without them."""
    model = tiny_model(**MODES[mode])
    cfg = model.config
    ids = ids_for(model, 2, cfg.window)
    masked = model.new_state(2)
    model.prefill(ids[:, :4], masked)
    model.prefill(ids[:, 4:9], masked, consolidate=False)
    model.prefill(ids[:, 9:], masked)
    got = model.consolidate(masked, loops=loops)

    evicted = cfg.window - cfg.keep
    kept = torch.cat([ids[:, :4], ids[:, 9:evicted]], dim=1)
    removed = model.new_state(2)
    model.prefill(kept, removed)
    if cfg.evict == "sliding":
        expected = algorithm1(model, kept, removed.fast, loops)
        assert got.fast.equal(expected)
    else:
        want = model.consolidate(removed, loops=loops)
        assert got.fast.equal(want.fast)
    assert got.tokens_consolidated == kept.shape[1]


def test_fully_masked_window_commits_nothing(model):
    state = fill(model, ids_for(model, 1, 10), model.new_state(), consolidate=False)
    new = model.consolidate(state, loops=3)
    assert new.fast.equal(state.fast) and new.window_len == 0 and new.tokens_consolidated == 0


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("loops", [1, 3])
def test_wake_decode_equals_training_forward(mode, loops):
    """Token-by-token decode, sleeping whenever the window is full, gives the training logits."""
    model = tiny_model(**MODES[mode])
    ids = ids_for(model, 2, 3 * model.config.window + 5)
    with torch.no_grad():
        train_logits = model(ids, loops=loops, return_logits=True).logits
    state = model.new_state(2)
    logits = []
    for t in range(ids.shape[1]):
        try:
            logits.append(model.step(ids[:, t], state))
        except WindowFull:
            state = model.consolidate(state, loops=loops)
            logits.append(model.step(ids[:, t], state))
    torch.testing.assert_close(torch.stack(logits, 1), train_logits, rtol=1e-4, atol=1e-5)


def test_training_forward_loss_and_gradients():
    model = tiny_model(tie_embeddings=False)  # so embedding gradients come only through the blocks
    ids = ids_for(model, 2, 40)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, -3:] = True  # only the last tokens are scored: gradients reach window 1 only through S
    out = model(ids, mask, loops=2)
    assert out.n_targets == 6
    logits = model(ids, loops=2, return_logits=True).logits
    want = torch.nn.functional.cross_entropy(logits[:, -4:-1].flatten(0, 1), ids[:, -3:].flatten())
    torch.testing.assert_close(out.loss, want)
    out.loss.backward()
    assert model.tok_emb.weight.grad is not None
    # the first window's tokens are never scored, yet their embeddings get gradient via fast weights
    first = ids[:, :16].unique()
    assert model.tok_emb.weight.grad[first].abs().sum() > 0
    # checkpointing recomputes and gives the same gradients
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(ids, mask, loops=2, checkpoint=True).loss.backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g)


def test_detach_every_truncates_backprop():
    model = tiny_model(tie_embeddings=False)
    ids = ids_for(model, 1, 48)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, -2:] = True
    model(ids, mask, detach_every=1).loss.backward()
    only_first = set(ids[0, :16].tolist()) - set(ids[0, 16:].tolist())
    assert only_first and all(model.tok_emb.weight.grad[i].abs().sum() == 0 for i in only_first)


def tensor_bytes(blob: bytes) -> int:
    return sum(t.numel() * t.element_size() for t in safetensors.torch.load(blob).values())


def test_memory_stays_bounded(model):
    state = model.new_state()
    sizes = []
    for w in range(50):
        model.prefill(ids_for(model, 1, model.config.window, seed=w), state)
        state = model.consolidate(state, loops=2)
        sizes.append(state.nbytes)
        if w == 0:
            first = tensor_bytes(model.save_state(state))
    assert len(set(sizes)) == 1
    assert tensor_bytes(model.save_state(state)) == first
    assert state.tokens_consolidated == 50 * model.config.window


@pytest.mark.parametrize("mode", ["hard", "sliding"])
def test_save_load_round_trip_is_bit_exact(mode):
    model = tiny_model(**MODES[mode])
    state = model.new_state(2)
    model.prefill(ids_for(model, 2, 16), state)
    state = model.consolidate(state, loops=2)
    model.prefill(ids_for(model, 2, 6, seed=3), state, consolidate=False)
    loaded = model.load_state(model.save_state(state))
    assert loaded.fast.equal(state.fast) and loaded.working.equal(state.working)
    L = state.window_len
    assert loaded.window_len == L and torch.equal(loaded.ids(), state.ids())
    assert torch.equal(loaded.consolidate_mask[:, :L], state.consolidate_mask[:, :L])
    for a, b in zip(loaded.k_cache + loaded.v_cache, state.k_cache + state.v_cache, strict=True):
        assert torch.equal(a[:, :, :L], b[:, :, :L])
    assert (loaded.tokens_seen, loaded.sleeps) == (state.tokens_seen, state.sleeps)
    # the restored state continues exactly like the original
    nxt = ids_for(model, 2, 1, seed=9)[:, 0]
    assert torch.equal(model.step(nxt, loaded), model.step(nxt, state))


def test_loading_into_another_model_raises(model):
    blob = model.save_state(fill(model, ids_for(model, 1, 4), model.new_state()))
    other = tiny_model(seed=1)
    assert other.fingerprint() != model.fingerprint()
    with pytest.raises(FingerprintMismatch, match="fingerprint"):
        other.load_state(blob)
    with pytest.raises(SnapshotCorrupted):
        model.load_state(b"not a state")


def test_fingerprint_tracks_weights_and_config(model):
    fp = model.fingerprint()
    assert fp == tiny_model().fingerprint()
    with torch.no_grad():
        model.layers[0].mlp.down.weight[0, 0] += 1e-3
    assert model.fingerprint() != fp
    assert tiny_model(window=32).fingerprint() != fp


def test_wake_errors_are_clear(model):
    state = model.new_state()
    model.prefill(ids_for(model, 1, 10), state)
    with pytest.raises(WindowFull) as info:
        model.prefill(ids_for(model, 1, 7), state)
    assert info.value.window == 16 and info.value.used == 10
    assert state.window_len == 10  # nothing half-written
    with pytest.raises(ShapeError, match=r"\[0, 61\)"):
        model.prefill(torch.tensor([[61]]), state)
    with pytest.raises(StateMismatch, match="batch"):
        model.prefill(ids_for(model, 2, 1), state)
    with pytest.raises(ShapeError):
        model.step(ids_for(model, 1, 2), state)
    with pytest.raises(StateMismatch):
        tiny_model(window=32).prefill(ids_for(model, 1, 1), state)


def test_batched_rows_with_different_masks_are_refused(model):
    state = model.new_state(2)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    model.prefill(ids_for(model, 2, 3), state, consolidate=mask)
    with pytest.raises(StateMismatch, match="separate"):
        model.consolidate(state)


@pytest.mark.parametrize("mode", ["hard", "hard-looped-span"])
def test_step_many_equals_separate_steps(mode):
    """Batched decode over states with different window lengths equals one step per state."""
    model = tiny_model(**MODES[mode])
    lengths = [0, 1, 5, 15]
    batched, alone = [], []
    for i, n in enumerate(lengths):
        for group in (batched, alone):
            st = model.new_state()
            if n:
                model.prefill(ids_for(model, 1, n, seed=i), st)
            group.append(st)
    tokens = ids_for(model, 1, len(lengths), seed=7)[0]
    got = model.step_many(tokens, batched)
    want = torch.stack([model.step(tokens[i : i + 1], st)[0] for i, st in enumerate(alone)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(batched, alone, strict=True):
        assert a.window_len == b.window_len and torch.equal(a.ids(), b.ids())
        for x, y in zip((*a.working.S, *a.k_cache, *a.v_cache), (*b.working.S, *b.k_cache, *b.v_cache), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    with pytest.raises(WindowFull):
        model.step_many(tokens[:1], [fill_to_full(model)])


def states_at(model: SleepHybridLM, lengths: list[int], seed: int = 0) -> list[HybridState]:
    """Single-sequence states with windows of these lengths, some tokens never-consolidate."""
    states = []
    for i, n in enumerate(lengths):
        st = model.new_state()
        if n:
            flags = torch.tensor([[bool((t + i) % 4) for t in range(n)]])
            model.prefill(ids_for(model, 1, n, seed=seed + i), st, consolidate=flags)
        states.append(st)
    return states


def assert_step_many_paths_agree(
    model: SleepHybridLM, states: list[HybridState], tokens: torch.Tensor, flags: list[bool], **tol
) -> list[HybridState]:
    """``step_many`` through the decode plan equals ``step_many`` on the old path and ``step`` on
    each state alone: logits, KV written, hidden states kept, fast weights and conv tails (each
    state's own tensors, not views of the batch), and the window's bookkeeping. ``states`` are
    untouched; returns the states advanced by the fast path."""
    tol = tol or dict(rtol=1e-4, atol=1e-5)
    fast, old, alone = ([st.clone() for st in states] for _ in range(3))
    model.fast_decode = False
    try:
        want = model.step_many(tokens, old, flags)
    finally:
        model.fast_decode = True
    with mock.patch.object(WindowAttention, "forward_rows", side_effect=AssertionError("old path taken")):
        got = model.step_many(tokens, fast, flags)
    each = torch.stack([model.step(tokens[r : r + 1], st, flags[r])[0] for r, st in enumerate(alone)])
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(got, each, **tol)
    for a, *others in zip(fast, old, alone, strict=True):
        for b in others:
            L = b.window_len
            assert a.window_len == L and a.tokens_seen == b.tokens_seen
            assert torch.equal(a.window_ids, b.window_ids) and torch.equal(a.consolidate_mask, b.consolidate_mask)
            for x, y in zip((*a.working.S, *a.working.conv), (*b.working.S, *b.working.conv), strict=True):
                assert x.shape == y.shape
                torch.testing.assert_close(x, y, **tol)
            for x, y in zip((*a.k_cache, *a.v_cache), (*b.k_cache, *b.v_cache), strict=True):
                torch.testing.assert_close(x[:, :, :L], y[:, :, :L], **tol)
            h_tol = dict(rtol=tol["rtol"], atol=tol["atol"] * max(1.0, float(b.window_h[:, :L].abs().max())))
            torch.testing.assert_close(a.window_h[:, :L], b.window_h[:, :L], **h_tol)
        for x in (*a.working.S, *a.working.conv):  # the row's own storage, not the batch's
            assert x.untyped_storage().nbytes() == x.numel() * x.element_size()
    return fast


@pytest.mark.parametrize("mode", ["hard", "hard-looped-span", "gqa"])
def test_step_many_fast_path_equals_old_path_and_single_steps(mode):
    """The batched decode through the decode plan, over windows of different lengths (empty to
    one short of full) with mixed consolidate flags, equals the old batched path and one step per
    state, for several steps, then across a sleep of some of the states."""
    overrides = dict(n_heads=4, n_kv_heads=2) if mode == "gqa" else MODES[mode]
    model = tiny_model(**overrides)
    W = model.config.window
    states = states_at(model, [0, 1, 5, W - 1, 9], seed=3)
    tokens = ids_for(model, 3, 5, seed=11)
    states = assert_step_many_paths_agree(model, states, tokens[0], [True, False, True, True, False])
    # the full window and one other sleep; the rest go on with their windows
    states[3] = model.consolidate(states[3], loops=2)
    states[2] = model.consolidate(states[2], loops=2)
    assert states[3].sleeps == states[2].sleeps == 1
    states = assert_step_many_paths_agree(model, states, tokens[1], [False, True, True, False, True])
    states = assert_step_many_paths_agree(model, states[::-1], tokens[2], [True] * 5)
    # one state alone takes the same path
    assert_step_many_paths_agree(model, states[:1], tokens[2, :1], [False])


def test_step_many_fast_path_on_the_shipped_model():
    """On docqa-small: step_many through the decode plan equals the old path and single steps,
    windows from empty to one short of full, then after a sleep (N = 4)."""
    from sleepagent.model.pretrained import SleepModel

    model = SleepModel.from_pretrained("docqa-small").model
    assert isinstance(model, SleepHybridLM)
    W = model.config.window
    states = states_at(model, [0, 1, 100, W - 1], seed=4)
    tokens = ids_for(model, 3, 4, seed=12)
    states = assert_step_many_paths_agree(model, states, tokens[0], [True, False, True, False])
    states[3] = model.consolidate(states[3], loops=4)
    assert states[3].window_len == 0 and states[3].sleeps == 1
    states = assert_step_many_paths_agree(model, states, tokens[1], [False, True, True, True])
    assert_step_many_paths_agree(model, states, tokens[2], [True, True, False, True])


@pytest.mark.parametrize("mode", ["hard", "hard-looped-span"])
def test_prefill_many_equals_separate_prefills(mode):
    """A batched read of pieces of different lengths, into windows of different lengths, with
    per-token consolidate flags, equals one prefill per state: logits, KV, hidden states, the
    working fast weights and conv tails, and the flags. Then a sleep of each agrees too."""
    model = tiny_model(**MODES[mode])
    past, pieces = [0, 3, 9, 1], [5, 1, 7, 12]  # window 16
    batched, alone = [], []
    for i, n in enumerate(past):
        for group in (batched, alone):
            st = model.new_state()
            if n:
                model.prefill(ids_for(model, 1, n, seed=i), st)
            group.append(st)
    rows = []
    for i, T in enumerate(pieces):
        ids = ids_for(model, 1, T, seed=10 + i)[0].tolist()
        flags = [bool((t + i) % 3) for t in range(T)]
        rows.append((ids, flags))
    got = model.prefill_many(rows, batched)
    want = torch.stack([model.prefill(torch.tensor([ids]), st, consolidate=torch.tensor([flags]))[0, -1]
                        for (ids, flags), st in zip(rows, alone, strict=True)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(batched, alone, strict=True):
        assert a.window_len == b.window_len and a.tokens_seen == b.tokens_seen and torch.equal(a.ids(), b.ids())
        assert torch.equal(a.consolidate_mask, b.consolidate_mask)
        for x, y in zip((*a.working.S, *a.working.conv, *a.k_cache, *a.v_cache, a.window_h),
                        (*b.working.S, *b.working.conv, *b.k_cache, *b.v_cache, b.window_h), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
        for x, y in zip(model.consolidate(a).fast.S, model.consolidate(b).fast.S, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    with pytest.raises(WindowFull):
        model.prefill_many([([1, 2], [True, True])], [fill_to_full(model)])


def fill_to_full(model: SleepHybridLM) -> HybridState:
    st = model.new_state()
    model.prefill(ids_for(model, 1, model.config.window), st)
    return st


@pytest.mark.parametrize("loops", [1, 3])
def test_explicit_windows_match_wake_with_early_sleeps(loops):
    """Sleeping before the window is full (as pauses do) is what window_lengths trains on."""
    model = tiny_model()
    ids = ids_for(model, 2, 40)
    lengths = [5, 16, 9, 10]
    with torch.no_grad():
        train_logits = model(ids, loops=loops, return_logits=True, window_lengths=lengths).logits
    state, logits, pos = model.new_state(2), [], 0
    for n in lengths:
        if pos:
            state = model.consolidate(state, loops=loops)
        for t in range(pos, pos + n):
            logits.append(model.step(ids[:, t], state))
        pos += n
    torch.testing.assert_close(torch.stack(logits, 1), train_logits, rtol=1e-4, atol=1e-5)
    with pytest.raises(ShapeError, match="sum to 40"):
        model(ids, window_lengths=[16, 16])
    with pytest.raises(ShapeError, match="at most window"):
        model(ids, window_lengths=[20, 20])


def test_a_bf16_snapshot_halves_the_bytes_and_restores_close():
    """MemoryPolicy(snapshot_dtype="bfloat16"): about half the bytes; S comes back float32 within
    bf16 precision (8 significant bits)."""
    model = tiny_model()
    state = model.new_state()
    model.prefill(ids_for(model, 1, 12), state)
    state = model.consolidate(state, loops=2)
    fp = model.fingerprint()
    full, half = state.to_bytes(fp), state.to_bytes(fp, torch.bfloat16)
    assert len(half) < 0.7 * len(full)
    back = model.load_state(half, fp)
    for a, b in zip(back.fast.S, state.fast.S, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2**-8, atol=1e-6)
    assert not back.fast.equal(state.fast)  # lossy, as stated


@pytest.mark.parametrize("mode", ["hard", "hard-looped-span"])
def test_sleeps_of_several_sessions_batched_equal_each_alone(mode):
    """SleepJob.run_steps over windows of different lengths (some reusing wake, some with
    never-consolidate tokens) commits what each job stepped alone commits."""
    model = tiny_model(**MODES[mode])
    setups = [(5, None), (16, None), (11, 3), (1, None), (9, 0)]  # (tokens, a masked position)
    batched, alone = [], []
    for i, (n, masked) in enumerate(setups):
        for group in (batched, alone):
            st = model.new_state()
            mask = torch.ones(1, n, dtype=torch.bool)
            if masked is not None:
                mask[0, masked] = False
            model.prefill(ids_for(model, 1, n, seed=20 + i), st, consolidate=mask)
            group.append(model.begin_sleep(st, 3))
    while not all(j.done for j in batched):
        model_steps = SleepJob.run_steps(batched)
        assert len(model_steps) == len(batched)
    for job in alone:
        job.run_pass()
        job.run_pass()
        job.run_pass()
    for a, b in zip(batched, alone, strict=True):
        ca, cb = a.commit(), b.commit()
        for x, y in zip((*ca.fast.S, *ca.fast.conv), (*cb.fast.S, *cb.fast.conv), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def assert_same_step(model: SleepHybridLM, state: HybridState, token: torch.Tensor, consolidate, **tol) -> None:
    """One step through the fast decode path equals a one-token prefill (the old path), from the
    same state: logits, the KV written, the hidden state kept, the fast weights and conv tails,
    and the window's bookkeeping. ``state`` is left advanced by the old path."""
    fast = state.clone()
    model.fast_decode = False
    try:
        want = model.step(token, state, consolidate)
    finally:
        model.fast_decode = True
    got = model.step(token, fast, consolidate)
    tol = tol or dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, **tol)
    L = state.window_len
    assert fast.window_len == L and fast.tokens_seen == state.tokens_seen
    assert torch.equal(fast.window_ids, state.window_ids) and torch.equal(fast.consolidate_mask, state.consolidate_mask)
    for x, y in zip((*fast.working.S, *fast.working.conv), (*state.working.S, *state.working.conv), strict=True):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, **tol)
    for x, y in zip((*fast.k_cache, *fast.v_cache), (*state.k_cache, *state.v_cache), strict=True):
        torch.testing.assert_close(x[:, :, :L], y[:, :, :L], **tol)
    # the residual stream's entries reach tens (docqa-small: ~35), so its rounding error is judged
    # against its largest entry, not each entry
    h_tol = dict(rtol=tol["rtol"], atol=tol["atol"] * max(1.0, float(state.window_h[:, :L].abs().max())))
    torch.testing.assert_close(fast.window_h[:, :L], state.window_h[:, :L], **h_tol)


@pytest.mark.parametrize("mode", list(MODES))
def test_fast_decode_equals_one_token_prefill(mode):
    """The decode path (prepared weights, KV written in place, the fused GDN step) equals a
    one-token prefill at every window length, batched, with never-consolidate tokens and a
    consolidate mask, across sleeps; a looped span keeps the right hidden state."""
    model = tiny_model(**MODES[mode])
    state = model.new_state(2)
    tokens = ids_for(model, 2, 40, seed=5)
    for t in range(tokens.shape[1]):
        if state.window_len == state.window:
            state = model.consolidate(state, loops=2)
        flag = torch.tensor([[True], [True]]) if t % 5 == 0 else t % 3 != 1
        assert_same_step(model, state, tokens[:, t], flag)
    assert state.sleeps >= 2


def test_fast_decode_equals_old_path_on_the_shipped_model():
    """On docqa-small: a partly filled window, never-consolidate tokens, a sleep (N = 4), then
    steps from the consolidated state; every step equals the one-token prefill."""
    from sleepagent.model.pretrained import SleepModel

    model = SleepModel.from_pretrained("docqa-small").model
    assert isinstance(model, SleepHybridLM)
    state = model.new_state()
    model.prefill(ids_for(model, 1, 150, seed=1), state)
    tokens = ids_for(model, 1, 24, seed=2)[0]
    for t in range(12):
        assert_same_step(model, state, tokens[t : t + 1], t % 4 != 2)
    state = model.consolidate(state, loops=4)
    assert state.window_len == 0 and state.sleeps == 1
    for t in range(12, 24):
        assert_same_step(model, state, tokens[t : t + 1], True)
    # and a whole stretch decoded by each path stays close (no error that compounds)
    a, b = state.clone(), state.clone()
    model.fast_decode = False
    try:
        want = [model.step(tokens[t : t + 1], a) for t in range(24)]
    finally:
        model.fast_decode = True
    got = [model.step(tokens[t : t + 1], b) for t in range(24)]
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=1e-4, atol=1e-4)
    assert model.save_state(a) and len(model.save_state(b)) == len(model.save_state(a))


def test_fast_decode_sees_weight_changes():
    """The decode path's prepared weights follow in-place writes and replaced parameters."""
    model = tiny_model()
    state = model.new_state()
    model.prefill(ids_for(model, 1, 5), state)
    token = ids_for(model, 1, 1, seed=3)[0]
    assert_same_step(model, state, token, True)
    with torch.no_grad():
        model.layers[0].mixer.A_log.add_(0.5)
        model.layers[1].norm1.weight.mul_(1.5)
    assert_same_step(model, state, token, True)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() * 0.5)
    assert_same_step(model, state, token, True)


def test_fast_decode_errors_match_prefill(model):
    state = model.new_state()
    with pytest.raises(ShapeError, match=r"lie in \[0"):
        model.step(torch.tensor([model.config.vocab_size]), state)
    with pytest.raises(ShapeError, match="integer"):
        model.step(torch.tensor([1.0]), state)
    with pytest.raises(StateMismatch):
        model.step(torch.tensor([1, 2]), state)
    with pytest.raises(WindowFull):
        model.step(torch.tensor([1]), fill_to_full(model))
    assert state.window_len == 0


@pytest.mark.slow
def test_compiled_decode_equals_old_path_without_recompiling():
    """compile_decode: one graph for every window length (no recompile as the window fills,
    after a sleep, or from a prefill's strided conv tails), equal to the old path."""
    import torch._dynamo

    model = tiny_model()
    model.compile_decode = True
    torch._dynamo.reset()
    try:
        state = model.new_state()
        model.prefill(ids_for(model, 1, 3), state)
        tokens = ids_for(model, 1, 30, seed=4)[0]
        for t in range(30):
            if state.window_len == state.window:
                state = model.consolidate(state, loops=2)
            assert_same_step(model, state, tokens[t : t + 1], t % 3 != 0)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    finally:
        model.compile_decode = False


def test_decode_step_op_count():
    """The decode path's op budget on the shipped model (ops, not time: deterministic): at most
    200 dispatched ops per step, under half of a one-token prefill's (`sleepagent bench decode`)."""
    from sleepagent.bench.decode import count_ops
    from sleepagent.model.pretrained import SleepModel

    model = SleepModel.from_pretrained("docqa-small").model
    assert isinstance(model, SleepHybridLM)
    state = model.new_state()
    model.prefill(ids_for(model, 1, 64), state)
    token = ids_for(model, 1, 1, seed=9)[0]
    model.step(token, state.clone())  # prepares the weights

    def step(st: HybridState) -> None:
        model.step(token, st)

    fast = count_ops(step, state.clone)
    model.fast_decode = False
    try:
        old = count_ops(step, state.clone)
    finally:
        model.fast_decode = True
    assert fast["dispatched"] is not None and old["dispatched"] is not None
    assert fast["dispatched"] <= 200 and 2 * fast["dispatched"] < old["dispatched"]
    assert 2 * fast["profiler_aten"] < old["profiler_aten"]


def test_a_model_copies_without_its_decode_caches():
    """deepcopy / pickle of a model that has decoded leave its prepared weights behind; the copy
    prepares its own on its first step and steps like the original."""
    import copy
    import pickle

    model = tiny_model()
    state = model.new_state()
    model.prefill(ids_for(model, 1, 4), state)
    token = ids_for(model, 1, 1, seed=2)[0]
    model.step(token, state.clone())
    assert "_plan" in model.__dict__
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert "_plan" not in other.__dict__
        torch.testing.assert_close(other.step(token, state.clone()), model.step(token, state.clone()))
