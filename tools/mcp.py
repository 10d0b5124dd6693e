"""Tools from MCP servers: a server's tools as sleepagent :class:`~sleepagent.tools.Tool` objects.

An agent waiting for a slow remote tool is where a sleep-enabled model consolidates best, and
MCP (the Model Context Protocol) is how most remote tools are served. This module connects to an
MCP server through the official ``mcp`` SDK (``pip install 'sleepagent[mcp]'``), lists its tools
and exposes each one as an :class:`MCPTool`: name, description and the server's own JSON schema
(shown in the prompt and used to validate the model's arguments before anything is sent)::

    async with MCPServerStdio("python", ["server.py"]) as server:
        agent = Agent(model, tools=server.tools)
        result = await agent.run("...")

    async with MCPServerHTTP("http://127.0.0.1:8000/mcp", prefix="web") as server:
        ...

Everything that can go wrong on the remote side reaches the model as a tool-error result and the
run goes on: a tool that reports an error (``is_error``), a protocol error, a server that crashed
or closed the connection, a call that runs past its ``timeout``. Only misuse raises.

Lifetime. A connection lives on its own event loop in a private thread (an anyio blocking
portal), not in the caller's task: :meth:`MCPServer.start` and :meth:`MCPServer.stop` are
idempotent and may be called from any task, any event loop or plain synchronous code
(:meth:`~MCPServer.start_sync`, :meth:`~MCPServer.stop_sync`), and one connection serves every
loop that calls its tools (``Agent.run_sync`` starts a new loop on each call). The SDK's
transports are anyio task groups that must be left in the task that entered them; the private
loop is that task, so an owner (an agent, a session) may start a server in one task and stop it
in another. ``start()`` after a crash reconnects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import json
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TextIO

import anyio
import anyio.from_thread
import anyio.to_thread
import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict

from sleepagent.errors import ConfigError, ToolError

from .base import Tool, to_text

try:
    import httpx2
    import jsonschema
    from mcp import Client, MCPError, StdioServerParameters
    from mcp import types as mcp_types
    from mcp.client.stdio import stdio_client
    from mcp.client.streamable_http import streamable_http_client
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"sleepagent.tools.mcp needs the MCP SDK ({exc}); install it with: pip install 'sleepagent[mcp]'"
    ) from exc

__all__ = [
    "MCPConnectionError",
    "MCPServer",
    "MCPServerHTTP",
    "MCPServerStdio",
    "MCPTool",
    "result_text",
]

logger = logging.getLogger(__name__)

# JSON-RPC code the SDK gives every request that was pending (or sent) when the connection ended.
_CONNECTION_CLOSED = -32000
# A server that never ends its tool listing cannot hang start(): this many pages at most.
_MAX_LIST_PAGES = 100
# stop() waits this long for the SDK's own shutdown (stdin closed, then SIGTERM, then SIGKILL,
# about 6 s at worst for a stdio server) before it abandons the connection's thread.
_STOP_TIMEOUT = 10.0
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


class MCPConnectionError(ToolError):
    """An MCP server could not be started or reached, closed the connection, or answered with a
    protocol error. A :class:`~sleepagent.errors.ToolError`, so inside an agent run it becomes a
    tool-error result for the model; from :meth:`MCPServer.start` it reaches the caller."""

    def __init__(self, message: str, *, server: str, tool_name: str | None = None, code: int | None = None) -> None:
        super().__init__(message, tool_name=tool_name)
        self.server = server
        self.code = code
        """The JSON-RPC error code, when the server sent one."""


# --- the tool ------------------------------------------------------------------------------------


@dataclass(kw_only=True, eq=False)
class MCPTool(Tool):
    """One tool of an MCP server, usable wherever a :class:`~sleepagent.tools.Tool` is.

    ``name`` is what the model calls (the server's name, made safe for sleepagent and prefixed
    when the server has a ``prefix``); ``remote_name`` is the server's own. :attr:`json_schema` is
    the server's ``inputSchema`` verbatim: the prompt shows it and :meth:`validate` checks the
    model's arguments against it, so a bad call is explained to the model without a round trip.
    The server applies defaults and any coercion itself. Calling the object directly
    (``await tool(a=1)``) calls the server without validation, like calling a ``@tool`` function.
    """

    server: MCPServer = field(repr=False)
    remote_name: str
    input_schema: dict[str, Any] = field(repr=False)
    output_schema: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validator = _schema_validator(self.input_schema, self.name)

    @property
    def json_schema(self) -> dict[str, Any]:  # the server's, not derived
        return copy.deepcopy(self.input_schema)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments as sent, once they satisfy the input schema; else a
        :class:`pydantic.ValidationError` (what :class:`ToolRegistry` reports as invalid arguments)."""
        values = dict(arguments)
        if self._validator is not None:
            errors = sorted(self._validator.iter_errors(values), key=lambda e: list(e.absolute_path))
            if errors:
                raise pydantic_core.ValidationError.from_exception_data(
                    f"{self.name}_arguments", _line_errors(errors)
                )
        return values

    async def invoke(self, values: dict[str, Any]) -> Any:
        return await self.server.call_tool(self.remote_name, values, tool_name=self.name)

    def _same_as(self, remote: mcp_types.Tool) -> bool:
        return (self.remote_name == remote.name and self.input_schema == remote.input_schema
                and self.description == _description(remote) and self.output_schema == remote.output_schema)


