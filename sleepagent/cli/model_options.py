"""Command-line options derived from a pydantic model, so a setting is declared once, in the model.

``sleepagent train`` takes one option per :class:`~sleepagent.train.TrainConfig` field: the
field's name (``--warmup-gdn-steps``), its default, its description as the help, its ``Literal``
values as choices. A field added to the model is an option the next time the CLI starts. Values
the shell cannot spell as one word are text, converted here: tuples as comma-separated values
(``--layer-types gdn,attn``, ``--loop-layers 8,24``), dicts as JSON (``--task-args '{...}'``).
A field of any other type is refused when the CLI is built, so it cannot be skipped silently.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["ModelOptions"]

_SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class _Option:
    """One field as an option: how its text becomes the field's value."""

    field: str
    flag: str
    convert: Callable[[Any], Any]  # option value -> field value (raises ValueError with a message)


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (itself, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _tuple_parser(item_types: tuple[Any, ...], fixed: bool) -> tuple[Callable[[str], tuple], str]:
    """A parser of ``"a,b,c"`` into a tuple of ``item_types`` (all alike, or exactly these)."""
    names = {int: "integers", float: "numbers", str: "values"}
    if not all(t in names for t in item_types):
        raise TypeError(f"tuple items of type {item_types} have no command-line form")
    what = (f"{len(item_types)} comma-separated {names[item_types[0]]}" if fixed
            else f"comma-separated {names[item_types[0]]}")

    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        kinds = item_types if fixed else (item_types[0],) * len(parts)
        if not parts or len(parts) != len(kinds):
            raise ValueError(f"expected {what}, got {text!r}")
        try:
            return tuple(kind(p) for kind, p in zip(kinds, parts, strict=True))
        except ValueError:
            raise ValueError(f"expected {what}, got {text!r}") from None

    return parse, what


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return value


def _same(value: Any) -> Any:
    """Scalars and choices: typer has already parsed them."""
    return value


def _as_text(value: Any) -> str | None:
    """A default shown in --help in the form the option takes."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return value  # a scalar: typer shows it as it is


class ModelOptions:
    """The options of one pydantic model: typer parameters for a command's signature, and
    :meth:`values` to turn what the command received into the model's keyword arguments.

    ``flags`` renames a field's option (``{"task_kwargs": "--task-args"}``); ``extra_help`` is the
    help of a field the model leaves undescribed (the model's own description wins)."""

    def __init__(self, model: type[BaseModel], *, flags: dict[str, str] | None = None,
                 extra_help: dict[str, str] | None = None) -> None:
        self.model = model
        self.parameters: list[inspect.Parameter] = []
        self.options: dict[str, _Option] = {}
        for name, info in model.model_fields.items():
            flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
            self._add(name, info, flag, info.description or (extra_help or {}).get(name))

    def _add(self, name: str, info: FieldInfo, flag: str, help_text: str | None) -> None:
        annotation, optional = _split_optional(info.annotation)
        default = info.get_default(call_default_factory=True)
        convert: Callable[[Any], Any] = _same
        decls: tuple[str, ...] = ()
        origin = typing.get_origin(annotation)
        if annotation in _SCALARS:
            kind: Any = annotation
            decls = (flag,) if annotation is not bool else (f"{flag}/--no-{flag.removeprefix('--')}",)
        elif origin is Literal:
            kind, decls = annotation, (flag,)
        elif origin is tuple:
            args = typing.get_args(annotation)
            fixed = not (len(args) == 2 and args[1] is Ellipsis)
            parse, what = _tuple_parser(args if fixed else args[:1], fixed)
            kind, decls, convert = str, (flag,), parse
            help_text = f"{help_text} ({what})" if help_text else what
        elif origin is dict or annotation is dict:
            kind, decls, convert = str, (flag,), _json_object
            help_text = f"{help_text} (a JSON object)" if help_text else "a JSON object"
        else:
            raise TypeError(f"{self.model.__name__}.{name}: no command-line form for {info.annotation!r}")
        if optional:
            kind = kind | None
        option = typer.Option(*decls, help=help_text)
        self.parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                                 annotation=Annotated[kind, option], default=_as_text(default)))
        self.options[name] = _Option(name, flag, convert)

    def flag(self, field: str) -> str:
        """The option that sets ``field`` (for error messages)."""
        return self.options[field].flag

    def values(self, given: dict[str, Any]) -> dict[str, Any]:
        """The model's keyword arguments from a command's parameters (a ``ValueError`` names the
        option whose text it could not read)."""
        out = {}
        for name, opt in self.options.items():
            value = given[name]
            if value is not None:
                try:
                    value = opt.convert(value)
                except ValueError as e:
                    raise ValueError(f"{opt.flag}: {e}") from None
            out[name] = value
        return out
