"""`sleepagent serve` driven by real clients we did not write: the openai SDK (sync, async,
streaming), langchain-openai's ChatOpenAI and pydantic-ai's OpenAI model, each completing a
tool-calling conversation with the shipped model."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'sleepagent[serve]'")

from openai import AsyncOpenAI, OpenAI

from sleepagent.serve import ServeConfig, serve_in_background

PAGE = "The road from K leads to M. The road from M leads to K.\n[end of document]"
TOOLS = [{"type": "function", "function": {"name": "next_page", "description": "Read the next page of the document.",
                                           "parameters": {"type": "object", "properties": {}}}}]
KEYS = {"key-alice": "alice", "key-bob": "bob"}


@pytest.fixture(scope="module")
def url():
    with serve_in_background(ServeConfig(api_keys=KEYS)) as base:
        yield base


def test_openai_sdk_tool_round_trip_reads_only_new_messages(url):
    client = OpenAI(base_url=url, api_key="key-alice")
    assert [m.id for m in client.models.list()] == ["docqa-small"]
    messages = [{"role": "user", "content": "Read the document."}]
    first = client.chat.completions.create(model="docqa-small", messages=messages, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "next_page"
    assert first.model_extra["session"]["status"] == "new"
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": PAGE}]
    second = client.chat.completions.create(model="docqa-small", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "Done." and second.choices[0].finish_reason == "stop"
    session = second.model_extra["session"]
    assert session["status"] == "reused" and session["id"] == first.model_extra["session"]["id"]
    # only the tool result (and the turn markers) were read: the history stayed in the state
    uncached = second.usage.prompt_tokens - second.usage.prompt_tokens_details.cached_tokens
    assert uncached < len(PAGE) + 20 < first.usage.prompt_tokens + len(PAGE)
    # OpenAI's counting: every prompt token of the request, the part the session held included
    assert second.usage.prompt_tokens_details.cached_tokens == first.usage.total_tokens
    assert second.usage.prompt_tokens == first.usage.total_tokens + uncached
    messages += [
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Where does 1 road from K lead?"},
    ]
    third = client.chat.completions.create(model="docqa-small", messages=messages, tools=TOOLS)
    assert third.choices[0].message.content == "M"  # the fact, from the fast weights


async def test_async_streaming_gives_the_same_text_as_plain_for_the_same_seed(url):
    client = AsyncOpenAI(base_url=url, api_key="key-alice")
    messages = [{"role": "user", "content": "Tell me something."}]
    kw = dict(model="docqa-small", messages=messages, temperature=1.0, seed=7, max_tokens=24)
    plain = await client.chat.completions.create(**kw)
    stream = await client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == (plain.choices[0].message.content or "")
    assert finish == plain.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens


def test_langchain_openai_binds_tools_invokes_and_streams(url):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def next_page() -> str:
        """Read the next page of the document."""
        return PAGE

    llm = ChatOpenAI(base_url=url, api_key="key-bob", model="docqa-small", temperature=0).bind_tools([next_page])
    history = [HumanMessage("Read the document.")]
    reply = llm.invoke(history)
    assert [c["name"] for c in reply.tool_calls] == ["next_page"]
    history += [reply, ToolMessage(next_page.invoke({}), tool_call_id=reply.tool_calls[0]["id"])]
    chunks = list(llm.stream(history))
    final = chunks[0]
    for c in chunks[1:]:
        final = final + c
    assert final.content == "Done." and not final.tool_calls


def test_pydantic_ai_agent_runs_a_tool_and_answers(url):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel("docqa-small", provider=OpenAIProvider(base_url=url, api_key="key-alice"))
    agent = Agent(model)
    pages = []

    @agent.tool_plain
    def next_page() -> str:
        """Read the next page of the document."""
        pages.append(1)
        return PAGE

    result = agent.run_sync("Read the document.")
    assert pages == [1] and result.output == "Done."


def test_usage_as_clients_read_it_counts_the_cached_part_inside_the_prompt(url):
    """OpenAI's counting: ``prompt_tokens`` is every token of the request's history and
    ``prompt_tokens_details.cached_tokens`` the part the session already held, so what a client
    computes as uncached input (prompt - cached) is never negative; pydantic-ai reads the same
    fields as ``input_tokens`` and ``cache_read_tokens``."""
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel("docqa-small", provider=OpenAIProvider(base_url=url, api_key="key-bob"))
    agent = Agent(model)

    @agent.tool_plain
    def next_page() -> str:
        """Read the next page of the document."""
        return PAGE

    result = agent.run_sync("Please read the document.")
    usages = [m.usage for m in result.all_messages() if isinstance(m, ModelResponse)]
    assert len(usages) == 2
    for u in usages:
        assert u.input_tokens >= u.cache_read_tokens >= 0 and u.output_tokens > 0
    assert usages[0].cache_read_tokens == 0 and usages[1].cache_read_tokens > 0  # the second reused the session
    total = result.usage
    assert total.input_tokens - total.cache_read_tokens > 0
    client = OpenAI(base_url=url, api_key="key-bob")
    messages = [{"role": "user", "content": "Read the whole document."}]
    first = client.chat.completions.create(model="docqa-small", messages=messages, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": PAGE}]
    second = client.chat.completions.create(model="docqa-small", messages=messages, tools=TOOLS)
    for r in (first, second):
        assert r.usage.prompt_tokens - r.usage.prompt_tokens_details.cached_tokens >= 0
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert second.usage.prompt_tokens_details.cached_tokens == first.usage.total_tokens
