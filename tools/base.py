"""Tools: typed Python functions a model can call, and the registry that runs them safely.

``@tool`` turns a plain function (sync or async) into a :class:`Tool` whose argument schema is
derived from the signature. :class:`ToolRegistry` dispatches parsed calls and turns every
tool-side failure into a :class:`~sleepagent.tools.calls.ToolResult` the model can read, because
an agent loop must keep going when a tool misbehaves; only cancellation (the caller giving up)
escapes.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, overload

import anyio
import anyio.to_thread
import pydantic
import pydantic_core
from pydantic import BaseModel

from sleepagent.errors import ConfigError, ToolError

from ._signature import build_args_model, docstring_summary
from .calls import CALL_CLOSE, CALL_OPEN, ErrorKind, MalformedToolCall, ToolCall, ToolResult

__all__ = ["Tool", "ToolRegistry", "to_text", "tool"]

logger = logging.getLogger(__name__)

# What OpenAI-style APIs accept as a function name; also keeps names easy for a small model to copy.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(kw_only=True, eq=False)  # identity semantics: tools can be dict keys / set members
class Tool:
    """A callable the model may use: a function plus its name, description and argument model.

    Calling the object directly (``tool_obj(2, 3)``) calls the wrapped function unchanged, so
    decorating a function never breaks existing callers. :meth:`call` is the model-facing entry
    point: it validates a JSON-like argument dict and always returns text.
    """

    function: Callable[..., Any]
    name: str
    description: str
    args_model: type[BaseModel]
    timeout: float | None = None
    """Seconds a single call may take; ``None`` means no per-tool limit."""
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        if not _NAME_PATTERN.match(self.name):
            raise ConfigError(
                f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'", field="name"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(
                f"tool {self.name!r}: timeout must be a positive number of seconds or None, "
                f"got {self.timeout!r}",
                field="timeout",
            )
        self.is_async = _is_async_callable(self.function)
        self._positional_only = tuple(
            p.name
            for p in inspect.signature(self.function).parameters.values()
            if p.kind is p.POSITIONAL_ONLY
        )

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> Tool:
        """Build a tool from ``function``; name and description default to its own."""
        tool_name = name or getattr(function, "__name__", "")
        if not tool_name or tool_name == "<lambda>":
            raise ConfigError("cannot infer a tool name from this callable; pass name=...")
        doc = inspect.getdoc(function)
        return cls(
            function=function,
            name=tool_name,
            description=description if description is not None else docstring_summary(doc),
            args_model=build_args_model(function, tool_name=tool_name, doc=doc),
            timeout=timeout,
        )

    # --- schema ---------------------------------------------------------------------------------

    @functools.cached_property
    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments object (what a model must send as ``"arguments"``)."""
        return self.args_model.model_json_schema()

    def spec(self) -> dict[str, Any]:
        """An OpenAI-style function spec, for prompts and for APIs that expect one."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.json_schema,
            },
        }

    # --- calling --------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped function exactly as if it had not been decorated."""
        return self.function(*args, **kwargs)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validated, coerced keyword arguments; raises :class:`pydantic.ValidationError`."""
        model = self.args_model.model_validate(arguments)
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def invoke(self, values: dict[str, Any]) -> Any:
        """Run the function on already-validated values, with no time limit.

        Sync functions run in a worker thread so a slow tool never blocks the event loop. When
        the caller is cancelled (or times out) the thread is abandoned, not interrupted: Python
        cannot stop a thread, but the agent gets control back immediately.
        """
        args = [values.pop(name) for name in self._positional_only]
        if self.is_async:
            return await self.function(*args, **values)
        bound = functools.partial(self.function, *args, **values)
        return await anyio.to_thread.run_sync(bound, abandon_on_cancel=True)

    def effective_timeout(self, timeout: float | None = None) -> float | None:
        """The stricter of this tool's timeout and a per-call ``timeout`` (``None``: no limit)."""
        limits = [t for t in (self.timeout, timeout) if t is not None]
        return min(limits) if limits else None

    async def call(self, arguments: Mapping[str, Any], *, timeout: float | None = None) -> str:
        """Validate ``arguments``, run the tool under its time limit and return its output as text.

        Raises :class:`pydantic.ValidationError` for bad arguments, :class:`TimeoutError` when the
        limit passes, and whatever the tool raises. Use :meth:`ToolRegistry.execute` to get those
        as error results instead.
        """
        values = self.validate(arguments)
        with anyio.fail_after(self.effective_timeout(timeout)):
            output = await self.invoke(values)
        return to_text(output)


def _is_async_callable(function: Callable[..., Any]) -> bool:
    while isinstance(function, functools.partial):
        function = function.func
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 (not a callability check: is its __call__ a coroutine?)
    )


def to_text(value: Any) -> str:
    """A tool's return value as the text the model reads: strings verbatim, anything else JSON."""
    if isinstance(value, str):
        return value
    try:
        return pydantic_core.to_json(value).decode()
    except (pydantic_core.PydanticSerializationError, UnicodeDecodeError, ValueError, TypeError):
        return json.dumps(value, ensure_ascii=False, default=repr)


