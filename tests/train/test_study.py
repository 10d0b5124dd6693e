"""A study trains every (N, seed) run, scores them and writes its table, JSON and plots."""

from __future__ import annotations

import json

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
        assert [name for name, _ in study.runs()] == ["N1_s0", "N1_s1", "N4_s0", "N4_s1"]