def _caller(server: MCPServer, remote_name: str, name: str) -> Callable[..., Any]:
    async def call(**arguments: Any) -> str:
        return await server.call_tool(remote_name, arguments, tool_name=name)

    call.__name__ = call.__qualname__ = name
    return call


def _args_model(name: str, schema: dict[str, Any]) -> type[BaseModel]:
    """A pass-through argument model: :class:`Tool` wants one, but an MCP tool's contract is its
    JSON schema (validated by :meth:`MCPTool.validate`); the model reports that schema as its own
    so that anything reading ``args_model.model_json_schema()`` sees what the server declared."""

    def model_json_schema(cls: type[BaseModel], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return copy.deepcopy(schema)

    return type(f"{name}_arguments", (BaseModel,), {
        "model_config": ConfigDict(extra="allow"),
        "model_json_schema": classmethod(model_json_schema),
        "__module__": __name__,
    })


def _schema_validator(schema: dict[str, Any], name: str) -> Any:
    """A jsonschema validator for the schema's own draft (2020-12 if it names none), or ``None``
    when the schema itself is invalid: then the server alone validates, as it always does too."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        logger.warning("MCP tool %r has an invalid input schema (%s); arguments go unchecked", name, exc.message)
        return None
    return cls(schema)


_TYPE_WORDS = {"integer": "a valid integer", "number": "a valid number", "string": "a valid string",
               "boolean": "a valid boolean", "array": "a valid array", "object": "a valid object", "null": "null"}


def _line_errors(errors: Sequence[Any]) -> list[Any]:
    """jsonschema errors as pydantic's, so the registry words them like a ``@tool``'s: missing and
    unexpected arguments by name, every other problem with its location and value."""
    out: list[Any] = []
    for e in errors:
        loc = tuple(e.absolute_path)
        named: list[Any] = []
        if e.validator == "required" and isinstance(e.instance, dict):
            named = [{"type": "missing", "loc": (*loc, k), "input": e.instance}
                     for k in e.validator_value if k not in e.instance]
        elif e.validator == "additionalProperties" and e.validator_value is False and isinstance(e.instance, dict):
            known, patterns = e.schema.get("properties", {}), e.schema.get("patternProperties", {})
            named = [{"type": "extra_forbidden", "loc": (*loc, k), "input": v} for k, v in e.instance.items()
                     if k not in known and not any(re.search(p, k) for p in patterns)]
        if named:
            out += named
            continue
        if e.validator == "type":
            kinds: list[str] = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
            reason = "Input should be " + " or ".join(_TYPE_WORDS.get(k, k) for k in kinds)
        elif e.validator == "enum":
            reason = "Input should be one of " + ", ".join(json.dumps(v) for v in e.validator_value)
        else:
            reason = e.message
        error_type = pydantic_core.PydanticCustomError("json_schema", "{reason}", {"reason": reason})
        out.append({"type": error_type, "loc": loc, "input": e.instance})
    return out


def _description(remote: mcp_types.Tool) -> str:
    return remote.description or remote.title or ""


def result_text(result: mcp_types.CallToolResult) -> str:
    """A tool result as the text the model reads: text blocks verbatim, one per line; other blocks
    as a short bracketed note (a byte-level model cannot read an image); structured content as
    JSON when there is nothing else (servers usually send both, the text being the JSON)."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, (mcp_types.ImageContent, mcp_types.AudioContent)):
            parts.append(f"[{block.type}: {block.mime_type}, {len(block.data) * 3 // 4} bytes]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            res = block.resource
            parts.append(res.text if isinstance(res, mcp_types.TextResourceContents)
                         else f"[resource {res.uri}: {res.mime_type or 'binary'}]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource {block.uri}" + (f": {block.description}]" if block.description else "]"))
    if not parts and result.structured_content is not None:
        return to_text(result.structured_content)
    return "\n".join(parts)


# --- the connection -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    """One live session with a server. Its private event loop (an anyio blocking portal on a
    daemon thread) runs ``owner``, the task that entered the SDK client and leaves it when
    ``stop`` is set; every call is a task spawned into that loop."""

    portal_cm: contextlib.ExitStack
    portal: anyio.from_thread.BlockingPortal
    owner: concurrent.futures.Future[None]
    client: Client
    stop: anyio.Event
    listing: list[mcp_types.Tool]
    lost: bool = False
    closing: bool = False

    @property
    def alive(self) -> bool:
        return not (self.lost or self.closing or self.owner.done())

    def close(self) -> None:
        self.closing = True
        with contextlib.suppress(RuntimeError):  # the loop is gone already
            self.portal.call(self.stop.set)
        try:
            self.owner.result(timeout=_STOP_TIMEOUT)
        except concurrent.futures.TimeoutError:
            logger.warning("an MCP connection did not close within %g s; abandoning its thread", _STOP_TIMEOUT)
            self.owner.cancel()
            return  # its daemon thread ends with the process; joining it could hang
        except BaseException as exc:  # a connection that failed earlier ends here too
            logger.debug("MCP connection ended with %r", exc)
        self.portal_cm.close()


class MCPServer:
    """An MCP server's tools, and the connection that serves them (base of the transports).

    Args:
        name: a label for messages and logs (default: the command or the URL).
        prefix: prepended to every tool name as ``<prefix>_<name>`` (for several servers whose
            tool names collide).
        include: expose only these of the server's tools (its own names); a byte-level model pays
            for every tool in its prompt. ``start()`` fails if the server lacks one.
        timeout: seconds one call may take (each tool's :attr:`~Tool.timeout`; an agent's
            ``tool_timeout``, if stricter, wins); ``None`` for no limit. A call past it becomes a
            timeout error for the model, and the server is told to cancel it.
        connect_timeout: seconds ``start()`` waits for the server to answer and list its tools.
    """

    def __init__(self, *, name: str, prefix: str | None = None, include: Iterable[str] | None = None,
                 timeout: float | None = 60.0, connect_timeout: float = 30.0) -> None:
        if prefix is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", prefix):
            raise ConfigError(f"prefix must be 1-40 letters, digits, '_' or '-', got {prefix!r}", field="prefix")
        for key, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ConfigError(f"{key} must be a positive number of seconds, got {value!r}", field=key)
        if isinstance(include, str):
            raise ConfigError("include takes a list of tool names, not one string", field="include")
        self.name = name
        self.prefix = prefix
        self.include = None if include is None else tuple(include)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()  # start/stop may come from several threads and loops
        self._conn: _Connection | None = None
        self._tools: dict[str, MCPTool] | None = None
        self._entries = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, running={self.running})"

    # --- what a transport provides ------------------------------------------------------------

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The SDK transport (an async context manager yielding the read and write streams);
        entered and left on the connection's own loop."""
        raise NotImplementedError

    # --- state ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a connection is up (``False`` once it was lost: ``start()`` reconnects)."""
        conn = self._conn
        return conn is not None and conn.alive

    @property
    def tools(self) -> list[MCPTool]:
        """The server's tools as of the last listing (``start()`` or :meth:`refresh_tools`).

        The objects stay the same across ``stop()``/``start()`` while the server lists the same
        tools, so a registry built from them keeps working after a reconnect; while the server is
        stopped their calls return a tool error.
        """
        if self._tools is None:
            raise ConfigError(f"MCP server {self.name!r} was never started; use `async with server:` "
                              f"or `await server.start()` before reading its tools")
        return list(self._tools.values())

    @property
    def server_info(self) -> mcp_types.Implementation | None:
        """The server's name and version as it reported them (``None`` when not connected)."""
        conn = self._conn
        return conn.client.server_info if conn is not None and conn.alive else None

    @property
    def instructions(self) -> str | None:
        """The server's usage instructions, if it sent any (``None`` when not connected)."""
        conn = self._conn
        return conn.client.instructions if conn is not None and conn.alive else None

    # --- lifetime -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and list the tools; a no-op while running, a reconnect after a crash.

        Raises :class:`MCPConnectionError` when the server cannot be started or reached within
        ``connect_timeout``, and :class:`~sleepagent.errors.ConfigError` when ``include`` names a
        tool the server lacks or two tool names collide.
        """
        if not self.running:
            await anyio.to_thread.run_sync(self.start_sync)

    async def stop(self) -> None:
        """Close the connection (a stdio server is shut down); a no-op when not running."""
        if self._conn is not None:
            with anyio.CancelScope(shield=True):  # a half-closed connection would leak the server
                await anyio.to_thread.run_sync(self.stop_sync)

    async def __aenter__(self) -> Self:
        await self.start()
        self._entries += 1
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # nested `async with`: the outermost exit stops the server
        self._entries = max(0, self._entries - 1)
        if self._entries == 0:
            await self.stop()

    def start_sync(self) -> None:
        """:meth:`start` for synchronous code; blocks the calling thread until connected."""
        with self._lock:
            if self._conn is not None:
                if self._conn.alive:
                    return
                self._conn.close()  # lost: clean up before reconnecting
                self._conn = None
            conn = self._connect()
            try:
                self._tools = self._build_tools(conn.listing)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            logger.debug("MCP server %r started: %d tool(s)", self.name, len(self._tools))

    def stop_sync(self) -> None:
        """:meth:`stop` for synchronous code (e.g. an owner's ``close()``); blocks until closed."""
        with self._lock:
            conn, self._conn, self._entries = self._conn, None, 0
            if conn is not None:
                conn.close()
                logger.debug("MCP server %r stopped", self.name)

    def _connect(self) -> _Connection:
        portal_cm = contextlib.ExitStack()
        portal = portal_cm.enter_context(anyio.from_thread.start_blocking_portal(name=f"mcp-{self.name}"[:60]))
        ready: concurrent.futures.Future[tuple[Client, list[mcp_types.Tool], anyio.Event]] = concurrent.futures.Future()
        owner = portal.start_task_soon(self._own, ready)
        try:
            client, listing, stop = ready.result(timeout=self.connect_timeout)
        except BaseException as exc:
            owner.cancel()
            with contextlib.suppress(BaseException):
                owner.result(timeout=_STOP_TIMEOUT)
            portal_cm.close()
            if isinstance(exc, concurrent.futures.TimeoutError):
                raise MCPConnectionError(f"MCP server {self.name!r} did not answer within {self.connect_timeout:g} s",
                                         server=self.name) from None
            if isinstance(exc, (MCPError, OSError, httpx2.HTTPError, BaseExceptionGroup, anyio.BrokenResourceError,
                                anyio.ClosedResourceError, anyio.EndOfStream)):
                raise MCPConnectionError(f"cannot start MCP server {self.name!r}: {_describe(exc)}",
                                         server=self.name, code=_code(exc)) from exc
            raise
        return _Connection(portal_cm, portal, owner, client, stop, listing)

    async def _own(self, ready: concurrent.futures.Future[Any]) -> None:
        """The connection's owner task, on the private loop: enter the client, list, wait for stop."""
        stop = anyio.Event()
        try:
            async with Client(self._transport(), cache=None,
                              client_info=mcp_types.Implementation(name="sleepagent", version=_version())) as client:
                listing = await _list_all(client)
                _settle(ready, result=(client, listing, stop))
                await stop.wait()
        except BaseException as exc:
            _settle(ready, error=exc)
            raise

    def _build_tools(self, listing: list[mcp_types.Tool]) -> dict[str, MCPTool]:
        by_remote = {t.name: t for t in listing}
        if self.include is not None:
            missing = [n for n in self.include if n not in by_remote]
            if missing:
                raise ConfigError(f"MCP server {self.name!r} has no tool named {', '.join(map(repr, missing))}; "
                                  f"it has: {', '.join(by_remote) or '(none)'}", field="include")
            listing = [by_remote[n] for n in dict.fromkeys(self.include)]
        old = {t.remote_name: t for t in (self._tools or {}).values()}
        tools: dict[str, MCPTool] = {}
        for remote in listing:
            name = _local_name(self.prefix, remote.name)
            if name in tools:
                raise ConfigError(f"MCP server {self.name!r}: tools {tools[name].remote_name!r} and {remote.name!r} "
                                  f"both become {name!r}; use include=[...] to pick one")
            previous = old.get(remote.name)
            if previous is not None and previous._same_as(remote) and previous.timeout == self.timeout:
                tools[name] = previous
                continue
            tools[name] = MCPTool(
                function=_caller(self, remote.name, name), name=name, description=_description(remote),
                args_model=_args_model(name, remote.input_schema), timeout=self.timeout,
                server=self, remote_name=remote.name, input_schema=remote.input_schema,
                output_schema=remote.output_schema,
            )
        return tools

    # --- calls ----------------------------------------------------------------------------------

    async def refresh_tools(self) -> list[MCPTool]:
        """List the tools again (after the server changed them); returns the new :attr:`tools`.
        Unchanged tools keep their objects; a registry built earlier does not see new ones."""
        conn = self._live(None)
        listing = await self._in_portal(conn, _list_all, conn.client, tool_name=None)
        # no self._lock here: a start_sync() holding it may take seconds, and this is the event loop
        self._tools = self._build_tools(listing)
        return self.tools

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None, *,
                        tool_name: str | None = None) -> str:
        """Call the server's tool ``name`` (its own name) and return the result as text.

        Raises :class:`~sleepagent.errors.ToolError` when the tool reports an error and
        :class:`MCPConnectionError` for everything on the way (not running, connection lost,
        protocol error): what :class:`~sleepagent.tools.ToolRegistry` turns into error results.
        """
        conn = self._live(tool_name or name)
        result = await self._in_portal(conn, conn.client.call_tool, name, dict(arguments or {}),
                                       tool_name=tool_name or name)
        text = result_text(result)
        if result.is_error:
            raise ToolError(text or "the tool reported an error without a message", tool_name=tool_name or name)
        return text

    def _live(self, tool_name: str | None) -> _Connection:
        conn = self._conn
        if conn is None or conn.closing:
            raise MCPConnectionError(f"MCP server {self.name!r} is not running", server=self.name, tool_name=tool_name)
        if not conn.alive:
            raise self._lost_error(tool_name)
        return conn

    def _lost_error(self, tool_name: str | None) -> MCPConnectionError:
        return MCPConnectionError(f"MCP server {self.name!r} closed the connection (it exited or crashed); "
                                  f"its tools are unavailable", server=self.name, tool_name=tool_name,
                                  code=_CONNECTION_CLOSED)

    async def _in_portal(self, conn: _Connection, func: Callable[..., Any], *args: Any, tool_name: str | None) -> Any:
        """Run ``func(*args)`` on the connection's loop and wait for it here; cancelling the
        caller (a timeout) cancels it there, and the SDK tells the server to stop the request."""
        try:
            future = conn.portal.start_task_soon(func, *args)
        except RuntimeError:  # the loop stopped between the check and the call
            raise self._lost_error(tool_name) from None
        try:
            return await _wait(future)
        except concurrent.futures.CancelledError:  # cancelled there: the connection is closing
            raise MCPConnectionError(f"MCP server {self.name!r} was stopped during the call",
                                     server=self.name, tool_name=tool_name) from None
        except MCPError as exc:
            if exc.code == _CONNECTION_CLOSED:
                if conn.closing:
                    raise MCPConnectionError(f"MCP server {self.name!r} was stopped during the call",
                                             server=self.name, tool_name=tool_name) from None
                conn.lost = True
                raise self._lost_error(tool_name) from None
            raise MCPConnectionError(f"MCP server {self.name!r} answered with error {exc.code}: {exc.message}",
                                     server=self.name, tool_name=tool_name, code=exc.code) from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError) as exc:
            conn.lost = True
            raise self._lost_error(tool_name) from exc
        except (pydantic.ValidationError, RuntimeError, httpx2.HTTPError) as exc:
            # a result that does not fit the protocol or the tool's output schema, a request
            # the server wants answered first (elicitation), an HTTP failure
            raise MCPConnectionError(f"MCP server {self.name!r}: {_describe(exc)}",
                                     server=self.name, tool_name=tool_name) from exc