# --- decorator ----------------------------------------------------------------------------------


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout: float | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make ``function`` a :class:`Tool`; usable bare (``@tool``) or with options.

    ``name`` defaults to the function name, ``description`` to the docstring's first paragraph,
    ``timeout`` (seconds) to no limit. Works on sync and async functions and on bound methods.
    """

    def decorate(fn: Callable[..., Any]) -> Tool:
        return Tool.from_function(fn, name=name, description=description, timeout=timeout)

    if function is not None:
        return decorate(function)
    return decorate


# --- registry -----------------------------------------------------------------------------------


class ToolRegistry(Mapping[str, Tool]):
    """The tools one agent may use, by name, and the only place tool calls are executed.

    :meth:`execute` never raises for something a tool or the model did wrong; it returns an error
    :class:`ToolResult` explaining the problem to the model. Cancellation always propagates.
    """

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        """``tools``: :class:`Tool` objects or plain functions (wrapped with :func:`tool`)."""
        self._tools: dict[str, Tool] = {}
        for item in tools:
            if not callable(item):
                raise ConfigError(f"not a tool or a function: {item!r}")
            entry = item if isinstance(item, Tool) else tool(item)
            if entry.name in self._tools:
                raise ConfigError(f"two tools are named {entry.name!r}; tool names must be unique")
            self._tools[entry.name] = entry

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry({list(self._tools)!r})"

    def specs(self) -> list[dict[str, Any]]:
        """Every tool's :meth:`Tool.spec`, in registration order."""
        return [t.spec() for t in self._tools.values()]

    async def execute(
        self, call: ToolCall | MalformedToolCall, *, timeout: float | None = None
    ) -> ToolResult:
        """Run one call and report its outcome; tool-side failures become error results.

        ``timeout`` (seconds) applies on top of the tool's own timeout: the stricter one wins.
        """
        started = time.perf_counter()

        def fail(kind: ErrorKind, message: str, name: str) -> ToolResult:
            return ToolResult(
                call_id=call.id,
                name=name,
                content=message,
                is_error=True,
                error_kind=kind,
                elapsed_s=time.perf_counter() - started,
            )

        if isinstance(call, MalformedToolCall):
            return fail(
                "malformed",
                f"malformed tool call: {call.reason}. Write calls as "
                f'{CALL_OPEN}{{"name": "<tool>", "arguments": {{...}}}}{CALL_CLOSE}',
                call.name or "",
            )

        entry = self._tools.get(call.name)
        if entry is None:
            available = ", ".join(self._tools) or "(none)"
            return fail(
                "unknown_tool",
                f"unknown tool {call.name!r}; available tools: {available}",
                call.name,
            )

        try:
            values = entry.validate(call.arguments)
        except pydantic.ValidationError as exc:
            return fail(
                "invalid_arguments",
                f"invalid arguments for tool {entry.name!r}: {_describe_validation_error(exc)}",
                entry.name,
            )

        limit = entry.effective_timeout(timeout)
        try:
            # move_on_after (not fail_after) so a TimeoutError the tool raises itself is reported
            # as a tool exception, and only our own deadline counts as a timeout.
            with anyio.move_on_after(limit) as scope:
                output = to_text(await entry.invoke(values))
        except ToolError as exc:
            logger.debug("tool %r failed: %s", entry.name, _describe_exception(exc))
            return fail("tool_exception", f"tool {entry.name!r} failed: {exc}", entry.name)
        except Exception as exc:  # a tool bug must reach the model, not end the run
            # never exc_info: a traceback prints the exception's message, which may quote the
            # tool's input or output (a secret); the model still gets the message as a tool error
            logger.warning("tool %r raised %s", entry.name, _describe_exception(exc))
            detail = f": {exc}" if str(exc) else ""
            return fail(
                "tool_exception",
                f"tool {entry.name!r} raised {type(exc).__name__}{detail}",
                entry.name,
            )
        if scope.cancelled_caught:
            return fail(
                "timeout", f"tool {entry.name!r} timed out after {limit:g} s", entry.name
            )

        return ToolResult(
            call_id=call.id,
            name=entry.name,
            content=output,
            elapsed_s=time.perf_counter() - started,
        )

    async def execute_all(
        self, calls: Iterable[ToolCall | MalformedToolCall], *, timeout: float | None = None
    ) -> list[ToolResult]:
        """Execute calls one after another, in order.

        Sequential on purpose: tools may share state (a document reader's "next page"), and the
        model expects its calls to take effect in the order it wrote them.
        """
        return [await self.execute(call, timeout=timeout) for call in calls]


def _describe_exception(exc: BaseException) -> str:
    """An exception for a log line: its type, its message's length and where it was raised (file,
    line, function of the innermost frame), never the message or a chained exception's message,
    which may quote message or tool text."""
    where = ""
    tb = exc.__traceback__
    if tb is not None:
        while tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code
        where = f" at {os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}"
    chain: list[str] = []
    seen = exc.__cause__ or exc.__context__
    while seen is not None and len(chain) < 5:
        chain.append(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    caused = f", from {' <- '.join(chain)}" if chain else ""
    try:
        size = f"message of {len(str(exc))} characters"
    except Exception:  # a broken __str__ must not break the error path
        size = "message unreadable"
    return f"{type(exc).__name__} ({size}){where}{caused}"


def _describe_validation_error(exc: pydantic.ValidationError) -> str:
    """One short line per problem (``page: Input should be a valid integer, got 'x'``)."""
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        kind = error["type"]
        if kind == "missing":
            problems.append(f"{where}: missing required argument")
        elif kind == "extra_forbidden":
            problems.append(f"{where}: unexpected argument")
        elif kind == "model_type":
            problems.append("arguments must be a JSON object")
        else:
            got = json.dumps(error.get("input"), ensure_ascii=False, default=repr)
            if len(got) > 60:
                got = got[:57] + "..."
            problems.append(f"{where}: {error['msg']}, got {got}")
    return "; ".join(problems)
