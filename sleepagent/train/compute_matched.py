"""Compute-matched baselines: does sleep beat the same compute spent another way?

A sleep-trained model (N passes over each evicted window) is set beside N = 1 models given that
compute as depth (the layer stack repeated N times) or as a second GDN layer
(:func:`sleepagent.train.studies.common.compute_matched`), trained on the same machine at the
same time, same task, data, optimiser and schedule. Each run is read three ways: accuracy against
training steps, against training FLOPs (the matrix products of one step's forward and backward,
counted by torch's ``FlopCounterMode`` on the run's own model and batch) and against wall-clock
seconds. ``python -m sleepagent.train.compute_matched`` writes ``compute-matched.json``,
``.md`` and one figure per task family into ``docs/studies`` from the studies' JSON; the page is
re-rendered from that JSON alone (:func:`markdown`), so every figure on it comes from the runs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .study import _finish, _pyplot
from .tasks import make_task
from .trainer import TrainConfig, build_model, loss_of_batch, sample_batch

__all__ = ["FAMILIES", "build_report", "flops_per_step", "markdown", "plot_family", "write_page"]

# per task family: the parent study (its N = 1 and N = 4, run again beside the baselines, under
# docs/studies/matched/), the baselines (docs/studies/), the difficulties the page reads
FAMILIES: dict[str, dict[str, Any]] = {
    "rule110": {"title": "Rule 110, t = 4", "parent": "rule110-gpu",
                "baselines": ("rule110-gpu-depth4", "rule110-gpu-gdn2"), "difficulties": ("4",)},
    "depo": {"title": "Depo, 1-4 hops over one evicted window", "parent": "depo-deep-gpu",
             "baselines": ("depo-deep-gpu-depth4", "depo-deep-gpu-gdn2"), "difficulties": ("2", "4")},
}


def flops_per_step(report: dict[str, Any], loops: int, *, probe_batch: int = 8) -> float:
    """FLOPs of one training step (forward + backward matrix products) of a study's model at N =
    ``loops``, counted on a batch of ``probe_batch`` and scaled to the study's batch size (every
    example of these tasks has the same length, so the count is linear in the batch)."""
    cfg = TrainConfig(task=report["task"], task_kwargs=report["task_kwargs"], loops=loops, seed=0,
                      **{**report["train"], "batch_size": probe_batch})
    task = make_task(cfg.task, **cfg.task_kwargs)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    batch = sample_batch(task, random.Random("flops"), probe_batch)
    with FlopCounterMode(display=False) as counter:
        loss, _ = loss_of_batch(model, task, batch, cfg)
        loss.backward()
    return counter.get_total_flops() * report["train"]["batch_size"] / probe_batch


def _arm(report: dict[str, Any], loops: int, label: str, difficulties: tuple[str, ...]) -> dict[str, Any]:
    runs = {name: r for name, r in report["runs"].items() if r["loops"] == loops}
    per_step = flops_per_step(report, loops)
    out_runs = {}
    for name, r in runs.items():
        out_runs[name] = {
            "steps": r["steps"],
            "final": {d: r["final"][str(loops)][d] for d in difficulties},
            # (step, seconds of training, accuracy per difficulty) at every periodic evaluation
            "curve": [[e["step"], e.get("train_s"), {d: e["accuracy"][str(loops)][d] for d in difficulties}]
                      for e in r["curve"] if str(loops) in e["accuracy"]],
        }
    finals = {d: [r["final"][d] for r in out_runs.values()] for d in difficulties}
    return {
        "label": label,
        "study": report["study"],
        "loops": loops,
        "layers": list(report["train"]["layer_types"]),
        "flops_per_step": per_step,
        "runs": out_runs,
        "mean": {d: sum(v) / len(v) for d, v in finals.items()},
        "spread": {d: max(v) - min(v) for d, v in finals.items()},
    }


def build_report(docs: str | Path = "docs/studies") -> dict[str, Any]:
    """Every family's arms from the studies' JSON, with FLOPs per step and the verdict per
    difficulty: whether N = 4's mean beats the best baseline's by more than either's seed spread."""
    docs = Path(docs)
    families = {}
    for key, fam in FAMILIES.items():
        parent = json.loads((docs / "matched" / f"{fam['parent']}.json").read_text())
        diffs = fam["difficulties"]
        hi = max(parent["loops"])
        arms = [_arm(parent, 1, f"N = 1, {len(parent['train']['layer_types'])} layers (the parent)", diffs),
                _arm(parent, hi, f"N = {hi}, {len(parent['train']['layer_types'])} layers (sleep)", diffs)]
        for name in fam["baselines"]:
            base = json.loads((docs / f"{name}.json").read_text())
            what = "depth" if "depth" in name else "second GDN layer"
            arms.append(_arm(base, 1, f"N = 1, {len(base['train']['layer_types'])} layers ({what})", diffs))
        verdict = {}
        for d in diffs:
            sleep, others = arms[1], arms[2:]
            best = max(others, key=lambda a: a["mean"][d])
            margin = sleep["mean"][d] - best["mean"][d]
            verdict[d] = {"sleep_mean": sleep["mean"][d], "best_baseline": best["study"],
                          "best_baseline_mean": best["mean"][d], "margin": margin,
                          "beats_spread": margin > max(sleep["spread"][d], best["spread"][d])}
        families[key] = {"title": fam["title"], "parent": fam["parent"], "difficulties": list(diffs),
                         "machine": parent["machine"], "arms": arms, "verdict": verdict}
    return {"families": families}


