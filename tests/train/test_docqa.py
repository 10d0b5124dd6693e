"""docqa transcripts are token-for-token what the Agent reads and emits at run time."""

from __future__ import annotations

import random

import torch

from sleepagent import Agent, SleepPolicy
from sleepagent.testing import FunctionModel, tiny_model
from sleepagent.tools import DocumentReader
from sleepagent.train.docqa import DOCQA_SYSTEM, DocQA, reader_tools


async def test_rendered_transcript_equals_what_the_agent_reads():
    task = DocQA(n_places=(5, 7), page_chars=120)
    t = task.transcript(random.Random(3))
    ex = task.render(t)
    reader = DocumentReader.from_text(t.document, page_chars=task.page_chars)
    replies = iter([turn.text for turn in t.turns if turn.role == "assistant"])
    model = FunctionModel(lambda messages, info: next(replies), base=tiny_model(window=4096))
    agent = Agent(model, tools=reader_tools(reader), system_prompt=DOCQA_SYSTEM, sleep=SleepPolicy(loops=1, when="full"),
                  max_steps=50)
    async with agent.session() as session:
        first = await session.run("Read the document.")
        assert first.output == "Done."
        for question, answer, _ in t.questions:
            assert (await session.run(question)).output == answer
        es = session.engine_session
        read = es.state.ids()[0].tolist() + [i for ids, _ in es.pending for i in ids]
    assert read == ex.ids


def test_answers_and_loss_mask():
    task = DocQA(hops=(2,), questions=2)
    ex = task.sample(random.Random(0))
    tok = task.tokenizer
    assert len(ex.answers) == 2 and ex.meta["hops"] == [2, 2]
    for positions in ex.answers:
        assert ex.ids[positions[-1]] == tok.end_id and all(ex.loss_mask[p] for p in positions)
        assert tok.decode([ex.ids[p] for p in positions[:-1]]).isalpha()
    # every assistant token (and its <|end|>) is a target, nothing else is
    t = task.transcript(random.Random(0))
    assert sum(ex.loss_mask) == sum(len(tok.encode(u.text)) + 1 for u in t.turns if u.role == "assistant")
    ids = torch.tensor(ex.ids)
    assert int((ids[torch.tensor(ex.loss_mask)] == tok.special_ids["<|user|>"]).sum()) == 0


async def test_pause_windows_are_the_engines_sleeps():
    from sleepagent.train.docqa import pause_windows

    task = DocQA(n_places=(8, 10), page_chars=150)
    t = task.transcript(random.Random(5))
    ex = task.render(t)
    W, min_fill = 256, 0.4
    windows = pause_windows(len(ex.ids), ex.meta["pauses"], W, min_fill)
    assert sum(windows) == len(ex.ids) and max(windows) <= W and len(windows) > 2
    reader = DocumentReader.from_text(t.document, page_chars=task.page_chars)
    replies = iter([turn.text for turn in t.turns if turn.role == "assistant"])
    base = tiny_model(window=W)
    agent = Agent(FunctionModel(lambda m, i: next(replies), base=base), tools=reader_tools(reader), system_prompt=DOCQA_SYSTEM,
                  sleep=SleepPolicy(loops=2, when="pause", min_fill=min_fill, on_wake="finish"), max_steps=50)
    async with agent.session() as session:
        await session.run("Read the document.")
        for question, _, _ in t.questions:
            await agent.engine.wait_idle(session.engine_session)
            await session.run(question)
        es = session.engine_session
        await agent.engine.wait_idle(es)
        # the last pause (after the final answer) sleeps too; pause_windows stops at the end
        assert es.stats.sleeps == len(windows) - 1 + (es.state.window_len == 0)
    # the same windows through the model directly give the same committed fast weights
    lm = base.model
    state, pos = lm.new_state(), 0
    ids = torch.tensor([ex.ids])
    for n in windows[:-1]:
        lm.prefill(ids[:, pos : pos + n], state)
        state = lm.consolidate(state, loops=2)
        pos += n
    engine_fast = es.state.fast if es.state.window_len else None
    if engine_fast is None:  # engine slept after the last answer as well
        lm.prefill(ids[:, pos:-1], state)
        state = lm.consolidate(state, loops=2)
        engine_fast = es.state.fast
    for a, b in zip(engine_fast.S, state.fast.S, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_questions_are_distinct_and_may_outnumber_the_places():
    """More questions than places: each start comes back with another hop count, never twice with
    the same (a repeat could copy the earlier answer from the window)."""
    task = DocQA(n_places=(4, 4), hops=(1, 2), questions=8)
    for seed in range(5):
        batch = task.sample_batch(random.Random(seed), 3)
        assert len({len(ex.ids) for ex in batch}) == 1  # one forward pass per batch
        for ex in batch:
            assert sorted(ex.meta["hops"]) == [1, 1, 1, 1, 2, 2, 2, 2]
        t = task.transcript(random.Random(seed), hop_seq=[1, 2, 1, 2, 1, 2, 1, 2])
        starts = [q.split(" from ")[1] for q, _, _ in t.questions]
        assert len(set(starts)) == 4  # every place is asked from before any repeats
        assert len({(s, k) for s, (_, _, k) in zip(starts, t.questions, strict=True)}) == 8
    # a fixed hop count (the test set) asks at most one question per place
    t = task.transcript(random.Random(0), hops=2)
    assert len(t.questions) == 4 and len({q for q, _, _ in t.questions}) == 4


def test_names_lie_within_the_short_convolution():
    """The design of the text: a fact's two names are 11 tokens apart, and a question's place is
    8 tokens before the position that predicts the answer, so one GDN layer with conv_size=12
    sees both (TrainConfig(conv_size=12) builds such a model)."""
    from sleepagent.train.trainer import TrainConfig, build_model

    task = DocQA(n_places=(5, 5), hops=(1, 2), questions=6, name_len=1)
    t = task.transcript(random.Random(2))
    ex = task.render(t)
    tok = task.tokenizer
    for (q, _, _), positions in zip(t.questions, ex.answers, strict=True):
        assert tok.decode([ex.ids[positions[0] - 1 - 8]]) == q.split(" from ")[1][0]
    for fact in t.document.split(". "):  # one byte per character: string offsets are token lags
        source, target = fact.index(" from ") + len(" from "), len(fact.rstrip(".")) - 1
        assert target - source == 11, fact
    model = build_model(TrainConfig(task="docqa", conv_size=12, d_model=32, n_layers=2), task)
    assert model.config.conv_size == 12
