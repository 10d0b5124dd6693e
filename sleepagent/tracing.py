"""OpenTelemetry spans for runs, model turns, tool calls and sleeps (the GenAI semantic conventions).

sleepagent writes spans through the ``opentelemetry-api`` package only; what happens to them is the
application's choice of SDK and exporter (none configured: the API's no-op tracer, nearly free)::

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)          # or pass it: tracing.set_tracer_provider(provider)

The spans, named and attributed as the OpenTelemetry GenAI conventions say
(https://opentelemetry.io/docs/specs/semconv/gen-ai/):

- ``invoke_agent {agent}``: one :meth:`Agent.run <sleepagent.Agent.run>`; run totals in
  ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens``;
- ``chat {model}``: one model turn (the request's new tokens read, then the reply written), from
  the Agent, the HTTP server or LangChain; ``gen_ai.usage.*`` for that turn,
  ``gen_ai.response.finish_reasons``;
- ``execute_tool {tool}``: one tool call, ``gen_ai.tool.name`` / ``gen_ai.tool.call.id``,
  ``error.type`` when it failed;
- ``sleep``: one consolidation (not a GenAI operation; attributes under ``sleepagent.sleep.``):
  ``loops`` (N), ``reason``, ``passes``, ``committed``, ``tokens``, ``hidden_s``, ``exposed_s``.

Sleeps run on the engine's worker thread, where no caller's context is current, so the engine
reports them here (:func:`engine_event`) and each one becomes a child of the span its session was
last bound to (:func:`bind_sleeps`): the Agent binds a session to its run's span, the server to the
request's turn. A sleep that starts after that span ended (the pause after a reply) still belongs
to it: a span may outlive its parent's end, and the trace shows the sleep where it happened.

A server propagates the caller's trace: :func:`extract_context` reads W3C ``traceparent`` (through the
globally configured propagator) and the turn's span continues that trace.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = [
    "PROVIDER",
    "agent_span",
    "bind_sleeps",
    "chat_span",
    "engine_event",
    "extract_context",
    "mark_failed",
    "set_tracer_provider",
    "set_usage",
    "tool_span",
]

PROVIDER = "sleepagent"
"""``gen_ai.provider.name`` of every span: the runtime that serves the model."""

_lock = threading.Lock()
_state: dict[str, Any] = {"provider": None, "tracer": None, "otel": None}
# EngineSession -> the context its sleeps are children of; EngineSession -> the open sleep span
_parents: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_sleeps: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _otel() -> Any:
    """``opentelemetry.trace`` (imported on first use: it costs ~50 ms), or None when the API is
    not installed (then nothing is traced)."""
    otel = _state["otel"]
    if otel is None:
        try:
            from opentelemetry import trace as otel
        except ImportError:  # a core dependency; only a trimmed install lands here
            otel = False
        _state["otel"] = otel
    return otel or None


def set_tracer_provider(provider: Any = None) -> None:
    """Use ``provider`` for sleepagent's spans instead of the global one (None: back to global),
    e.g. a test's own ``TracerProvider`` without touching the process-wide setting."""
    with _lock:
        _state["provider"], _state["tracer"] = provider, None


