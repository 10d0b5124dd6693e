"""Agent: the tool-call loop over a sleep-enabled model, sleeping whenever it waits.

A run: the user's message is prefilled into the session; the model generates a turn; every
``<tool_call>`` in it is executed (concurrently) while the engine consolidates the window in the
background; the results are prefilled; repeat until a turn has no tool call. The session's state
carries the conversation: earlier turns are never re-read, and what left the window lives only in
the fast weights.

Failures the model causes (malformed calls, unknown tools, bad arguments, tool exceptions,
timeouts) become tool-error messages and the run goes on. Cancellation (an anyio cancel scope,
or ``run.cancel()`` on a stream) always propagates promptly; finished turns and committed sleeps
stay, the interrupted sleep is finished, committed or dropped per ``SleepPolicy.on_wake``, and the
session remains usable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import torch
from anyio.lowlevel import current_token

from .decoding import ToolCallConstraint
from .engine import Engine, EngineSession, SleepStats
from .errors import ConfigError, FingerprintMismatch, InputTooLarge, SleepAgentError, SnapshotCorrupted, UsageLimitExceeded
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
from .tools import (
    MalformedToolCall,
    Tool,
    ToolCall,
    ToolRegistry,
    ToolResult,
    render_tool_call,
    render_tool_response,
    split_text_and_calls,
)

__all__ = ["Agent", "AgentSession", "AgentRun", "TurnInfo", "ResumeInfo", "render_tool_prompt", "render_system_turn",
           "ChatTurn", "render_turns", "snapshot", "restore"]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class ResumeInfo:
    """How a session came back from the store (``AgentSession.resume``; None for a new session).

    snapshot_id: the snapshot restored.
    skipped:     newer snapshots that failed their checks (corrupted, non-finite), (id, why):
                 the session resumed from an older one and lost what those held.
    window_tokens: tokens of the window restored (``persist_window``), re-read into it.
    lost:        tokens the snapshot did not hold, by reason: "window" (the window, without
                 ``persist_window``), "never_consolidate" (turns the memory policy keeps out of
                 every store), "unread" (input queued but not read yet when it was taken).
    """

    snapshot_id: int
    skipped: list[tuple[int, str]] = field(default_factory=list)
    window_tokens: int = 0
    lost: dict[str, int] = field(default_factory=dict)


@dataclass
class TurnInfo:
    """What a scripted model (see :mod:`sleepagent.testing`) is told about the turn it writes."""

    session_id: str
    step: int
    tools: list[dict[str, Any]]
    stats: SleepStats


class Agent:
    """An agent over a sleep-enabled model.

    Args:
        model: a :class:`SleepModel`, a checkpoint name or path, or a scripted test model
            (:class:`sleepagent.testing.FunctionModel`).
        tools: :class:`Tool` objects or plain functions (sync or async).
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
        tools: Iterable[Tool | Callable[..., Any]] = (),
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
        from .testing import FunctionModel

        _check_types(model=model, sleep=sleep, memory=memory, usage_limits=usage_limits, engine=engine,
                     system_prompt=system_prompt)
        self.scripted: FunctionModel | None = model if isinstance(model, FunctionModel) else None
        base = self.scripted.base if self.scripted is not None else model
        if engine is not None:
            if base is not None and base is not engine.model:
                raise ConfigError("model and engine disagree: pass the engine's model (or only the engine)")
            self.engine = engine
            self._owns_engine = False
        else:
            if base is None:
                if self.scripted is None:
                    raise ConfigError("Agent needs a model: a SleepModel, a checkpoint name or path", field="model")
                from .testing import tiny_model

                base = tiny_model()  # a scripted model still needs real weights to run
            self.engine = Engine(base if isinstance(base, SleepModel) else SleepModel.from_pretrained(base))
            self._owns_engine = True
        self.model: SleepModel = self.engine.model
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
        self.tools = ToolRegistry(tools)
        self.sleep = sleep or SleepPolicy()
        self.memory = memory or MemoryPolicy()
        self.store = _open_store(store)
        self.max_input_chars = max_input_chars
        self.max_tool_output_chars = max_tool_output_chars
        # the checkpoint's own system prompt (its prompt.json), as a chat template comes with a
        # transformers checkpoint; a small model answers well only in the register it was trained in
        self.system_prompt = system_prompt if system_prompt is not None else (
            self.model.prompt.system_prompt or DEFAULT_SYSTEM_PROMPT
        )
        self.max_steps = max_steps
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.tool_timeout = tool_timeout
        self.usage_limits = usage_limits or UsageLimits()

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
        if self.store is None or self.memory.retention == "ephemeral":
            return AgentSession(self, self.engine.session(id, policy=self.sleep), tenant=tenant)
        fp = self.model.fingerprint
        info = self.store.open_session(id, tenant=tenant, fingerprint=fp, policy=self.memory)
        if info.fingerprint != fp:
            raise FingerprintMismatch(expected=fp, found=info.fingerprint)
        es = self.engine.session(info.id, policy=self.sleep)
        resume = restore(self.model, self.store, es, tenant=tenant)
        return AgentSession(self, es, tenant=tenant, persisted=True, resume=resume)

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
        """Stop the engine's worker thread (only if this agent created it)."""
        if self._owns_engine:
            self.engine.close()

    def tool_prompt(self) -> str:
        return render_tool_prompt(self.tools)


