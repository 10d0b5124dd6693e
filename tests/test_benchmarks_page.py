"""docs/benchmarks.md's figures are the run JSON's: every section written by a benchmark's ``--out``
is re-rendered here from the JSON beside the page, and must be what the page says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sleepagent.bench.decode import DECODE_SECTION, decode_markdown
from sleepagent.bench.engine import HF_SECTION, hf_markdown
from sleepagent.bench.report import to_markdown
from sleepagent.bench.serve import SWEEP_HF_SECTION, SWEEP_SECTION, sweep_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGE = (DOCS / "benchmarks.md").read_text()


def section(heading: str) -> str:
    start = PAGE.index(heading) + len(heading)
    end = PAGE.find("\n## ", start)
    return PAGE[start : end if end != -1 else len(PAGE)].strip("\n")


@pytest.mark.parametrize(("heading", "render", "data"), [
    (SWEEP_SECTION, sweep_markdown, "benchmarks_serve_sweep.json"),
    (SWEEP_HF_SECTION, sweep_markdown, "benchmarks_serve_sweep_hf.json"),
    (DECODE_SECTION, decode_markdown, "benchmarks_decode.json"),
    (HF_SECTION, hf_markdown, "benchmarks_engine_hf.json"),
])
def test_each_written_section_is_its_json(heading, render, data):
    body = section(heading)
    command = re.search(r"`(sleepagent bench [^`]+)`", body)  # the command that wrote it
    assert command, body[:200]
    assert render(json.loads((DOCS / data).read_text()), command.group(1)).strip("\n") == body


def test_the_report_part_is_benchmarks_json():
    report = to_markdown(json.loads((DOCS / "benchmarks.json").read_text()), "sleepagent bench").strip("\n")
    assert PAGE.startswith(report)
