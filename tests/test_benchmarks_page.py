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


def test_the_saturation_the_ttft_section_states_is_the_sweeps_json():
    """"Where it goes" says the engine is saturated at the top concurrency with starts together
    and spread (so the tail is not a burst's), and the transformers hybrid's from 4 on."""
    native = json.loads((DOCS / "benchmarks_serve_sweep.json").read_text())
    top, spread = native["rows"][-1], native["ramped_rows"][-1]
    assert top["concurrency"] == spread["concurrency"] == 16
    assert top["busy_share"] >= 0.9 and spread["busy_share"] >= 0.9
    assert top["ttft_p99_ratio"] > 4 and spread["ttft_p99_ratio"] > 4
    hf = json.loads((DOCS / "benchmarks_serve_sweep_hf.json").read_text())
    assert all(row["busy_share"] >= 0.9 for row in hf["rows"] if row["concurrency"] >= 4)
    assert "`--ramp 1`" in PAGE and "engine busy" in PAGE

