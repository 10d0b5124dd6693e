"""mkdocs hook: let the API pages (mkdocstrings, griffe) see the package as it is installed.

``tools/`` and ``storage/`` are top-level folders of the repository that ship inside the
distribution as ``sleepagent.tools`` and ``sleepagent.storage`` (``package-dir`` in
pyproject.toml). griffe reads source trees, where ``sleepagent/`` has no such subpackages, so the
hook builds the installed layout out of symlinks in a temporary directory (outside the
repository) and points the python handler at it. The pages are read from the sources, nothing is
imported.
It also holds a griffe extension that prints the docstrings' Sphinx roles as code.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import griffe
from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = {"sleepagent": ROOT / "sleepagent", "sleepagent/tools": ROOT / "tools",
               "sleepagent/storage": ROOT / "storage"}
_tmp: Path | None = None


@event_priority(100)  # before mkdocstrings creates its handlers
def on_config(config):
    global _tmp
    _tmp = Path(tempfile.mkdtemp(prefix="sleepagent-api-"))
    for target, source in PACKAGE_DIR.items():
        (_tmp / target).mkdir(parents=True)
        for child in source.iterdir():
            if child.name != "__pycache__" and not (_tmp / target / child.name).exists():
                (_tmp / target / child.name).symlink_to(child)
    config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})["paths"] = [str(_tmp)]
    return config


def on_shutdown():
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)


# The docstrings cross-reference in Sphinx roles (:class:`Tool`, :meth:`~Agent.run`), which
# Markdown would print as they are: the API pages show them as code, ~ keeping the last name.
_ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):`(~?)([^`]+)`")


class SphinxRoles(griffe.Extension):
    """griffe extension (mkdocs.yml, python handler ``extensions``)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(
                lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", obj.docstring.value)
