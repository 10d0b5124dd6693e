"""ChatSleepModel: a LangChain chat model over a sleep-enabled hybrid.

A thin door over the runtime core (:class:`~sleepagent.runtime.ChatRuntime`): LangChain messages
become the runtime's turns, the call's settings its generation parameters, and its reply an
``AIMessage``. LangChain sends the whole history on every call; the model's state already holds
what it has read. Each session (``config["configurable"]["session_id"]``; default: a fresh
ephemeral session per call) reads only the messages it has not read, and is rebuilt (with a
warning) when the history no longer starts with what it holds. Between calls the session's
window is consolidated in the background, exactly as in :class:`~sleepagent.Agent`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import nullcontext
from contextvars import ContextVar, copy_context
from typing import Any

import anyio
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    UsageMetadata,
)
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from .engine import Engine
from .errors import ConfigError
from .model import SleepModel
from .policy import SleepPolicy
from .runtime import ChatRuntime, ChatTurn, GenerationParams, Reply, normalize_tool_choice, visible_text
from .tools import MalformedToolCall, split_text_and_calls

__all__ = ["ChatSleepModel"]

logger = logging.getLogger(__name__)

# The RunnableConfig of the current call: LangChain does not hand it to _generate, and the
# session id lives in config["configurable"]["session_id"].
_CALL_CONFIG: ContextVar[RunnableConfig | None] = ContextVar("sleepagent_call_config", default=None)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


class ChatSleepModel(BaseChatModel):
    """LangChain chat model for sleepagent models.

    ``model`` is a shipped checkpoint name or a local directory (default: ``$SLEEPAGENT_MODEL``,
    else ``docqa-small``), or use :meth:`from_model` with a loaded :class:`SleepModel`. ``temperature``
    0 (default) decodes greedily. The standard
    parameters ``timeout``, ``stop``, ``max_retries`` and ``api_key`` are accepted; ``api_key``
    and ``max_retries`` have no meaning for a local model.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model: str = Field(
        default_factory=lambda: os.environ.get("SLEEPAGENT_MODEL", "docqa-small"), alias="model_name"
    )
    temperature: float | None = 0.0
    max_tokens: int | None = 256
    timeout: float | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    max_retries: int | None = None
    api_key: SecretStr | None = None
    streaming: bool = False
    loops: int = Field(default=4, ge=1, description="sleep passes N")
    system_prompt: str | None = None
    seed: int = 0

    _sleep_model: SleepModel | None = PrivateAttr(default=None)
    _engine: Engine | None = PrivateAttr(default=None)
    _runtime: ChatRuntime | None = PrivateAttr(default=None)
    _init_lock: Any = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_model(cls, sleep_model: SleepModel, **kwargs: Any) -> ChatSleepModel:
        chat = cls(model=kwargs.pop("model", sleep_model.name), **kwargs)  # type: ignore[call-arg]
        chat._sleep_model = sleep_model
        return chat

    @property
    def _llm_type(self) -> str:
        return "sleepagent"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "loops": self.loops, "temperature": self.temperature}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="sleepagent", ls_model_name=kwargs.get("model", self.model), ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        if max_tokens := kwargs.get("max_tokens", self.max_tokens):
            params["ls_max_tokens"] = max_tokens
        if stop := stop or kwargs.get("stop") or self.stop:
            params["ls_stop"] = stop
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools (LangChain tools, pydantic models, functions, OpenAI dicts) the model may call.

        ``tool_choice``: "auto" (default: the model decides), "none", "any"/"required" (the reply
        is a call), or a tool's name (a call of that tool), enforced by constrained decoding
        (:mod:`sleepagent.runtime.constraints`); every call names one of ``tools``.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        normalize_tool_choice(tool_choice, [t["function"]["name"] for t in formatted])  # fail early
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    # --- calls: remember the config for the session id ------------------------------------------

    def invoke(self, input: LanguageModelInput, config: Any = None, **kwargs: Any) -> AIMessage:
        token = _CALL_CONFIG.set(ensure_config(config))
        try:
            return super().invoke(input, config, **kwargs)
        finally:
            _CALL_CONFIG.reset(token)

    async def ainvoke(self, input: LanguageModelInput, config: Any = None, **kwargs: Any) -> AIMessage:
        token = _CALL_CONFIG.set(ensure_config(config))
        try:
            return await super().ainvoke(input, config, **kwargs)
        finally:
            _CALL_CONFIG.reset(token)

    def stream(self, input: LanguageModelInput, config: Any = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        _CALL_CONFIG.set(ensure_config(config))  # generators: set in this (copied) context
        yield from super().stream(input, config, **kwargs)

    async def astream(
        self, input: LanguageModelInput, config: Any = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        _CALL_CONFIG.set(ensure_config(config))
        async for chunk in super().astream(input, config, **kwargs):
            yield chunk

    # --- engine and sessions --------------------------------------------------------------------

    @property
    def sleep_model(self) -> SleepModel:
        with self._init_lock:
            if self._sleep_model is None:
                self._sleep_model = SleepModel.from_pretrained(self.model)
            return self._sleep_model

    @property
    def engine(self) -> Engine:
        with self._init_lock:
            if self._engine is None:
                sm = self._sleep_model
                if sm is None:
                    sm = self._sleep_model = SleepModel.from_pretrained(self.model)
                self._engine = Engine(sm)
            return self._engine

    @property
    def runtime(self) -> ChatRuntime:
        """The runtime core this chat model is a door over (its sessions live in memory)."""
        engine = self.engine
        with self._init_lock:
            if self._runtime is None:
                # the checkpoint's own system prompt (prompt.json) unless the caller set one
                self._runtime = ChatRuntime(engine, sleep=SleepPolicy(loops=self.loops), max_sessions=None,
                                            system_prompt=self.system_prompt)
            return self._runtime

    async def _respond(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
        on_text: Callable[[str], None] | None = None,
    ) -> Reply:
        """Read the messages the session has not read, and write one reply."""
        config = _CALL_CONFIG.get() or ensure_config()
        session_id = (config.get("configurable") or {}).get("session_id")
        runtime = self.runtime
        ephemeral = session_id is None
        sid = str(session_id) if session_id is not None else uuid.uuid4().hex
        before = runtime.sessions.live.get(("default", sid))
        read_before = before.messages_read if before is not None else 0
        tools = list(kwargs.get("tools") or [])
        names = [t["function"]["name"] for t in tools]
        params = GenerationParams(
            max_tokens=kwargs.get("max_tokens", self.max_tokens) or 256,
            temperature=kwargs.get("temperature", self.temperature) or 0.0, seed=self.seed,
            stop=tuple(stop or kwargs.get("stop") or self.stop or []),
            tool_choice=normalize_tool_choice(kwargs.get("tool_choice"), names),
        )
        turns = [_turn(m) for m in messages]
        job = await runtime.prepare("default", turns, tools=tools, params=params, session_id=sid, create=True)
        if job.status == "new" and read_before:
            logger.warning("session %s: the history differs from what the model read; rebuilding the session", sid)
        try:
            with anyio.fail_after(self.timeout) if self.timeout else nullcontext():
                return await runtime.run(job, on_text=on_text)
        finally:
            if ephemeral:
                runtime.sessions.discard(job.session)

    # --- LangChain entry points -----------------------------------------------------------------

    async def _agenerate(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:
        return self._result(await self._respond(messages, stop, kwargs))

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:
        return self._result(_run_in_new_loop(lambda: self._respond(messages, stop, kwargs)))

    def _result(self, reply: Reply) -> ChatResult:
        message = _ai_message(reply.turn.text)
        message.usage_metadata = _usage(reply)
        message.response_metadata = {"model_name": self.model, "model_provider": "sleepagent"}
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        send, recv = anyio.create_memory_object_stream[str](max_buffer_size=100_000)
        result: dict[str, Any] = {}

        async def produce() -> None:
            try:
                result["out"] = await self._respond(messages, stop, kwargs, on_text=send.send_nowait)
            finally:
                send.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            async with recv:
                async for piece in recv:
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                    if run_manager:
                        await run_manager.on_llm_new_token(piece, chunk=chunk)
                    yield chunk
        yield self._last_chunk(result["out"])

    def _stream(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        pieces: queue.Queue[Any] = queue.Queue()
        done = object()
        config = _CALL_CONFIG.get()
        abandoned = threading.Event()  # the caller stopped reading: the worker stops at its next token

        def on_token(text: str) -> None:
            if abandoned.is_set():
                raise _StreamAbandoned
            pieces.put(text)

        def worker() -> None:
            _CALL_CONFIG.set(config)
            try:
                out = _run_in_new_loop(lambda: self._respond(messages, stop, kwargs, on_text=on_token))
                pieces.put(("__result__", out))
            except BaseException as e:  # re-raised in the caller's thread
                pieces.put(("__error__", e))
            finally:
                pieces.put(done)

        thread = threading.Thread(target=worker, name="sleepagent-langchain-stream", daemon=True)
        thread.start()
        final = None
        try:
            while (item := pieces.get()) is not done:
                if isinstance(item, tuple) and item[0] == "__error__":
                    raise item[1]
                if isinstance(item, tuple) and item[0] == "__result__":
                    final = item[1]
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=item))
                if run_manager:
                    run_manager.on_llm_new_token(item, chunk=chunk)
                yield chunk
        finally:
            # A caller that stops early (break, an exception) must not leave the worker generating
            # on its own: a thread still inside torch when the interpreter exits aborts it.
            abandoned.set()
            thread.join()
        assert final is not None
        yield self._last_chunk(final)

    def _last_chunk(self, reply: Reply) -> ChatGenerationChunk:
        full = _ai_message(reply.turn.text)
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                tool_call_chunks=[
                    tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                    for i, c in enumerate(full.tool_calls)
                ],
                usage_metadata=_usage(reply),
                response_metadata={"model_name": self.model, "model_provider": "sleepagent"},
                chunk_position="last",
            )
        )


