"""Admitting arriving work: a fresh session starts from a cached prefix (a shared system prompt
is read once), gap sleep runs in bounded blocks for the sessions that paused first, and waiting
wake work is taken before the next sleep block (real model; the scheduling is asserted on the
engine's own choices, not on timings)."""

from __future__ import annotations

import pytest
import torch

from sleepagent.engine import Engine, EngineSession, _Request
from sleepagent.policy import SleepPolicy
from sleepagent.testing import tiny_model

HEADER = "system: you are a careful assistant; tools: next_page() reads a page. "


def ids(engine: Engine, text: str) -> list[int]:
    return engine.model.tokenizer.encode(text, specials=False)


async def first_turn(engine: Engine, header: str, user: str) -> tuple[EngineSession, torch.Tensor]:
    s = engine.session()
    engine.append(s, ids(engine, header))
    engine.append(s, ids(engine, user))
    return s, await engine.flush(s)


async def test_a_fresh_session_starts_from_the_cached_state_after_a_shared_header():
    with Engine(tiny_model()) as engine:
        a, _ = await first_turn(engine, HEADER, "user: hello")
        b, got = await first_turn(engine, HEADER, "user: read the document")
        n_header, n_user = len(ids(engine, HEADER)), len(ids(engine, "user: read the document"))
        assert (a.stats.prefix_tokens, b.stats.prefix_tokens) == (0, n_header)
        assert b.stats.prefill_tokens == n_user  # only what differs was read
        assert engine.prefix_hits == 1
        # as though it had read the header itself
        lm = engine.model.model
        ref = lm.new_state()
        want = lm.prefill(torch.tensor([ids(engine, HEADER + "user: read the document")]), ref)[0, -1]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        assert b.state.tokens_seen == ref.tokens_seen and b.state.window_len == ref.window_len
        torch.testing.assert_close(await engine.decode(b, 7), lm.step(torch.tensor([7]), ref)[0], atol=1e-4,
                                   rtol=1e-4)
        # b's decode changed b's state only: a third session starts from the same cached state
        _, again = await first_turn(engine, HEADER, "user: read the document")
        assert torch.equal(again, got)
        assert engine.prefix_hits == 2


async def test_only_a_fresh_session_s_shared_header_is_cached():
    with Engine(tiny_model()) as engine:
        await engine.prefill(engine.session(), ids(engine, HEADER))  # one segment: a whole input, not a header
        assert not engine._prefixes
        s = engine.session()
        await engine.prefill(s, ids(engine, "hi"))
        engine.append(s, ids(engine, HEADER))  # not fresh: it has read something already
        engine.append(s, ids(engine, "user: hello"))
        await engine.flush(s)
        assert not engine._prefixes and s.stats.prefix_tokens == 0


@pytest.mark.parametrize("size", [0, 1])
async def test_the_prefix_cache_is_bounded(size):
    with Engine(tiny_model(), prefix_cache=size) as engine:
        await first_turn(engine, HEADER, "user: one")
        await first_turn(engine, "another " + HEADER, "user: two")
        s, _ = await first_turn(engine, HEADER, "user: three")  # the first header was dropped (or never kept)
        assert len(engine._prefixes) == size
        assert engine.prefix_hits == 0 and s.stats.prefix_tokens == 0


def paused_sessions(engine: Engine, lengths: list[int]) -> list[EngineSession]:
    """Sessions holding ``lengths`` tokens each, paused in this order (no worker runs yet)."""
    lm = engine.model.model
    out = []
    for i, n in enumerate(lengths):
        s = engine.session(f"s{i}", policy=SleepPolicy(loops=3, min_fill=0.01))
        lm.prefill(torch.tensor([[(7 * i + j) % 200 + 1 for j in range(n)]]), s.state)
        assert engine.pause(s)
        out.append(s)
    return out


def test_gap_sleep_takes_the_sessions_that_paused_first_within_the_token_budget():
    engine = Engine(tiny_model(window=128), max_sleep_tokens=150)
    try:
        sessions = paused_sessions(engine, [100, 90, 20, 80])
        with engine._cv:
            batch, first = engine._take_work()
        assert batch is None and first == sessions[:1]  # 100 + 90 > 150: a block of one
        engine._run_sleep_steps(first)
        # not finished: back at the front, so it goes on before the later sleepers
        assert list(engine._sleepers) == sessions
        with engine._cv:
            _, second = engine._take_work()
        assert second == sessions[:1]  # taken off the queue; say its sleep finished: not put back
        with engine._cv:
            _, third = engine._take_work()
        assert third == sessions[1:3]  # 90 + 20 fit, 80 more do not
    finally:
        engine.close()


def test_a_waiting_read_is_taken_before_the_next_sleep_block():
    engine = Engine(tiny_model(window=128))
    try:
        sleepers = paused_sessions(engine, [100, 100])
        reader = engine.session()
        engine.append(reader, ids(engine, "a question"))
        engine._wake.append(_Request("flush", reader, None))
        with engine._cv:
            batch, gap = engine._take_work()
        assert batch is not None and [r.session for r in batch] == [reader] and gap == []
        assert list(engine._sleepers) == sleepers  # still queued, untouched
    finally:
        engine.close()


def test_a_wake_step_runs_the_sleep_blocks_of_the_oldest_requests_first():
    engine = Engine(tiny_model(window=128), max_sleep_tokens=150)
    try:
        a, b, c = paused_sessions(engine, [60, 80, 70])
        since = {id(a): 3.0, id(b): 1.0, id(c): 2.0}  # b's request came first, then c's
        assert engine._oldest_within_budget([a, b, c], since) == [b, c]  # 80 + 70 fit, 60 more do not
        assert engine._oldest_within_budget([a], since) == [a]  # at least one, whatever its size
    finally:
        engine.close()


