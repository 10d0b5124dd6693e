"""``sleepagent bench constrained``: the per-token cost of a JSON-schema mask on a shipped model.

Constrained greedy decoding (under :func:`~sleepagent.runtime.grammar.json_constraint`) against
plain greedy decoding of the same segments, in one process; the benchmark itself lives beside the
grammar it measures (:func:`sleepagent.runtime.grammar.bench_constrained`), and is re-exported
here, one module per benchmark.
"""

from __future__ import annotations

from ..runtime.grammar import bench_constrained

__all__ = ["bench_constrained"]
