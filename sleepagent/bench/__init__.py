"""Benchmarks behind ``sleepagent bench``: ratios against a baseline run in the same process.

Wall-clock numbers depend on the machine; the ratios are what the targets are stated in. One
module per benchmark (``kernels``, ``wake``, ``agent``, ``engine``, ``store``, ``memory``,
``bounded``, ``fairness``, ``serve``, ``constrained``, ``soak``, ``train_step``), each named like its
``sleepagent bench`` subcommand;
:mod:`.report` runs them all and writes the markdown report (``docs/benchmarks.md``).
"""

from __future__ import annotations

from .agent import bench_agent
from .bounded import bench_bounded
from .constrained import bench_constrained
from .engine import bench_engine
from .fairness import bench_fairness
from .kernels import bench_kernels
from .memory import bench_memory
from .serve import bench_serve
from .store import bench_store
from .timing import timeit
from .train_step import bench_train, bench_train_step
from .wake import bench_wake

__all__ = [
    "bench_agent",
    "bench_bounded",
    "bench_constrained",
    "bench_engine",
    "bench_fairness",
    "bench_kernels",
    "bench_memory",
    "bench_serve",
    "bench_store",
    "bench_train",
    "bench_train_step",
    "bench_wake",
    "timeit",
]