def render_system_turn(tok: Any, text: str, specs: list[dict[str, Any]]) -> list[int]:
    """The system turn with the tool list: in the tokenizer's own format when it has one (the
    chat template of a transformers model), else as :func:`render_tool_prompt` text."""
    if hasattr(tok, "render_system"):
        return tok.render_system(text, specs)
    return tok.render_turn("system", text + render_tool_prompt(specs), trusted=True)


@dataclass(frozen=True)
class ChatTurn:
    """One message of a history a caller replays (LangChain, an OpenAI client): ``calls`` are the
    assistant's tool calls as (name, arguments)."""

    role: str  # system | user | assistant | tool
    text: str
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    is_error: bool = False


def render_turns(
    tok: Any, turns: Sequence[ChatTurn], specs: list[dict[str, Any]], *, first: bool, system_prompt: str,
    allows: Callable[[str], bool] = lambda text: True,
) -> list[tuple[list[int], bool]]:
    """Token segments ``(ids, consolidate)`` for messages a caller sends, ending with the
    generation prompt. ``first``: nothing was read yet, so the system turn (the caller's, else
    ``system_prompt``) carries the tool list. ``allows(text)``: whether a turn may be consolidated
    (the memory policy's never-consolidate patterns)."""
    out: list[tuple[list[int], bool]] = []
    if first and not any(t.role == "system" for t in turns):
        out.append((render_system_turn(tok, system_prompt, specs), True))
    for t in turns:
        if t.role == "system":
            out.append((render_system_turn(tok, t.text, specs if first else []), allows(t.text)))
        elif t.role == "user":
            out.append((tok.render_turn("user", t.text), allows(t.text)))
        elif t.role == "assistant":
            body = t.text + "".join(render_tool_call(name, args) for name, args in t.calls)
            out.append((tok.generation_prompt() + tok.encode(body) + tok.close_turn(), allows(body)))
        elif t.role == "tool":
            result = ToolResult(call_id="", name="", content=t.text, is_error=t.is_error)
            out.append((tok.render_tool_result(render_tool_response(result)), allows(t.text)))
        else:
            raise ConfigError(f"unsupported message role {t.role!r}")
    out.append((tok.generation_prompt(), True))
    return out


def render_tool_prompt(tools: ToolRegistry | list[dict[str, Any]]) -> str:
    """The tool list appended to the system prompt: one compact line per tool.

    ``tools``: a registry, or OpenAI-format tool specs. Byte-level models pay for every
    character of context, so the full JSON schemas (which the runtime still uses to validate
    arguments) are summarised as ``name(arg: type): summary``.
    """
    specs = tools.specs() if isinstance(tools, ToolRegistry) else list(tools)
    if not specs:
        return ""
    lines = []
    for spec in specs:
        fn = spec["function"]
        params = fn["parameters"].get("properties", {})
        args = ", ".join(f"{name}: {_type_name(p)}" for name, p in params.items())
        desc = fn.get("description", "").split(". ")[0].strip()
        lines.append(f"- {fn['name']}({args}): {desc}")
    return "\nTools (call as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>):\n" + "\n".join(lines)


def _type_name(schema: dict[str, Any]) -> str:
    if "type" in schema:
        return str(schema["type"])
    options = [o.get("type", "any") for o in schema.get("anyOf", [])]
    return "|".join(o for o in options if o != "null") + ("?" if "null" in options else "") if options else "any"


