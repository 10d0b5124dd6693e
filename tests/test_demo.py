"""The long-document QA demo on the shipped model: what its summary reports is what happened."""

from __future__ import annotations

from sleepagent.demo import DEMO_MODEL, DemoBatch, demo_session, run_batch, run_demo, verdict
from sleepagent.model import SleepModel
from sleepagent.train.docqa_eval import facts_needed, held_out_sessions


def test_demo_reads_two_long_documents_sleeps_during_fetches_and_keeps_the_kv_bounded():
    sm = SleepModel.from_pretrained(DEMO_MODEL)
    pages = []
    runs = run_demo(sm, places=(16, 6), questions=2, loops=(4, 1), latency=0.05, think=0.05,
                    on_page=lambda n, read, total: pages.append((n, read, total)))
    assert [r.loops for r in runs] == [4, 1]
    n4, n1 = runs
    for r in runs:
        assert r.pages_read == r.pages and r.pages[0] >= 4  # the long document spans pages
        assert r.read_replies == ["Done.", "Done."]
        assert r.sleeps_before_questions >= 4  # several windows consolidated before the first question
        assert r.max_window_tokens <= r.window < r.tokens_read  # read far more than the window holds
        assert {a["doc"] for a in r.answers} == {1, 2} and len(r.answers) == 2 + 2 + 1
        assert any(a["evicted"] for a in r.answers)
        assert r.sleeps >= r.sleeps_before_questions
    # same documents, same questions, both N; N = 4 runs three more passes per sleep
    assert [a["question"] for a in n4.answers] == [a["question"] for a in n1.answers]
    assert n4.sleep_s_total > 0 and n4.tokens_read == n1.tokens_read and n4.fast_weight_bytes == n1.fast_weight_bytes
    assert pages[-1][1] == pages[-1][2]


def test_the_batch_table_counts_every_question_and_says_what_the_intervals_say():
    sm = SleepModel.from_pretrained(DEMO_MODEL)
    n4, n1 = run_batch(sm, sessions=3, places=6, per_doc=4, loops=(4, 1))
    for b in (n4, n1):
        assert b.cells.keys() == {1, 2} and all(asked == 3 * 2 for _, asked in b.cells.values())
        assert b.documents_finished == 3
        lo, hi = b.interval(2)
        assert lo <= b.accuracy(2) <= hi
    apart = DemoBatch(4, 50, 16, {1: (190, 200), 2: (170, 200)}, 50, 1.0)
    level = DemoBatch(1, 50, 16, {1: (188, 200), 2: (70, 200)}, 50, 1.0)
    assert verdict(apart, level, 2) == "N=4 better (intervals apart)"
    assert verdict(apart, level, 1) == "no gain: a lookup needs no sleep"
    assert verdict(level, apart, 2) == "N=4 better (intervals apart)"


def test_held_out_sessions_follow_the_documented_format():
    sessions = held_out_sessions(5, [12, 9], 2, seed=3)
    for s in sessions:
        _first, _second = s.documents
        names = [set(w for w in doc.replace(".", "").split() if len(w) == 1) for doc in s.documents]
        assert len(names[0]) == 12 and len(names[1]) == 9 and not names[0] & names[1]
        assert [q.doc for q in s.questions[0]] == [0] * 8
        assert sorted(q.doc for q in s.questions[1]) == [0] * 4 + [1] * 8
        for round_ in s.questions:
            for q in round_:
                facts = facts_needed(s.documents[q.doc], q)
                assert len(facts) == q.hops and all(f in s.documents[q.doc] for f in facts)
                assert facts[-1].endswith(f"leads to {q.truth}.")
    assert held_out_sessions(5, [12, 9], 2, seed=3)[0].documents == sessions[0].documents
    assert demo_session(seed=1).documents != demo_session(seed=2).documents
