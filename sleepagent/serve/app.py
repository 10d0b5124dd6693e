"""``sleepagent serve``: an OpenAI-compatible HTTP server over one :class:`~sleepagent.Engine`.

The HTTP layer only translates, as vLLM's OpenAI layer turns a request into sampling parameters
and calls its engine: OpenAI messages to the runtime's turns, the request's settings to
:class:`~sleepagent.runtime.GenerationParams`, the runtime's :class:`~sleepagent.runtime.Reply` back
to OpenAI's shape and its typed errors to status codes (:func:`api_error`). Sessions, the token
loop, sleep and memory policies live in the runtime core (:mod:`sleepagent.runtime`); this module
never steps a token. A reply that ends in tool calls, or a final answer, pauses the session (the
client is busy running the tool, or the user is reading), which is when its window is
consolidated: the next request finds a fresh window and nobody waited for the sleep.

Endpoints: ``POST /v1/chat/completions`` (plain and SSE streaming), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus). Every request is bounded: its size, its prompt
tokens, its completion tokens and the number of requests in flight are capped (413 / 429), and a
client that disconnects cancels its work within one prefill chunk.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, cast

import anyio
import pydantic_core
from fastapi import FastAPI, Request  # the serve extra; FastAPI resolves these names at import
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engine import Engine
from ..errors import (
    ConfigError,
    FingerprintMismatch,
    InputTooLarge,
    RequestError,
    SessionConflict,
    SessionNotFound,
    SessionsFull,
    SleepAgentError,
)
from ..model import SleepModel
from ..policy import MemoryPolicy, SleepPolicy
from ..runtime import ChatRuntime, ChatTurn, GenerationParams, PreparedTurn, Reply, normalize_tool_choice, open_store
from ..tools import new_call_id
from ..tracing import extract_context
from .protocol import (
    ApiError,
    ChatMessage,
    ChatRequest,
    chat_openapi,
    chat_response,
    chunk,
    new_id,
    text_of,
    tool_call_chunk,
    tool_calls_out,
    usage,
)

__all__ = [
    "ServeConfig",
    "api_error",
    "create_app",
    "install_errors",
    "load_api_keys",
    "parse_request",
    "read_chat",
    "turn_of",
]

logger = logging.getLogger(__name__)
OnWake = Literal["resume", "finish", "commit", "abort"]  # SleepPolicy.on_wake


# characters json.dumps leaves raw (ensure_ascii=False) that Python's str.splitlines, and so
# httpx's aiter_lines, takes for line ends: one in a streamed string would cut a data line in two
_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse_json(obj: Any) -> str:
    """``obj`` as JSON for one server-sent-events data line: UTF-8 as it is, but for the three
    characters some clients split lines at (NEL, LINE and PARAGRAPH SEPARATOR), written as \\u
    escapes: the same JSON value, on one line for every client (control characters json.dumps
    escapes already)."""
    return json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)


class ServeConfig(BaseModel):
    """Everything ``sleepagent serve`` is started with (validated: a bad value is one clear error)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str | Any = "docqa-small"  # a name or directory, or a loaded SleepModel (tests)
    model_name: str | None = None  # what /v1/models and responses call it (default: the checkpoint's name)
    store: str | None = None
    api_keys: dict[str, str] = Field(default_factory=dict)  # key -> tenant
    no_auth: bool = False
    loops: int | None = Field(default=None, ge=1, le=64)
    idle_release_s: float = Field(default=300.0, gt=0)
    max_request_bytes: int = Field(default=1_000_000, ge=1024)
    max_prompt_tokens: int = Field(default=32_768, ge=16)
    max_completion_tokens: int = Field(default=1024, ge=1)
    max_in_flight: int = Field(default=64, ge=1)
    max_sessions: int = Field(default=1024, ge=1)
    # the live sessions' state, in MiB (fast weights, KV windows, sleeps in progress); past it the
    # least recently used idle sessions are released; None: a quarter of the device's memory
    max_state_mb: float | None = Field(default=None, gt=0)
    persist_window: bool = False
    ttl: float | None = Field(default=None, gt=0)
    on_wake: str = Field(default="resume", pattern="^(resume|finish|commit|abort)$")
    # a one-session decode step as one torch.compile graph, compiled at startup (a sleepagent
    # checkpoint; on a CPU, a C++ compiler): see SleepHybridLM.compile_decode
    compile_decode: bool = False


