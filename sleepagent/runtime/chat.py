"""Chat completion over the runtime: a client's history in, one assistant reply out.

The HTTP server and the LangChain wrapper are thin doors over :class:`ChatRuntime`: they turn
their protocol's request into :class:`~sleepagent.runtime.render.ChatTurn` messages, tool specs
and :class:`~sleepagent.runtime.generate.GenerationParams`, and turn the :class:`Reply` back into
their protocol. Everything about a turn happens here: which session the history continues
(:class:`~sleepagent.runtime.sessions.SessionTable`), what it still has to read, the memory
policy on every message, the one token loop, usage, and the pause that lets the session sleep
while the client runs its tools or its user reads.

A request is prepared first (:meth:`ChatRuntime.prepare`: everything that can fail before a reply
is written, so that it fails with its own error, streaming or not) and then run
(:meth:`ChatRuntime.run`), one request at a time per session.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..engine import Engine
from ..errors import ConfigError, InputTooLarge, RequestError, SessionConflict
from ..policy import MemoryPolicy, SleepPolicy
from ..tools import MalformedToolCall, ToolCall, split_text_and_calls
from ..tracing import bind_sleeps, chat_span, set_usage
from .constraints import turn_constraint
from .generate import CallDelta, Constraint, GenerationParams, Sampler, TurnText, generate_turn
from .persistence import Persistence, ResumeInfo, SessionStore
from .render import DEFAULT_SYSTEM_PROMPT, ChatTurn, render_turns
from .sessions import ChatSession, SessionTable

__all__ = ["ChatRuntime", "PreparedTurn", "Reply", "check_history"]


@dataclass
class PreparedTurn:
    """A validated request, ready to run in its session."""

    session: ChatSession
    new: list[ChatTurn]
    status: str  # "new" | "reused" | "resumed" | "forked"
    segments: list[tuple[list[int], bool]]
    new_tokens: int
    params: GenerationParams
    constraint: Constraint | None
    read_before: int
    # the caller's trace (:func:`sleepagent.tracing.extract_context` of a server's request): the
    # turn's span continues it, as the request's SERVER span; None: the current context, CLIENT
    trace_context: Any = None


@dataclass
class Reply:
    """One assistant reply and what it cost.

    ``prompt_tokens`` counts every token of the request's history, the part the session already
    held (``cached_tokens``) included, as OpenAI counts them; the session read only the rest.
    """

    turn: TurnText
    calls: list[ToolCall]
    malformed: list[MalformedToolCall]
    prompt_tokens: int
    cached_tokens: int
    session: ChatSession
    status: str
    resume: ResumeInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> str:
        return self.turn.content

    @property
    def completion_tokens(self) -> int:
        return self.turn.tokens

    @property
    def finish(self) -> str:
        return "tool_calls" if self.calls else self.turn.finish


def check_history(turns: list[ChatTurn]) -> None:
    """Refuse a history no conversation can have (:class:`RequestError`, ``param="messages"``):
    a tool message answers a call of the assistant message before it (the nearest message that is
    not itself a tool result), by its id when both sides carry ids (OpenAI's rule; a door whose
    messages carry no ids is matched by position)."""
    calls: tuple[tuple[str, Any], ...] = ()
    ids: set[str] = set()
    for i, t in enumerate(turns):
        if t.role == "assistant":
            calls, ids = t.calls, {c for c in t.call_ids if c}
        elif t.role == "tool":
            if not calls:
                raise RequestError(f"messages[{i}]: a tool message must answer a tool call of the assistant message "
                                   f"before it, and there is none", param="messages")
            if t.call_id and ids and t.call_id not in ids:
                raise RequestError(f"messages[{i}]: tool_call_id {t.call_id!r} answers no tool call of the assistant "
                                   f"message before it", param="messages")
        else:
            calls, ids = (), set()


class ChatRuntime:
    """One engine's conversations: sessions, persistence, rendering and the token loop.

    ``max_prompt_tokens``: the most new tokens one request may read (None: no cap).
    ``checkpoint_turns``: snapshot after every reply (so that another engine sharing the store can
    take a session over mid-way, and a retried or edited request forks from the reply before it).
    ``key``: the transcript digests' key (see :class:`~sleepagent.runtime.sessions.SessionTable`)."""

    def __init__(self, engine: Engine, *, store: SessionStore | None = None, memory: MemoryPolicy | None = None,
                 sleep: SleepPolicy | None = None, idle_release_s: float = 300.0, max_sessions: int | None = 1024,
                 system_prompt: str | None = None, max_prompt_tokens: int | None = None,
                 checkpoint_turns: bool = False, claimant: str | None = None, key: bytes | None = None) -> None:
        self.engine = engine
        self.model = engine.model
        self.memory = memory or MemoryPolicy(retention="persistent" if store is not None else "ephemeral")
        self.persistence = Persistence(engine, store, self.memory)
        self.sessions = SessionTable(engine, self.persistence, sleep=sleep, idle_release_s=idle_release_s,
                                     max_sessions=max_sessions, claimant=claimant, key=key)
        self.system_prompt = system_prompt or self.model.prompt.system_prompt or DEFAULT_SYSTEM_PROMPT
        self.max_prompt_tokens = max_prompt_tokens
        self.checkpoint_turns = checkpoint_turns

    @property
    def gate(self) -> Callable[[str], bool] | None:
        """The memory policy's check on a turn's whole text, or None when it excludes nothing."""
        return self.memory.allows_consolidation if self.memory.screens_text else None

    # --- one request ---------------------------------------------------------------------------

    async def prepare(self, tenant: str, turns: list[ChatTurn], *, tools: list[dict[str, Any]],
                      params: GenerationParams, session_id: str | None = None,
                      create: bool = False) -> PreparedTurn:
        """Find the history's session and render what it still has to read; raises (typed, from
        :mod:`sleepagent.errors`) whatever makes the request unservable."""
        check_history(turns)
        if params.tool_choice != "none" and params.tool_choice != "auto" and not tools:
            raise RequestError(f"tool_choice {params.tool_choice!r} needs tools, and the request has none",
                               param="tool_choice")
        s, new, status = await self.sessions.find(tenant, turns, session_id, create=create)
        try:
            if not new:
                raise RequestError("the request has no message the session has not read", param="messages")
            tok = self.model.tokenizer
            segments = render_turns(tok, new, tools, first=not s.meta.system_read, system_prompt=self.system_prompt,
                                    allows=self.memory.allows_consolidation)
            n_new = sum(len(ids) for ids, _ in segments)
            if self.max_prompt_tokens is not None and n_new > self.max_prompt_tokens:
                raise InputTooLarge(f"the request's new messages are {n_new} tokens; this server reads at most "
                                    f"{self.max_prompt_tokens} per request", tokens=n_new, limit=self.max_prompt_tokens)
            constraint = self.constraint(tools, params)
            return PreparedTurn(s, new, status, segments, n_new, params, constraint, s.messages_read)
        except BaseException:
            s.reserved_until = 0.0  # the request failed before it ran: the session is free again
            raise

    def constraint(self, tools: list[dict[str, Any]], params: GenerationParams) -> Constraint | None:
        """The reply's constraint: calls name a tool and their arguments are valid (always for a
        tool marked ``strict``, where the schema allows for the others), and a requested JSON
        answer (``params.output_schema``) is valid; a schema that cannot be enforced, or a budget
        that cannot hold the answer, is a :class:`RequestError` naming the request's part."""
        strict = [t["function"]["name"] for t in tools if t.get("function", {}).get("strict")]
        try:
            return turn_constraint(self.model.tokenizer, tools, params.tool_choice, max_tokens=params.max_tokens,
                                   output=params.output_schema, strict=strict)
        except ConfigError as e:
            param = {"output": "response_format", "tools": "tools", "max_tokens": "max_tokens",
                     "tool_choice": "tool_choice"}.get(e.field or "")
            raise RequestError(str(e), param=param) from None

    async def run(self, job: PreparedTurn, *, on_text: Callable[[str], None] | None = None,
                  on_token: Callable[[str], None] | None = None,
                  on_call: Callable[[CallDelta], None] | None = None) -> Reply:
        """Read the job's messages into its session and write one reply (``on_text``, ``on_token``,
        ``on_call``: as it is written, see :func:`~sleepagent.runtime.generate.generate_turn`)."""
        s = job.session
        async with s.gate:
            s.busy = True
            try:
                if s.messages_read != job.read_before or s.dirty or s.leaving:
                    raise SessionConflict(f"session {s.id!r} changed while this request waited; resend it")
                return await self._reply(job, on_text, on_token, on_call)
            finally:
                s.busy = False
                s.reserved_until = 0.0
                s.last_used = time.monotonic()

    async def reply(self, tenant: str, turns: list[ChatTurn], *, tools: list[dict[str, Any]],
                    params: GenerationParams, session_id: str | None = None, create: bool = False,
                    on_text: Callable[[str], None] | None = None,
                    on_token: Callable[[str], None] | None = None,
                    on_call: Callable[[CallDelta], None] | None = None) -> Reply:
        """:meth:`prepare` then :meth:`run`."""
        job = await self.prepare(tenant, turns, tools=tools, params=params, session_id=session_id, create=create)
        return await self.run(job, on_text=on_text, on_token=on_token, on_call=on_call)

    async def _reply(self, job: PreparedTurn, on_text, on_token, on_call=None) -> Reply:
        p = job.params
        with chat_span(self.model.name, session_id=job.session.id, max_tokens=p.max_tokens, temperature=p.temperature,
                       seed=p.seed, output_type="json" if p.output_schema is not None else "text",
                       parent=job.trace_context, server=job.trace_context is not None) as span:
            bind_sleeps(job.session.engine_session, span)  # the sleep after this reply belongs to it
            reply = await self._write(job, on_text, on_token, on_call)
            set_usage(span, input_tokens=reply.prompt_tokens, output_tokens=reply.completion_tokens,
                      finish=reply.finish, **{"gen_ai.usage.cache_read.input_tokens": reply.cached_tokens})
        return reply

    async def _write(self, job: PreparedTurn, on_text, on_token, on_call=None) -> Reply:
        s, engine = job.session, self.engine
        es = s.engine_session
        cached = es.state.tokens_seen + sum(len(ids) for ids, _ in es.unread())
        for ids, flag in job.segments:
            engine.append(es, ids, flag)
        s.meta.system_read = True
        try:
            logits = await engine.flush(es)
        except BaseException:
            s.dirty = True  # cancelled (the client left) or failed mid-read: the next request starts over
            raise
        self.sessions.record(s, job.new)
        params = job.params
        picker = Sampler(params.temperature, torch.Generator().manual_seed(params.seed), job.constraint)
        try:
            turn = await generate_turn(engine, es, logits, picker=picker, max_tokens=params.max_tokens,
                                       stop=params.stop, gate=self.gate, on_token=on_token, on_text=on_text,
                                       on_call=on_call)
        except BaseException:
            s.dirty = True
            raise
        _, parsed = split_text_and_calls(turn.text)
        calls = [c for c in parsed if isinstance(c, ToolCall)]
        malformed = [c for c in parsed if isinstance(c, MalformedToolCall)]
        self.sessions.record(s, [ChatTurn("assistant", turn.content, tuple((c.name, c.arguments) for c in calls))])
        if self.checkpoint_turns:  # before the sleep starts: another engine may take over, or a retry fork
            await self.persistence.checkpoint(es, s.tenant, replace(s.meta, paused=True))
            self.sessions.snapshotted(s)
        engine.pause(es)  # the client runs its tools, or the user reads: sleep now
        return Reply(turn=turn, calls=calls, malformed=malformed, prompt_tokens=cached + job.new_tokens,
                     cached_tokens=cached, session=s, status=job.status,
                     resume=s.resume if job.status in ("resumed", "forked") else None)

    # --- sessions ------------------------------------------------------------------------------

    async def release_idle(self) -> int:
        return await self.sessions.release_idle()

    async def close(self) -> None:
        await self.sessions.close_all()
