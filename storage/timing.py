"""Timing check: can a caller tell another tenant's snapshot from a missing one by the clock?

:func:`bench_foreign_vs_missing` loads one snapshot of another tenant and many snapshot ids that
do not exist, interleaved in random order (so drift in machine load hits both alike), and reports
both latency distributions. The store answers both with the same :class:`SnapshotNotFound`; the
medians should agree within 10%. The CLI registers it as ``sleepagent bench store-timing``.

The run writes to the store it is given: one session of a tenant named ``bench-owner-<hex>``,
one snapshot (erased at the end) and the audit rows every refused read leaves (see
:mod:`sleepagent.storage.store`). Point it at a scratch store.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from typing import Any

import torch
from safetensors.torch import save as st_save

from sleepagent.errors import SnapshotNotFound
from sleepagent.model.state import STATE_FORMAT_VERSION
from sleepagent.policy import MemoryPolicy

from .store import SnapshotStore

__all__ = ["bench_foreign_vs_missing"]

_FINGERPRINT = "0" * 64


def _payload() -> bytes:
    """A small well-formed state payload: the refused reads never open it, only its row counts."""
    tensors = {"S.0": torch.zeros(1, 2, 8, 8)}
    meta = {"format_version": STATE_FORMAT_VERSION, "fingerprint": _FINGERPRINT, "counters": "{}"}
    return st_save(tensors, metadata=meta)


def _summary(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        "mean_ms": statistics.fmean(ms),
    }


def bench_foreign_vs_missing(url: str, tries: int = 200, *, warmup: int = 20, seed: int = 0) -> dict[str, Any]:
    """Time ``store.load`` of another tenant's snapshot against ``tries`` missing ids.

    Returns ``{"url", "tries", "foreign": {median_ms, p90_ms, mean_ms}, "missing": {...},
    "ratio"}``, where ``ratio`` is the foreign median over the missing median (1.0 = the same).
    """
    if tries < 1:
        raise ValueError(f"tries must be at least 1, got {tries}")
    store = SnapshotStore(url)
    try:
        tag = uuid.uuid4().hex[:12]
        owner, prober, sid = f"bench-owner-{tag}", f"bench-prober-{tag}", f"timing-{tag}"
        store.open_session(sid, tenant=owner, fingerprint=_FINGERPRINT, policy=MemoryPolicy(retention="persistent"))
        snap = store.save(sid, _payload(), tenant=owner, loops=1)
        # ids far above any real one, each used once (a repeated id could be answered from a cache)
        missing_ids = iter(range(snap.id + 10**9, snap.id + 10**9 + warmup + tries))
        order = ["foreign", "missing"] * (warmup + tries)
        rng = random.Random(seed)
        # shuffle within each pair only: both kinds stay spread evenly over the whole run
        for i in range(0, len(order), 2):
            if rng.random() < 0.5:
                order[i], order[i + 1] = order[i + 1], order[i]
        times: dict[str, list[int]] = {"foreign": [], "missing": []}
        for n, kind in enumerate(order):
            target = snap.id if kind == "foreign" else next(missing_ids)
            t0 = time.perf_counter_ns()
            try:
                store.load(target, tenant=prober)
            except SnapshotNotFound:
                pass
            else:  # pragma: no cover - the store would be broken
                raise AssertionError(f"tenant {prober!r} read snapshot {target}")
            elapsed = time.perf_counter_ns() - t0
            if n >= 2 * warmup:
                times[kind].append(elapsed)
        store.erase(sid, tenant=owner)
    finally:
        store.close()
    foreign, missing = _summary(times["foreign"]), _summary(times["missing"])
    return {
        "url": store.url.render_as_string(hide_password=True),
        "tries": tries,
        "foreign": foreign,
        "missing": missing,
        "ratio": foreign["median_ms"] / missing["median_ms"],
    }
