"""ChatSleepModel on a real (small, random) model: calls, streaming, sessions, tools."""

from __future__ import annotations

import logging

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel

from sleepagent.langchain import ChatSleepModel, _ai_message
from sleepagent.testing import tiny_model, tool_call

SM = tiny_model(seed=1, window=256, tie_embeddings=False)


def chat(**kw) -> ChatSleepModel:
    return ChatSleepModel.from_model(SM, **{"max_tokens": 8, "loops": 2, **kw})


def test_invoke_reports_usage_and_metadata():
    llm = chat()
    msg = llm.invoke("hello")
    assert isinstance(msg, AIMessage)
    assert msg.usage_metadata["output_tokens"] <= 8 and msg.usage_metadata["input_tokens"] > 0
    assert isinstance(msg.usage_metadata["total_tokens"], int)
    assert msg.response_metadata["model_name"] == SM.name
    assert llm.invoke("hello").content == msg.content  # greedy is deterministic


async def test_ainvoke_stream_and_astream_agree():
    llm = chat()
    full = (await llm.ainvoke("tell me")).content
    chunks = list(llm.stream("tell me"))
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["output_tokens"] > 0
    assert "".join(c.content for c in chunks) == full
    achunks = [c async for c in llm.astream("tell me")]
    assert "".join(c.content for c in achunks) == full and achunks[-1].chunk_position == "last"


def test_a_stream_left_early_stops_its_worker():
    """A caller that stops reading must not leave a thread generating on its own (one still in a
    torch call when the interpreter exits aborts it)."""
    import threading

    before = set(threading.enumerate())
    stream = chat(max_tokens=200).stream("tell me a long story")  # ~50 tokens from this model
    first = next(iter(stream))
    assert isinstance(first.content, str)
    stream.close()
    left = [t for t in threading.enumerate() if t not in before and t.name != "sleepagent-engine"]
    assert not left  # the engine's worker is the engine's (closed at exit); the stream's own is gone


def test_batch_runs_from_worker_threads():
    llm = chat()
    outs = llm.batch(["a", "b", "c"])
    assert [o.content for o in outs] == [llm.invoke(x).content for x in ["a", "b", "c"]]


def test_session_reads_only_new_messages_and_rebuilds_on_divergence(caplog):
    llm = chat(max_tokens=4)
    cfg = {"configurable": {"session_id": "s1"}}
    history = [SystemMessage("Be brief."), HumanMessage("first question")]
    first = llm.invoke(history, config=cfg)
    history += [first, HumanMessage("second")]
    second = llm.invoke(history, config=cfg)
    tok = SM.tokenizer
    # only the new user turn (+ the <|assistant|> prompt) was read; input tokens count the whole
    # history, as OpenAI's prompt tokens do, the part the session held as a cache read
    use = second.usage_metadata
    assert use["input_tokens"] - use["input_token_details"]["cache_read"] == len(tok.render_turn("user", "second")) + 1
    # what the session held: the first call's tokens, and the closing token of its reply when the
    # runtime closed it (max_tokens cut it) rather than the model
    assert 0 <= use["input_token_details"]["cache_read"] - first.usage_metadata["total_tokens"] <= 1
    with caplog.at_level(logging.WARNING, logger="sleepagent.langchain"):
        third = llm.invoke([SystemMessage("Other."), HumanMessage("first question")], config=cfg)
    assert "rebuilding" in caplog.text
    assert third.usage_metadata["input_token_details"]["cache_read"] == 0  # read from the start
    # a fresh ephemeral call with the same history gives the same answer as the session did
    assert (
        chat(max_tokens=4).invoke([SystemMessage("Be brief."), HumanMessage("first question")]).content == first.content
    )


def test_tool_messages_are_read_and_tool_calls_parsed():
    class Add(BaseModel):
        """Add two numbers."""

        a: int
        b: int

    llm = chat().bind_tools([Add], tool_choice="any")
    ai = AIMessage(content="", tool_calls=[{"name": "Add", "args": {"a": 1, "b": 2}, "id": "c1"}])
    out = llm.invoke([HumanMessage("add 1 and 2"), ai, ToolMessage("3", tool_call_id="c1")])
    assert isinstance(out, AIMessage)
    parsed = _ai_message("sure" + tool_call("Add", a=1, b=2) + '<tool_call>{"name": </tool_call>')
    assert parsed.content == "sure" and parsed.tool_calls[0]["name"] == "Add"
    assert parsed.tool_calls[0]["args"] == {"a": 1, "b": 2} and len(parsed.invalid_tool_calls) == 1


def test_stop_sequences_cut_the_output():
    llm = chat(max_tokens=16)
    full = llm.invoke("x").content
    if len(full) >= 4:
        cut = llm.invoke("x", stop=[full[2:4]]).content
        assert cut == full[: full.index(full[2:4])] and len(cut) < len(full)


def test_unknown_checkpoint_fails_on_first_use_with_a_clear_error():
    from sleepagent.errors import CheckpointError

    with pytest.raises(CheckpointError, match="never downloads"):
        ChatSleepModel(model="no-such-model").invoke("hi")
