"""Engine: wake before sleep, on_wake modes, forced sleep, isolation and batching (real model)."""

from __future__ import annotations

import anyio
import pytest
import torch

from sleepagent.engine import Engine
from sleepagent.policy import SleepPolicy
from sleepagent.testing import tiny_model


@pytest.fixture
def engine():
    with Engine(tiny_model()) as e:
        yield e


def text_ids(engine: Engine, text: str) -> list[int]:
    return engine.model.tokenizer.encode(text, specials=False)


async def test_prefill_and_decode_match_the_model(engine):
    s = engine.session()
    ids = text_ids(engine, "the engine runs the real model")
    logits = await engine.prefill(s, ids)
    nxt = await engine.decode(s, 7)
    lm = engine.model.model
    ref = lm.new_state()
    want = lm.prefill(torch.tensor([ids]), ref)[0, -1]
    torch.testing.assert_close(logits, want)
    torch.testing.assert_close(nxt, lm.step(torch.tensor([7]), ref)[0])


async def test_long_prefill_sleeps_when_full_and_counts_it_exposed(engine):
    s = engine.session(policy=SleepPolicy(loops=2, when="full"))
    await engine.prefill(s, text_ids(engine, "x" * 300))  # window is 128
    st = s.stats
    assert st.forced_sleeps == 2 and st.sleeps == 2 and st.passes == 4
    assert s.state.window_len == 300 - 256 and s.state.tokens_consolidated == 256
    assert st.sleep_s_total > 0 and st.sleep_s_exposed == pytest.approx(st.sleep_s_total)
    assert st.sleep_s_hidden == pytest.approx(0.0, abs=1e-12)


