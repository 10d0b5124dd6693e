"""A study trains every (N, seed) run, scores them and writes its table, JSON and plots."""

from __future__ import annotations

import json

import pytest
import torch

from sleepagent.train.studies import STUDIES
from sleepagent.train.study import Study, run_study, summarize

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
        assert len(study.runs()) == len(study.loops) * len(study.seeds) >= 2 * len(study.loops)


def _baseline(study: Study) -> bool:
    """The attention-only presets: no GDN layer, so N does not matter and only N = 1 runs."""
    return "gdn" not in study.train.get("layer_types", ("gdn",))


def test_presets_build_their_tasks_and_runs():
    from sleepagent.train.tasks import make_task

    assert {"depo", "rule110"} <= set(STUDIES)
    for name, study in STUDIES.items():
        task = make_task(study.task, **study.task_kwargs)
        assert set(study.deep) <= set(task.test_difficulties())
        assert [name for name, _ in study.runs()] == [f"N{n}_s{s}" for n in study.loops for s in study.seeds]
        if _baseline(study) or name.endswith(("-depth4", "-gdn2")):  # attention-only or compute-matched
            assert study.loops == (1,)
        elif name.endswith("-adamw"):  # an optimiser row: the N = 4 runs of its Muon study, with AdamW
            muon = STUDIES[name.removesuffix("-adamw")]
            assert study.loops == (4,) and muon.train["optimizer"] == "muon" and "optimizer" not in study.train
            assert study.task_kwargs == muon.task_kwargs and study.train["steps"] == muon.train["steps"]
        else:  # every other preset compares N = 4 with N = 1
            assert min(study.loops) == 1 and max(study.loops) == 4
    sweeps = ("rule110-sweep", "rule110-t4", "rule110-t8-gpu", "depo-sweep", "depo-sweep-gpu", "depo-windows-gpu",
              "depo-windows")
    assert all(STUDIES[name].loops == (1, 2, 3, 4) for name in sweeps)
    # the two-window Depo variants: the cycle's edges need more than one evicted window
    for name in ("depo-windows-gpu", "depo-windows"):
        windows = make_task("depo", **STUDIES[name].task_kwargs)
        assert windows.edge_windows == 2 and 2 * windows.n_max > windows.window - 1
    # the CPU one is the one-window preset's model and optimiser over the GPU one's windows
    cpu, one = STUDIES["depo-windows"], STUDIES["depo"]
    assert {k: v for k, v in cpu.train.items() if k not in ("steps", "schedule")} == {
        k: v for k, v in one.train.items() if k not in ("steps", "schedule")}
    assert cpu.task_kwargs["window"] == STUDIES["depo-windows-gpu"].task_kwargs["window"]
    assert {name for name, s in STUDIES.items() if _baseline(s)} == {"rule110-attn", "rule110-attn-full"}


def test_variant_presets_change_only_what_they_are_named_for():
    base = STUDIES["rule110"].runs()
    for name, change in (("rule110-muon", {"optimizer": "muon", "lr": 1e-3}),
                         ("rule110-attn-full", {"layer_types": ("attn",) * 4, "window": 64})):
        variant = dict(STUDIES[name].runs())
        for run, cfg in base:
            if run in variant:
                assert variant[run] == cfg.model_copy(update=change), name
    slide = STUDIES["finetune-rule110-sliding"]
    assert slide.pretrain == STUDIES["finetune-rule110"].pretrain  # the same "pretrained" model
    assert {k: v for k, v in slide.train.items() if k not in ("evict", "keep")} == STUDIES["finetune-rule110"].train


