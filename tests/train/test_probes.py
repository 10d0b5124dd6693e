"""The edge-order probe: which 2-hop answers a single pass could have composed."""

from __future__ import annotations

import random

import pytest

from sleepagent.train import TrainConfig, evaluate, load_checkpoint, train
from sleepagent.train.probes import edge_order, order_split
from sleepagent.train.tasks import Depo, Example

KW = dict(n_max=4, k_max=2, m=4, max_len=1, window=10, edge_windows=1, queries=3)


def _doc(task: Depo, edges: list[tuple[int, int]], start: int) -> Example:
    body = [t for e in edges for t in e]
    ids = [task.bos] + [task.pad] * (task.window - 1 - len(body)) + body + [task.hop_token(2), start, task.ans, 0]
    return Example(ids, [False] * len(ids), [[len(ids) - 1]], 2, {})


def test_edge_order_reads_the_path_of_the_first_question():
    task = Depo(**{**KW, "n_max": 3})
    x, a, c = 5, 6, 7  # one-token names (shifted ids), cycle x -> a -> c -> x
    assert edge_order(task, _doc(task, [(x, a), (a, c), (c, x)], start=x)) == "after"
    assert edge_order(task, _doc(task, [(a, c), (c, x), (x, a)], start=x)) == "before"
    assert edge_order(task, _doc(task, [(a, c), (c, x), (x, a)], start=a)) == "after"  # a c, then c x


def test_order_split_partitions_the_first_questions(tmp_path):
    train(TrainConfig(task="depo", task_kwargs=KW, d_model=16, n_layers=2, n_heads=2, loops=1, steps=40,
                      batch_size=8, adam_lr=1e-2), tmp_path / "r", progress=False)
    model, _ = load_checkpoint(tmp_path / "r")
    n = 12
    split = order_split(model, KW, [1, 2], n=n)
    first = evaluate(model, Depo(**KW), [1, 2], n=n, difficulties=[2], first_only=True)
    rng = random.Random("12345-2")  # evaluate's test documents for difficulty 2
    task = Depo(**KW)
    counts = {"before": 0, "after": 0}
    for _ in range(n):
        counts[edge_order(task, task.sample(rng, 2))] += 1
    assert counts["before"] and counts["after"]
    for n_loops in (1, 2):
        mixed = split[n_loops]["before"] * counts["before"] + split[n_loops]["after"] * counts["after"]
        assert abs(mixed - first[n_loops][2] * n) < 1e-9


def test_row_split_scores_each_rows_label_on_the_study_documents(tmp_path):
    """Per-row accuracy equals the greedy label read off the logits of the same test documents,
    exact match is never above the worst row, and the majority share is counted from the labels."""
    import torch

    from sleepagent.train.probes import row_split
    from sleepagent.train.tasks import Rule110, collate

    kw = dict(rows=3, steps=(2,))
    train(TrainConfig(task="rule110", task_kwargs=kw, d_model=16, n_layers=2, n_heads=2, loops=1, steps=30,
                      batch_size=8, adam_lr=1e-2), tmp_path / "r", progress=False)
    model, _ = load_checkpoint(tmp_path / "r")
    n = 40
    rows, majority = row_split(model, kw, [1, 2], n=n)
    task = Rule110(**kw)
    rng = random.Random("12345-2")
    docs = [task.sample(rng, 2) for _ in range(n)]
    ids, mask = collate(docs, task.pad_id)
    pos = docs[0].answers[0]
    for n_loops in (1, 2):
        with torch.no_grad():
            logits = model.eval()(ids, mask, loops=n_loops, return_logits=True).logits
        right = logits[:, [p - 1 for p in pos]].argmax(-1) == ids[:, pos]
        assert rows[n_loops] == pytest.approx(right.double().mean(0).tolist())
        assert evaluate(model, task, [n_loops], n=n)[n_loops][2] <= min(rows[n_loops])
    labels = ids[:, pos].double().mean(0)
    assert majority == pytest.approx(torch.maximum(labels, 1 - labels).tolist())
