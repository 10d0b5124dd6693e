"""docqa transcripts are token-for-token what the Agent reads and emits at run time."""

from __future__ import annotations

import random

import torch
from sleepagent.tools import DocumentReader

from sleepagent import Agent, SleepPolicy
from sleepagent.testing import FunctionModel, tiny_model
from sleepagent.train.docqa import DOCQA_SYSTEM, DocQA, reader_tools


async def test_rendered_transcript_equals_what_the_agent_reads():
    task = DocQA(n_places=(5, 7), page_chars=120)
    t = task.transcript(random.Random(3))
    ex = task.render(t)
    reader = DocumentReader.from_text(t.document, page_chars=task.page_chars)
    replies = iter([turn.text for turn in t.turns if turn.role == "assistant"])
    model = FunctionModel(lambda messages, info: next(replies), base=tiny_model(window=4096))
    agent = Agent(
        model,
        tools=reader_tools(reader),
        system_prompt=DOCQA_SYSTEM,
        sleep=SleepPolicy(loops=1, when="full"),
        max_steps=50,
    )
    async with agent.session() as session:
        first = await session.run("Read the document.")
        assert first.output == "Done."
        for qa in t.questions:
            assert (await session.run(qa.question)).output == qa.answer
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
    agent = Agent(
        FunctionModel(lambda m, i: next(replies), base=base),
        tools=reader_tools(reader),
        system_prompt=DOCQA_SYSTEM,
        sleep=SleepPolicy(loops=2, when="pause", min_fill=min_fill, on_wake="finish"),
        max_steps=50,
    )
    async with agent.session() as session:
        await session.run("Read the document.")
        for qa in t.questions:
            await agent.engine.wait_idle(session.engine_session)
            await session.run(qa.question)
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
        starts = [qa.question.split(" from ")[1] for qa in t.questions]
        assert len(set(starts)) == 4  # every place is asked from before any repeats
        assert len({(s, qa.hops) for s, qa in zip(starts, t.questions, strict=True)}) == 8
    # a fixed hop count (the test set) asks at most one question per place
    t = task.transcript(random.Random(0), hops=2)
    assert len(t.questions) == 4 and len({qa.question for qa in t.questions}) == 4


def test_names_lie_within_the_short_convolution():
    """The design of the text: a fact's two names are 11 tokens apart, and a question's place is
    8 tokens before the position that predicts the answer, so one GDN layer with conv_size=12
    sees both (TrainConfig(conv_size=12) builds such a model)."""
    from sleepagent.train.trainer import TrainConfig, build_model

    task = DocQA(n_places=(5, 5), hops=(1, 2), questions=6, name_len=1)
    t = task.transcript(random.Random(2))
    ex = task.render(t)
    tok = task.tokenizer
    for qa, positions in zip(t.questions, ex.answers, strict=True):
        assert tok.decode([ex.ids[positions[0] - 1 - 8]]) == qa.question.split(" from ")[1][0]
    for fact in t.document.split(". "):  # one byte per character: string offsets are token lags
        source, target = fact.index(" from ") + len(" from "), len(fact.rstrip(".")) - 1
        assert target - source == 11, fact
    model = build_model(TrainConfig(task="docqa", conv_size=12, d_model=32, n_layers=2), task)
    assert model.config.conv_size == 12


async def test_varied_conventions_and_two_documents_render_as_the_agent_reads_them():
    """A session of two documents through a user's own paging tool (another name, its own
    docstring, pages without headers): the transcript is token for token what the Agent reads."""
    from sleepagent import tool
    from sleepagent.train.docqa import Conventions, page_text

    task = DocQA(n_places=(3, 6), hops=(1, 2), questions=4, page_chars=56, name_len=1, documents=(2, 2))
    conv = Conventions(tool_name="fetch_chunk", docstring="Fetch the next part of the text.", header="",
                       read_request="Please read the document.", next_request="Read another document.")
    t = task.transcript(random.Random(4), n=[5, 6], conventions=conv)
    assert len(t.documents) == 2 and len(t.pages) == 2
    first, second = (set(doc.replace(".", "").split()) - {"The", "road", "from", "leads", "to"} for doc in t.documents)
    assert not first & second  # every document has its own places
    assert {qa.doc for qa in t.questions if qa.after == 1} == {0, 1}  # after the second: asked about both
    current = {"doc": 0, "page": 0}

    @tool
    async def fetch_chunk() -> str:
        """Fetch the next part of the text."""
        pages = t.pages[current["doc"]]
        current["page"] += 1
        return pages[current["page"] - 1]

    ex = task.render(t)
    replies = iter([turn.text for turn in t.turns if turn.role == "assistant"])
    model = FunctionModel(lambda messages, info: next(replies), base=tiny_model(window=4096))
    agent = Agent(model, tools=[fetch_chunk], system_prompt=DOCQA_SYSTEM, sleep=SleepPolicy(loops=1, when="full"),
                  max_steps=50)
    async with agent.session() as session:
        for d in range(2):
            current.update(doc=d, page=0)
            done = await session.run(conv.read_request if d == 0 else conv.next_request)
            assert done.output == "Done." and current["page"] == len(t.pages[d])
            for qa in [q for q in t.questions if q.after == d]:
                assert (await session.run(qa.question)).output == qa.answer
        es = session.engine_session
        read = es.state.ids()[0].tolist() + [i for ids, _ in es.pending for i in ids]
    assert read == ex.ids
    assert t.pages[0][-1].endswith("[end of document]") and page_text("x", 1, 2, False) == "x"


def test_batches_share_one_layout_with_varied_conventions_and_several_documents():
    task = DocQA(n_places=(2, 16), hops=(1, 2), questions=8, page_chars=112, window=256, name_len=1,
                 documents=(1, 2), varied=True)
    seen_docs, names = set(), set()
    for seed in range(12):
        batch = task.sample_batch(random.Random(seed), 4)
        assert len({len(ex.ids) for ex in batch}) == 1
        assert len({tuple(ex.meta["pauses"]) for ex in batch}) == 1
        seen_docs.add(batch[0].meta["n_docs"])
        for ex in batch:
            hops = ex.meta["hops"]
            for d in range(ex.meta["n_docs"]):  # hop counts balanced per document
                ks = [k for k, doc in zip(hops, ex.meta["docs"], strict=False) if doc == d]
                assert abs(ks.count(1) - ks.count(2)) <= 1
        text = task.tokenizer.decode(batch[0].ids)
        names.add(text.split('"name": "')[1].split('"')[0])
    assert seen_docs == {1, 2} and len(names) > 5
