"""The safe calculator: correct arithmetic, and refusal of everything else."""

from __future__ import annotations

import math
import re
import time

import pytest
from sleepagent.tools import ToolCall, ToolRegistry, calculator, evaluate

from sleepagent.errors import ToolError


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("-3 ** 2", -9),
        ("+-+4", -4),
        ("abs(-5)", 5),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("min(3, 1, 2)", 1),
        ("max(3, 1, 2)", 3),
        ("min(4)", 4),
        ("sqrt(16)", 4.0),
        ("floor(2.7) + ceil(2.1)", 5),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("2 * pi", 2 * math.pi),
        ("1.5e3", 1500.0),
        ("12345678901234567890 * 98765432109876543210", 1219326311370217952237463801111263526900),
    ],
)
def test_evaluates_correctly(expression: str, expected: float) -> None:
    value = evaluate(expression)
    assert value == pytest.approx(expected) if isinstance(expected, float) else value == expected
    assert type(value) is type(expected)


def test_tool_returns_text() -> None:
    assert calculator("6 * 7") == "42"
    assert calculator("1 / 4") == "0.25"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "calling __import__ is not allowed"),
        ("__import__('os').system('echo hi')", "attribute access"),
        ("(1).__class__", "attribute access"),
        ("math.pi", "attribute access"),
        ("x + 1", "unknown name 'x'"),
        ("os", "unknown name 'os'"),
        ("eval('1')", "calling eval is not allowed"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("1j * 2", "only numbers"),
        ("[1, 2]", "List syntax is not allowed"),
        ("1 if 1 else 2", "IfExp"),
        ("1 < 2", "Compare"),
        ("lambda: 1", "Lambda"),
        ("2 ^ 3", "use ** for powers"),
        ("1 << 3", "operator << is not allowed"),
        ("~1", "operator ~ is not allowed"),
        ("abs(x=1)", "positional arguments only"),
        ("sqrt(1, 2)", "takes 1 argument(s), got 2"),
        ("max()", "takes 1 or more"),
    ],
)
def test_rejects_unsafe_or_unsupported(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match=re.escape(message)):
        evaluate(expression)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9 ** 9 ** 9", "exponents are limited"),
        ("2 ** 100000", "exponents are limited"),
        ("10 ** 5000", "would exceed"),
        ("(10 ** 2000) ** 3", "would exceed"),
        ("(2 ** 9000) * (2 ** 9000)", "would exceed"),
        ("10.0 ** 400", "too large"),
        ("1e308 * 10", "not a finite number"),
        ("round(5, -1000000)", "between -100 and 100"),
    ],
)
def test_rejects_huge_results_quickly(expression: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ToolError, match=message):
        evaluate(expression)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("sqrt(-1)", "math error"),
        ("(-8) ** 0.5", "complex"),
        ("", "empty"),
        ("1 +", "cannot parse"),
        ("1" + " + 1" * 200, "longer than"),
        ("-" * 300 + "1", None),  # deep but legal nesting still evaluates
    ],
)
def test_math_errors_are_tool_errors(expression: str, message: str | None) -> None:
    if message is None:
        assert evaluate(expression) == 1
        return
    with pytest.raises(ToolError, match=message):
        evaluate(expression)


async def test_registry_reports_calculator_errors_to_the_model() -> None:
    registry = ToolRegistry([calculator])
    ok = await registry.execute(ToolCall(name="calculator", arguments={"expression": "2 + 2"}))
    assert (ok.is_error, ok.content) == (False, "4")
    bad = await registry.execute(
        ToolCall(name="calculator", arguments={"expression": "__import__('os').getcwd()"})
    )
    assert bad.is_error and bad.error_kind == "tool_exception"
    assert "not allowed" in bad.content
