"""Task generators: the answers are right, the layout is what the module docstring says."""

from __future__ import annotations

import random
import re

import pytest

from sleepagent.train.tasks import Depo, GsmInf, Rule110, collate, make_task, rule110_step


def test_rule110_step_matches_the_rule_number():
    for pattern in range(8):
        left, center, right = (pattern >> 2) & 1, (pattern >> 1) & 1, pattern & 1
        row = [0] * 8
        row[7], row[0], row[1] = left, center, right
        assert rule110_step(row)[0] == (110 >> pattern) & 1


def test_rule110_layout_and_labels():
    task = Rule110(rows=4, steps=(3,))
    ex = task.sample(random.Random(0))
    assert len(ex.ids) == 4 * 24 + 1 + 4 and ex.ids[96] == 2
    for i in range(4):
        row = ex.ids[24 * i : 24 * (i + 1)]
        for _ in range(3):
            row = rule110_step(row)
        assert ex.ids[97 + i] == row[0]
    assert ex.answers == [[97, 98, 99, 100]] and sum(ex.loss_mask) == 4


def parse_words(tokens: list[int], m: int) -> list[tuple[int, ...]]:
    words, cur = [], []
    for t in tokens:
        cur.append(t)
        if t > m:
            words.append(tuple(cur))
            cur = []
    assert not cur
    return words


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_depo_answers_follow_the_cycle(k):
    task = Depo(n_max=12, k_max=8, window=16, edge_windows=4, queries=6)
    ex = task.sample(random.Random(k), difficulty=k)
    edge_end = task.window * task.edge_windows
    assert ex.ids[0] == task.bos and len(ex.ids) > edge_end
    body = [t for t in ex.ids[1:edge_end] if t != task.pad]
    words = parse_words(body, task.m)
    succ = {words[i]: words[i + 1] for i in range(0, len(words), 2)}
    assert len(succ) == ex.meta["n"] == task.n_max  # a single cycle over all nodes (test: n = n_max)
    rest = ex.ids[edge_end:]
    for q in re.finditer(r"h(.*?)a(.*?)(?=h|$)", "".join("h" if t == task.hop_token(k) else "a" if t == task.ans else f"<{t}>" for t in rest)):
        start = tuple(int(x) for x in re.findall(r"<(\d+)>", q.group(1)))
        answer = tuple(int(x) for x in re.findall(r"<(\d+)>", q.group(2)))
        node = start
        for _ in range(k):
            node = succ[node]
        assert node == answer
    assert len(ex.answers) == min(6, ex.meta["n"])


def test_depo_train_hops_limit_training_queries_but_not_tests():
    task = Depo(n_max=12, k_max=8, window=16, edge_windows=4, queries=6, train_hops=(1, 2))
    hop_tokens = {task.hop_token(k): k for k in task.hops}
    seen = {hop_tokens[t] for seed in range(50) for t in task.sample(random.Random(seed)).ids if t in hop_tokens}
    assert seen == {1, 2}
    assert task.test_difficulties() == [1, 2, 4, 8]
    assert hop_tokens[task.sample(random.Random(0), difficulty=8).ids[task.window * task.edge_windows]] == 8
    with pytest.raises(ValueError, match="train_hops"):
        Depo(n_max=12, k_max=8, window=16, edge_windows=4, train_hops=(3,))


def test_gsm_inf_answer_is_the_value_of_the_asked_variable():
    task = GsmInf(ops=(5,), filler=6)
    for seed in range(5):
        ex = task.sample(random.Random(seed))
        text = bytes(ex.ids).decode()
        q = re.match(r"Q: (V\d+)\? (.*) A: (-?\d+)\.$", text)
        assert q
        env: dict[str, int] = {}
        statements = [s for s in q.group(2).rstrip(".").split(". ")]
        for _ in statements:  # resolve in any order
            for s in statements:
                var, expr = re.match(r"assign (V\d+) = (.*)", s).groups()
                parts = expr.split()
                if parts[0].startswith("V"):
                    if parts[0] in env:
                        env[var] = env[parts[0]] + (int(parts[2]) * (1 if parts[1] == "+" else -1) if len(parts) > 1 else 0)
                else:
                    env[var] = int(parts[0])
        assert env[q.group(1)] == int(q.group(3))
        assert bytes(ex.ids[p] for p in ex.answers[0]).decode() == q.group(3) + "."


def test_collate_and_unknown_task():
    task = Rule110(steps=(1,))
    ids, mask = collate([task.sample(random.Random(0)), task.sample(random.Random(1))], task.pad_id)
    assert ids.shape == (2, 101) and int(mask.sum()) == 8
    with pytest.raises(ValueError, match="unknown task"):
        make_task("chess")
