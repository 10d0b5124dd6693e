r"""Draw the docqa runs' periodic test scores (the ``evals`` in their ``train.json``).

    python docs/guides/docqa_curve.py runs/docqa-read runs/docqa-small [--out docs/guides/docqa_curve.png]
    python docs/guides/docqa_curve.py runs/docqa-long runs/docqa-long-n1 --side-by-side \
        --out docs/guides/docqa_long_curve.png

Without ``--side-by-side`` the runs are stages of one model, drawn one after another; with it they
are twins trained from the same start (each line labelled with the N it was trained with). The
periodic test set is small (``--eval-n`` documents per hop count, of every size the task draws) and
scored teacher-forced (one forward pass); the figures the docs quote come from ``sleepagent eval --agent``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curves(
    runs: list[Path], side_by_side: bool
) -> tuple[dict[tuple[str, int, int], list[tuple[int, float]]], list[int]]:
    """{(run label, N at inference, hops): [(step, accuracy)]}, and where each stage starts."""
    out: dict[tuple[str, int, int], list[tuple[int, float]]] = {}
    offset, starts = 0, []
    for run in runs:
        meta = json.loads((run / "train.json").read_text())
        label = f"trained N = {meta['config']['loops']}" if side_by_side else ""
        starts.append(offset)
        for e in meta["evals"]:
            for n, row in e["accuracy"].items():
                for hops, acc in row.items():
                    out.setdefault((label, int(n), int(hops)), []).append((offset + e["step"], acc))
        if not side_by_side:
            offset += meta["step"]
    return out, starts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/guides/docqa_curve.png"))
    ap.add_argument("--side-by-side", action="store_true", help="the runs are twins, not stages")
    args = ap.parse_args()
    data, starts = curves(args.runs, args.side_by_side)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=120)
    for (label, n, hops), pts in sorted(data.items()):
        name = f"{hops}-hop, N = {n} at inference" + (f", {label}" if label else "")
        ax.plot(*zip(*pts, strict=True), marker=".", linestyle="-" if n > 1 else "--", label=name)
    if not args.side_by_side:
        for i, s in enumerate(starts[1:], 2):
            ax.axvline(s, color="grey", linewidth=0.8)
            ax.text(s, 0.02, f" stage {i}", color="grey", fontsize=8, va="bottom")
    ax.set_xlabel("training step")
    ax.set_ylabel("exact match (teacher-forced)")
    ax.set_ylim(0, 1)
    ax.set_title("docqa: periodic test set", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
