"""A calculator tool with a safe arithmetic evaluator.

Small models are bad at arithmetic, so they get a calculator. The expression comes from the model,
i.e. it is untrusted: it is parsed with :mod:`ast` and only a whitelist of node types is walked
(numbers, arithmetic operators, a few math functions). Nothing is ever passed to ``eval``/``exec``,
names other than ``pi``/``e`` and attribute access are rejected, and powers and integer sizes are
bounded so an expression like ``9**9**9`` fails fast instead of eating the CPU.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from sleepagent.errors import ToolError

from .base import tool

__all__ = ["MAX_EXPONENT", "MAX_EXPRESSION_CHARS", "MAX_INT_BITS", "calculator", "evaluate"]

MAX_EXPRESSION_CHARS = 500
"""Longer expressions are rejected (also bounds the nesting depth the evaluator recurses into)."""
MAX_EXPONENT = 10_000
"""Largest exponent magnitude accepted by ``**``."""
MAX_INT_BITS = 10_000
"""Largest integer (in bits, about 3000 decimal digits) any intermediate result may reach."""

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,  # guarded in _power
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
# Symbols of rejected operators, so the error quotes what the model wrote.
_OPERATOR_SYMBOLS: dict[type[ast.AST], str] = {
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.Not: "not",
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > 100:
        raise ToolError("round(x, n): n must be an integer between -100 and 100")
    return round(x, ndigits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


# name -> (function, min args, max args or None for unbounded)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int | None]] = {
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (lambda *args: min(args), 1, None),
    "max": (lambda *args: max(args), 1, None),
    "sqrt": (math.sqrt, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "exp": (math.exp, 1, 1),
    "log": (_log, 1, 2),
}

_ALLOWED = (
    "numbers, + - * / // % ** (unary + and -), parentheses, the constants pi and e, and the "
    f"functions {', '.join(_FUNCTIONS)}"
)


def evaluate(expression: str) -> Number:
    """The value of an arithmetic ``expression``; raises :class:`ToolError` saying what is wrong."""
    expression = expression.strip()
    if not expression:
        raise ToolError("the expression is empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"cannot parse the expression: {exc.msg}") from None
    try:
        value = _eval(tree.body)
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"math error: {exc}") from None
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    return value


def _eval(node: ast.AST) -> Number:
    """Evaluate one whitelisted node; every other node type is an error naming what was found."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ToolError(f"only numbers are allowed, not {type(node.value).__name__} literals")
        return _checked(node.value)
    if isinstance(node, ast.BinOp):
        op = _BINARY.get(type(node.op))
        if op is None:
            hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
            raise ToolError(
                f"operator {_source(node.op)} is not allowed{hint}; allowed: {_ALLOWED}"
            )
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        return _checked(op(left, right))
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise ToolError(f"operator {_source(node.op)} is not allowed; allowed: {_ALLOWED}")
        return _checked(unary(_eval(node.operand)))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}; allowed: {_ALLOWED}")
    if isinstance(node, ast.Attribute):
        raise ToolError(f"attribute access ({_source(node)}) is not allowed")
    if isinstance(node, ast.Call):
        return _checked(_call(node))
    raise ToolError(f"{type(node).__name__} syntax is not allowed; allowed: {_ALLOWED}")


def _call(node: ast.Call) -> Number:
    if isinstance(node.func, ast.Attribute):
        raise ToolError(f"attribute access ({_source(node.func)}) is not allowed")
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        raise ToolError(
            f"calling {_source(node.func)} is not allowed; allowed functions: "
            f"{', '.join(_FUNCTIONS)}"
        )
    name = node.func.id
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise ToolError(f"{name}() takes plain positional arguments only")
    function, least, most = _FUNCTIONS[name]
    count = len(node.args)
    if count < least or (most is not None and count > most):
        expected = f"{least} or more" if most is None else f"{least}" if least == most else f"{least}-{most}"
        raise ToolError(f"{name}() takes {expected} argument(s), got {count}")
    return function(*(_eval(arg) for arg in node.args))


def _power(base: Number, exponent: Number) -> Number:
    """``base ** exponent`` after checking the result cannot be absurdly large."""
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponents are limited to ±{MAX_EXPONENT}, got {exponent}")
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and base.bit_length() * exponent > MAX_INT_BITS + exponent  # |base|**exp < 2**(bits*exp)
    ):
        raise ToolError(f"the result would exceed {MAX_INT_BITS} bits")
    result = base**exponent
    if isinstance(result, complex):
        raise ToolError("the result is a complex number (negative base with fractional exponent)")
    return result


def _checked(value: Any) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"the result would exceed {MAX_INT_BITS} bits")
    return value


def _source(node: ast.AST) -> str:
    """A short rendering of a node for error messages."""
    if isinstance(node, (ast.operator, ast.unaryop)):
        return _OPERATOR_SYMBOLS.get(type(node), type(node).__name__)
    try:
        text = ast.unparse(node)
    except Exception:  # only used for a message
        text = type(node).__name__
    return text if len(text) <= 40 else text[:37] + "..."


@tool
def calculator(
    expression: Annotated[str, Field(description="an arithmetic expression, e.g. (2 + 3) * 4")],
) -> str:
    """Evaluate an arithmetic expression exactly (integers stay exact) and return the result.

    Supports numbers, + - * / // % ** (unary + and -), parentheses, pi, e, and
    abs, round, min, max, sqrt, floor, ceil, exp, log.
    """
    return str(evaluate(expression))
