"""Compute-matched baselines: the presets change only the layer stack, their FLOPs are what they
claim, and the page is its JSON."""

from __future__ import annotations

import json
from pathlib import Path

from sleepagent.train.compute_matched import FAMILIES, flops_per_step, markdown
from sleepagent.train.studies import STUDIES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "studies"


def test_each_baseline_changes_only_the_layer_stack_of_its_parent():
    for fam in FAMILIES.values():
        parent = STUDIES[fam["parent"]]
        layers = tuple(parent.train["layer_types"])
        for name in fam["baselines"]:
            base = STUDIES[name]
            assert base.loops == (1,) and base.seeds == parent.seeds
            assert (base.task, base.task_kwargs) == (parent.task, parent.task_kwargs)
            same = {k: v for k, v in base.train.items() if k not in ("layer_types", "n_layers")}
            assert same == {k: v for k, v in parent.train.items() if k not in ("layer_types", "n_layers")}
            assert base.train["n_layers"] == len(base.train["layer_types"])
            if name.endswith("-depth4"):
                assert tuple(base.train["layer_types"]) == layers * 4
            else:  # a second GDN layer right after the first attention layer, nothing else moved
                types = list(base.train["layer_types"])
                i = layers.index("attn") + 1
                assert types.pop(i) == "gdn" and tuple(types) == layers


def test_the_depth_baseline_costs_four_times_the_flops_and_sleep_costs_more_than_one_pass():
    parent = json.loads((DOCS / "matched" / "rule110-gpu.json").read_text())
    depth = json.loads((DOCS / "rule110-gpu-depth4.json").read_text())
    one, four = flops_per_step(parent, 1, probe_batch=1), flops_per_step(parent, 4, probe_batch=1)
    deep = flops_per_step(depth, 1, probe_batch=1)
    assert 3.8 < deep / one < 4.1  # the stack four times; the embedding and head once
    assert 2 < four / one < 4  # four passes over the evicted windows, one over the question
    # counted on one example and scaled: the count is linear in the batch for these tasks
    assert abs(flops_per_step(parent, 1, probe_batch=2) - one) / one < 1e-9


def test_the_compute_matched_page_is_its_json():
    report = json.loads((DOCS / "compute-matched.json").read_text())
    assert (DOCS / "compute-matched.md").read_text() == markdown(report)
    for fam in report["families"].values():
        sleep, *baselines = fam["arms"][1:]
        for d, v in fam["verdict"].items():
            best = max(baselines, key=lambda a: a["mean"][d])
            assert v["best_baseline"] == best["study"] and v["sleep_mean"] == sleep["mean"][d]
            assert v["beats_spread"] == (v["margin"] > max(sleep["spread"][d], best["spread"][d]))


def test_the_studies_summary_quotes_the_compute_matched_figures_from_their_json():
    import re

    from tests.test_generated_pages import _numbers

    text = (DOCS / "studies.md").read_text()
    bullet = text[text.index("- **The same compute spent another way**"):text.index("- **Optimiser.**")]
    have = _numbers(json.loads((DOCS / "compute-matched.json").read_text()), set())
    figures = re.findall(r"\d\.\d{3}", bullet)
    assert len(figures) >= 8 and not [x for x in figures if x not in have]
