"""Turn a Python function's signature and docstring into what a model needs to call it.

The signature is the single source of truth for a tool's arguments: the pydantic model built from
it validates what the model sends, and its JSON schema is what the model is shown. Keeping both
derived from one place means they can never disagree.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin

import pydantic
from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo

from sleepagent.errors import ConfigError

__all__ = ["build_args_model", "docstring_params", "docstring_summary"]

# Google/NumPy-ish section headers after which "name: text" lines describe parameters.
_PARAM_SECTIONS = {"args", "arguments", "parameters", "params"}
_SECTION_HEADER = re.compile(r"^(?P<title>[A-Za-z][A-Za-z ]*):\s*$")
_PARAM_LINE = re.compile(r"^(?P<name>\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(?P<text>.*)$")


def docstring_summary(doc: str | None) -> str:
    """The docstring's first paragraph on one line: the tool description a model sees."""
    if not doc:
        return ""
    first = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(first.split())


def docstring_params(doc: str | None) -> dict[str, str]:
    """Parameter descriptions from an ``Args:`` section (``name: text`` or ``name (type): text``).

    Continuation lines (indented deeper than the name) are joined to the description. Anything
    the parser does not understand is ignored: descriptions are a nicety, never required.
    """
    if not doc:
        return {}
    params: dict[str, str] = {}
    in_section = False
    current: str | None = None
    name_indent = 0
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        header = _SECTION_HEADER.match(line)
        if header and indent == 0:
            in_section = header.group("title").strip().lower() in _PARAM_SECTIONS
            current = None
            continue
        if not in_section:
            continue
        if not stripped:
            current = None
            continue
        if indent == 0:  # dedented text ends the section
            in_section = False
            current = None
            continue
        match = _PARAM_LINE.match(stripped)
        if match and (current is None or indent <= name_indent):
            current = match.group("name").lstrip("*")
            name_indent = indent
            params[current] = match.group("text").strip()
        elif current is not None:
            params[current] = f"{params[current]} {stripped}".strip()
    return params


def build_args_model(
    function: Callable[..., Any], *, tool_name: str, doc: str | None
) -> type[BaseModel]:
    """A pydantic model whose fields are ``function``'s parameters (extra arguments forbidden).

    Type hints become field types (unannotated parameters accept anything), defaults stay
    defaults, ``Annotated[..., Field(...)]`` constraints are honoured, and ``Args:`` docstring
    lines become field descriptions unless the annotation already carries one.
    """
    try:
        signature = inspect.signature(function, eval_str=True)
    except (NameError, TypeError, ValueError) as exc:
        raise ConfigError(f"tool {tool_name!r}: cannot read the function signature: {exc}") from exc

    descriptions = docstring_params(doc)
    fields: dict[str, Any] = {}
    for index, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(
                f"tool {tool_name!r}: *args/**kwargs parameters cannot be described to a model; "
                f"give every argument a name"
            )
        if index == 0 and param.name in ("self", "cls"):
            raise ConfigError(
                f"tool {tool_name!r}: the first parameter is {param.name!r}; decorate the bound "
                f"method (tool(obj.method)) instead of the function in the class body"
            )
        annotation = Any if param.annotation is param.empty else param.annotation
        default = ... if param.default is param.empty else param.default
        description = descriptions.get(param.name)
        if description and not _has_description(annotation):
            fields[param.name] = (annotation, pydantic.Field(default, description=description))
        else:
            fields[param.name] = (annotation, default)

    try:
        return pydantic.create_model(
            f"{tool_name}_arguments",
            __config__=ConfigDict(extra="forbid", protected_namespaces=()),
            **fields,
        )
    except (NameError, TypeError, pydantic.PydanticUserError) as exc:
        raise ConfigError(f"tool {tool_name!r}: cannot build an argument model: {exc}") from exc


def _has_description(annotation: Any) -> bool:
    """Whether ``Annotated[..., Field(description=...)]`` already describes the parameter."""
    if get_origin(annotation) is not Annotated:
        return False
    metadata = get_args(annotation)[1:]
    return any(isinstance(meta, FieldInfo) and meta.description for meta in metadata)