class AgentSession:
    """A conversation with one agent; its model state carries every turn (no re-prefill)."""

    def __init__(
        self, agent: Agent, engine_session: EngineSession, *, tenant: str = "default", persisted: bool = False,
        resume: ResumeInfo | None = None,
    ) -> None:
        self.agent = agent
        self.engine_session = engine_session
        self.tenant = tenant
        self.persisted = persisted
        self.resume = resume  # how the session came back from the store (None: a new session)
        if persisted:
            engine_session.on_commit = self._persist
        self.history: list[Message] = []
        self.usage = Usage()
        self._lock = anyio.Lock()
        self._emit: Callable[[Event], None] | None = None
        self._token = None
        self._rng = torch.Generator().manual_seed(agent.seed)
        engine_session.on_event = self._on_engine_event
        self.closed = False

    @property
    def id(self) -> str:
        return self.engine_session.id

    @property
    def stats(self) -> SleepStats:
        return self.engine_session.stats

    async def __aenter__(self) -> AgentSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """End the session. Persistent sessions save their state first (consolidating the window
        unless ``persist_window``); ``session`` retention and ``erase_on_close`` erase it."""
        if self.closed:
            return
        engine, es, memory = self.agent.engine, self.engine_session, self.agent.memory
        try:
            if self.persisted:
                await engine.wait_idle(es)
                if memory.retention == "persistent" and not memory.erase_on_close:
                    if memory.persist_window:
                        await engine.call(es, lambda _state: self._persist(es))
                    elif es.state.window_len:
                        await engine.consolidate(es)  # persisted by the commit hook
                if memory.retention == "session" or memory.erase_on_close:
                    await engine.call(es, lambda _state: None)  # let queued work finish first
                    self.agent.store.erase(self.id, tenant=self.tenant)
        finally:
            self.closed = True
            engine.close_session(es)

    def _persist(self, es: EngineSession) -> None:
        """Write a snapshot of the session (runs on the engine worker, right after a commit)."""
        payload, meta = snapshot(self.agent.model, es, self.agent.memory)
        self.agent.store.save(self.id, payload, tenant=self.tenant, loops=es.policy.loops, meta=meta)

    def run_stream(self, message: str | Message, **kw: Any) -> AgentRun:
        return AgentRun(self.agent, message, self, kw)

    async def run(
        self,
        message: str | Message,
        *,
        usage_limits: UsageLimits | None = None,
        tool_timeout: float | None = None,
    ) -> RunResult:
        """One user message to a final answer."""
        if self.closed:
            raise SleepAgentError(f"session {self.id} is closed")
        _check_message(message)
        if usage_limits is not None and not isinstance(usage_limits, UsageLimits):
            raise ConfigError(f"usage_limits must be a UsageLimits, got {type(usage_limits).__name__}", field="usage_limits")
        async with self._lock:
            if self.persisted and self.agent.memory.retention == "session":
                self.agent.store.touch(self.id, tenant=self.tenant)  # renew the lease: still alive
            return await self._run(message, usage_limits or self.agent.usage_limits, tool_timeout)

    # --- the loop -------------------------------------------------------------------------------

    async def _run(self, message: str | Message, limits: UsageLimits, tool_timeout: float | None) -> RunResult:
        agent, engine, es = self.agent, self.agent.engine, self.engine_session
        tok = agent.model.tokenizer
        msg = message if isinstance(message, Message) else Message("user", message)
        if msg.role != "user":
            raise ConfigError(f"a run starts with a user message, got role {msg.role!r}")
        if len(msg.content) > agent.max_input_chars:
            raise InputTooLarge(
                f"the message has {len(msg.content):,} characters; this agent accepts at most "
                f"{agent.max_input_chars:,} (Agent(max_input_chars=...))",
                tokens=len(msg.content), limit=agent.max_input_chars,
            )
        msg.consolidate = msg.consolidate and agent.memory.allows_consolidation(msg.content)
        usage = Usage()
        run_messages: list[Message] = [msg]
        stats_before = es.stats.copy()
        timeout = tool_timeout if tool_timeout is not None else agent.tool_timeout
        self._limits, self._run_messages = limits, run_messages
        try:
            if not es.meta.get("system_read"):
                self._read(render_system_turn(tok, agent.system_prompt, agent.tools.specs()), True, usage)
                es.meta["system_read"] = True
            self._read(tok.render_turn("user", msg.content), msg.consolidate, usage)
            self._read(tok.generation_prompt(), True, usage)
            output = ""
            for step in range(agent.max_steps + 1):
                if step == agent.max_steps:
                    raise UsageLimitExceeded(
                        f"the run needed more than max_steps={agent.max_steps} model requests",
                        messages=list(run_messages),
                    )
                limits.check_before_request(usage, run_messages)
                logits = await engine.flush(es)
                limits.check_tokens(usage, run_messages)
                usage.requests += 1
                text = await self._generate(logits, usage, step, run_messages)
                limits.check_tokens(usage, run_messages)
                prose, calls = split_text_and_calls(text)
                reply = Message("assistant", text, tool_calls=list(calls))
                run_messages.append(reply)
                if not calls:
                    output = prose.strip()
                    break
                limits.check_tool_calls(usage, len(calls), run_messages)
                usage.tool_calls += len(calls)
                for call in calls:
                    self._post(ToolCallEvent("tool_call", call=call))
                engine.pause(es)  # the model waits for its tools: sleep now, off the hot path
                results = [_bounded(r, agent.max_tool_output_chars) for r in await self._execute(calls, timeout)]
                for result in results:
                    allowed = agent.memory.allows_consolidation(result.content)
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
        result = RunResult(
            output=output, messages=run_messages, usage=usage, sleep=es.stats.since(stats_before), session_id=self.id
        )
        self._post(FinalEvent("final", result=result))
        return result

    def _read(self, ids: list[int], consolidate: bool, usage: Usage, check: bool = True) -> None:
        """Queue tokens for the model; they are read by the next flush (cancel-safe). The run's
        input-token limits are checked first: a message over the limit is refused unread."""
        limits = getattr(self, "_limits", None)
        if check and limits is not None:
            limits.check_input(usage, len(ids), self._run_messages)
        self.agent.engine.append(self.engine_session, ids, consolidate)
        usage.input_tokens += len(ids)

    async def _generate(self, logits: torch.Tensor, usage: Usage, step: int, run_messages: list[Message]) -> str:
        """One assistant turn; every emitted token is fed through the model (a real decode step).

        The closing ``<|end|>`` is left pending: it is read with the next prefill.
        """
        agent, tok = self.agent, self.agent.model.tokenizer
        stop = {tok.end_id, tok.eos_id}
        emitted: list[int] = []
        # a call names a registered tool (the model chooses, among the names that exist)
        constraint = ToolCallConstraint.for_tokenizer(tok, list(agent.tools))
        # with never-consolidate patterns, the reply is held out of the fast weights until it is
        # known not to repeat a match (it is released below, where still in the window)
        provisional = bool(agent.memory.never_consolidate)
        es = self.engine_session
        start = es.state.tokens_seen
        clean = not provisional
        text = ""
        if agent.scripted is not None:
            info = TurnInfo(self.id, step, agent.tools.specs(), self.stats)
            text = await agent.scripted.respond(self.history + run_messages, info)
            script = tok.encode(text)[: agent.max_tokens]
        else:
            script = None
        try:
            for i in range(agent.max_tokens):
                if script is not None:
                    if i >= len(script):
                        break
                    nxt = script[i]
                else:
                    nxt = self._sample(constraint.apply(logits, emitted) if constraint else logits)
                    if nxt in stop:
                        break
                logits = await agent.engine.decode(es, nxt, consolidate=not provisional)
                emitted.append(nxt)
                usage.output_tokens += 1
                self._post(TokenEvent("token", text=tok.decode([nxt])))
            text = tok.decode(emitted)
            if provisional and agent.memory.allows_consolidation(text):
                await agent.engine.set_consolidate(es, start, start + len(emitted))
                clean = True
        finally:
            # close the turn, even when cancelled; read with the next flush (a reply that matched
            # a never-consolidate pattern, or was cut off before it could be checked, stays out)
            self._read(tok.close_turn(), clean, usage, check=False)
        return text

    def _sample(self, logits: torch.Tensor) -> int:
        if self.agent.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / self.agent.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._rng))

    async def _execute(self, calls: Sequence[ToolCall | MalformedToolCall], timeout: float | None) -> list[ToolResult]:
        """Run the turn's tool calls concurrently; results keep the calls' order."""
        results: list[ToolResult | None] = [None] * len(calls)

        async def one(i: int, call: ToolCall | MalformedToolCall) -> None:
            results[i] = await self.agent.tools.execute(call, timeout=timeout)

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
        try:
            token.backend_class.run_sync_soon(emit, (SleepEvent(kind, data=dict(data)),), token.native_token)
        except Exception:
            pass


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
        self._tg = None

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
        try:
            self._send.send_nowait(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.WouldBlock):
            pass  # the consumer is gone (or far behind); events are advisory

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

    async def __aexit__(self, *exc: object) -> None:
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
    from .testing import FunctionModel

    model = values["model"]
    if not (model is None or isinstance(model, (SleepModel, FunctionModel, str, os.PathLike))):
        raise ConfigError(f"model must be a SleepModel, a checkpoint name or path, or a FunctionModel; got "
                          f"{type(model).__name__}", field="model")
    expected = {"sleep": SleepPolicy, "memory": MemoryPolicy, "usage_limits": UsageLimits, "engine": Engine,
                "system_prompt": str}
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
        raise ConfigError(f"the message is not valid Unicode text ({e.reason} at position {e.start})", field="task") from None


