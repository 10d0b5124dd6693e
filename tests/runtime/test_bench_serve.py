"""``sleepagent bench serve --concurrency 1,2,...``: a sweep against one server in its own process."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'sleepagent[serve]'")


def test_the_sweep_measures_each_concurrency_against_one_and_writes_its_section(tmp_path):
    from typer.testing import CliRunner

    from sleepagent.bench.serve import SWEEP_SECTION
    from sleepagent.cli import app

    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\n## Before\n\nkept\n\n{SWEEP_SECTION}\n\nstale figures\n\n## After\n\nkept too\n")
    args = ["bench", "serve", "--concurrency", "2,1", "--per-slot", "1", "--baseline", "3", "--rounds", "1",
            "--tool-latency", "0.05",
            "--think", "0.05", "--ramp", "0.4", "--out", str(page)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "benchmarks_serve_sweep.json").read_text())
    assert r["levels"] == [1, 2] and [row["concurrency"] for row in r["rows"]] == [1, 2]
    # --ramp: the levels above 1 again, the second conversation starting 0.2 s after the first
    assert r["ramp_s"] == 0.4 and [row["concurrency"] for row in r["ramped_rows"]] == [2]
    ramped = r["ramped_rows"][0]
    assert ramped["ramp_s"] == 0.4 and ramped["lost"] == 0 and ramped["wall_s"] >= 0.2
    assert ramped["wall_s"] > r["rows"][1]["wall_s"]  # the same two conversations, one of them later
    for row in r["rows"] + r["ramped_rows"]:
        assert row["lost"] == 0
        # the engine worked part of the time: its busy seconds (from /metrics) over the wall time
        assert 0 < row["busy_share"] <= 1
        # the shipped model reads the page through its tool: a call, the reply after it, one question
        assert row["requests"] == 3 * row["conversations"]
        # the baseline row: --baseline conversations one at a time; the others per slot
        assert row["conversations"] == (3 if row["concurrency"] == 1 else row["concurrency"])
        assert row["tokens_per_s"] > 0 and row["ttft_p50_ms"] > 0 and 0 <= row["hidden_share"] <= 1
        # each turn's times on their own: the first, the one after the tool call, the question
        by_turn = row["ttft_by_turn"]
        assert {t: v["n"] for t, v in by_turn.items()} == {"first": row["conversations"],
                                                          "after_tool": row["conversations"],
                                                          "question": row["conversations"]}
        # under 100 requests a p99 is the slowest one: the slowest turn's
        assert max(v["p99_ms"] for v in by_turn.values()) == pytest.approx(row["ttft_p99_ms"])
    assert r["rows"][0]["tokens_per_s_ratio"] == 1.0 and r["rows"][0]["ttft_p99_ratio"] == 1.0
    ratio = r["rows"][1]["tokens_per_s"] / r["rows"][0]["tokens_per_s"]
    assert r["rows"][1]["tokens_per_s_ratio"] == pytest.approx(ratio)
    text = page.read_text()
    # its own section written in place; the page's other sections as they were
    assert text.count(SWEEP_SECTION) == 1 and "stale figures" not in text
    assert ("`sleepagent bench serve --concurrency 1,2 --per-slot 1 --baseline 3 --rounds 1 --tool-latency 0.05 "
            "--think 0.05 --ramp 0.4") in text
    assert r["baseline"] == 3 and "(at concurrency 1, the baseline: 3)" in text
    assert "starting evenly over 0.4 s" in text and "engine busy" in text
    assert "## Before\n\nkept\n" in text and "## After\n\nkept too\n" in text
    assert text.index("## Before") < text.index("| 2 | 6 | 0 |") < text.index("## After")
    assert text.index("Time to first token by turn") < text.index("## After")


def test_write_section_replaces_only_its_own_section(tmp_path):
    from sleepagent.bench.sections import write_section

    page = tmp_path / "p.md"
    write_section(page, "## A", "one")
    write_section(page, "## B", "two")
    write_section(page, "## A", "three")
    assert page.read_text() == "## A\n\nthree\n\n## B\n\ntwo\n"


@pytest.mark.slow
def test_the_transformers_hybrid_sweep_writes_its_own_section(tmp_path):
    """``--model hf``: the 27M qwen3_5 hybrid served from a checkpoint directory made for the run,
    its window filled so that it sleeps; its section and JSON beside the shipped model's, which stay."""
    from typer.testing import CliRunner

    from sleepagent.bench.serve import HF_SWEEP_MODEL, SWEEP_HF_SECTION, SWEEP_SECTION
    from sleepagent.cli import app

    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\n{SWEEP_SECTION}\n\nthe shipped model's\n")
    args = ["bench", "serve", "--concurrency", "1,2", "--per-slot", "1", "--rounds", "2", "--tool-latency", "0.05",
            "--think", "0.05", "--model", "hf", "--max-tokens", "40", "--out", str(page)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "benchmarks_serve_sweep_hf.json").read_text())
    assert r["model"] == HF_SWEEP_MODEL and not (tmp_path / "benchmarks_serve_sweep.json").exists()
    assert all(row["lost"] == 0 and row["requests"] >= 2 * row["conversations"] for row in r["rows"])
    # its 384-token window holds the 288-token system turn, and the turns after it fill it: it sleeps
    assert sum(row["sleeps"] for row in r["rows"]) > 0
    text = page.read_text()
    assert "the shipped model's" in text and text.count(SWEEP_HF_SECTION) == 1