def load_api_keys(path: str | None = None, env: str | None = None) -> dict[str, str]:
    """API keys mapped to tenants, from a file of ``key tenant`` lines (``#`` comments) and/or
    ``$SLEEPAGENT_API_KEYS`` (``key=tenant,key2=tenant2``)."""
    keys: dict[str, str] = {}
    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"cannot read the API keys file {path}: {e.strerror}", field="api_keys") from None
        for n, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(f"{path}, line {n}: expected 'key tenant'", field="api_keys")
            keys[parts[0]] = parts[1]
    raw = env if env is not None else os.environ.get("SLEEPAGENT_API_KEYS", "")
    for item in filter(None, (x.strip() for x in raw.split(","))):
        key, sep, tenant = item.partition("=")
        if not sep or not key or not tenant:
            raise ConfigError("SLEEPAGENT_API_KEYS must be key=tenant pairs separated by commas", field="api_keys")
        keys[key] = tenant
    return keys


def authenticate(cfg: ServeConfig, authorization: str | None) -> str:
    """The tenant of a request's API key (``Authorization: Bearer KEY``), or 401."""
    if cfg.no_auth:
        return "default"
    token = (authorization or "").removeprefix("Bearer ").strip()
    for key, tenant in cfg.api_keys.items():
        if token and hmac.compare_digest(token.encode(), key.encode()):
            return tenant
    raise ApiError(401, "missing or invalid API key (Authorization: Bearer ...)", type="authentication_error",
                   code="invalid_api_key")


def turn_of(m: ChatMessage) -> ChatTurn:
    """A client's message as the runtime renders it (developer messages are system messages)."""
    role = "system" if m.role == "developer" else m.role
    if role == "tool" and not m.tool_call_id:
        raise ApiError(400, "a tool message needs the tool_call_id of the call it answers", param="messages")
    calls, ids = [], []
    for c in m.tool_calls or []:
        args = c.function.arguments
        if isinstance(args, str):
            try:  # parsed as strictly as the body itself (a lone surrogate is no text)
                args = pydantic_core.from_json(args) if args.strip() else {}
            except ValueError:
                raise ApiError(400, f"tool call {c.function.name!r} has arguments that are not JSON",
                               param="messages") from None
        if not isinstance(args, dict):
            raise ApiError(400, f"tool call {c.function.name!r}: arguments must be a JSON object", param="messages")
        calls.append((c.function.name, args))
        ids.append(c.id)
    return ChatTurn(role, text_of(m.content), tuple(calls), call_ids=tuple(ids), call_id=m.tool_call_id)


def parse_request(body: bytes) -> ChatRequest:
    """A request body as a :class:`ChatRequest`, or the 400 that says what is wrong with it."""
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ApiError(400, f"{where}: {err['msg']}" if where else err["msg"], param=where or None) from None


async def read_chat(request: Request, cfg: ServeConfig) -> tuple[str, ChatRequest, bytes]:
    """Authenticate and read a chat request, bounded by ``cfg.max_request_bytes``: (tenant, the
    request, its body). Every door reads requests here, so one bad request gets one answer everywhere."""
    tenant = authenticate(cfg, request.headers.get("authorization"))
    try:
        size = int(request.headers.get("content-length") or 0)
    except ValueError:
        raise ApiError(400, "the Content-Length header is not a number") from None
    if size > cfg.max_request_bytes:
        raise ApiError(413, f"the request is {size} bytes; this server accepts at most {cfg.max_request_bytes}",
                       code="request_too_large")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > cfg.max_request_bytes:
            raise ApiError(413, f"the request is over {cfg.max_request_bytes} bytes", code="request_too_large")
    req = parse_request(body)
    if req.tool_choice is not None and not req.tools:  # as OpenAI answers
        raise ApiError(400, "tool_choice is only allowed when tools are specified", param="tool_choice")
    return tenant, req, body


def install_errors(app: FastAPI, on_error: Any = None) -> None:
    """Every error leaves in OpenAI's shape: ours (:class:`ApiError`, the runtime's typed errors
    by :func:`api_error`), the framework's (an unknown path, a wrong method) and the unexpected
    (500, logged). ``on_error(status)`` counts them. The single server and the Ray router both
    install these, so an error reads the same on either."""
    from starlette.exceptions import HTTPException

    def answer(e: ApiError) -> JSONResponse:
        if on_error is not None:
            on_error(e.status)
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ApiError)
    async def _api(request: Request, e: ApiError):
        return answer(e)

    @app.exception_handler(SleepAgentError)
    async def _runtime(request: Request, e: SleepAgentError):
        return answer(api_error(e))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return answer(ApiError(e.status_code, str(e.detail), code=codes.get(e.status_code)))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        logger.exception("request failed")
        return answer(ApiError(500, f"internal error: {type(e).__name__}", type="server_error"))