def _open_store(store: Any) -> Any:
    """A SnapshotStore, or a database URL for one (``sqlite:///path.db``, ``postgresql+psycopg://...``)."""
    if store is None or isinstance(store, str):
        if store is None:
            return None
        from .storage import SnapshotStore

        return SnapshotStore(store)
    from .storage import SnapshotStore

    if not isinstance(store, SnapshotStore):
        raise ConfigError(f"store must be a SnapshotStore or a database URL, got {type(store).__name__}", field="store")
    return store


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


def snapshot(model: SleepModel, es: EngineSession, memory: MemoryPolicy) -> tuple[bytes, dict[str, Any]]:
    """A session's snapshot: (payload, metadata) for :meth:`SnapshotStore.save`.

    It holds the committed fast weights and, with ``persist_window``, the window's ids minus
    never-consolidate turns; no message text in any other form. Input queued but not read yet is
    not stored: only the count (and which structural tokens, like the assistant turn's closing
    token, were queued, so a resume closes the turn as the live session would). The metadata
    says what the snapshot could not hold (``lost``), and carries ``es.meta`` (flags and counts)."""
    state = es.state
    view = state.for_snapshot(keep_window=memory.persist_window)
    tok = model.tokenizer
    markers = {tuple(tok.close_turn()): "close_turn", tuple(tok.generation_prompt()): "generation_prompt"}
    queued, unread = [], 0
    for ids, _ in es.unread():
        marker = markers.get(tuple(ids))
        if marker is not None and not unread:
            queued.append(marker)
        else:
            unread += len(ids)
    dropped = state.window_len - view.window_len
    lost = {"window": 0 if memory.persist_window else dropped,
            "never_consolidate": dropped if memory.persist_window else 0, "unread": unread}
    dtype = torch.bfloat16 if memory.snapshot_dtype == "bfloat16" else None
    return view.to_bytes(model.fingerprint, dtype), {"queued": queued, "lost": lost, "session": dict(es.meta)}


