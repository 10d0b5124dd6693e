"""Draw docs/docqa_curve.png: the shipped docqa-small's periodic test scores over its two stages.

    python docs/docqa_curve.py runs/docqa-read runs/docqa-small [--out docs/docqa_curve.png]

Reads the ``evals`` each run keeps in its ``train.json`` (40 documents per hop count, scored every
100 steps, a test seed apart from the final evaluation's). Stage 2's steps are drawn after stage 1's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curves(runs: list[Path]) -> tuple[dict[tuple[int, int], list[tuple[int, float]]], list[int]]:
    """{(N, hops): [(global step, accuracy)]} over the runs in order, and where each run starts."""
    out: dict[tuple[int, int], list[tuple[int, float]]] = {}
    offset, starts = 0, []
    for run in runs:
        meta = json.loads((run / "train.json").read_text())
        starts.append(offset)
        for e in meta["evals"]:
            for n, row in e["accuracy"].items():
                for hops, acc in row.items():
                    out.setdefault((int(n), int(hops)), []).append((offset + e["step"], acc))
        offset += meta["step"]
    return out, starts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/docqa_curve.png"))
    args = ap.parse_args()
    data, starts = curves(args.runs)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for (n, hops), pts in sorted(data.items()):
        ax.plot(*zip(*pts, strict=True), marker=".", linestyle="-" if n > 1 else "--",
                label=f"{hops}-hop, N = {n} at inference")
    for s in starts[1:]:
        ax.axvline(s, color="grey", linewidth=0.8)
        ax.text(s, 0.02, " stage 2: N = 4", color="grey", fontsize=8, va="bottom")
    ax.set_xlabel("training step")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("docqa-small: periodic test set (40 documents per hop count)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
