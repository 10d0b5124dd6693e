"""A paged document reader: long documents enter the model's context one page at a time.

A small model has a small attention window, so a long document cannot be pasted into the prompt.
Instead the model pulls pages with tool calls and the runtime may consolidate (sleep) between them.
``latency`` makes each read slow on purpose, so benchmarks can measure what the agent does while
it waits for a tool.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Annotated

import anyio
from pydantic import Field

from sleepagent.errors import ConfigError

from .base import Tool, tool

__all__ = ["END_MARKER", "DocumentReader", "paginate"]

END_MARKER = "[end of document]"

# A page may end this far before its size limit to break at a newline or a space: pages then end
# on word boundaries without becoming much shorter than asked for.
_MIN_FILL = 0.5


def paginate(text: str, page_chars: int) -> list[str]:
    """Split ``text`` into pages of at most ``page_chars`` characters that join back to ``text``.

    Each page ends, by preference, just after the last newline in its second half, else after the
    last whitespace there, else at the size limit (moved back so a combining mark is never torn
    from its base character). Pages are ``str`` slices, so a UTF-8 sequence is never split.
    """
    if page_chars < 1:
        raise ConfigError(f"page_chars must be at least 1, got {page_chars}", field="page_chars")
    if not text:
        return [""]
    pages: list[str] = []
    start = 0
    while start < len(text):
        end = _page_end(text, start, page_chars)
        pages.append(text[start:end])
        start = end
    return pages


def _page_end(text: str, start: int, page_chars: int) -> int:
    limit = start + page_chars
    if limit >= len(text):
        return len(text)
    earliest = start + max(1, int(page_chars * _MIN_FILL))
    newline = text.rfind("\n", earliest - 1, limit)
    if newline != -1:
        return newline + 1
    end = limit
    for index in range(limit - 1, earliest - 2, -1):
        if text[index].isspace():
            end = index + 1
            break
    else:
        # Hard cut: never tear a combining mark from the character it modifies.
        while end > start + 1 and unicodedata.combining(text[end]):
            end -= 1
    if text[end - 1 : end + 1] == "\r\n" and end > start + 1:
        end -= 1  # keep a CRLF pair on one page
    return end


class DocumentReader:
    """Serve one document page by page through two tools (see :attr:`tools`).

    ``source`` is a :class:`~pathlib.Path` (must exist), a string naming an existing file, or
    else the document text itself; use :meth:`from_text` to rule out the file interpretation.
    Page numbers shown to the model are 1-based.

    The second tool is named ``next_page`` when ``name`` is the default, else ``<name>_next_page``,
    so several readers can share one registry.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        page_chars: int = 1000,
        latency: float = 0.0,
        name: str = "read_document",
    ) -> None:
        text = _read_file(Path(source)) if isinstance(source, os.PathLike) or _names_existing_file(source) else source
        self._init(text, page_chars=page_chars, latency=latency, name=name)

    @classmethod
    def from_text(
        cls, text: str, page_chars: int = 1000, latency: float = 0.0, name: str = "read_document"
    ) -> DocumentReader:
        """A reader over ``text`` itself, even if the text happens to look like a file path."""
        reader = cls.__new__(cls)
        reader._init(text, page_chars=page_chars, latency=latency, name=name)
        return reader

    def _init(self, text: str, *, page_chars: int, latency: float, name: str) -> None:
        if not latency >= 0:
            raise ConfigError(f"latency must be >= 0 seconds, got {latency!r}", field="latency")
        self.text = text
        self.page_chars = page_chars
        self.latency = latency
        self.name = name
        self.pages: tuple[str, ...] = tuple(paginate(text, page_chars))
        self.pages_read = 0
        """How many pages were delivered to the model (re-reads count again)."""
        self._next = 0  # 0-based index of the next unread page
        self.tools: list[Tool] = self._build_tools()

    @property
    def page_count(self) -> int:
        return len(self.pages)

    @property
    def finished(self) -> bool:
        """Whether every page up to the last has been delivered in reading order."""
        return self._next >= self.page_count

    def reset(self) -> None:
        """Start again from page 1 (for reusing one reader across benchmark runs)."""
        self._next = 0
        self.pages_read = 0

    def render_page(self, number: int) -> str:
        """Page ``number`` (1-based) as the model sees it, with the end marker on the last page."""
        rendered = f"[page {number}/{self.page_count}]\n{self.pages[number - 1]}"
        if number == self.page_count:
            rendered += f"\n{END_MARKER}"
        return rendered

    async def read(self, page: int | None = None) -> str:
        """Deliver page ``page`` (1-based), or the next unread page; past the end, say so."""
        if self.latency:
            await anyio.sleep(self.latency)
        number = self._next + 1 if page is None else page
        if number > self.page_count:
            if page is None:
                return (
                    f"{END_MARKER} All {self.page_count} page(s) have been read; "
                    f"pass page=1..{self.page_count} to read a page again."
                )
            return (
                f"{END_MARKER} The document has only {self.page_count} page(s); "
                f"page {number} does not exist."
            )
        self._next = number
        self.pages_read += 1
        return self.render_page(number)

    def _build_tools(self) -> list[Tool]:
        size = f"{self.page_count} page(s) of up to {self.page_chars} characters"

        async def read_document(
            page: Annotated[int | None, Field(ge=1, description="1-based page number")] = None,
        ) -> str:
            return await self.read(page)

        async def next_page() -> str:
            return await self.read(None)

        next_name = "next_page" if self.name == "read_document" else f"{self.name}_next_page"
        return [
            tool(
                name=self.name,
                description=(
                    f"Read one page of the document ({size}). Without `page`, returns the next "
                    f"unread page. The last page ends with {END_MARKER}."
                ),
            )(read_document),
            tool(
                name=next_name,
                description=f"Read the next unread page of the document ({size}).",
            )(next_page),
        ]


def _names_existing_file(source: str) -> bool:
    """Whether a string source is a path to a file (rather than the document text)."""
    return "\n" not in source and len(source) < 4096 and os.path.isfile(source)


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"document file not found: {path}", field="source") from None
    except IsADirectoryError:
        raise ConfigError(f"document path is a directory: {path}", field="source") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"document {path} is not UTF-8 text ({exc})", field="source") from None
    except OSError as exc:
        raise ConfigError(f"cannot read document {path}: {exc}", field="source") from None
