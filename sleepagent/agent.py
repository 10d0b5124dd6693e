"""Agent: the tool-call loop over a sleep-enabled model, sleeping whenever it waits.

A run: the user's message is prefilled into the session; the model generates a turn; every
``<tool_call>`` in it is executed (concurrently) while the engine consolidates the window in the
background; the results are prefilled; repeat until a turn has no tool call. The session's state
carries the conversation: earlier turns are never re-read, and what left the window lives only in
the fast weights.

The Agent is a door over the runtime core (:mod:`sleepagent.runtime`): its sessions live in the
core's session table and persist through its one persistence path, and every turn is written by
its one token loop. What is the Agent's own is the tool loop: executing calls, their limits and
the run's events.

Every turn is written under a grammar (:func:`~sleepagent.runtime.turn_constraint`): a call names a
registered tool and its arguments are valid against that tool's JSON schema. With
``output_type=SomeModel`` a turn is either tool calls or the final answer, one JSON value valid
against the type's schema, returned validated (``RunResult.output`` is then the instance), in the
manner of pydantic-ai's ``output_type``.

Tools come from functions, :class:`Tool` objects and tool sources such as MCP servers
(:mod:`sleepagent.tools.mcp`): a source the agent finds stopped is started on first use, before a
session reads its system turn (its tools exist only once it runs), and stopped by
:meth:`Agent.close`; a source already running (``async with server:``) is the caller's to stop.

Failures the model causes (malformed calls, unknown tools, bad arguments, tool exceptions,
timeouts) become tool-error messages and the run goes on. Cancellation (an anyio cancel scope,
or ``run.cancel()`` on a stream) always propagates promptly; finished turns and committed sleeps
stay, the interrupted sleep is finished, committed or dropped per ``SleepPolicy.on_wake``, and the
session remains usable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
import pydantic
import torch
from anyio.abc import TaskGroup
from anyio.lowlevel import EventLoopToken, current_token

from .engine import Engine, EngineSession, SleepStats
from .errors import ConfigError, InputTooLarge, ModelBehaviorError, SleepAgentError, UsageLimitExceeded
from .messages import (
    Event,
    FinalEvent,
    Message,
    RunResult,
    SleepEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
    UsageLimits,
)
from .model import SleepModel
from .policy import MemoryPolicy, SleepPolicy
from .runtime import (
    ChatRuntime,
    ChatSession,
    ResumeInfo,
    SampledModel,
    TurnInfo,
    TurnModel,
    TurnText,
    generate_turn,
    open_store,
    render_system_turn,
    render_tool_prompt,
    turn_constraint,
)
from .tools import (
    MalformedToolCall,
    Tool,
    ToolCall,
    ToolRegistry,
    ToolResult,
    split_text_and_calls,
)
from .tracing import agent_span, bind_sleeps, chat_span, mark_failed, set_usage, tool_span

__all__ = ["Agent", "AgentRun", "AgentSession", "ResumeInfo", "TurnInfo"]

logger = logging.getLogger(__name__)


def _is_tool_source(item: Any) -> bool:
    """A tool source (an MCP server, :class:`sleepagent.tools.mcp.MCPServer`): something that is
    started and stopped and lists tools while it runs. Checked on the type, since reading the
    ``tools`` of a source that never ran raises."""
    kind = type(item)
    return all(callable(getattr(kind, name, None)) for name in ("start_sync", "stop_sync")) and all(
        hasattr(kind, name) for name in ("running", "tools"))


class _Output:
    """A run's structured answer: ``output_type``'s JSON schema (what the grammar enforces) and
    its validation (what the run returns). A mapping is a JSON schema itself: the answer is the
    parsed JSON, valid against it by construction (like pydantic-ai's ``StructuredDict``)."""

    def __init__(self, output_type: Any) -> None:
        if isinstance(output_type, Mapping):
            self.schema, self.type = dict(output_type), "JSON value"
            self.adapter = pydantic.TypeAdapter(Any)  # parses; the grammar already checked the schema
            return
        try:
            self.adapter = pydantic.TypeAdapter(output_type)
            self.schema = self.adapter.json_schema()
        except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError) as e:
            raise ConfigError(f"output_type {output_type!r} has no JSON schema: {e}", field="output_type") from None
        self.type = output_type

    def validate(self, text: str) -> Any:
        return self.adapter.validate_json(text)