class MCPServerStdio(MCPServer):
    """An MCP server run as a subprocess, spoken to over its stdin and stdout.

    ``env`` is added to the SDK's safe default environment (``HOME``, ``PATH``, ...; not the
    whole of ``os.environ``). ``errlog``: where the server's stderr goes (default: this
    process's stderr, file descriptor 2). The other arguments are :class:`MCPServer`'s.
    """

    def __init__(self, command: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, errlog: TextIO | None = None, name: str | None = None,
                 prefix: str | None = None, include: Iterable[str] | None = None, timeout: float | None = 60.0,
                 connect_timeout: float = 30.0) -> None:
        if isinstance(args, str):
            raise ConfigError("args takes a list of arguments, not one string", field="args")
        self.params = StdioServerParameters(command=command, args=list(args), env=dict(env) if env else None,
                                            cwd=cwd)  # type: ignore[arg-type]  # pydantic takes any PathLike
        self.errlog = errlog
        label = " ".join([os.path.basename(command), *(os.path.basename(a) for a in args[:1])])
        super().__init__(name=name or label, prefix=prefix, include=include, timeout=timeout,
                         connect_timeout=connect_timeout)

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        # errlog=None: the child inherits file descriptor 2 (sys.stderr may be a pytest capture
        # or a notebook stream without one)
        return stdio_client(self.params, errlog=self.errlog)  # type: ignore[arg-type]


