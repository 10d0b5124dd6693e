"""Figures in the docs are read from the run JSON, never typed: each generated page (or section)
is rendered again from its JSON here and must equal what is committed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from sleepagent.train.capacity import render
from sleepagent.train.ship import scores_markdown

ROOT = Path(__file__).resolve().parent.parent
SCORES = ROOT / "docs" / "guides" / "docqa_scores.json"


def test_the_capacity_page_is_its_json(tmp_path):
    shutil.copy(ROOT / "docs" / "studies" / "capacity.json", tmp_path / "capacity.json")
    page = render(tmp_path / "capacity.json")
    assert page.read_text() == (ROOT / "docs" / "studies" / "capacity.md").read_text()


def test_the_docqa_guide_tables_are_the_scores_json():
    guide = (ROOT / "docs" / "guides" / "docqa.md").read_text()
    section = re.search(r"<!-- scores:start -->\n(.*?)<!-- scores:end -->", guide, re.S)
    assert section is not None, "docs/guides/docqa.md lost its generated scores section"
    assert section.group(1) == scores_markdown(json.loads(SCORES.read_text()))


def test_the_readme_quotes_the_scores_json():
    """The README's one sentence of figures: 16-place 2-hop at N = 4 against the same weights at N = 1."""
    runs = json.loads(SCORES.read_text())["settings"]["16 places"]
    rate = {k: next(r for r in runs[k]["rows"] if r["hops"] == 2) for k in ("main N=4", "main N=1")}
    quoted = " against ".join(f"{r['right'] / r['n']:.2f}" for r in rate.values())
    readme = (ROOT / "README.md").read_text()
    assert f"({quoted}, {rate['main N=4']['n']} questions each" in " ".join(readme.split())