def _output_schema(req: ChatRequest) -> dict[str, Any] | None:
    """The JSON schema ``response_format`` asks the answer to follow (None: free text)."""
    return req.response_format.output_schema() if req.response_format is not None else None


def api_error(e: SleepAgentError) -> ApiError:
    """The runtime's typed errors as OpenAI errors: one table, for the single server and every
    Ray Serve replica alike."""
    if isinstance(e, InputTooLarge):
        return ApiError(413, str(e), code="prompt_too_long", param="messages")
    if isinstance(e, RequestError):
        return ApiError(400, str(e), param=e.param)
    if isinstance(e, SessionNotFound):
        return ApiError(404, str(e), code="session_not_found", param="session_id")
    if isinstance(e, FingerprintMismatch):
        return ApiError(409, "the session was made by another model", code="fingerprint_mismatch")
    if isinstance(e, SessionConflict):
        return ApiError(409, str(e), code="session_changed")
    if isinstance(e, SessionsFull):
        return ApiError(429, f"the server holds {e}", type="rate_limit_error", code="too_many_sessions")
    if isinstance(e, ValueError):
        return ApiError(400, str(e))
    return ApiError(500, str(e), type="server_error")


class _Server:
    """State of one running server: the runtime over one engine, and counters."""

    @staticmethod
    def check(cfg: ServeConfig) -> None:
        """Refuse a configuration that cannot serve safely, before anything is loaded."""
        from ..storage.store import check_name

        if not cfg.no_auth and not cfg.api_keys:
            raise ConfigError("no API keys: give --api-keys FILE (or $SLEEPAGENT_API_KEYS), or --no-auth for local use",
                              field="api_keys")
        for tenant in cfg.api_keys.values():
            check_name(tenant, "tenant")

    def __init__(self, cfg: ServeConfig, *, claimant: str | None = None, key: bytes | None = None) -> None:
        self.check(cfg)
        self.cfg = cfg
        sm = cfg.model if isinstance(cfg.model, SleepModel) else SleepModel.from_pretrained(cfg.model)
        self.model_name = cfg.model_name or sm.name
        if cfg.compile_decode:
            warm = getattr(sm.model, "warm_compiled_decode", None)
            if warm is None:
                raise ConfigError(f"--compile-decode needs a sleepagent checkpoint; {self.model_name!r} is a "
                                  f"{type(sm.model).__name__}", field="compile_decode")
            logger.info("decode step compiled in %.1f s", warm())
        self.engine = Engine(sm)
        self.store = open_store(cfg.store)
        # cfg.on_wake's pattern admits only SleepPolicy's values
        sleep = SleepPolicy(loops=cfg.loops or sm.config.loops, on_wake=cast(OnWake, cfg.on_wake),
                            min_fill=float(sm.train_config.get("min_fill", 0.5)))
        memory = MemoryPolicy(retention="persistent" if self.store is not None else "ephemeral", ttl=cfg.ttl,
                              persist_window=cfg.persist_window)
        self.runtime = ChatRuntime(self.engine, store=self.store, memory=memory, sleep=sleep,
                                   idle_release_s=cfg.idle_release_s, max_sessions=cfg.max_sessions,
                                   max_prompt_tokens=cfg.max_prompt_tokens,
                                   # every reply snapshotted: a retry or an edit forks from it, another
                                   # replica takes the session over from it
                                   checkpoint_turns=self.store is not None, claimant=claimant, key=key)
        self.sessions = self.runtime.sessions
        if cfg.max_state_mb is not None:
            self.sessions.max_state_bytes = int(cfg.max_state_mb * 2**20)
        self.in_flight = 0
        self.counters = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0, "errors": 0}
        self.statuses: dict[str, int] = {}

    def tenant(self, authorization: str | None) -> str:
        return authenticate(self.cfg, authorization)

    # --- one request ---------------------------------------------------------------------------

    async def prepare(self, req: ChatRequest, tenant: str, header_session: str | None,
                      create: bool = False) -> PreparedTurn:
        """Translate the request and let the runtime prepare it: everything that can fail before
        a reply is written fails here, with its own status, streaming or not."""
        if req.model != self.model_name:
            raise ApiError(404, f"model {req.model!r} is not served here (this server serves {self.model_name!r})",
                           code="model_not_found", param="model")
        turns = [turn_of(m) for m in req.messages]
        specs = [t.model_dump(mode="json", exclude_none=True) for t in req.tools or []]
        try:
            choice = normalize_tool_choice(req.tool_choice, [t.function.name for t in req.tools or []])
        except ConfigError as e:
            raise ApiError(400, str(e), param="tool_choice") from None
        limit = req.max_completion_tokens or req.max_tokens or self.cfg.max_completion_tokens
        if limit > self.cfg.max_completion_tokens:
            raise ApiError(413, f"max_tokens={limit} is over this server's {self.cfg.max_completion_tokens}",
                           code="max_tokens_too_large", param="max_tokens")
        params = GenerationParams(max_tokens=limit, temperature=req.temperature or 0.0,
                                  seed=req.seed if req.seed is not None else 0, stop=tuple(req.stop),
                                  tool_choice=choice, output_schema=_output_schema(req))
        try:
            return await self.runtime.prepare(tenant, turns, tools=specs, params=params,
                                              session_id=header_session or req.session_id, create=create)
        except SleepAgentError as e:
            raise api_error(e) from None

    async def run(self, job: PreparedTurn, emit=None, emit_call=None) -> dict[str, Any]:
        """Run a prepared request (``emit(delta)`` streams the visible text as it is written,
        ``emit_call(delta)`` the tool calls, :class:`~sleepagent.runtime.generate.CallDelta`);
        returns the parts of the response."""
        try:
            reply = await self.runtime.run(job, on_text=emit, on_call=emit_call)
        except SleepAgentError as e:
            raise api_error(e) from None
        self.counters["prompt_tokens"] += reply.prompt_tokens - reply.cached_tokens
        self.counters["completion_tokens"] += reply.completion_tokens
        return self.parts(reply)

    @staticmethod
    def parts(reply: Reply) -> dict[str, Any]:
        """A reply as the pieces of an OpenAI response (plain or streamed)."""
        session: dict[str, Any] = {"id": reply.session.id, "status": reply.status,
                                   "prompt_tokens_cached": reply.cached_tokens}
        if reply.resume is not None:  # the snapshot it came back from, and what that could not hold
            session["lost_tokens"] = dict(reply.resume.lost)
            session["snapshot"] = reply.resume.snapshot_id
            # newer snapshots that failed their checks (their reasons stay in the store's audit)
            session["skipped_snapshots"] = [sid for sid, _ in reply.resume.skipped]
        content = reply.content
        return {"content": content if content or not reply.calls else None, "calls": reply.calls,
                "finish": reply.finish, "usage": usage(reply.prompt_tokens, reply.completion_tokens,
                                                       reply.cached_tokens),
                "session": session}


