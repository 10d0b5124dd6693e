"""@tool: schemas from signatures, direct calls, Tool.call, specs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio
import pydantic
import pytest
from pydantic import Field
from sleepagent.tools import Tool, to_text, tool

from sleepagent.errors import ConfigError


@tool
def add(a: int, b: int = 2) -> int:
    """Add two integers.

    This second paragraph is not part of the description.

    Args:
        a: the first addend
        b: the second addend, which
            defaults to two
    """
    return a + b


@tool(name="greet_async", description="Say hello.", timeout=1.5)
async def greet(who: str, punctuation: str = "!") -> str:
    await anyio.sleep(0)
    return f"hello {who}{punctuation}"


def test_bare_decorator_builds_tool_with_docstring_description() -> None:
    assert isinstance(add, Tool)
    assert add.name == "add"
    assert add.description == "Add two integers."
    assert add.timeout is None


def test_decorator_options_override_name_description_timeout() -> None:
    assert greet.name == "greet_async"
    assert greet.description == "Say hello."
    assert greet.timeout == 1.5
    assert greet.is_async and not add.is_async


def test_schema_marks_params_without_default_as_required() -> None:
    schema = add.json_schema
    assert schema["type"] == "object"
    assert schema["required"] == ["a"]
    assert schema["properties"]["a"]["type"] == "integer"
    assert schema["properties"]["b"]["default"] == 2
    assert schema["additionalProperties"] is False
    # Args: section lines become descriptions, continuation lines included.
    assert schema["properties"]["a"]["description"] == "the first addend"
    assert schema["properties"]["b"]["description"] == "the second addend, which defaults to two"


def test_annotated_field_constraints_and_descriptions_are_kept() -> None:
    @tool
    def pick(
        n: Annotated[int, Field(ge=1, le=5, description="how many")], label: str | None = None
    ) -> str:
        """Pick.

        Args:
            n: docstring text loses to the Field description
        """
        return f"{n}{label}"

    props = pick.json_schema["properties"]
    assert props["n"]["minimum"] == 1 and props["n"]["maximum"] == 5
    assert props["n"]["description"] == "how many"
    assert pick.json_schema["required"] == ["n"]
    with pytest.raises(pydantic.ValidationError):
        pick.validate({"n": 9})


def test_spec_is_openai_style() -> None:
    spec = add.spec()
    assert spec == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": add.json_schema,
        },
    }


def test_decorated_functions_stay_directly_callable() -> None:
    assert add(3) == 5
    assert add(3, b=4) == 7
    assert anyio.run(greet, "bob") == "hello bob!"


def test_validate_coerces_and_forbids_extra_arguments() -> None:
    assert add.validate({"a": "4"}) == {"a": 4, "b": 2}
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        add.validate({"a": 1, "c": 3})
    with pytest.raises(pydantic.ValidationError, match="Field required"):
        add.validate({})


async def test_call_runs_sync_and_async_and_returns_text() -> None:
    assert await add.call({"a": 40, "b": 2}) == "42"
    assert await greet.call({"who": "ann", "punctuation": "?"}) == "hello ann?"


async def test_call_enforces_timeout_with_timeout_error() -> None:
    @tool(timeout=0.05)
    async def slow() -> str:
        await anyio.sleep(5)
        return "never"

    with anyio.fail_after(2):
        with pytest.raises(TimeoutError):
            await slow.call({})
        # A per-call timeout that is stricter than the tool's own wins.
        with pytest.raises(TimeoutError):
            await greet.call({"who": "x"}, timeout=0.0)


async def test_sync_tool_runs_in_worker_thread() -> None:
    import threading

    main = threading.get_ident()

    @tool
    def where() -> bool:
        return threading.get_ident() != main

    assert await where.call({}) == "true"


async def test_positional_only_parameters_are_supported() -> None:
    @tool
    def sub(a: int, b: int, /) -> int:
        return a - b

    assert await sub.call({"a": 5, "b": 3}) == "2"


def test_bound_methods_can_be_tools() -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def bump(self, by: int = 1) -> int:
            """Increase the counter."""
            self.n += by
            return self.n

    counter = Counter()
    bump = tool(counter.bump)
    assert "self" not in bump.json_schema["properties"]
    assert anyio.run(bump.call, {"by": 3}) == "3"
    assert counter.n == 3


def test_invalid_tool_definitions_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="args"):
        tool(lambda *args: None, name="varargs")
    with pytest.raises(ConfigError, match="name"):
        tool(lambda: None)
    with pytest.raises(ConfigError, match="name"):
        tool(name="has space")(add.function)
    with pytest.raises(ConfigError, match="timeout"):
        tool(timeout=0)(add.function)

    def method(self, x: int) -> int:  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ConfigError, match="bound method"):
        tool(method)


def test_to_text_converts_values() -> None:
    @dataclass
    class Point:
        x: int
        y: int

    class Model(pydantic.BaseModel):
        name: str

    assert to_text("plain") == "plain"
    assert to_text(3) == "3"
    assert to_text({"a": [1, 2.5, None, "é"]}) == '{"a":[1,2.5,null,"é"]}'
    assert to_text(Point(1, 2)) == '{"x":1,"y":2}'
    assert to_text(Model(name="n")) == '{"name":"n"}'
    assert to_text(None) == "null"
    assert "object" in to_text(object())  # unknown types fall back to their repr