def _tracer() -> Any:
    otel = _otel()
    if otel is None:
        return None
    tracer = _state["tracer"]
    if tracer is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("sleepagent")
        except PackageNotFoundError:
            v = None
        tracer = otel.get_tracer("sleepagent", v, tracer_provider=_state["provider"])
        # the global provider may be set later (a proxy follows it); a given one is fixed
        _state["tracer"] = tracer
    return tracer


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes without the unset ones (OpenTelemetry takes no None)."""
    return {k: v for k, v in attributes.items() if v is not None}


@contextmanager
def _span(name: str, attributes: Mapping[str, Any], *, kind: str = "INTERNAL", parent: Any = None) -> Iterator[Any]:
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    otel = _otel()
    with tracer.start_as_current_span(name, context=parent, kind=getattr(otel.SpanKind, kind),
                                      attributes=_clean(attributes)) as span:
        yield span


@contextmanager
def agent_span(agent: str, *, model: str, session_id: str, output_type: str = "text") -> Iterator[Any]:
    """``invoke_agent {agent}``: one run, current while it runs (turns and tool calls nest)."""
    with _span(f"invoke_agent {agent}", {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": PROVIDER, "gen_ai.agent.name": agent,
        "gen_ai.request.model": model, "gen_ai.conversation.id": session_id, "gen_ai.output.type": output_type,
    }) as span:
        yield span


@contextmanager
def chat_span(model: str, *, session_id: str, max_tokens: int | None = None, temperature: float | None = None,
              seed: int | None = None, output_type: str = "text", parent: Any = None,
              server: bool = False) -> Iterator[Any]:
    """``chat {model}``: one model turn. ``parent``: a context (:func:`extract_context`) instead of the
    current one; ``server``: the span serves a request (kind SERVER) rather than calls the model
    (CLIENT)."""
    with _span(f"chat {model}", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": model,
        "gen_ai.conversation.id": session_id, "gen_ai.request.max_tokens": max_tokens,
        "gen_ai.request.temperature": temperature, "gen_ai.request.seed": seed, "gen_ai.output.type": output_type,
    }, kind="SERVER" if server else "CLIENT", parent=parent) as span:
        yield span


@contextmanager
def tool_span(name: str, *, call_id: str | None, tool_type: str = "function") -> Iterator[Any]:
    """``execute_tool {name}``: one tool call (``tool_type``: "function", or "extension" for a tool
    a remote server runs, such as an MCP tool)."""
    with _span(f"execute_tool {name}", {
        "gen_ai.operation.name": "execute_tool", "gen_ai.provider.name": PROVIDER, "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id, "gen_ai.tool.type": tool_type,
    }) as span:
        yield span


def set_usage(span: Any, *, input_tokens: int, output_tokens: int, finish: str | None = None,
              **extra: Any) -> None:
    """Record a turn's or a run's tokens (and finish reason, and any other attributes) on ``span``."""
    if span is None:
        return
    span.set_attributes(_clean({"gen_ai.usage.input_tokens": int(input_tokens),
                                "gen_ai.usage.output_tokens": int(output_tokens), **extra}))
    if finish is not None:
        span.set_attribute("gen_ai.response.finish_reasons", [finish])


def mark_failed(span: Any, error_type: str, message: str = "") -> None:
    """Mark ``span`` failed with ``error.type`` (a failure reported as a result, not raised)."""
    if span is None:
        return
    otel = _otel()
    span.set_attribute("error.type", error_type)
    span.set_status(otel.Status(otel.StatusCode.ERROR, message or error_type))


def bind_sleeps(session: Any, span: Any = None) -> None:
    """Make ``span`` (default: the current span) the parent of ``session``'s sleeps (``session``:
    an :class:`~sleepagent.engine.EngineSession`)."""
    otel = _otel()
    if otel is None:
        return
    span = span if span is not None else otel.get_current_span()
    with _lock:
        _parents[session] = otel.set_span_in_context(span)


def extract_context(headers: Mapping[str, str]) -> Any:
    """The trace context a request carries (W3C ``traceparent``/``tracestate``, or whatever the
    globally configured propagator reads); None without the API or when the request has none."""
    if _otel() is None:
        return None
    from opentelemetry import propagate

    carrier = {k.lower(): v for k, v in headers.items()}
    return propagate.extract(carrier)


def engine_event(session: Any, kind: str, data: Mapping[str, Any]) -> None:
    """The engine's sleep events as ``sleep`` spans (called on its worker thread; never raises)."""
    if kind not in ("sleep_started", "sleep_finished", "sleep_failed"):
        return
    tracer = _tracer()
    if tracer is None:
        return
    try:
        if kind == "sleep_started":
            with _lock:
                parent = _parents.get(session)
            span = tracer.start_span("sleep", context=parent, attributes=_clean({
                "sleepagent.sleep.loops": data.get("loops"), "sleepagent.sleep.reason": data.get("reason"),
                "gen_ai.provider.name": PROVIDER, "gen_ai.conversation.id": getattr(session, "id", None)}))
            with _lock:
                old, _sleeps[session] = _sleeps.get(session), span
            if old is not None:  # a sleep that never reported its end
                old.end()
            return
        with _lock:
            span = _sleeps.pop(session, None)
        if span is None:
            return
        if kind == "sleep_failed":
            mark_failed(span, "sleep_failed", str(data.get("error", "")))
        else:
            span.set_attributes(_clean({
                "sleepagent.sleep.passes": data.get("passes"), "sleepagent.sleep.committed": data.get("committed"),
                "sleepagent.sleep.tokens": data.get("tokens"), "sleepagent.sleep.hidden_s": data.get("hidden_s"),
                "sleepagent.sleep.exposed_s": data.get("exposed_s"), "sleepagent.sleep.seconds": data.get("sleep_s"),
            }))
        span.end()
    except Exception:  # tracing must never take the engine's worker down
        pass
