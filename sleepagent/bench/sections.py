"""One benchmark's section of ``docs/benchmarks.md``, replaced in place.

Benchmarks too long for the ``sleepagent bench`` report (the soak, the concurrency sweep) write
their own section; a rerun replaces it and leaves the rest of the page as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_section"]


def write_section(path: str | os.PathLike, heading: str, markdown: str) -> None:
    """Put ``markdown`` under ``heading`` (a ``## `` line) in the file at ``path``, replacing that
    section if the file has one (up to the next ``## `` heading), else appending it."""
    p = Path(path)
    text = p.read_text() if p.exists() else ""
    body = f"{heading}\n\n{markdown}\n"
    if heading in text:
        start = text.index(heading)
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + body + (f"\n{text[nxt + 1:]}" if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + body
    p.write_text(text)