def _output_of(output_type: Any) -> _Output | None:
    """None for a text answer (``str``, the default), else the structured answer's spec."""
    return None if output_type is None or output_type is str else _Output(output_type)


class Agent:
    """An agent over a sleep-enabled model.

    Args:
        model: a :class:`SleepModel`, a checkpoint name or path, or any
            :class:`~sleepagent.runtime.TurnModel` (e.g. the scripted test doubles of
            :mod:`sleepagent.testing`).
        tools: :class:`Tool` objects, plain functions (sync or async) and tool sources such as
            MCP servers (:mod:`sleepagent.tools.mcp`; see the module docstring for their
            lifetime).
        output_type: the type of the final answer (default ``str``, free text). Any other type
            pydantic can validate (a ``BaseModel``, a dataclass, ``list[int]``, ...): the answer
            is generated as JSON under its schema and ``RunResult.output`` is the validated value.
            A dict is a JSON schema: the answer is generated under it and returned parsed.
        output_retries: how many times a final answer that fails validation (a validator beyond
            what the schema says) is sent back to the model before the run raises
            :class:`~sleepagent.errors.ModelBehaviorError`.
        name: the agent's name in traces (``gen_ai.agent.name``).
        sleep: when the model consolidates (default ``SleepPolicy()``: 4 passes, in pauses).
        memory: what sessions may keep (never-consolidate patterns, retention, ...).
        store: a snapshot store for persistent sessions (see ``sleepagent.storage``).
        system_prompt: the first turn of every session (default: the one the checkpoint was
            trained with, from its ``prompt.json``, else a generic one).
        max_steps: model requests per run (each turn is one request); more raises
            :class:`UsageLimitExceeded`.
        max_tokens: tokens per generated turn.
        temperature: 0 = greedy decoding.
        tool_timeout: seconds any one tool call may take in a run (the stricter of this and the
            tool's own timeout wins); a timeout becomes a tool-error message.
        engine: share one :class:`Engine` (one model on one device) between agents.
        max_input_chars: the longest user message accepted; a longer one raises
            :class:`~sleepagent.errors.InputTooLarge` before any of it is read.
        max_tool_output_chars: tool output beyond this is cut, and the model is told so in the
            result (``[tool output truncated: ...]``).
    """

    def __init__(
        self,
        model: Any,
        *,
        tools: Iterable[Tool | Callable[..., Any] | Any] = (),
        output_type: Any = str,
        output_retries: int = 1,
        name: str | None = None,
        sleep: SleepPolicy | None = None,
        memory: MemoryPolicy | None = None,
        store: Any = None,
        system_prompt: str | None = None,
        max_steps: int = 10,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        tool_timeout: float | None = None,
        usage_limits: UsageLimits | None = None,
        engine: Engine | None = None,
        max_input_chars: int = 100_000,
        max_tool_output_chars: int = 20_000,
    ) -> None:
        _check_types(model=model, sleep=sleep, memory=memory, usage_limits=usage_limits, engine=engine,
                     system_prompt=system_prompt, name=name)
        self.name = name or "agent"
        turn_model = model if isinstance(model, TurnModel) else None
        weights = turn_model.weights if turn_model is not None else model
        if engine is not None:
            if weights is not None and weights is not engine.model:
                raise ConfigError("model and engine disagree: pass the engine's model (or only the engine)")
            self.engine = engine
            self._owns_engine = False
        else:
            if weights is None:
                if turn_model is None:
                    raise ConfigError("Agent needs a model: a SleepModel, a checkpoint name or path", field="model")
                weights = turn_model.default_weights()
            self.engine = Engine(weights if isinstance(weights, SleepModel) else SleepModel.from_pretrained(weights))
            self._owns_engine = True
        self.model: SleepModel = self.engine.model
        self.turn_model: TurnModel = turn_model or SampledModel(self.model)
        for name, value in (("max_steps", max_steps), ("max_tokens", max_tokens), ("max_input_chars", max_input_chars),
                            ("max_tool_output_chars", max_tool_output_chars)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}", field=name)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise ConfigError(f"temperature must be a number >= 0, got {temperature!r}", field="temperature")
        if tool_timeout is not None and (isinstance(tool_timeout, bool) or not isinstance(tool_timeout, (int, float))
                                         or not tool_timeout > 0):
            raise ConfigError(f"tool_timeout must be a positive number of seconds or None, got {tool_timeout!r}",
                              field="tool_timeout")
        if isinstance(output_retries, bool) or not isinstance(output_retries, int) or output_retries < 0:
            raise ConfigError(f"output_retries must be an integer >= 0, got {output_retries!r}", field="output_retries")
        items = list(tools)
        self._sources: list[Any] = [t for t in items if _is_tool_source(t)]
        self._plain_tools = [t for t in items if not _is_tool_source(t)]
        self._started: list[Any] = []  # the sources this agent started, and so stops
        self._sources_lock = threading.Lock()  # first use may come from several sessions and loops
        self.tools = self._registry()
        self.output = _output_of(output_type)
        self.output_retries = output_retries
        self.sleep = sleep or SleepPolicy()
        self.memory = memory or MemoryPolicy()
        self.store = open_store(store)
        self.max_input_chars = max_input_chars
        self.max_tool_output_chars = max_tool_output_chars
        self.max_steps = max_steps
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.tool_timeout = tool_timeout
        self.usage_limits = usage_limits or UsageLimits()
        # the checkpoint's own system prompt (its prompt.json), as a chat template comes with a
        # transformers checkpoint; a small model answers well only in the register it was trained in
        self.runtime = ChatRuntime(self.engine, store=self.store, memory=self.memory, sleep=self.sleep,
                                   max_sessions=None, system_prompt=system_prompt)
        self.system_prompt = self.runtime.system_prompt
        if self.output is not None:
            self._constraint([], self.output)  # the answer fits max_tokens, or fail now

    # --- tools ---------------------------------------------------------------------------------

    def _registry(self) -> ToolRegistry:
        """Plain tools, then the tools of every running source."""
        return ToolRegistry([*self._plain_tools, *(t for s in self._sources if s.running for t in s.tools)])

    def _ensure_sources_sync(self) -> None:
        with self._sources_lock:
            stopped = [s for s in self._sources if not s.running]
            for source in stopped:
                source.start_sync()  # raises (MCPConnectionError, ConfigError) for the caller
                if not any(source is o for o in self._started):
                    self._started.append(source)
            if stopped:
                self.tools = self._registry()

    async def start_tools(self) -> None:
        """Start every tool source that is not running (this agent then owns it, and
        :meth:`close` stops it); runs on first use anyway, before a session's system turn."""
        if any(not s.running for s in self._sources):
            await anyio.to_thread.run_sync(self._ensure_sources_sync)

    def _stop_sources(self) -> None:
        with self._sources_lock:
            started, self._started = self._started, []
        for source in started:
            try:
                source.stop_sync()
            except Exception:  # closing goes on: the other sources, the engine
                logger.exception("stopping tool source %r failed", source)

    async def __aenter__(self) -> Agent:
        await self.start_tools()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """Stops the tool sources this agent started (the engine stays: see :meth:`close`)."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._stop_sources)

    def _constraint(self, calls: Iterable[Tool], output: _Output | None = None):
        """The constraint every turn is written under: a call of one of ``calls`` with valid
        arguments, and with ``output``, a JSON answer valid against its schema instead of text."""
        return turn_constraint(self.model.tokenizer, calls, "auto", max_tokens=self.max_tokens,
                               output=output.schema if output is not None else None)

    def session(self, id: str | None = None, *, tenant: str = "default") -> AgentSession:
        """A multi-turn conversation; use as ``async with agent.session() as s: await s.run(...)``.

        With a ``store`` and a non-ephemeral memory policy, the session is persisted after every
        consolidation, and opening an ``id`` that exists resumes it from its newest intact
        snapshot (``AgentSession.resume`` says which, and what the snapshot could not hold;
        FingerprintMismatch for another model's session). Session ids are per tenant: another
        tenant's ``id`` is a different session. Ephemeral sessions never touch the store.
        """
        from .storage.store import check_name

        check_name(tenant, "tenant")
        if id is not None:
            check_name(id, "session id")
            if (tenant, id) in self.runtime.sessions.live:
                raise ConfigError(f"session {id!r} is already open in this agent; close it first", field="id")
        return AgentSession(self, self.runtime.sessions.open(tenant, id))

    async def run(self, task: str | Message, *, session: AgentSession | None = None, **kw: Any) -> RunResult:
        """Run ``task`` to a final answer (in ``session``, or a fresh one closed afterwards)."""
        _check_message(task)
        if session is not None:
            return await session.run(task, **kw)
        async with self.session() as s:
            return await s.run(task, **kw)

    def run_sync(self, task: str | Message, **kw: Any) -> RunResult:
        """:meth:`run` for synchronous code (starts its own event loop)."""
        return anyio.run(lambda: self.run(task, **kw))

    def run_stream(self, task: str | Message, *, session: AgentSession | None = None, **kw: Any) -> AgentRun:
        """Stream a run's events: ``async with agent.run_stream(task) as run: async for ev in run``."""
        return AgentRun(self, task, session, kw)

    def close(self) -> None:
        """Stop the tool sources this agent started (never one it found running) and the
        engine's worker thread (only if this agent created it)."""
        self._stop_sources()
        if self._owns_engine:
            self.engine.close()

    def tool_prompt(self) -> str:
        return render_tool_prompt(self.tools)


class AgentSession:
    """A conversation with one agent; its model state carries every turn (no re-prefill)."""

    def __init__(self, agent: Agent, chat: ChatSession) -> None:
        self.agent = agent
        self.chat = chat
        self.history: list[Message] = []
        self.usage = Usage()
        self._lock = anyio.Lock()
        self._emit: Callable[[Event], None] | None = None
        self._token: EventLoopToken | None = None
        self._rng = torch.Generator().manual_seed(agent.seed)
        self._limits: UsageLimits | None = None
        self._run_messages: list[Message] = []
        chat.engine_session.on_event = self._on_engine_event
        self.closed = False

    @property
    def id(self) -> str:
        return self.chat.id

    @property
    def tenant(self) -> str:
        return self.chat.tenant

    @property
    def engine_session(self) -> EngineSession:
        return self.chat.engine_session

    @property
    def persisted(self) -> bool:
        return self.agent.runtime.persistence.active

    @property
    def resume(self) -> ResumeInfo | None:
        """How the session came back from the store (None: a new session)."""
        return self.chat.resume

    @property
    def stats(self) -> SleepStats:
        return self.engine_session.stats

    async def __aenter__(self) -> AgentSession:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """End the session. Persistent sessions save their state first (consolidating the window
        unless ``persist_window``); ``session`` retention and ``erase_on_close`` erase it."""
        if self.closed:
            return
        self.closed = True
        await self.agent.runtime.sessions.close(self.chat)

    def run_stream(self, message: str | Message, **kw: Any) -> AgentRun:
        return AgentRun(self.agent, message, self, kw)

    async def run(
        self,
        message: str | Message,
        *,
        usage_limits: UsageLimits | None = None,
        tool_timeout: float | None = None,
        output_type: Any = ...,
    ) -> RunResult:
        """One user message to a final answer (``output_type``: this run's, instead of the agent's)."""
        if self.closed:
            raise SleepAgentError(f"session {self.id} is closed")
        _check_message(message)
        if usage_limits is not None and not isinstance(usage_limits, UsageLimits):
            raise ConfigError(
                f"usage_limits must be a UsageLimits, got {type(usage_limits).__name__}", field="usage_limits"
            )
        output = self.agent.output
        if output_type is not ...:
            output = _output_of(output_type)
            if output is not None:
                self.agent._constraint([], output)  # the answer fits max_tokens, or fail now
        async with self._lock:
            self.agent.runtime.persistence.touch(self.id, self.tenant)  # renew a session lease: still alive
            return await self._run(message, usage_limits or self.agent.usage_limits, tool_timeout, output)

    # --- the loop -------------------------------------------------------------------------------

    async def _run(self, message: str | Message, limits: UsageLimits, tool_timeout: float | None,
                   output: _Output | None) -> RunResult:
        agent, es = self.agent, self.engine_session
        msg = message if isinstance(message, Message) else Message("user", message)
        if msg.role != "user":
            raise ConfigError(f"a run starts with a user message, got role {msg.role!r}")
        if len(msg.content) > agent.max_input_chars:
            raise InputTooLarge(
                f"the message has {len(msg.content):,} characters; this agent accepts at most "
                f"{agent.max_input_chars:,} (Agent(max_input_chars=...))",
                tokens=len(msg.content), limit=agent.max_input_chars,
            )
        await agent.start_tools()  # before the system turn: a source's tools exist once it runs
        with agent_span(agent.name, model=agent.model.name, session_id=self.id,
                        output_type="json" if output is not None else "text") as span:
            bind_sleeps(es, span)  # the session's sleeps belong to this run
            result = await self._loop(msg, limits, tool_timeout, output)
            extra: dict[str, Any] = {"sleepagent.usage.requests": result.usage.requests}
            set_usage(span, input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens,
                      **extra)
        self._post(FinalEvent("final", result=result))
        return result

    async def _loop(self, msg: Message, limits: UsageLimits, tool_timeout: float | None,
                    output: _Output | None) -> RunResult:
        agent, engine, es = self.agent, self.agent.engine, self.engine_session
        tok = agent.model.tokenizer
        allows = agent.memory.allows_consolidation
        msg.consolidate = msg.consolidate and allows(msg.content)
        usage = Usage()
        run_messages: list[Message] = [msg]
        stats_before = es.stats.copy()
        timeout = tool_timeout if tool_timeout is not None else agent.tool_timeout
        self._limits, self._run_messages = limits, run_messages
        try:
            if not self.chat.meta.system_read:
                system = agent.system_prompt
                self._read(render_system_turn(tok, system, agent.tools.specs()), allows(system), usage)
                self.chat.meta.system_read = True
            self._read(tok.render_turn("user", msg.content), msg.consolidate, usage)
            self._read(tok.generation_prompt(), True, usage)
            answer: Any = ""
            retries = agent.output_retries
            read = 0  # input tokens already counted in an earlier request
            for step in range(agent.max_steps + 1):
                if step == agent.max_steps:
                    raise UsageLimitExceeded(
                        f"the run needed more than max_steps={agent.max_steps} model requests",
                        messages=list(run_messages),
                    )
                limits.check_before_request(usage, run_messages)
                with chat_span(agent.model.name, session_id=self.id, max_tokens=agent.max_tokens,
                               temperature=agent.temperature, seed=agent.seed,
                               output_type="json" if output is not None else "text") as span:
                    logits = await engine.flush(es)
                    limits.check_tokens(usage, run_messages)
                    usage.requests += 1
                    turn_input, read, written = usage.input_tokens - read, usage.input_tokens, usage.output_tokens
                    turn = await self._generate(logits, usage, step, run_messages, output)
                    prose, calls = split_text_and_calls(turn.text)
                    set_usage(span, input_tokens=turn_input, output_tokens=usage.output_tokens - written,
                              finish="tool_calls" if calls else turn.finish)
                limits.check_tokens(usage, run_messages)
                reply = Message("assistant", turn.text, tool_calls=list(calls))
                run_messages.append(reply)
                if not calls:
                    if output is None:
                        answer = prose.strip()
                        break
                    try:
                        answer = output.validate(prose.strip())
                        break
                    except pydantic.ValidationError as e:
                        if retries == 0:
                            raise ModelBehaviorError(f"the final answer is not a valid {_type_name(output.type)}: "
                                                     f"{_first_errors(e)}", body=turn.text) from None
                        retries -= 1
                        note = (f"Your answer is not a valid {_type_name(output.type)}: {_first_errors(e)}. "
                                "Answer again.")
                        retry = Message("user", note, consolidate=allows(note))
                        run_messages.append(retry)
                        self._read(tok.render_turn("user", note), retry.consolidate, usage)
                        self._read(tok.generation_prompt(), True, usage)
                        continue
                limits.check_tool_calls(usage, len(calls), run_messages)
                usage.tool_calls += len(calls)
                for call in calls:
                    self._post(ToolCallEvent("tool_call", call=call))
                engine.pause(es)  # the model waits for its tools: sleep now, off the hot path
                for call, raw in zip(calls, await self._execute(calls, timeout), strict=True):
                    # the policy judges the whole output (before any cut) and the call it
                    # answers (an error may echo the call's arguments)
                    allowed = allows(raw.content) and allows(_call_text(call))
                    result = _bounded(raw, agent.max_tool_output_chars)
                    run_messages.append(
                        Message(
                            "tool", result.content, consolidate=allowed, tool_call_id=result.call_id,
                            tool_name=result.name, is_error=result.is_error,
                        )
                    )
                    self._post(ToolResultEvent("tool_result", result=result))
                    self._read(tok.render_tool_result(result.render()), allowed, usage)
                self._read(tok.generation_prompt(), True, usage)
            engine.pause(es)  # the user reads the answer and thinks: sleep now
        except BaseException:
            with anyio.CancelScope(shield=True):
                engine.interrupt(es)
            self.history.extend(run_messages)
            self.usage = self.usage + usage
            raise
        self.history.extend(run_messages)
        self.usage = self.usage + usage
        return RunResult(
            output=answer, messages=run_messages, usage=usage, sleep=es.stats.since(stats_before), session_id=self.id
        )

    def _read(self, ids: list[int], consolidate: bool, usage: Usage) -> None:
        """Queue tokens for the model; they are read by the next flush (cancel-safe). The run's
        input-token limits are checked first: a message over the limit is refused unread."""
        if self._limits is not None:
            self._limits.check_input(usage, len(ids), self._run_messages)
        self.agent.engine.append(self.engine_session, ids, consolidate)
        usage.input_tokens += len(ids)

    async def _generate(self, logits: torch.Tensor, usage: Usage, step: int, run_messages: list[Message],
                        output: _Output | None) -> TurnText:
        """One assistant turn, written by the runtime's token loop under the agent's grammar."""
        agent, tok = self.agent, self.agent.model.tokenizer
        constraint = agent._constraint(agent.tools.values(), output)
        info = TurnInfo(self.id, step, agent.tools.specs(), self.stats)
        picker = await agent.turn_model.picker(
            self.history + run_messages, info, tokenizer=tok, max_tokens=agent.max_tokens,
            temperature=agent.temperature, generator=self._rng, constraint=constraint,
        )

        def on_token(piece: str) -> None:
            usage.output_tokens += 1
            self._post(TokenEvent("token", text=piece))

        try:
            return await generate_turn(agent.engine, self.engine_session, logits, picker=picker,
                                       max_tokens=agent.max_tokens, gate=agent.runtime.gate, on_token=on_token)
        finally:
            usage.input_tokens += len(tok.close_turn())  # queued by the loop, even when cancelled

    async def _execute(self, calls: Sequence[ToolCall | MalformedToolCall], timeout: float | None) -> list[ToolResult]:
        """Run the turn's tool calls concurrently; results keep the calls' order."""
        results: list[ToolResult | None] = [None] * len(calls)
        sourced = {t.name for s in self.agent._sources if s.running for t in s.tools}

        async def one(i: int, call: ToolCall | MalformedToolCall) -> None:
            name = call.name or ""
            with tool_span(name, call_id=call.id, tool_type="extension" if name in sourced else "function") as span:
                result = await self.agent.tools.execute(call, timeout=timeout)
                if result.is_error:
                    mark_failed(span, result.error_kind or "error", result.content[:200])
            results[i] = result

        async with anyio.create_task_group() as tg:
            for i, call in enumerate(calls):
                tg.start_soon(one, i, call)
        return [r for r in results if r is not None]

    # --- events ---------------------------------------------------------------------------------

    def _post(self, event: Event) -> None:
        if self._emit is not None:
            self._emit(event)

    def _on_engine_event(self, kind: str, data: dict[str, Any]) -> None:
        """Called on the engine's worker thread; hop to the stream's event loop."""
        emit, token = self._emit, self._token
        if emit is None or token is None:
            return
        with contextlib.suppress(Exception):
            token.backend_class.run_sync_soon(emit, (SleepEvent(kind, data=dict(data)),), token.native_token)


class AgentRun:
    """A streamed run: ``async with agent.run_stream(task) as run: async for event in run: ...``
    (or plainly ``async for event in agent.run_stream(task)``; the context manager also gives
    ``run.cancel()`` and lets you stop iterating early safely).

    ``run.cancel()`` stops it promptly (see :class:`Agent` for what is kept); ``run.result`` is the
    :class:`RunResult` once a :class:`FinalEvent` was seen.
    """

    def __init__(self, agent: Agent, task: str | Message, session: AgentSession | None, kw: dict[str, Any]):
        self.agent, self.task, self.session, self.kw = agent, task, session, kw
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self._own_session = session is None
        self._scope: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> AgentRun:
        if self.session is None:
            self.session = self.agent.session()
        self._send, self._recv = anyio.create_memory_object_stream[Event](max_buffer_size=10_000)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._produce)
        return self

    async def _produce(self) -> None:
        session = self.session
        assert session is not None
        session._emit = self._send_event
        session._token = current_token()
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                self.result = await session.run(self.task, **self.kw)
        except Exception as e:  # surfaced by __aiter__ / __aexit__
            self.error = e
        finally:
            session._emit = None
            session._token = None
            self._send.close()

    def _send_event(self, event: Event) -> None:
        # the consumer is gone (or far behind); events are advisory
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.WouldBlock):
            self._send.send_nowait(event)

    def cancel(self) -> None:
        """Cancel the run now (finished turns and committed sleeps are kept)."""
        if self._scope is not None:
            self._scope.cancel()

    @property
    def cancelled(self) -> bool:
        return self._scope is not None and self._scope.cancelled_caught

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._tg is None:  # bare `async for event in agent.run_stream(task)`
            return self._self_managed()
        return self._events()

    async def _self_managed(self) -> AsyncIterator[Event]:
        async with self:
            async for event in self._events():
                yield event

    async def _events(self) -> AsyncIterator[Event]:
        async with self._recv:
            async for event in self._recv:
                yield event
        if self.error is not None:
            raise self.error

    async def __aexit__(self, *exc: Any) -> None:
        assert self._tg is not None
        try:
            await self._tg.__aexit__(*exc)
        finally:
            if self._own_session and self.session is not None:
                await self.session.close()
        if self.error is not None and exc[0] is None:
            raise self.error


