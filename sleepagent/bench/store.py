"""``sleepagent bench store``: snapshot write and restore latency, bytes, and concurrent writers.

A 2B-class fast state is computed, not downloaded, so the benchmark runs on any machine; the
bf16 row measures the error the smaller snapshots cost on the restored fast weights.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import torch

from ..model import SleepHybridConfig, SleepModel
from .timing import timeit

if TYPE_CHECKING:
    from ..model import HybridState
    from ..storage import SnapshotStore

__all__ = ["bench_store", "two_b_class_state"]


def two_b_class_state():
    """A 2B-class fast state (24 GDN layers x 12 heads x 96 x 256 float32), computed, not downloaded."""
    from ..model import HybridState

    cfg = SleepHybridConfig(
        vocab_size=268, d_model=1536, n_layers=24, layer_types=("gdn",) * 24, gdn_heads=12,
        gdn_head_k_dim=96, gdn_head_v_dim=256, window=16,
    )
    state = HybridState.empty(cfg, 1)
    gen = torch.Generator().manual_seed(0)
    from ..model.state import FastState

    fast = FastState(
        S=tuple(torch.randn(s.shape, generator=gen) for s in state.fast.S),
        conv=tuple(torch.randn(c.shape, generator=gen) for c in state.fast.conv),
    )
    state.fast = state.working = fast
    return cfg, state


def _write(store: SnapshotStore, sid: str, state: HybridState, fp: str, dtype: torch.dtype | None = None) -> None:
    store.save(sid, state.to_bytes(fp, dtype), tenant="bench", loops=2)


def _restore(store: SnapshotStore, sid: str, cfg: SleepHybridConfig, fp: str,
             into: list[HybridState] | None = None) -> HybridState:
    from ..model import HybridState

    found = store.latest(sid, tenant="bench")
    assert found is not None  # saved just before
    state = HybridState.from_bytes(found[1], cfg=cfg, fingerprint=fp)
    if into is not None:
        into.append(state)
    return state


def bench_store(
    *, url: str | None = None, postgres: bool = True, repeats: int = 5, writers: int = 8, writes_per_writer: int = 10
) -> dict:
    """Snapshot write / restore latency and bytes, for the small model's state and a 2B-class state,
    on SQLite (and PostgreSQL: ``url`` or a temporary server); plus throughput of ``writers``
    concurrent writers."""
    import tempfile
    import threading
    from contextlib import ExitStack

    from ..policy import MemoryPolicy
    from ..storage import SnapshotStore
    from ..storage.pgtemp import create_database, postgres_bindir, temporary_postgres

    small = SleepModel.from_config(
        SleepHybridConfig(vocab_size=268, d_model=256, n_layers=4, n_heads=4, gdn_heads=4, window=512)
    )
    lm = small.model
    st = lm.new_state()
    lm.prefill(torch.randint(0, 256, (1, 300), generator=torch.Generator().manual_seed(0)), st)
    small_state = lm.consolidate(st, loops=2)
    big_cfg, big_state = two_b_class_state()
    states = {
        "small": (small.config, small_state, small.fingerprint),
        "2b-class": (big_cfg, big_state, "f" * 64),
    }
    results: dict[str, dict] = {}
    with ExitStack() as stack:
        backends = {}
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        backends["sqlite"] = f"sqlite:///{tmp}/bench.db"
        if url:
            backends["postgresql"] = url
        elif postgres and postgres_bindir() is not None:
            server = stack.enter_context(temporary_postgres())
            backends["postgresql"] = create_database(server)
        for backend, db_url in backends.items():
            store = SnapshotStore(db_url)
            row: dict[str, dict] = {}
            for name, (cfg, state, fp) in states.items():
                sid = f"bench-{name}"
                store.open_session(
                    sid, tenant="bench", fingerprint=fp, policy=MemoryPolicy(retention="persistent", max_snapshots=2)
                )
                blob = state.to_bytes(fp)
                write = timeit(functools.partial(_write, store, sid, state, fp),
                               repeats=repeats, device=torch.device("cpu"))
                restore = timeit(functools.partial(_restore, store, sid, cfg, fp),
                                 repeats=repeats, device=torch.device("cpu"))
                row[name] = {"bytes": len(blob), "write_ms": 1000 * write, "restore_ms": 1000 * restore}
            # the bf16 option: half the bytes, and the error it costs (measured on the restored S)
            cfg, state, fp = states["2b-class"]
            sid = "bench-bf16"
            store.open_session(
                sid, tenant="bench", fingerprint=fp, policy=MemoryPolicy(retention="persistent", max_snapshots=2)
            )
            blob = state.to_bytes(fp, torch.bfloat16)
            write = timeit(functools.partial(_write, store, sid, state, fp, torch.bfloat16),
                           repeats=repeats, device=torch.device("cpu"))
            restored: list[HybridState] = []
            restore = timeit(functools.partial(_restore, store, sid, cfg, fp, restored),
                             repeats=repeats, device=torch.device("cpu"))
            err = max(float(((a - b).abs() / b.abs().clamp_min(1e-12)).max()) for a, b in
                      zip(restored[-1].fast.S, state.fast.S, strict=True))
            row["2b-class bf16"] = {"bytes": len(blob), "write_ms": 1000 * write, "restore_ms": 1000 * restore,
                                    "max_relative_error": err}
            # concurrent writers, each with its own store (connection pool), small state
            cfg, state, fp = states["small"]
            blob = state.to_bytes(fp)
            pool = [SnapshotStore(db_url) for _ in range(writers)]
            for i, s in enumerate(pool):
                s.open_session(
                    f"w{i}",
                    tenant="bench",
                    fingerprint=fp,
                    policy=MemoryPolicy(retention="persistent", max_snapshots=3),
                )

            def work(i: int, pool: list[SnapshotStore] = pool, blob: bytes = blob) -> None:
                for _ in range(writes_per_writer):
                    pool[i].save(f"w{i}", blob, tenant="bench", loops=2)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            dt = time.perf_counter() - t0
            n = writers * writes_per_writer
            row["concurrent"] = {"writers": writers, "snapshots_per_s": n / dt, "mb_per_s": n * len(blob) / dt / 1e6}
            for s in pool:
                s.close()
            store.close()
            results[backend] = row
    return {"backends": results}