def test_a_step_answers_its_decode_steps_before_it_runs_sleep_blocks():
    engine = Engine(tiny_model(window=128))
    try:
        lm = engine.model.model
        full, awake = engine.session(), engine.session()
        lm.prefill(torch.tensor([[(3 * j) % 200 + 1 for j in range(128)]]), full.state)  # its window is full
        lm.prefill(torch.tensor([ids(engine, "hello")]), awake.state)
        engine.append(full, ids(engine, "more"))
        read, step = _Request("flush", full, None), _Request("decode", awake, (7, True))
        order: list[str] = []
        forward, deferred = engine._forward, engine._step_deferred
        engine._forward = lambda rows: (order.append("forward"), forward(rows))[1]  # type: ignore[method-assign]
        engine._step_deferred = lambda s: (order.append(f"sleep x{len(s)}"), deferred(s))[1]  # type: ignore[method-assign]
        with torch.no_grad():
            engine._run_step([read, step])
        # the read must wait for a forced sleep (its window evicts): one block of it runs, after the
        # decode step was answered; the read goes back to the queue
        assert order == ["forward", "sleep x1"]
        assert step.future.done() and not read.future.done() and list(engine._wake) == [read]
        assert full.sleeping and full.stats.forced_sleeps == 1
    finally:
        engine.close()


@pytest.mark.parametrize("wait", [0.05, None])
def test_queued_sleep_that_waited_max_sleep_wait_s_runs_one_block_before_the_next_wake_step(wait):
    engine = Engine(tiny_model(window=128), max_sleep_wait_s=wait)
    try:
        sleepers = paused_sessions(engine, [100, 100])
        reader = engine.session()
        engine.append(reader, ids(engine, "a question"))
        engine._wake.append(_Request("flush", reader, None))
        with engine._cv:
            batch, _ = engine._take_work()  # the sleep has only begun to wait: the read goes first
        assert batch is not None
        engine._wake.append(_Request("flush", reader, None))
        engine._sleep_waits_since = 0.0  # as though queued sleep had waited since long ago
        with engine._cv:
            batch, gap = engine._take_work()
        if wait is None:  # never: sleep only in real gaps
            assert batch is not None and gap == []
            return
        assert batch is None and gap == sleepers  # one block (both windows fit max_sleep_tokens)
        with engine._cv:
            batch, gap = engine._take_work()  # then the waiting read, the sleep's wait starting over
        assert batch is not None and gap == []
    finally:
        engine.close()


async def test_a_never_consolidate_header_is_never_cached():
    """What a policy excludes must not outlive its session: the prefix cache outlives them all."""
    with Engine(tiny_model()) as engine:
        for _ in range(2):
            s = engine.session()
            engine.append(s, ids(engine, HEADER), consolidate=False)
            engine.append(s, ids(engine, "user: hello"))
            await engine.flush(s)
            assert s.stats.prefix_tokens == 0
        assert not engine._prefixes and engine.prefix_hits == 0
        # the same tokens, consolidated, are a shared header like any other
        await first_turn(engine, HEADER, "user: hello")
        assert len(engine._prefixes) == 1


async def test_prefix_cache_entries_are_shared_within_a_cache_scope_only():
    """A hit is faster: across tenants it would tell one that another sent the same header."""
    with Engine(tiny_model()) as engine:

        async def header_then(scope: str) -> EngineSession:
            s = engine.session(cache_scope=scope)
            engine.append(s, ids(engine, HEADER))
            engine.append(s, ids(engine, "user: hello"))
            await engine.flush(s)
            return s

        assert (await header_then("tenant-a")).stats.prefix_tokens == 0
        assert (await header_then("tenant-b")).stats.prefix_tokens == 0  # another tenant: a miss
        assert (await header_then("tenant-a")).stats.prefix_tokens == len(ids(engine, HEADER))
        assert engine.prefix_hits == 1 and len(engine._prefixes) == 2


async def test_a_transformers_hybrid_starts_from_the_cached_header_too(tmp_path):
    """The prefix cache holds a transformers hybrid's state as well (its cache deep-copied): the
    second conversation reads only its own message, answers as a full read would, and a third
    starts from the same cached state after the second read on into its copy."""
    from sleepagent.model import SleepModel
    from sleepagent.model.hf_tiny import save_tiny_hybrid

    sm = SleepModel.from_pretrained(save_tiny_hybrid(tmp_path / "qwen3_5", "qwen3_5", seed=1), window=128)
    with Engine(sm) as engine:
        header = ids(engine, HEADER)
        a, _ = await first_turn(engine, HEADER, "user: hello")
        b, got = await first_turn(engine, HEADER, "user: read the document")
        user = ids(engine, "user: read the document")
        assert (a.stats.prefix_tokens, b.stats.prefix_tokens) == (0, len(header))
        assert b.stats.prefill_tokens == len(user) and engine.prefix_hits == 1
        ref = sm.model.new_state()
        want = sm.model.prefill(torch.tensor([header + user]), ref)[0, -1]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        assert b.state.window_ids == ref.window_ids
        await engine.decode(b, 7)  # b reads on: the cached state must not move
        _, again = await first_turn(engine, HEADER, "user: read the document")
        torch.testing.assert_close(again, got, atol=0, rtol=0)
        assert engine.prefix_hits == 2 and engine.prefix_cache_bytes() > 0
