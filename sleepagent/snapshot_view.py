"""Looking inside fast-weight snapshots: per-layer norms, effective rank, differences, plots.

Works on the raw safetensors payload of a snapshot (no model needed): the fast weights are the
``fast.S.<i>`` tensors, one ``[B, HV, K, V]`` matrix stack per GDN layer.

Named ``snapshot_view``, not ``inspect``: a module named like a standard-library one shadows it
(STYLE rule 13) and sends a reader who greps for the idea to the wrong file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load

from .errors import SnapshotCorrupted

__all__ = ["diff_stats", "effective_rank", "fast_weights", "layer_stats", "plot_snapshot"]


def fast_weights(payload: bytes) -> list[torch.Tensor]:
    """The committed fast-weight stacks of a snapshot payload, in layer order."""
    try:
        tensors = st_load(payload)
    except Exception as e:  # safetensors raises several types for bad bytes
        raise SnapshotCorrupted(f"payload is not readable safetensors: {e}") from None
    keys = sorted((k for k in tensors if k.startswith("fast.S.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    return [tensors[k].float() for k in keys]


def effective_rank(matrix: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values): 1 for rank one, n for a flat spectrum."""
    s = torch.linalg.svdvals(matrix.double())
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def layer_stats(payload: bytes) -> list[dict[str, Any]]:
    """Per GDN layer: Frobenius norm, mean effective rank over (batch, head), bytes."""
    out = []
    for i, S in enumerate(fast_weights(payload)):
        mats = S.reshape(-1, S.shape[-2], S.shape[-1])
        out.append({
            "layer": i,
            "norm": float(S.norm()),
            "effective_rank": sum(effective_rank(m) for m in mats) / len(mats),
            "bytes": S.numel() * 4,
            "shape": list(S.shape),
        })
    return out


def diff_stats(a: bytes, b: bytes) -> list[dict[str, float]]:
    """Per layer: norm of the difference, relative to the first, and cosine similarity."""
    A, B = fast_weights(a), fast_weights(b)
    if [t.shape for t in A] != [t.shape for t in B]:
        raise SnapshotCorrupted("the two snapshots have different fast-weight shapes (different models)")
    out = []
    for i, (x, y) in enumerate(zip(A, B, strict=True)):
        d = float((x - y).norm())
        nx = float(x.norm())
        cos = (
            float(torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0))
            if nx and float(y.norm())
            else 0.0
        )
        out.append(
            {"layer": i, "diff_norm": d, "relative": d / nx if nx else float("inf") if d else 0.0, "cosine": cos}
        )
    return out


def plot_snapshot(payload: bytes, out_dir: str | Path, name: str = "snapshot") -> list[Path]:
    """PNG heat-maps of every layer's fast weights (head-averaged |S|) and a per-layer norm chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = fast_weights(payload)
    fig, axes = plt.subplots(1, len(layers), figsize=(3 * len(layers), 3), dpi=110, squeeze=False)
    for ax, (i, S) in zip(axes[0], enumerate(layers), strict=True):
        ax.imshow(S.abs().mean(dim=(0, 1)).numpy(), cmap="viridis", aspect="auto")
        ax.set_title(f"GDN layer {i}: |S| (K × V)")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    heat = out_dir / f"{name}_heatmaps.png"
    fig.savefig(heat)
    plt.close(fig)
    stats = layer_stats(payload)
    fig, ax = plt.subplots(figsize=(4, 3), dpi=110)
    ax.bar([s["layer"] for s in stats], [s["norm"] for s in stats])
    ax.set_xlabel("GDN layer")
    ax.set_ylabel("‖S‖_F")
    fig.tight_layout()
    norms = out_dir / f"{name}_norms.png"
    fig.savefig(norms)
    plt.close(fig)
    return [heat, norms]