async def test_pause_sleep_runs_in_the_background_and_is_hidden(engine):
    s = engine.session(policy=SleepPolicy(loops=3, min_fill=0.5))
    await engine.prefill(s, text_ids(engine, "a" * 40))
    assert not engine.pause(s)  # below min_fill: nothing to do
    await engine.prefill(s, text_ids(engine, "b" * 40))
    assert engine.pause(s)
    await engine.wait_idle(s)
    assert s.stats.sleeps == 1 and s.stats.passes == 3 and s.state.window_len == 0
    assert s.stats.sleep_s_hidden == pytest.approx(s.stats.sleep_s_total) and s.stats.sleep_s_exposed == 0
    # same commit as a direct consolidation
    lm = engine.model.model
    ref = lm.new_state()
    lm.prefill(torch.tensor([text_ids(engine, "a" * 40 + "b" * 40)]), ref)
    # prefills were split differently, so compare with tolerance
    want = lm.consolidate(ref, loops=3)
    for a, b in zip(s.state.fast.S, want.fast.S, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


async def test_the_worker_counts_its_busy_seconds(engine):
    """``busy_s`` (``/metrics``' sleepagent_engine_busy_seconds, ``busy_seconds()`` with the step in
    progress): the worker's time on reads, decode steps and sleep blocks; idle waits are not in it."""
    import time

    async def busy_after(least: float) -> float:
        for _ in range(200):  # a result is handed over before the worker adds up the step's time
            if engine.busy_s > least:
                break
            await anyio.sleep(0.01)
        return engine.busy_s

    t0 = time.perf_counter()
    s = engine.session(policy=SleepPolicy(loops=3, min_fill=0.5))
    await engine.prefill(s, text_ids(engine, "b" * 80))
    assert engine.pause(s)
    await engine.wait_idle(s)
    work = s.stats.sleep_s_total + s.stats.prefill_s
    busy = await busy_after(work)
    assert work < busy <= time.perf_counter() - t0
    await anyio.sleep(0.2)  # idle: the counter stands still
    assert engine.busy_s == busy == engine.busy_seconds()
    await engine.decode(s, 7)
    assert await busy_after(busy) > busy


@pytest.mark.parametrize("on_wake", ["finish", "commit", "abort"])
async def test_waking_mid_sleep_follows_on_wake(on_wake):
    # a bigger window makes each pass slow enough to wake in the middle
    with Engine(tiny_model(window=512, d_model=128)) as engine:
        s = engine.session(policy=SleepPolicy(loops=30, min_fill=0.1, on_wake=on_wake))
        await engine.prefill(s, text_ids(engine, "c" * 500))
        window_before = s.state.window_len
        assert engine.pause(s)
        while s.stats.passes < 2:
            await anyio.sleep(0.001)
        await engine.decode(s, 5)  # wake
        st = s.stats
        if on_wake == "finish":
            assert st.passes >= 30 and st.sleeps == 1 and st.sleep_s_exposed > 0
            assert s.state.window_len == 1
        elif on_wake == "commit":
            assert 2 <= st.passes < 30 and st.sleeps == 1
            assert s.state.window_len == 1
        else:
            assert st.aborted_sleeps == 1 and st.sleeps == 0
            # the window is intact: nothing was lost, the token went after it
            assert s.state.window_len == window_before + 1
            assert s.state.fast.equal(engine.model.model.new_state().fast)


async def test_wake_work_of_other_sessions_goes_first():
    with Engine(tiny_model(window=512, d_model=128)) as engine:
        sleeper = engine.session(policy=SleepPolicy(loops=64, min_fill=0.1))
        awake = engine.session()
        await engine.prefill(sleeper, text_ids(engine, "d" * 500))
        await engine.prefill(awake, text_ids(engine, "hello"))
        engine.pause(sleeper)
        while sleeper.stats.passes < 1:
            await anyio.sleep(0.001)
        for _ in range(5):
            await engine.decode(awake, 3)
        # the other session's decode did not wait for the whole sleep
        assert sleeper.sleeping and sleeper.stats.passes < 64
        engine.close_session(sleeper)


async def test_sessions_are_isolated_and_batched(engine):
    sessions = [engine.session() for _ in range(6)]
    prompts = [text_ids(engine, f"session {i} says " + "z" * i) for i in range(6)]
    results: dict[int, list[int]] = {}

    async def greedy(i: int) -> None:
        s = sessions[i]
        logits = await engine.prefill(s, prompts[i])
        out = []
        for _ in range(12):
            t = int(logits.argmax())
            out.append(t)
            logits = await engine.decode(s, t)
        results[i] = out

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(greedy, i)
    assert engine.batched_steps > 0
    # each session alone, one at a time, gives the same tokens
    lm = engine.model.model
    for i in range(6):
        st = lm.new_state()
        logits = lm.prefill(torch.tensor([prompts[i]]), st)[0, -1]
        out = []
        for _ in range(12):
            t = int(logits.argmax())
            out.append(t)
            logits = lm.step(torch.tensor([t]), st)[0]
        assert results[i] == out


async def test_a_flush_whose_tokens_were_already_read_returns_their_logits(engine):
    # Both flushes are queued before the worker runs; the first reads every queued token, the
    # second has nothing left to read and answers with the logits after the last token.
    s = engine.session()
    engine.append(s, text_ids(engine, "first "))
    engine.append(s, text_ids(engine, "second"))
    results = []

    async def flush() -> None:
        results.append(await engine.flush(s))

    async with anyio.create_task_group() as tg:
        tg.start_soon(flush)
        tg.start_soon(flush)
    lm = engine.model.model
    want = lm.prefill(torch.tensor([text_ids(engine, "first second")]), lm.new_state())[0, -1]
    assert len(results) == 2 and s.state.window_len == 12
    for got in results:
        torch.testing.assert_close(got, want)


async def test_cancelled_request_is_dropped_and_engine_keeps_serving(engine):
    s = engine.session()
    with anyio.move_on_after(0):
        await engine.prefill(s, text_ids(engine, "never read"))
    await engine.prefill(s, text_ids(engine, "ok"))
    assert s.state.window_len in (2, 12)  # the cancelled one is dropped unless it already ran
    engine.close()
    from sleepagent.engine import EngineClosed

    with pytest.raises(EngineClosed):
        await engine.decode(s, 1)


@pytest.mark.parametrize("how", ["policy", "engine"])
@pytest.mark.parametrize("then", ["pause", "evict"])
async def test_a_sleep_woken_mid_way_resumes_where_it_stopped(then, how):
    # on_wake="resume" (the default), or Engine(resume_sleep=True) with on_wake="finish": the wake
    # runs over the intact window (as though no sleep had begun), the sleep keeps its passes and
    # goes on at the next pause, or finishes when the window must evict
    assert SleepPolicy().on_wake == "resume"
    with Engine(tiny_model(window=512, d_model=128), resume_sleep=how == "engine") as engine:
        mode = "resume" if how == "policy" else "finish"
        s = engine.session(policy=SleepPolicy(loops=30, min_fill=0.1, on_wake=mode))
        doc, q = text_ids(engine, "c" * 300), text_ids(engine, "where now?")
        await engine.prefill(s, doc)
        assert engine.pause(s)
        while s.stats.passes < 2:
            await anyio.sleep(0.001)
        got = [await engine.prefill(s, q)] + [await engine.decode(s, t) for t in (5, 6, 7)]
        assert s.sleeping and s.stats.sleeps == 0 and s._job is not None
        kept = s._job.passes_done
        assert 2 <= kept < 30 and s.stats.passes == kept  # no pass ran while it was awake
        lm = engine.model.model
        ref = lm.new_state()
        lm.prefill(torch.tensor([doc]), ref)
        awake = ref.clone()
        want = [lm.prefill(torch.tensor([q]), awake)[0, -1]] + [lm.step(torch.tensor([t]), awake)[0] for t in (5, 6, 7)]
        for a, b in zip(got, want, strict=True):  # wake output: the output without sleeping
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        tail = q + [5, 6, 7]
        if then == "pause":
            assert engine.pause(s)
            await engine.wait_idle(s)
        else:
            more = text_ids(engine, "m" * 250)  # does not fit beside the document
            await engine.prefill(s, more)
            tail += more
            assert s.stats.sleep_s_exposed > 0
        st = s.stats
        assert st.sleeps == 1 and st.passes == 30 and st.aborted_sleeps == 0 and st.forced_sleeps == 0
        # the state an uninterrupted sleep commits, then the same wake tokens read after it
        slept = lm.consolidate(ref, loops=30)
        lm.prefill(torch.tensor([tail]), slept)
        assert (s.state.window_len, s.state.tokens_seen, s.state.tokens_consolidated) == \
            (len(tail), len(doc) + len(tail), len(doc))
        for a, b in zip(s.state.fast.S + s.state.working.S, slept.fast.S + slept.working.S, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        nxt = await engine.decode(s, 8)
        torch.testing.assert_close(nxt, lm.step(torch.tensor([8]), slept)[0], rtol=1e-4, atol=1e-5)


async def test_a_kept_sleep_finishes_before_a_never_consolidate_segment_is_read():
    # on_wake="resume" keeps a sleep across a wake, but not across an excluded turn: where the sleep
    # ends must not depend on that turn (its length would decide when the window evicts)
    with Engine(tiny_model(window=512, d_model=128)) as engine:
        s = engine.session(policy=SleepPolicy(loops=30, min_fill=0.1))
        await engine.prefill(s, text_ids(engine, "c" * 300))
        assert engine.pause(s)
        while s.stats.passes < 2:
            await anyio.sleep(0.001)
        await engine.prefill(s, text_ids(engine, "public"))  # kept: the wake reads over the window
        assert s._job is not None and s.stats.sleeps == 0
        engine.append(s, text_ids(engine, "secret 1234"), consolidate=False)
        await engine.flush(s)
        assert s._job is None and s.stats.sleeps == 1 and s.stats.passes == 30
        wake = len(text_ids(engine, "public")) + len(text_ids(engine, "secret 1234"))
        assert s.state.window_len == wake and s.state.tokens_consolidated == len(text_ids(engine, "c" * 300))
