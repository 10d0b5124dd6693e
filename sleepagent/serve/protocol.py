"""The OpenAI chat-completions wire format, as the server reads and writes it.

Requests are validated with pydantic (unknown OpenAI parameters such as ``top_p`` or ``user`` are
accepted and ignored, as other OpenAI-compatible servers do); errors leave in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with the matching HTTP status.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

__all__ = ["ApiError", "ChatMessage", "ChatRequest", "ResponseFormat", "chat_openapi", "chat_response", "chunk",
           "text_of", "tool_call_chunk", "tool_calls_out", "usage"]


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``status`` (HTTP), ``type`` and ``code``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None  # True: the arguments follow ``parameters`` exactly (enforced by the grammar)


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the answer is one JSON value valid against ``schema``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(default="response", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | bool = Field(default=True, alias="schema")  # absent: any JSON value
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: "text" (free), "json_object" (a JSON object) or
    "json_schema" (a JSON value valid against ``json_schema.schema``); the answer is generated
    under that grammar, tool calls still allowed under ``tool_choice``."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer is generated under (None: free text)."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema" and self.json_schema is not None:
            schema = self.json_schema.schema_
            return schema if isinstance(schema, dict) else {}
        return None


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: FunctionSpec


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # a 64-bit integer, as OpenAI's
    # what a client may send (``_stops`` makes it a list): the JSON schema says so, not ``list[str]``
    stop: Annotated[list[str], WithJsonSchema({"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}, {"type": "null"}],
        "title": "Stop"})] = Field(default_factory=list)
    stream: bool = Field(default=False, strict=True)  # "yes" is no boolean (OpenAI refuses it too)
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: int = Field(default=1, ge=1, le=1)
    session_id: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, v: object) -> object:
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        if not isinstance(v, list):  # a ValueError: pydantic answers it as a 400 naming the field
            raise ValueError("stop must be a string or a list of strings")
        stops = v  # its items are checked as the field's type (list[str]) after this
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops


def chat_openapi() -> dict[str, Any]:
    """The request body of ``POST /v1/chat/completions`` for the OpenAPI document (FastAPI's
    ``openapi_extra``): the endpoint reads its raw body itself (bounded, one error shape), so FastAPI
    cannot see it. :class:`ChatRequest`'s JSON schema with its definitions inlined, since a
    ``#/$defs/...`` reference would point into the document's root (none of the models refers to itself)."""
    schema = ChatRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return {**inline(defs[ref.removeprefix("#/$defs/")]),
                        **{k: inline(v) for k, v in node.items() if k != "$ref"}}
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def text_of(content: str | list[dict[str, Any]] | None) -> str:
    """A message's text (the text parts of a content list; other parts are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise ApiError(400, f"content parts of type {part.get('type')!r} are not supported (text only)",
                           param="messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def arguments_text(call: Any) -> str:
    """A call's ``arguments`` string as the model wrote it (what a stream of the call adds up to,
    :func:`~sleepagent.runtime.generate.call_parts`), or its arguments as JSON when it wrote them
    in another shape (the XML form, a string of JSON)."""
    from ..runtime.generate import call_parts

    parts = call_parts(getattr(call, "raw", "") or "")
    if len(parts) == 1 and parts[0].done and parts[0].name == call.name:
        try:
            if json.loads(parts[0].arguments) == call.arguments:
                return parts[0].arguments
        except ValueError:
            pass
    return json.dumps(call.arguments, ensure_ascii=False)


def tool_calls_out(calls: list[Any]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments_text(c)}}
            for c in calls]


def tool_call_chunk(index: int, *, id: str | None = None, name: str | None = None,
                    arguments: str = "") -> dict[str, Any]:
    """One ``delta.tool_calls`` item of a stream, as OpenAI sends them: the call's first carries
    its ``id``, ``type`` and ``name`` (``arguments`` empty), the others argument text only."""
    if name is not None:
        return {"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"index": index, "function": {"arguments": arguments}}


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def chat_response(rid: str, model: str, content: str | None, calls: list[Any], finish: str, use: dict[str, Any],
                  session: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = tool_calls_out(calls)
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": use, "session": session}


def chunk(rid: str, model: str, delta: dict[str, Any] | None, finish: str | None = None,
          use: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                                 "logprobs": None}]}
    if use is not None:
        out["usage"] = use
    return out


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"