def markdown(report: dict[str, Any]) -> str:
    """The page, from the report alone (a test re-renders it and compares)."""
    lines = [
        "# Compute-matched baselines: sleep against the same compute spent on depth",
        "",
        "Each task family's sleep model (N = 4) beside N = 1 models given that compute another way, all trained "
        "side by side on one lent GPU with the same task, data, optimiser and schedule, each for the same "
        "wall-clock budget (so the steps differ: a deeper model or more sleep passes make a slower step). "
        "Written by `python -m sleepagent.train.compute_matched` from the studies' JSON "
        "(`docs/studies/matched/` holds the parents' N = 1 and N = 4 runs made beside the baselines; the "
        "parents' own pages keep their earlier runs). FLOPs per step: the forward and backward matrix "
        "products of one training step, counted by torch on the run's own model and batch. Accuracy: free-running "
        "exact match on the study's final test set.",
        "",
    ]
    for key, fam in report["families"].items():
        diffs = fam["difficulties"]
        lines += [f"## {fam['title']} (`{fam['parent']}`)", "",
                  f"Machine: {fam['machine']}.", "",
                  "| arm | study | layers | GFLOPs a step | steps (seeds) | training PFLOPs (seeds) | "
                  + " | ".join(f"d={d}: seeds, mean ± spread/2" for d in diffs) + " |",
                  "|---" * (6 + len(diffs)) + "|"]
        for arm in fam["arms"]:
            runs = list(arm["runs"].values())
            steps = ", ".join(str(r["steps"]) for r in runs)
            pflops = ", ".join(f"{arm['flops_per_step'] * r['steps'] / 1e15:.2f}" for r in runs)
            accs = [", ".join(f"{r['final'][d]:.3f}" for r in runs)
                    + f"; {arm['mean'][d]:.3f} ± {arm['spread'][d] / 2:.3f}" for d in diffs]
            lines.append(f"| {arm['label']} | [{arm['study']}]({arm['study']}.md) | {len(arm['layers'])} | "
                         f"{arm['flops_per_step'] / 1e9:.1f} | {steps} | {pflops} | " + " | ".join(accs) + " |")
        lines.append("")
        for d in diffs:
            v = fam["verdict"][d]
            if v["beats_spread"]:
                said = "beats the same compute spent another way by more than the seed spread"
            elif v["margin"] > 0:
                said = "is ahead of the best compute-matched baseline, but within the seed spread"
            else:
                said = "does not beat the same compute spent another way"
            lines.append(f"- d = {d}: sleep (N = 4, mean {v['sleep_mean']:.3f}) {said} (best baseline "
                         f"`{v['best_baseline']}`, mean {v['best_baseline_mean']:.3f}; margin {v['margin']:+.3f}).")
        lines += ["", f"![accuracy against steps, FLOPs and seconds](compute-matched_{key}.png)", ""]
    return "\n".join(lines)


def plot_family(fam: dict[str, Any], path: Path) -> Path:
    """Accuracy on the deepest difficulty against training step, training FLOPs and seconds: one
    colour per arm, one line per seed."""
    plt = _pyplot()
    d = fam["difficulties"][-1]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.6), dpi=110)
    for i, arm in enumerate(fam["arms"]):
        for j, r in enumerate(arm["runs"].values()):
            pts = [(s, t, acc[d]) for s, t, acc in r["curve"]]
            if not pts:
                continue
            label = arm["label"] if j == 0 else None
            style = dict(color=f"C{i}", linestyle="-" if j == 0 else "--", label=label)
            axes[0].plot([p[0] for p in pts], [p[2] for p in pts], **style)
            axes[1].plot([p[0] * arm["flops_per_step"] / 1e15 for p in pts], [p[2] for p in pts], **style)
            timed = [p for p in pts if p[1] is not None]
            axes[2].plot([p[1] for p in timed], [p[2] for p in timed], **style)
    for ax, x in zip(axes, ("training step", "training PFLOPs", "training seconds (shared GPU)"), strict=True):
        _finish(ax, x, f"{fam['title']}: d = {d}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_page(docs: str | Path = "docs/studies") -> Path:
    """Build the report from the studies' JSON and write its JSON, page and figures."""
    docs = Path(docs)
    report = build_report(docs)
    (docs / "compute-matched.json").write_text(json.dumps(report, indent=1) + "\n")
    for key, fam in report["families"].items():
        plot_family(fam, docs / f"compute-matched_{key}.png")
    out = docs / "compute-matched.md"
    out.write_text(markdown(report))
    return out


if __name__ == "__main__":  # python -m sleepagent.train.compute_matched [DOCS]
    import sys

    print(write_page(*sys.argv[1:2]))
