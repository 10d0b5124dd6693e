"""The ``sleepagent`` command line, one module per command group.

``demo`` (:mod:`.demo`), ``train``, ``eval`` and ``study`` (:mod:`.train`), ``serve``
(:mod:`.serve`), ``bench ...`` (:mod:`.bench`) and ``snapshots ...`` (:mod:`.snapshots`),
assembled here into :data:`app`, the console script's entry point. Every bad input is one
``error:`` line on stderr and exit code 2 (:class:`~._common.OneLineErrors`).
"""

from __future__ import annotations

import typer

from . import bench, snapshots
from ._common import OneLineErrors
from .demo import demo
from .serve import serve
from .train import eval_cmd, ship, study, train

__all__ = ["app", "main"]

app = typer.Typer(cls=OneLineErrors, help="sleepagent: an agent runtime for sleep-enabled hybrid LMs.",
                  no_args_is_help=True)
app.command()(demo)
app.command()(train)
app.command()(serve)
app.command()(study)
app.command("eval")(eval_cmd)
app.command()(ship)
app.add_typer(bench.app, name="bench")
app.add_typer(snapshots.app, name="snapshots")


def main() -> None:  # pragma: no cover - console-script entry
    app()
