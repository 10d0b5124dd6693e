"""Depo over several evicted windows, hop counts drawn as the original draws them (issue 33 item 3)."""

from __future__ import annotations

import random

import pytest


def test_depo_draws_every_hop_count_and_spreads_edges_over_several_windows():
    """Depo with hop_counts='all' (the original's k in 1..K) over three evicted windows: answers follow
    the cycle, every k is drawn in training, and the edges end exactly where the third window ends."""
    from sleepagent.train.studies import STUDIES
    from sleepagent.train.tasks import Depo

    kwargs = STUDIES["depo-windows3-gpu"].task_kwargs
    task = Depo(**kwargs)
    assert task.hops == [1, 2, 3, 4] and task.edge_windows == 3
    drawn: set[int] = set()
    for seed in range(30):
        ex = task.sample(random.Random(seed))
        first_query = next(i for i, t in enumerate(ex.ids) if t > task.ans)
        assert first_query == task.window * task.edge_windows
        body = [t for t in ex.ids[1:first_query] if t != task.pad]
        succ = {(body[i],): (body[i + 1],) for i in range(0, len(body), 2)}
        for a in ex.answers:
            k = ex.ids[a[0] - 2] - (2 * task.m + 2)
            drawn.add(k)
            node = (ex.ids[a[0] - 1],)
            for _ in range(k):
                node = succ[node]
            assert ex.ids[a[0] + 1] == node[0]
    assert drawn == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="hop_counts"):
        Depo(**{**kwargs, "hop_counts": "some"})