def _turn(m: BaseMessage) -> ChatTurn:
    """A LangChain message as the runtime renders it."""
    text = _text(m.content)
    if isinstance(m, SystemMessage):
        return ChatTurn("system", text)
    if isinstance(m, HumanMessage):
        return ChatTurn("user", text)
    if isinstance(m, AIMessage):
        return ChatTurn("assistant", text, tuple((c["name"], c["args"]) for c in m.tool_calls),
                        call_ids=tuple(c.get("id") for c in m.tool_calls))
    if isinstance(m, ToolMessage):
        return ChatTurn("tool", text, is_error=getattr(m, "status", "success") == "error", call_id=m.tool_call_id)
    raise ConfigError(f"unsupported message type {m.type!r}")


def _ai_message(text: str) -> AIMessage:
    """A reply's text as LangChain's message: the visible text (no call markup, as the server's
    ``content``), the calls, and the calls that could not be parsed."""
    _, calls = split_text_and_calls(text)
    good = [c for c in calls if not isinstance(c, MalformedToolCall)]
    bad = [c for c in calls if isinstance(c, MalformedToolCall)]
    return AIMessage(
        content=visible_text(text),
        tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in good],
        invalid_tool_calls=[
            {"type": "invalid_tool_call", "name": c.name, "args": c.raw, "id": None, "error": c.reason} for c in bad
        ],
    )


def _usage(reply: Reply) -> UsageMetadata:
    """LangChain's usage: input tokens count the whole history, the part the session already held
    (``cache_read``) included, as OpenAI's prompt tokens do."""
    n_in, n_out = reply.prompt_tokens, reply.completion_tokens
    return {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out,
            "input_token_details": {"cache_read": reply.cached_tokens}}


class _StreamAbandoned(Exception):
    """Raised inside a sync stream's worker when its caller stopped reading."""


def _run_in_new_loop(fn: Callable[[], Any]) -> Any:
    """Run a coroutine function to completion from sync code (LangChain's sync API), keeping the
    caller's context (the call config) visible inside."""
    ctx = copy_context()

    async def main() -> Any:
        for var, value in ctx.items():
            if var is _CALL_CONFIG:
                var.set(value)
        return await fn()

    return anyio.run(main)
