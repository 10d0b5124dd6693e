"""The long-document QA demo on the shipped model: what its summary reports is what happened."""

from __future__ import annotations

from sleepagent.demo import DEMO_MODEL, run_demo
from sleepagent.model import SleepModel


def test_demo_reads_every_page_sleeps_during_fetches_and_keeps_the_kv_bounded():
    sm = SleepModel.from_pretrained(DEMO_MODEL)
    pages = []
    runs = run_demo(sm, questions=3, loops=(4, 1), latency=0.2, think=0.2,
                    on_page=lambda n, read, total: pages.append((n, read, total)))
    assert [r.loops for r in runs] == [4, 1]
    n4, n1 = runs
    for r in runs:
        assert r.pages_read == r.pages >= 1 and r.read_reply
        assert len(r.answers) == 3 and {a["hops"] for a in r.answers} <= set(sm.train_config["task_kwargs"]["hops"])
        assert r.max_window_tokens <= r.window < r.tokens_read  # read more than the window holds
        assert r.sleeps >= 2 and r.sleep_s_exposed <= r.sleep_s_hidden  # sleep runs while the user waits
    # same document, same questions, both N
    assert [a["question"] for a in n4.answers] == [a["question"] for a in n1.answers]
    assert n4.sleep_s_hidden > n1.sleep_s_hidden  # N = 4 does real work, hidden in the pauses
    assert n4.tokens_read == n1.tokens_read
    assert n4.fast_weight_bytes == n1.fast_weight_bytes
    assert pages[-1][1] == pages[-1][2]


def test_the_shipped_model_answers_held_out_questions():
    """docqa-small's README figures, on fewer held-out documents: 1-hop far above guessing (a
    place at random scores about 0.2) with either N, and 2-hop better with N = 4 sleep passes than
    with the same weights woken after one pass."""
    from sleepagent.train import evaluate, make_task

    sm = SleepModel.from_pretrained(DEMO_MODEL)
    task = make_task("docqa", **sm.train_config["task_kwargs"])
    acc = evaluate(sm.model, task, [1, 4], n=30, seed=2026)
    assert acc[4][1] >= 0.9 and acc[1][1] >= 0.9
    assert acc[4][2] >= acc[1][2] + 0.15
