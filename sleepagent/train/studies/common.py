"""Settings several preset families share."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..study import Study

__all__ = ["CPU_TRAIN", "compute_matched"]

# the CPU studies' small model and schedule (each run well under an hour on a 2-core CPU)
CPU_TRAIN: dict[str, Any] = dict(steps=2000, batch_size=32, d_model=64, n_layers=4, n_heads=4, adam_lr=3e-3,
                                 warmup_steps=100, schedule="cosine", eval_every=250, eval_n=50, save_every=250)


def compute_matched(study: Study, base: str) -> tuple[Study, ...]:
    """N = 1 baselines given the compute of ``max(study.loops)`` sleep passes another way, same
    task, data, optimiser and steps as ``study`` (named ``base``):

    - ``<base>-depth<N>``: the layer stack repeated N times (N times the layers, N times the GDN
      layers), so every token, not only evicted ones, gets N passes' worth of compute;
    - ``<base>-gdn2``: a second GDN layer right after the first attention layer, so a single wake
      pass can look the fast weights up twice (the handicap of one GDN layer, placed first, removed).
    """
    n = max(study.loops)
    layers = tuple(study.train["layer_types"])
    first_attn = layers.index("attn")
    gdn2 = layers[: first_attn + 1] + ("gdn",) + layers[first_attn + 1 :]
    arms = (
        (f"-depth{n}", layers * n, f"N = 1 with the layer stack repeated {n} times ({n * len(layers)} layers): "
                                   f"the compute of {n} sleep passes spent on depth"),
        ("-gdn2", gdn2, "N = 1 with a second GDN layer after the first attention layer: two fast-weight lookups "
                        "in one wake pass"),
    )
    return tuple(
        replace(
            study,
            name=base + suffix,
            summary=f"compute-matched baseline for `{base}`: {what}",
            train={**study.train, "n_layers": len(types), "layer_types": types},
            loops=(1,),
            notes_from=("compute-matched",),
        )
        for suffix, types, what in arms
    )