def test_a_fine_tuning_study_pretrains_at_n1_then_fine_tunes_that_checkpoint(tmp_path):
    """The paper's fine-tuning experiment in miniature: a random transformers hybrid trained as an
    ordinary model (N = 1), then every run fine-tuned from it with `train --base`; the runs are
    transformers checkpoints that carry their sleep settings, scored at their N and at N = 1."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from sleepagent.model.hf import HFHybridLM
    from sleepagent.train.trainer import load_checkpoint

    preset = STUDIES["finetune-rule110-sliding"]
    study = replace(preset, name="ft", base_model={**preset.base_model, "sizes": {}}, eval_n=6,
                    train={**preset.train, "steps": 2, "batch_size": 4, "warmup_gdn_steps": 1, "eval_every": 2,
                           "eval_n": 3},
                    pretrain={**preset.pretrain, "steps": 2, "warmup_steps": 0})
    report = run_study(study, tmp_path / "runs", tmp_path / "docs", progress=False)
    root = tmp_path / "runs" / "ft"
    pre = json.loads((root / "pretrain" / "train.json").read_text())["config"]
    assert pre["base"] == str(root / "random") and pre["loops"] == 1 and pre["evict"] == "hard"
    run = json.loads((root / "N4_s1" / "train.json").read_text())["config"]
    assert run["base"] == str(root / "pretrain") and run["loops"] == 4 and run["seed"] == 1
    assert json.loads((root / "N4_s1" / "sleepagent.json").read_text())["evict"] == "sliding"
    model, meta = load_checkpoint(root / "N4_s1")
    assert isinstance(model, HFHybridLM) and model.config.keep == 8 and meta["step"] == 2
    AutoModelForCausalLM.from_pretrained(root / "N4_s1")  # the base architecture
    assert set(report["runs"]["N4_s1"]["final"]) == {"1", "4"}
    assert set(report["pretrain_run"]["final"]) == {"1", "4"}  # the pretrained model, woken with N = 4 too
    assert (
        "Fine-tuning: every run above starts from one pretrained checkpoint"
        in (tmp_path / "docs" / "ft.md").read_text()
    )


def test_a_sweep_over_n_has_a_column_per_n_and_compares_the_extremes(tmp_path):
    from dataclasses import replace

    report = run_study(replace(TINY, loops=(1, 2, 3)), tmp_path / "runs", tmp_path / "docs", progress=False)
    assert sorted(report["runs"]) == ["N1_s0", "N1_s1", "N2_s0", "N2_s1", "N3_s0", "N3_s1"]
    row = report["comparison"]["2"]
    means = {
        n: (report["runs"][f"N{n}_s0"]["final"][str(n)]["2"] + report["runs"][f"N{n}_s1"]["final"][str(n)]["2"]) / 2
        for n in (1, 2, 3)
    }
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
    changed = [
        not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    ]
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


def test_a_baseline_of_one_n_has_no_margin_columns():
    from sleepagent.train.study import _comparison_rows

    row = {"N1_mean": 0.32, "N1_spread": 0.0, "margin": 0.0, "beats_spread": False}
    assert _comparison_rows({"2": row}, [1]) == ["|---|---|", "| 2 | 0.320 ± 0.000 |"]
    both = {**row, "N4_mean": 1.0, "N4_spread": 0.0, "margin": 0.68, "beats_spread": True}
    assert _comparison_rows({"2": both}, [1, 4])[1] == "| 2 | 0.320 ± 0.000 | 1.000 ± 0.000 | +0.680 | yes |"


def test_a_sweep_is_plotted_against_n_and_a_pair_against_difficulty(tmp_path):
    from sleepagent.train.study import final_series, plot_final

    runs = {f"N{n}_s{s}": {"loops": n, "final": {str(n): {"2": acc, "4": acc / 2}}}
            for n, accs in ((1, (0.2, 0.3)), (2, (0.5, 0.7)), (4, (0.9, 1.0))) for s, acc in enumerate(accs)}
    report = {"task": "rule110", "loops": [1, 2, 4], "runs": runs, "comparison": summarize(runs, (1, 2, 4))}
    xlabel, series = final_series(report)
    assert xlabel.startswith("trained N")
    label, xs, means, points = series[0]
    assert label == "difficulty 2" and xs == [1, 2, 4] and means == pytest.approx([0.25, 0.6, 0.95])
    assert sorted(points) == [(1, 0.2), (1, 0.3), (2, 0.5), (2, 0.7), (4, 0.9), (4, 1.0)]  # every seed shows
    assert series[1][2] == pytest.approx([0.125, 0.3, 0.475])
    pair = {**report, "loops": [1, 4], "runs": {k: r for k, r in runs.items() if r["loops"] != 2}}
    pair["comparison"] = summarize(pair["runs"], (1, 4))
    xlabel, series = final_series(pair)
    assert xlabel == "difficulty" and [s[0] for s in series] == ["trained N = 1", "trained N = 4"]
    assert series[1][1] == [2, 4] and series[1][2] == pytest.approx([0.95, 0.475])
    for r in (report, pair):
        assert plot_final(r, tmp_path / "final.png").read_bytes()[:4] == b"\x89PNG"


def test_every_preset_reads_its_notes_from_docs_studies_notes():
    """Presets hold settings; their prose lives in markdown files beside the pages, every one of
    which exists and is used, and ends up on the page."""
    from sleepagent.train.study import NOTES_DIR

    used = {name for study in STUDIES.values() for name in study.notes_from}
    assert used == {p.stem for p in NOTES_DIR.glob("*.md")}
    for study in STUDIES.values():
        assert study.notes_from and not study.notes, study.name
        text = study.page_notes()
        assert text and all((NOTES_DIR / f"{n}.md").read_text().strip() in text for n in study.notes_from)


def test_a_missing_notes_file_leaves_the_page_without_them(tmp_path, monkeypatch):
    import sleepagent.train.study as study_module

    monkeypatch.setattr(study_module, "NOTES_DIR", tmp_path)
    (tmp_path / "kept.md").write_text("Kept.\n")
    study = Study(name="x", summary="", task="depo", task_kwargs={}, train={}, notes_from=("kept", "gone"),
                  notes="Inline.")
    with pytest.warns(UserWarning, match="gone.md not found"):
        assert study.page_notes() == "Kept.\n\nInline."


def test_scoring_runs_side_by_side_gives_what_scoring_them_in_turn_gives(tmp_path):
    serial = run_study(TINY, tmp_path / "runs", tmp_path / "docs", progress=False)
    # the runs are finished: this call only scores them again, two processes at a time
    parallel = run_study(TINY, tmp_path / "runs", tmp_path / "docs", progress=False, jobs=2)
    assert list(parallel["runs"]) == list(serial["runs"])
    for name, run in serial["runs"].items():
        assert parallel["runs"][name]["final"] == run["final"] and parallel["runs"][name]["steps"] == run["steps"]


def test_each_run_records_its_counts_and_the_page_gives_n_and_wilson_intervals(tmp_path):
    from sleepagent.train.stats import wilson

    report = run_study(TINY, tmp_path / "runs", tmp_path / "docs", progress=False)
    run = report["runs"]["N2_s0"]
    for N, row in run["final"].items():
        for d, acc in row.items():
            k, n = run["final_counts"][N][d]
            assert n >= TINY.eval_n and acc == k / n  # every answer of every test document counted
    k, n = run["final_counts"]["2"]["2"]
    lo, hi = wilson(k, n)
    md = (tmp_path / "docs" / "tiny.md").read_text()
    assert f"{k / n:.3f} [{lo:.2f}, {hi:.2f}]" in md and "n (answers a cell)" in md and "Wilson" in md


def test_wilson_covers_the_proportion_and_narrows_with_n():
    from sleepagent.train.stats import wilson

    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35  # sound at 0, where k/n ± 2 SE collapses to a point
    small, large = wilson(30, 100), wilson(300, 1000)
    assert small[0] < 0.3 < small[1] and large[0] < 0.3 < large[1]
    assert large[1] - large[0] < small[1] - small[0]
