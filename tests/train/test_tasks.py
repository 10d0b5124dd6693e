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
    for q in re.finditer(
        r"h(.*?)a(.*?)(?=h|$)",
        "".join("h" if t == task.hop_token(k) else "a" if t == task.ans else f"<{t}>" for t in rest),
    ):
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


@pytest.mark.parametrize("digits", [6, 2])
def test_gsm_inf_answer_is_the_value_of_the_asked_variable(digits):
    task = GsmInf(ops=(5,), filler=6, digits=digits)
    for seed in range(5):
        ex = task.sample(random.Random(seed))
        names = set(re.findall(r"V\d+", bytes(ex.ids).decode()))
        assert len(names) == 5 + 1 + 12 and all(len(n) == 1 + digits for n in names)
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
                        env[var] = env[parts[0]] + (
                            int(parts[2]) * (1 if parts[1] == "+" else -1) if len(parts) > 1 else 0
                        )
                else:
                    env[var] = int(parts[0])
        assert env[q.group(1)] == int(q.group(3))
        assert bytes(ex.ids[p] for p in ex.answers[0]).decode() == q.group(3) + "."


def test_gsm_inf_refuses_more_variables_than_its_names_allow():
    with pytest.raises(ValueError, match="2-digit names cannot name 99 variables"):
        GsmInf(ops=(8,), filler=45, digits=2)


def test_collate_and_unknown_task():
    task = Rule110(steps=(1,))
    ids, mask = collate([task.sample(random.Random(0)), task.sample(random.Random(1))], task.pad_id)
    assert ids.shape == (2, 101) and int(mask.sum()) == 8
    with pytest.raises(ValueError, match="unknown task"):
        make_task("chess")


def _original_layout(task: Depo, ex, rng: random.Random) -> tuple[list[int], list[int]]:
    """``ex`` written the way the original Depo generator writes it: no padding, separators 9700
    here and there among the edges (the mapping drops them), hop tokens 9000 + k, the answer
    marker 9500, a 0/1 label."""
    hop_of = {task.hop_token(k): k for k in task.hops}
    tokens, label, i = [0], [0], 1
    while ex.ids[i] == task.pad:
        i += 1
    while ex.ids[i] not in hop_of:
        if ex.ids[i - 1] == task.pad or ex.ids[i - 1] == task.bos or rng.random() < 0.3:
            tokens.append(task.ORIGINAL_SEP)
            label.append(0)
        tokens.append(ex.ids[i])
        label.append(0)
        i += 1
    for t in ex.ids[i:]:
        tokens.append(task.ORIGINAL_HOP + hop_of[t] if t in hop_of else task.ORIGINAL_ANS if t == task.ans else t)
    answer_positions = {p for positions in ex.answers for p in positions}
    label += [int(p in answer_positions) for p in range(i, len(ex.ids))]
    return tokens, label


@pytest.mark.parametrize("k", [1, 2, 4])
def test_depo_from_original_layout_gives_the_same_example(k):
    task = Depo(n_max=12, k_max=4, m=16, max_len=2, window=48, edge_windows=1, queries=5)
    rng = random.Random(k)
    for _ in range(20):
        ex = task.sample(rng, k)
        mapped = task.from_original(*_original_layout(task, ex, rng))
        assert (mapped.ids, mapped.loss_mask, mapped.answers) == (ex.ids, ex.loss_mask, ex.answers)
        assert mapped.meta["hops"] == [k] * len(ex.answers)


def test_depo_from_original_keeps_each_querys_own_k():
    task = Depo(n_max=8, k_max=4, m=10, max_len=1, window=32, edge_windows=1, queries=3)
    ex = task.sample(random.Random(0), 1)
    tokens, label = _original_layout(task, ex, random.Random(0))
    q = [i for i, t in enumerate(tokens) if 9000 <= t < 9500]
    tokens[q[1]] = 9004  # the second question asks 4 hops (its answer is now wrong, which is fine here)
    mapped = task.from_original(tokens, label)
    assert mapped.meta["hops"] == [1, 4, 1]
    assert mapped.ids[mapped.answers[1][0] - 2] == task.hop_token(4)


def test_depo_from_original_names_what_does_not_fit():
    from sleepagent.errors import DataError

    task = Depo(n_max=8, k_max=4, m=10, max_len=1, window=32, edge_windows=1, queries=3)
    tokens, label = _original_layout(task, task.sample(random.Random(1), 2), random.Random(1))
    q = next(i for i, t in enumerate(tokens) if 9000 <= t < 9500)
    cases = [
        ((tokens[:q] + [9008] + tokens[q + 1:], label), "this task asks [1, 2, 4] hops, not 8"),
        (([0, 21] + tokens[1:], [0, 0] + label[1:]), "edge token 21 is not a name token (1..20)"),
        (([0] + [1, 11] * 40 + tokens[q:], [0] * 81 + label[q:]), "the edges take 80 tokens"),
        ((tokens, label[:-1]), "label has"),
        ((tokens, label[:-1] + [0]), "does not mark exactly its 9500 and answer"),
        ((tokens[:q], label[:q]), "no query"),
        (([5] + tokens[1:], label), "starts with bos 0"),
    ]
    for (toks, lab), message in cases:
        with pytest.raises(DataError, match=re.escape(message)):
            task.from_original(toks, lab)


def test_gsm_inf_from_record_lays_out_a_problem_as_sample_does(tmp_path):
    import json

    from sleepagent.errors import DataError
    from sleepagent.train.tasks import read_data

    task = GsmInf(filler=4)
    records = []
    for op in (1, 3, 8):
        ex = task.sample(random.Random(op), op)
        text = bytes(ex.ids).decode()
        question, rest = text[3:].split("? ", 1)
        context, answer = rest.split(" A: ")
        mapped = task.from_record(question, context, int(answer.rstrip(".")))
        assert (mapped.ids, mapped.loss_mask, mapped.answers, mapped.difficulty) == (
            ex.ids, ex.loss_mask, ex.answers, op)  # the op count comes from following the chain
        records.append({"question_var": question, "context": context, "answer": int(answer.rstrip("."))})
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [ex.difficulty for ex in read_data(path, task)] == [1, 3, 8]

    with pytest.raises(DataError, match="V9 cannot be derived: V8 is never assigned"):
        task.from_record("V9", "assign V9 = V8 + 1. assign V1 = 3", 4)
    with pytest.raises(DataError, match="'assign V1 = three' is not"):
        task.from_record("V1", "assign V1 = three", 3)
    path.write_text(json.dumps(records[0]) + "\n" + json.dumps({"question_var": "V1"}) + "\n")
    with pytest.raises(DataError, match="line 2: expected a JSON object with question_var, context, answer"):
        read_data(path, task)


def test_depo_refuses_settings_with_too_few_names_instead_of_looping_forever():
    import pytest

    from sleepagent.train.tasks import Depo

    with pytest.raises(ValueError, match="distinct names"):
        Depo(n_max=5, k_max=2, m=4, max_len=1, window=10, edge_windows=2, queries=3)
