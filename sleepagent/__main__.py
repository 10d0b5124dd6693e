"""``python -m sleepagent``: the CLI where the ``sleepagent`` script is not on the PATH (a
checkout on PYTHONPATH, as on a lent GPU machine)."""

from .cli import app

app(prog_name="sleepagent")