def restore(model: SleepModel, store: Any, es: EngineSession, *, tenant: str) -> ResumeInfo | None:
    """Load a session's newest intact snapshot into ``es`` (state, queued structural tokens,
    ``es.meta``); returns what was restored and lost, or None when there is nothing to resume."""

    def decode(payload: bytes) -> Any:  # decodable and this model's, else try an older one
        try:
            return model.state_from_bytes(payload)
        except FingerprintMismatch:
            raise
        except (SleepAgentError, ValueError, RuntimeError) as e:
            raise SnapshotCorrupted(f"unusable state: {e}") from None

    restored = store.restore_point(es.id, tenant=tenant, fingerprint=model.fingerprint, accept=decode)
    if restored is None:
        return None
    snap = restored.info
    es.state = restored.accepted
    tok = model.tokenizer
    # the snapshot holds no text: only which structural tokens were still queued
    markers = {"close_turn": tok.close_turn(), "generation_prompt": tok.generation_prompt()}
    es.pending = [(list(markers[m]), True) for m in snap.meta.get("queued", []) if m in markers]
    es.pending_offset = 0
    es.meta = dict(snap.meta.get("session", {}))
    return ResumeInfo(snapshot_id=snap.id, skipped=list(restored.skipped), window_tokens=es.state.window_len,
                      lost=dict(snap.meta.get("lost", {})))