class MCPServerHTTP(MCPServer):
    """An MCP server at a URL, spoken to over streamable HTTP (``http://host:port/mcp``).

    ``headers`` go with every request (e.g. ``{"Authorization": "Bearer ..."}``). The other
    arguments are :class:`MCPServer`'s.
    """

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, name: str | None = None,
                 prefix: str | None = None, include: Iterable[str] | None = None, timeout: float | None = 60.0,
                 connect_timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got {url!r}", field="url")
        self.url = url
        self.headers = dict(headers or {})
        super().__init__(name=name or url, prefix=prefix, include=include, timeout=timeout,
                         connect_timeout=connect_timeout)

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            http = None
            if self.headers:
                # the SDK's own default client, plus the headers: 300 s read for held-open streams
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(headers=self.headers, timeout=httpx2.Timeout(30.0, read=300.0)))
            yield await stack.enter_async_context(streamable_http_client(self.url, http_client=http))


# --- helpers --------------------------------------------------------------------------------------


async def _list_all(client: Client) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor = None
    for _ in range(_MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


async def _wait(future: concurrent.futures.Future[Any]) -> Any:
    """Await a future of the connection's loop from the caller's loop (asyncio or trio) without
    blocking it; if the caller is cancelled, the future is cancelled too."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): wait in a worker thread
        loop = None
    try:
        if loop is not None:
            waiter = loop.create_future()

            def release() -> None:
                if not waiter.done():
                    waiter.set_result(None)

            def wake(_: concurrent.futures.Future[Any]) -> None:
                with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
                    loop.call_soon_threadsafe(release)

            future.add_done_callback(wake)
            await waiter
        else:
            await anyio.to_thread.run_sync(concurrent.futures.wait, [future], abandon_on_cancel=True)
    except BaseException:
        future.cancel()
        raise
    return future.result()


def _settle(future: concurrent.futures.Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _local_name(prefix: str | None, remote: str) -> str:
    """A sleepagent tool name (1-64 of ``[A-Za-z0-9_-]``) for a server's tool name."""
    base = _NAME_CHARS.sub("_", remote) or "tool"
    return (f"{prefix}_{base}" if prefix else base)[:64]


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    leaf = _leaf(exc)
    if isinstance(leaf, MCPError):
        return f"error {leaf.code}: {leaf.message}"
    return f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__


def _code(exc: BaseException) -> int | None:
    leaf = _leaf(exc)
    return leaf.code if isinstance(leaf, MCPError) else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sleepagent")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return "0"
