"""Figures in the docs are read from the run JSON, never typed: each generated page (or section)
is rendered again from its JSON here and must equal what is committed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

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


STUDIES = ROOT / "docs" / "studies"


def _study(name: str) -> dict:
    return json.loads((STUDIES / f"{name}.json").read_text())


def test_the_sweep_pages_are_their_json():
    """The pages issue 33 corrected (their notes live in the JSON) re-render to what is committed."""
    from sleepagent.train.study import markdown

    for name in ("depo-sweep", "rule110-sweep"):
        assert markdown(_study(name)) == (STUDIES / f"{name}.md").read_text(), name


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_studies_md_quotes_the_sweep_means_from_their_json():
    studies = _flat((STUDIES / "studies.md").read_text())
    for name, difficulty, lead in (("depo-sweep", "2", "2-hop: "), ("rule110-sweep", "2", "")):
        row = _study(name)["comparison"][difficulty]
        quoted = ", ".join(f"{row[f'N{n}_mean']:.3f}" for n in (1, 2, 3, 4))
        assert f"{lead}{quoted}" in studies, name


def test_the_depo_sweep_n1_plateau_range_is_its_curve():
    """'N = 1 stayed at A to B from step 12000 to 24000': A and B are the 2-hop periodic scores' extremes."""
    runs = _study("depo-sweep")["runs"]
    scores = [c["accuracy"]["1"]["2"] for k in ("N1_s0", "N1_s1") for c in runs[k]["curve"]
              if 12000 <= c["step"] <= 24000]
    lo, hi = min(scores), max(scores)
    quoted = f"N = 1 stayed at {lo:.3f} to {hi:.3f} from step 12000 to 24000"
    for page in ("depo-sweep.md", "notes/depo-sweep.md"):
        assert quoted in _flat((STUDIES / page).read_text()), page


def test_the_steps_beyond_n2_are_not_called_monotone_within_the_seed_spread():
    """Depo's N = 2 -> 3 -> 4 differences do not beat the seed spread, so no page calls the sweep monotone."""
    row = _study("depo-sweep")["comparison"]["2"]
    spread = max(row[f"N{n}_spread"] for n in (3, 4))
    assert row["N4_mean"] - row["N3_mean"] < spread
    for page in ("studies.md", "depo-sweep.md"):
        assert "monotone" not in (STUDIES / page).read_text().lower(), page


def test_paper_numbers_are_only_those_the_paper_states():
    """Figures the paper's text does not contain (Rule 110 '20%' at N = 2, Depo 'N = 2 from k = 8') stay off."""
    pages = [ROOT / "README.md", *STUDIES.glob("*.md"), *(STUDIES / "notes").glob("*.md")]
    for page in pages:
        text = _flat(page.read_text())
        assert "about 10%, 20%" not in text, page
        assert "N = 2 from k = 8" not in text, page


def _numbers(obj, out: set[str]) -> set[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            _numbers(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _numbers(v, out)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        out.add(f"{obj:.3f}")
    return out


# a row that also quotes another study's figures (rule110-t4-adamw sets Muon's N = 4 beside its own)
_ALSO = {"rule110-t4-adamw": ("rule110-t4",)}


def test_every_three_place_figure_in_the_studies_table_is_in_its_study_json():
    rows = 0
    for line in (STUDIES / "studies.md").read_text().splitlines():
        m = re.match(r"\| \[([\w-]+)\]\(\1\.md\) \|", line)
        if m is None or not (STUDIES / f"{m[1]}.json").exists():
            continue
        rows += 1
        have: set[str] = set()
        for name in (m[1], *_ALSO.get(m[1], ())):
            _numbers(_study(name), have)
        result = line.split(" | ")[-2]
        missing = [x for x in re.findall(r"\d\.\d{3}", result) if x not in have]
        assert not missing, (m[1], missing)
    assert rows >= 15


def test_the_fine_tuning_tables_quote_their_study_json():
    have = _numbers(_study("finetune-rule110"), set())
    for page in ("finetune.md", "transformers.md"):
        text = (ROOT / "docs" / "guides" / page).read_text()
        table = [line for line in text.splitlines() if line.startswith("| fine-tuned") or "pretrained" in line[:40]]
        figures = [x for line in table for x in re.findall(r"\d\.\d{3}", line)]
        assert len(figures) >= 7 and not [x for x in figures if x not in have], page


@pytest.mark.parametrize("name", ["finetune-rule110", "finetune-rule110-sliding"])
def test_a_row_probe_in_the_json_is_a_table_on_the_page(name):
    from sleepagent.train.study import markdown

    report = _study(name)
    assert "row_probe" in report  # python -m sleepagent.train.probes --into wrote it
    page = markdown(report)
    assert (STUDIES / f"{name}.md").read_text() == page
    for name, r in report["row_probe"].items():
        for N, rows in r["rows"].items():
            assert f"| {name} | {N} | " + " | ".join(f"{a:.3f}" for a in rows) in page


@pytest.mark.parametrize("page", ["finetune.md", "transformers.md"])
def test_every_three_place_figure_in_the_fine_tuning_guides_is_in_a_study_json(page):
    """The prose too, not only the tables: each figure the guide quotes is one of the fine-tuning
    studies' (or the native sliding study's it compares with)."""
    have: set[str] = set()
    for name in ("finetune-rule110", "finetune-rule110-sliding", "rule110-sliding"):
        _numbers(_study(name), have)
    figures = re.findall(r"\d\.\d{3}", (ROOT / "docs" / "guides" / page).read_text())
    assert len(figures) >= 7 and [x for x in figures if x not in have] == [], page