def create_app(cfg: ServeConfig):
    """The FastAPI application (``uvicorn.run(create_app(cfg))``)."""
    from contextlib import asynccontextmanager

    server = _Server(cfg)
    metrics = _metrics(server)

    @asynccontextmanager
    async def lifespan(app):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_sweeper, server)
            yield
            tg.cancel_scope.cancel()
        await server.runtime.close()
        server.engine.close()

    app = FastAPI(title="sleepagent", lifespan=lifespan)
    app.state.server = server

    def counted(status: int) -> None:
        server.counters["errors"] += 1

    install_errors(app, counted)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.model_name, "sessions": len(server.sessions.live)}

    @app.get("/v1/models")
    async def models(request: Request):
        server.tenant(request.headers.get("authorization"))
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": 0,
                                            "owned_by": "sleepagent"}]}

    @app.get("/metrics")
    async def metrics_endpoint():
        return PlainTextResponse(metrics(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions", openapi_extra=chat_openapi())  # the body read_chat reads, in /openapi.json
    async def chat(request: Request):
        tenant, req, _ = await read_chat(request, cfg)
        if server.in_flight >= cfg.max_in_flight:
            raise ApiError(429, f"{cfg.max_in_flight} requests are in flight; retry later", type="rate_limit_error",
                           code="too_many_requests")
        job = await server.prepare(req, tenant, request.headers.get("x-session-id"))
        job.trace_context = extract_context(request.headers)  # the caller's trace (W3C traceparent)
        rid = new_id()
        headers = {"x-session-id": job.session.id, "x-session-status": job.status}
        if req.stream:
            return StreamingResponse(_stream(server, job, req, rid), media_type="text/event-stream", headers=headers)
        server.in_flight += 1
        try:
            parts = await _until_disconnect(request, server.run(job))
        finally:
            server.in_flight -= 1
        body_out = chat_response(rid, server.model_name, parts["content"], parts["calls"], parts["finish"],
                                 parts["usage"], parts["session"])
        return JSONResponse(body_out, headers=headers)

    return app


async def _until_disconnect(request, coro):
    """Run ``coro``; if the client goes away first, cancel it (the engine stops within a chunk)."""
    result: dict[str, Any] = {}

    async def work(scope: anyio.CancelScope) -> None:
        try:
            result["value"] = await coro
        except Exception as e:  # re-raised below, not wrapped in an exception group
            result["error"] = e
        scope.cancel()

    async def watch(scope: anyio.CancelScope) -> None:
        while not await request.is_disconnected():
            await anyio.sleep(0.05)
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, tg.cancel_scope)
        tg.start_soon(watch, tg.cancel_scope)
    if "error" in result:
        raise result["error"]
    if "value" not in result:
        raise ApiError(499, "the client went away", code="client_closed")
    return result["value"]


async def _stream(server: _Server, job: PreparedTurn, req: ChatRequest, rid: str) -> AsyncIterator[bytes]:
    """Server-sent events: a role chunk, content deltas as they are written, tool calls as they
    are written (as OpenAI streams them: a call's first chunk carries its index, id and name once
    the name is decoded, the next ones its argument text as it grows), the finish reason, and
    (``stream_options.include_usage``) a last chunk with the usage. A call cut by the token
    budget streams what was written of it and finishes "length", as OpenAI's do (the plain reply
    of such a turn has no call: it never closed); the Ray Serve router relays these bytes as they
    are."""
    send, recv = anyio.create_memory_object_stream[Any](max_buffer_size=1_000_000)
    model = server.model_name

    def line(obj: Any) -> bytes:
        return f"data: {sse_json(obj)}\n\n".encode()

    async def produce() -> None:
        try:
            parts = await server.run(job, emit=lambda d: send.send_nowait(("text", d)),
                                     emit_call=lambda d: send.send_nowait(("call", d)))
            send.send_nowait(("done", parts))
        except ApiError as e:
            send.send_nowait(("error", e))
        except SleepAgentError as e:
            send.send_nowait(("error", api_error(e)))
        finally:
            send.close()

    calls = _StreamedCalls()
    server.in_flight += 1
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            yield line(chunk(rid, model, {"role": "assistant", "content": ""}))
            async with recv:
                async for kind, value in recv:
                    if kind == "text":
                        yield line(chunk(rid, model, {"content": value}))
                    elif kind == "call":
                        for item in calls.piece(value):
                            yield line(chunk(rid, model, {"tool_calls": [item]}))
                    elif kind == "error":
                        yield line(value.body())
                    else:
                        for item in calls.finish(value["calls"]):
                            yield line(chunk(rid, model, {"tool_calls": [item]}))
                        final = chunk(rid, model, {}, value["finish"])
                        final["session"] = value["session"]
                        yield line(final)
                        if req.stream_options is not None and req.stream_options.include_usage:
                            yield line(chunk(rid, model, None, use=value["usage"]))
            yield b"data: [DONE]\n\n"
    finally:
        server.in_flight -= 1


class _StreamedCalls:
    """A stream's tool calls: the ``delta.tool_calls`` items for the pieces the runtime reports
    (:class:`~sleepagent.runtime.generate.CallDelta`), and at the end what the reply's calls still
    need, so that each streamed call adds up to the call a plain request answers."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.ids: dict[int, str] = {}
        self.args: dict[int, str] = {}

    def piece(self, d: Any) -> list[dict[str, Any]]:
        if d.name is not None:
            self.names[d.index], self.ids[d.index], self.args[d.index] = d.name, new_call_id(), ""
            return [tool_call_chunk(d.index, id=self.ids[d.index], name=d.name)]
        if d.index not in self.names or not d.arguments:
            return []
        self.args[d.index] += d.arguments
        return [tool_call_chunk(d.index, arguments=d.arguments)]

    def finish(self, calls: list[Any]) -> list[dict[str, Any]]:
        """The rest of the reply's calls: matched in order, by name, to the streamed ones (a block
        that turned out malformed is no call; one whose shape could not be read while it was written
        arrives whole)."""
        out: list[dict[str, Any]] = []
        cursor, nxt = 0, max(self.names, default=-1) + 1
        for c in tool_calls_out(calls):
            name, args = c["function"]["name"], c["function"]["arguments"]
            match = next((i for i in sorted(self.names) if i >= cursor and self.names[i] == name), None)
            if match is None:
                out.append(tool_call_chunk(nxt, id=c["id"], name=name, arguments=args))
                nxt += 1
                continue
            cursor = match + 1
            sent = self.args[match]
            if args.startswith(sent):
                if len(args) > len(sent):
                    out.append(tool_call_chunk(match, arguments=args[len(sent):]))
            else:  # cannot happen for a call read as it was written; logged, not hidden
                logger.warning("streamed arguments of call %d (%r) differ from the parsed call's %r", match, sent, args)
        return out


async def _sweeper(server: _Server) -> None:
    """Release idle sessions to the store, every few seconds."""
    period = min(5.0, server.cfg.idle_release_s / 2)
    while True:
        await anyio.sleep(period)
        try:
            await server.runtime.release_idle()
        except Exception:  # a failing store must not stop the server: log and keep serving
            logger.exception("releasing idle sessions failed")


def _metrics(server: _Server):
    """Prometheus text for ``/metrics``, from a registry of this server's own (several servers in
    one process, as in tests, do not share counters)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self):
            c, totals = server.counters, server.sessions.totals()
            for name, value, doc in (
                ("sleepagent_prompt_tokens", c["prompt_tokens"], "Prompt tokens read (new messages only)."),
                ("sleepagent_completion_tokens", c["completion_tokens"], "Tokens written."),
                ("sleepagent_errors", c["errors"], "Requests answered with an error."),
                ("sleepagent_sleeps", totals["sleeps"], "Consolidations (sleeps) committed."),
                ("sleepagent_sleep_hidden_seconds", totals["sleep_s_hidden"], "Sleep time overlapped with a pause."),
                ("sleepagent_sleep_exposed_seconds", totals["sleep_s_exposed"], "Sleep time a request waited for."),
                ("sleepagent_sessions_released", server.sessions.released_total, "Sessions released to the store."),
                ("sleepagent_engine_busy_seconds", server.engine.busy_seconds(),
                 "Seconds the engine's worker spent on wake steps and sleep blocks (its share of wall time: "
                 "how close to saturation it runs)."),
            ):
                yield CounterMetricFamily(name, doc, value=value)
            engine = server.engine
            yield GaugeMetricFamily("sleepagent_sessions", "Live sessions.", value=len(server.sessions.live))
            table = server.sessions.stats()
            yield GaugeMetricFamily("sleepagent_state_bytes", "Bytes of the live sessions' state (fast weights, KV "
                                    "windows, sleeps in progress).", value=table["state_bytes"])
            yield GaugeMetricFamily("sleepagent_prefix_cache_bytes", "Bytes of the engine's cached prefixes (counted "
                                    "against the state budget, evicted before any session).",
                                    value=table["prefix_cache_bytes"])
            if table["max_state_bytes"] is not None:
                yield GaugeMetricFamily("sleepagent_state_budget_bytes", "The live state's budget (--max-state-mb).",
                                        value=table["max_state_bytes"])
            yield GaugeMetricFamily("sleepagent_sessions_remembered", "Released sessions still recognised (bounded).",
                                    value=table["remembered"])
            yield GaugeMetricFamily("sleepagent_fork_points", "Snapshotted replies a retry may fork from (bounded).",
                                    value=table["fork_points"])
            yield GaugeMetricFamily("sleepagent_queue_depth", "Wake requests queued on the engine.",
                                    value=len(engine._wake))
            yield GaugeMetricFamily("sleepagent_sleeping_sessions", "Sessions with a sleep in progress.",
                                    value=len(engine._sleepers))
            yield GaugeMetricFamily("sleepagent_requests_in_flight", "Requests being served.", value=server.in_flight)

    registry = CollectorRegistry()
    registry.register(Collector())
    return lambda: generate_latest(registry).decode()
