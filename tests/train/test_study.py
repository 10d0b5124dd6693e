"""A study trains every (N, seed) run, scores them and writes its table, JSON and plots."""

from __future__ import annotations

import json

import torch

from sleepagent.train.study import STUDIES, Study, run_study, summarize

TINY = Study(
    name="tiny",
    summary="two-hop depo on a tiny graph",
    task="depo",
    task_kwargs=dict(n_max=5, k_max=2, m=10, max_len=1, window=12, edge_windows=1, queries=3),
    train=dict(steps=3, batch_size=4, d_model=16, n_heads=2, eval_every=2, eval_n=4, save_every=3),
    loops=(1, 2),
    seeds=(0, 1),
    eval_n=6,
    notes="Chosen because it is tiny.",
)


def test_study_writes_table_json_and_plots_and_resumes(tmp_path):
    report = run_study(TINY, tmp_path / "runs", tmp_path / "docs", progress=False)
    assert sorted(report["runs"]) == ["N1_s0", "N1_s1", "N2_s0", "N2_s1"]
    n2 = report["runs"]["N2_s0"]
    assert n2["steps"] == 3 and set(n2["final"]) == {"1", "2"}  # scored at its own N and at N = 1
    assert [e["step"] for e in n2["curve"]] == [2, 3]
    saved = json.loads((tmp_path / "docs" / "tiny.json").read_text())
    assert saved["comparison"] == report["comparison"] and set(saved["comparison"]) == {"1", "2"}
    for suffix in ("_final.png", "_curve.png"):
        assert (tmp_path / "docs" / f"tiny{suffix}").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "docs" / "tiny.md").read_text()
    assert "sleepagent study tiny" in md and "| 2 |" in md and "## Notes\n\nChosen because it is tiny." in md
    # finished runs are not trained again: a second call only re-scores them
    weights = (tmp_path / "runs" / "tiny" / "N1_s0" / "model.safetensors").read_bytes()
    run_study(TINY, tmp_path / "runs", tmp_path / "docs", progress=False)
    assert (tmp_path / "runs" / "tiny" / "N1_s0" / "model.safetensors").read_bytes() == weights


def test_summary_compares_means_against_the_seed_spread():
    runs = {
        "a": {"loops": 1, "final": {"1": {"4": 0.20}}},
        "b": {"loops": 1, "final": {"1": {"4": 0.30}}},
        "c": {"loops": 4, "final": {"4": {"4": 0.50}}},
        "d": {"loops": 4, "final": {"4": {"4": 0.60}}},
    }
    row = summarize(runs, (1, 4))["4"]
    assert row["N1_mean"] == 0.25 and round(row["margin"], 6) == 0.3 and row["beats_spread"]
    runs["d"]["final"]["4"]["4"] = 0.05  # seeds of N = 4 disagree more than the margin
    assert not summarize(runs, (1, 4))["4"]["beats_spread"]


def test_presets_are_valid_configs():
    for study in STUDIES.values():
        assert len(study.runs()) == len(study.loops) * len(study.seeds) >= 4


def test_presets_build_their_tasks_and_runs():
    from sleepagent.train.tasks import make_task

    assert {"depo", "rule110"} <= set(STUDIES)
    for study in STUDIES.values():
        task = make_task(study.task, **study.task_kwargs)
        assert set(study.deep) <= set(task.test_difficulties())
        assert [name for name, _ in study.runs()] == [f"N{n}_s{s}" for n in study.loops for s in study.seeds]
        assert min(study.loops) == 1 and max(study.loops) == 4  # every preset compares N = 4 with N = 1
    assert STUDIES["rule110-sweep"].loops == (1, 2, 3, 4)


def test_a_sweep_over_n_has_a_column_per_n_and_compares_the_extremes(tmp_path):
    from dataclasses import replace

    report = run_study(replace(TINY, loops=(1, 2, 3)), tmp_path / "runs", tmp_path / "docs", progress=False)
    assert sorted(report["runs"]) == ["N1_s0", "N1_s1", "N2_s0", "N2_s1", "N3_s0", "N3_s1"]
    row = report["comparison"]["2"]
    means = {n: (report["runs"][f"N{n}_s0"]["final"][str(n)]["2"] + report["runs"][f"N{n}_s1"]["final"][str(n)]["2"]) / 2
             for n in (1, 2, 3)}
    assert all(abs(row[f"N{n}_mean"] - means[n]) < 1e-9 for n in (1, 2, 3))
    assert abs(row["margin"] - (means[3] - means[1])) < 1e-9
    md = (tmp_path / "docs" / "tiny.md").read_text()
    assert all(f"trained N={n} (mean" in md for n in (1, 2, 3)) and "margin N=3 − N=1" in md


def test_a_second_phase_continues_every_run_from_its_checkpoint(tmp_path):
    from dataclasses import replace

    from sleepagent.train.trainer import load_checkpoint

    study = replace(TINY, extend=dict(steps=2, schedule="constant", seed=7), first_answer=True)
    report = run_study(study, tmp_path / "runs", tmp_path / "docs", progress=False)
    more = report["extended_runs"]
    assert sorted(more) == ["N1_s0_more", "N1_s1_more", "N2_s0_more", "N2_s1_more"]
    assert more["N2_s1_more"]["steps"] == 2 and set(more["N2_s1_more"]["final"]) == {"1", "2"}
    saved = json.loads((tmp_path / "runs" / "tiny" / "N2_s1_more" / "train.json").read_text())["config"]
    assert saved["init_from"] == str(tmp_path / "runs" / "tiny" / "N2_s1") and saved["loops"] == 2
    assert saved["schedule"] == "constant" and saved["seed"] == 7 and saved["steps"] == 2
    # the second phase starts from the first one's weights, and trains them further
    first, _ = load_checkpoint(tmp_path / "runs" / "tiny" / "N2_s1")
    second, _ = load_checkpoint(tmp_path / "runs" / "tiny" / "N2_s1_more")
    changed = [not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)]
    assert any(changed)
    assert set(report["comparison_extended"]) == {"1", "2"}
    # first questions alone: 6 documents, so every score is a multiple of 1/6
    for name, r in {**report["runs"], **more}.items():
        for row in r["final_first"].values():
            assert all(abs(6 * a - round(6 * a)) < 1e-9 for a in row.values()), name
    assert set(report["comparison_extended_first"]) == {"1", "2"}
    md = (tmp_path / "docs" / "tiny.md").read_text()
    assert "After the second phase" in md and "| N2_s1_more | 3 + 2 |" in md
    assert "Second phase, the first question of each document only" in md
    assert (tmp_path / "docs" / "tiny_curve.png").read_bytes()[:4] == b"\x89PNG"