def _check_types(**values: Any) -> None:
    """Agent arguments of the wrong type fail here, by name, not later inside torch."""
    model = values["model"]
    if not (model is None or isinstance(model, (SleepModel, TurnModel, str, os.PathLike))):
        raise ConfigError(f"model must be a SleepModel, a checkpoint name or path, or a TurnModel (such as "
                          f"sleepagent.testing.FunctionModel); got {type(model).__name__}", field="model")
    expected = {"sleep": SleepPolicy, "memory": MemoryPolicy, "usage_limits": UsageLimits, "engine": Engine,
                "system_prompt": str, "name": str}
    for name, kind in expected.items():
        value = values[name]
        if value is not None and not isinstance(value, kind):
            hint = f" (e.g. {kind.__name__}(...))" if name in ("sleep", "memory", "usage_limits") else ""
            raise ConfigError(f"{name} must be a {kind.__name__} or None, got {type(value).__name__}{hint}", field=name)


def _check_message(message: Any) -> None:
    """A task is text (or a Message) that can be encoded: no lone surrogates."""
    if isinstance(message, Message):
        text = message.content
    elif isinstance(message, str):
        text = message
    else:
        raise ConfigError(f"a run takes a str or a Message, got {type(message).__name__}", field="task")
    if not isinstance(text, str):
        raise ConfigError(f"message content must be a str, got {type(text).__name__}", field="task")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(
            f"the message is not valid Unicode text ({e.reason} at position {e.start})", field="task"
        ) from None


def _bounded(result: ToolResult, limit: int) -> ToolResult:
    """A tool result the model can be given: at most ``limit`` characters (cut with a note that
    says so), and valid Unicode (lone surrogates replaced), so no tool can stall the engine."""
    text = result.content
    if len(text) > limit:
        text = text[:limit] + f"\n[tool output truncated: {limit:,} of {len(result.content):,} characters shown]"
    text = text.encode("utf-8", "replace").decode("utf-8")
    if text is result.content or text == result.content:
        return result
    return dataclasses.replace(result, content=text)


def _type_name(kind: Any) -> str:
    return kind if isinstance(kind, str) else getattr(kind, "__name__", None) or repr(kind)


def _first_errors(error: pydantic.ValidationError, n: int = 3) -> str:
    """A validation error in a few words for the model: where and what, the first ``n`` problems."""
    parts = []
    for e in error.errors()[:n]:
        where = ".".join(str(x) for x in e["loc"])
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    return "; ".join(parts)


def _call_text(call: ToolCall | MalformedToolCall) -> str:
    """A call as the model wrote it (what an error about it may echo)."""
    if isinstance(call, MalformedToolCall):
        return call.raw
    return json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
