"""Agent(output_type=...): the final answer is generated under the type's JSON schema and returned
validated; tool-call turns stay allowed until the model answers. Scripted doubles for the loop's
rules, the shipped model for what the grammar guarantees."""

from __future__ import annotations

import json
from typing import Literal

import anyio
import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from pydantic import BaseModel, Field, field_validator
from sleepagent.tools import DocumentReader

from sleepagent import Agent, SleepModel
from sleepagent.errors import ConfigError, ModelBehaviorError
from sleepagent.runtime.grammar import LIMITS_LADDER, bound_schema, max_json_bytes
from sleepagent.testing import TestModel, tool_call

from .test_grammar import schemas


class City(BaseModel):
    name: str = Field(max_length=12)
    population: int = Field(ge=0)
    kind: Literal["town", "city"]


@pytest.fixture(scope="module")
def sm() -> SleepModel:
    return SleepModel.from_pretrained("docqa-small")


async def test_scripted_answer_is_validated_into_the_output_type():
    agent = Agent(TestModel(['{"name": "Paris", "population": 2100000, "kind": "city"}']), output_type=City)
    result = await agent.run("Which city?")
    assert result.output == City(name="Paris", population=2100000, kind="city")
    assert result.messages[-1].content.startswith('{"name"')
    agent.close()


async def test_tool_calls_stay_allowed_until_the_answer_and_the_run_overrides_the_type():
    reader = DocumentReader.from_text("The road from K leads to M.", page_chars=100)
    agent = Agent(TestModel([tool_call("next_page"), "[1, 2]"]), tools=reader.tools, output_type=City)
    result = await agent.run("Read, then count.", output_type=list[int])
    assert result.output == [1, 2] and result.usage.tool_calls == 1
    agent.close()


async def test_an_invalid_answer_goes_back_to_the_model_once_then_raises():
    class Even(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def even(cls, v: int) -> int:
            if v % 2:
                raise ValueError("n must be even")
            return v

    agent = Agent(TestModel(['{"n": 3}', '{"n": 4}']), output_type=Even, output_retries=1)
    result = await agent.run("An even number.")
    assert result.output == Even(n=4)
    retry = [m for m in result.messages if m.role == "user"][1]
    assert "n must be even" in retry.content
    strict = Agent(TestModel(['{"n": 3}']), output_type=Even, output_retries=0)
    with pytest.raises(ModelBehaviorError, match="not a valid Even"):
        await strict.run("An even number.")
    agent.close()
    strict.close()


def test_an_answer_the_budget_cannot_hold_or_a_type_without_schema_fails_at_construction():
    class Many(BaseModel):
        a: str
        b: str
        c: str
        d: str

    with pytest.raises(ConfigError) as e:
        Agent(TestModel(["{}"]), output_type=Many, max_tokens=8)
    assert e.value.field == "max_tokens"
    with pytest.raises(ConfigError, match="output_type"):
        Agent(TestModel(["{}"]), output_type=object())


async def test_shipped_model_answers_with_a_valid_instance(sm):
    agent = Agent(sm, output_type=City, max_tokens=96)
    result = await agent.run("Which city is it?")
    assert isinstance(result.output, City)
    assert City.model_validate_json(result.messages[-1].content) == result.output
    agent.close()


async def test_shipped_model_reads_through_its_tool_then_answers_in_json(sm):
    """The docqa model calls next_page as it was trained to (the grammar leaves the choice to it);
    its last turn, where it would have said "Done.", is a JSON value."""
    reader = DocumentReader.from_text("The road from K leads to M. The road from M leads to K.", page_chars=112)
    agent = Agent(sm, tools=reader.tools, output_type=dict[str, int], max_tokens=64, max_steps=5)
    result = await agent.run("Read the document.")
    assert result.usage.tool_calls >= 1 and reader.finished
    assert isinstance(result.output, dict) and all(isinstance(v, int) for v in result.output.values())
    assert json.loads(result.messages[-1].content) == result.output
    agent.close()


# ------------------------------------------------------------------------------------------ 200 schemas
def _draw(n: int) -> list[dict]:
    """``n`` schemas from test_grammar's strategy, the same ones every run (hypothesis draws them;
    the runs below go concurrently, so that the engine batches their decode steps)."""
    drawn: list[dict] = []

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(schema=schemas())
    def draw(schema: dict) -> None:
        drawn.append(schema)

    draw()
    return drawn


def _budget(schema: dict) -> int:
    """32 tokens, or the least the schema needs under the tightest caps, rounded up to 16."""
    need = max_json_bytes(bound_schema(schema, LIMITS_LADDER[-1])) + 1
    return max(32, -(-need // 16) * 16)


@pytest.mark.slow
async def test_shipped_model_answers_200_random_schemas_through_output_type(sm):
    from sleepagent import Engine, SleepPolicy

    drawn = _draw(200)
    assert len(drawn) == 200
    engine = Engine(sm)
    agents: dict[int, Agent] = {}  # one per token budget, over one engine
    todo = list(drawn)
    answers: list[tuple[dict, object, str]] = []

    async def worker() -> None:
        sessions: dict[int, object] = {}
        while todo:
            schema = todo.pop()
            budget = _budget(schema)
            if budget not in agents:
                agents[budget] = Agent(sm, engine=engine, max_tokens=budget, sleep=SleepPolicy(loops=1, min_fill=0.5))
            if budget not in sessions:
                sessions[budget] = agents[budget].session()
            result = await sessions[budget].run("Reply with one JSON value.", output_type=schema)
            answers.append((schema, result.output, result.messages[-1].content))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batched steps: on a loaded 2-core machine a second thread mostly waits
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
    finally:
        engine.close()
        torch.set_num_threads(threads)
    assert len(answers) == 200
    for schema, output, text in answers:
        jsonschema.validate(output, schema)
        assert json.loads(text) == output
