"""What every command group shares: the consoles, one-line errors, and parsers of option text.

Every bad input ends the same way: one line ``error: ...`` on stderr and exit code 2, before any
file is written. :class:`OneLineErrors` does that for what typer's parser rejects (a non-integer id, an
unknown option) and for a typed :class:`~sleepagent.errors.SleepAgentError` a command let through;
commands call :func:`fail` for what they check themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from ..errors import SleepAgentError

__all__ = [
    "OneLineErrors", "check_device", "console", "fail", "first_error", "new_file", "new_or_existing_dir",
    "positive_ints", "span",
]

console = Console()
# errors: stderr, never wrapped (one line however long) and never read as rich markup
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr; ``raise fail(...)`` then exits with code 2."""
    err_console.print(Text.assemble(("error:", "red"), " ", " ".join(str(message).split())))
    return typer.Exit(2)


class OneLineErrors(TyperGroup):
    """The top-level group: what the parser or a command rejects is one line on stderr, not a usage box
    or a traceback. ``--help`` and a bare group name still print their help."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        extra["windows_expand_args"] = windows_expand_args
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # typer's click: usage errors, bad parameters, no such command
            # a bare group (``sleepagent snapshots``) answers with its help, as a help request does;
            # typer keeps that exception's class private, so it is known by name
            if type(e).__name__ == "NoArgsIsHelpError":
                e.show()  # type: ignore[attr-defined]
            else:
                fail(e.format_message())
            sys.exit(e.exit_code)
        except typer.Abort:
            fail("aborted")
            sys.exit(1)
        except SleepAgentError as e:  # a typed error a command did not turn into a line itself
            raise SystemExit(fail(str(e)).exit_code) from None
        # non-standalone click returns the exit code of a typer.Exit, or what the command returned
        sys.exit(code if isinstance(code, int) else 0)


def first_error(e: Exception, names: dict[str, str] | None = None) -> str:
    """One line for a pydantic or JSON error: ``field: message`` rather than a count of errors.
    ``names`` maps a field to the option that sets it (``{"steps": "--steps"}``)."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError) and e.errors():
        err = e.errors()[0]
        loc = [str(x) for x in err["loc"]]
        if loc and names and loc[0] in names:
            loc[0] = names[loc[0]]
        return f"{'.'.join(loc) or 'value'}: {err['msg']}"
    return str(e).splitlines()[0]


def positive_ints(text: str, option: str | None = None) -> tuple[int, ...]:
    """``"1,2,4"``: positive integers, comma-separated."""
    where = f"{option}: " if option else ""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise fail(f"{where}expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise fail(f"{where}values must be positive integers, got {text!r}")
    return values


def span(text: str, option: str = "--loop-layers") -> tuple[int, int]:
    """``"a,b"``: decoder layers a (included) to b (excluded)."""
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise fail(f"{option}: expected two integers 'start,stop', got {text!r}") from None
    return a, b


def new_file(path: str, option: str = "--out", *, create_parents: bool = False) -> Path:
    """A file the command may create or replace: not a directory, in a directory that exists (or,
    with ``create_parents``, that can be created). Checked before any work, so a long run never
    ends in a traceback over its output path."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise fail(f"{option} {path}: is a directory; give a file name")
    if create_parents:
        new_or_existing_dir(str(p.parent), option)
    elif not p.parent.is_dir():
        raise fail(f"{option} {path}: directory {p.parent} does not exist")
    return p


def new_or_existing_dir(path: str, option: str = "--out") -> Path:
    """A directory the command writes into (created if missing, with its parents): not a file,
    and no file in the way of the parents it would create."""
    p = Path(path).expanduser()
    for q in (p, *p.parents):
        if q.exists() and not q.is_dir():
            raise fail(f"{option} {path}: {q} is a file, not a directory")
    return p


def check_device(device: str, option: str = "--device") -> str:
    """``cpu``, or ``cuda``/``cuda:N`` where this machine has that GPU."""
    import torch

    try:
        d = torch.device(device)
    except RuntimeError:
        raise fail(f"{option} {device}: expected cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise fail(f"{option} {device}: no CUDA device on this machine")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise fail(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif d.type != "cpu":
        raise fail(f"{option} {device}: expected cpu, cuda or cuda:N")
    return device
