"""DocumentReader: paging a file or a text, end marker, past-the-end, unicode, latency."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sleepagent.tools import END_MARKER, DocumentReader, ToolCall, ToolRegistry, paginate

from sleepagent.errors import ConfigError

_HEADER = re.compile(r"^\[page (\d+)/(\d+)\]\n", re.DOTALL)

TEXT = "\n".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog, again and again."
    for i in range(60)
)


def _body(page_text: str) -> str:
    """The page content without the header and the end marker."""
    match = _HEADER.match(page_text)
    assert match, page_text[:40]
    body = page_text[match.end() :]
    if body.endswith("\n" + END_MARKER):
        body = body[: -len(END_MARKER) - 1]
    return body


async def _read_all(reader: DocumentReader) -> list[str]:
    next_page = reader.tools[1]
    return [await next_page.call({}) for _ in range(reader.page_count)]


async def test_pages_from_a_file_cover_the_text_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_text(TEXT, encoding="utf-8")
    reader = DocumentReader(path, page_chars=300)
    assert reader.page_count > 10
    pages = await _read_all(reader)
    assert "".join(_body(p) for p in pages) == TEXT
    assert [int(_HEADER.match(p).group(1)) for p in pages] == list(range(1, reader.page_count + 1))
    assert all(_HEADER.match(p).group(2) == str(reader.page_count) for p in pages)
    assert all(len(_body(p)) <= 300 for p in pages)
    assert reader.pages_read == reader.page_count


async def test_string_path_is_read_as_a_file(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_text("from the file", encoding="utf-8")
    reader = DocumentReader(str(path))
    assert reader.text == "from the file"
    assert DocumentReader.from_text(str(path)).text == str(path)
    assert DocumentReader("just some text").text == "just some text"


def test_pages_break_at_newlines_and_spaces() -> None:
    pages = paginate(TEXT, 300)
    assert all(page.endswith("\n") for page in pages[:-1])
    words = paginate("word " * 200, 47)
    assert "".join(words) == "word " * 200
    assert all(page.endswith(" ") for page in words[:-1])
    assert all(len(page) <= 47 for page in words)


async def test_end_marker_only_on_last_page() -> None:
    reader = DocumentReader.from_text(TEXT, page_chars=500)
    pages = await _read_all(reader)
    assert pages[-1].endswith("\n" + END_MARKER)
    assert all(END_MARKER not in page for page in pages[:-1])
    assert reader.finished


async def test_reading_past_the_end_says_so() -> None:
    reader = DocumentReader.from_text("short text", page_chars=100)
    read_document, next_page = reader.tools
    first = await next_page.call({})
    assert first == f"[page 1/1]\nshort text\n{END_MARKER}"
    after = await next_page.call({})
    assert END_MARKER in after and "All 1 page(s) have been read" in after
    beyond = await read_document.call({"page": 7})
    assert "only 1 page(s)" in beyond and "page 7" in beyond
    assert reader.pages_read == 1


async def test_read_document_by_number_moves_the_cursor() -> None:
    reader = DocumentReader.from_text(TEXT, page_chars=400)
    read_document, next_page = reader.tools
    assert (await read_document.call({"page": 3})).startswith(f"[page 3/{reader.page_count}]")
    assert (await read_document.call({})).startswith(f"[page 4/{reader.page_count}]")
    assert (await next_page.call({})).startswith(f"[page 5/{reader.page_count}]")
    assert reader.pages_read == 3


async def test_invalid_page_numbers_are_argument_errors() -> None:
    reader = DocumentReader.from_text(TEXT)
    registry = ToolRegistry(reader.tools)
    for page in (0, -1, "two"):
        result = await registry.execute(ToolCall(name="read_document", arguments={"page": page}))
        assert result.error_kind == "invalid_arguments", page


def test_unicode_is_never_split_mid_character() -> None:
    # No whitespace at all: forces hard cuts; mixes 1- to 4-byte UTF-8 and combining marks.
    text = ("aé中😀" + "e\u0301") * 200
    pages = paginate(text, 37)
    assert "".join(pages) == text
    for page in pages:
        page.encode("utf-8")  # a lone surrogate or broken char would fail here
        assert not page or not ("\u0300" <= page[0] <= "\u036f"), "combining mark starts a page"
        assert len(page) <= 37
    joined = b"".join(page.encode("utf-8") for page in pages)
    assert joined == text.encode("utf-8")


async def test_unicode_file_round_trips(tmp_path: Path) -> None:
    text = "Ünïcödé — ‘quotes’ 中文 emoji 😀🎉\n" * 80
    path = tmp_path / "u.txt"
    path.write_bytes(text.encode("utf-8"))
    reader = DocumentReader(path, page_chars=64)
    pages = await _read_all(reader)
    assert "".join(_body(p) for p in pages) == text


async def test_empty_document_has_one_empty_page() -> None:
    reader = DocumentReader.from_text("")
    assert reader.page_count == 1
    assert await reader.tools[1].call({}) == f"[page 1/1]\n\n{END_MARKER}"


async def test_latency_makes_reads_slow() -> None:
    reader = DocumentReader.from_text(TEXT, latency=0.1)
    started = time.perf_counter()
    await reader.tools[1].call({})
    assert time.perf_counter() - started >= 0.09


def test_custom_name_names_both_tools() -> None:
    reader = DocumentReader.from_text("x", name="read_manual")
    assert [t.name for t in reader.tools] == ["read_manual", "read_manual_next_page"]
    default = DocumentReader.from_text("x")
    assert [t.name for t in default.tools] == ["read_document", "next_page"]
    ToolRegistry([*reader.tools, *default.tools])  # no name clash


def test_reset_starts_over() -> None:
    import anyio

    reader = DocumentReader.from_text(TEXT, page_chars=500)
    anyio.run(reader.read)
    reader.reset()
    assert reader.pages_read == 0 and not reader.finished
    assert anyio.run(reader.read).startswith("[page 1/")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match=r"nope.txt"):
        DocumentReader(missing)


def test_bad_files_and_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        DocumentReader(tmp_path)
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="UTF-8"):
        DocumentReader(binary)
    with pytest.raises(ConfigError, match="page_chars"):
        DocumentReader.from_text("x", page_chars=0)
    with pytest.raises(ConfigError, match="latency"):
        DocumentReader.from_text("x", latency=-1)
