"""The trainer: resumes exactly, saves no pickles, warm-up freezes non-GDN layers, eval reports."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from sleepagent.errors import CheckpointError
from sleepagent.train import TrainConfig, evaluate, load_checkpoint, make_task, plot_accuracy, train

DEPO = dict(task="depo", task_kwargs=dict(n_max=6, k_max=2, window=12, edge_windows=3, queries=3))


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**DEPO, "loops": 2, "steps": 4, "batch_size": 4, "d_model": 32, "n_heads": 2,
                          "save_every": 2, **kw})


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_equals_uninterrupted(tmp_path, optimizer):
    train(cfg(optimizer=optimizer), tmp_path / "full", progress=False)
    train(cfg(optimizer=optimizer, steps=2), tmp_path / "split", progress=False)
    train(cfg(optimizer=optimizer), tmp_path / "split", progress=False)  # resumes at step 2
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    meta = json.loads((tmp_path / "split" / "train.json").read_text())
    assert meta["step"] == 4
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "tokenizer.json", "train.json"]


def test_stop_at_then_resume_follows_the_planned_schedule(tmp_path):
    c = cfg(schedule="cosine", warmup_steps=1)
    train(c, tmp_path / "full", progress=False)
    stopped = train(c, tmp_path / "split", progress=False, stop_at=3)
    assert stopped["step"] == 3 and json.loads((tmp_path / "split" / "train.json").read_text())["step"] == 3
    train(c, tmp_path / "split", progress=False)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_time_limit_saves_where_it_stops_and_resumes_exactly(tmp_path):
    """A wall-clock budget (a GPU lent for minutes) stops after the step that crosses it, saves
    off the save_every grid, and the same config without the limit resumes to the same weights."""
    train(cfg(save_every=4), tmp_path / "full", progress=False)
    stopped = train(cfg(save_every=4, time_limit=1e-9), tmp_path / "split", progress=False)
    assert stopped["step"] == 1
    assert json.loads((tmp_path / "split" / "train.json").read_text())["step"] == 1
    assert train(cfg(save_every=4), tmp_path / "split", progress=False)["step"] == 4
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_resume_with_another_config_is_refused(tmp_path):
    train(cfg(steps=2), tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="another config"):
        train(cfg(loops=3), tmp_path / "r", progress=False)


def test_training_changes_weights_and_gdn_warmup_freezes_the_rest(tmp_path):
    train(cfg(steps=2, warmup_gdn_steps=2), tmp_path / "w", progress=False)
    trained = weights(tmp_path / "w")
    task = make_task(DEPO["task"], **DEPO["task_kwargs"])
    from sleepagent.train.trainer import build_model

    init = build_model(cfg(), task).state_dict()
    gdn = [k for k in init if k.startswith(("layers.0.", "layers.2."))]  # default layout: gdn, attn, gdn, attn
    other = [k for k in init if k not in gdn]
    assert any(not torch.equal(init[k], trained[k]) for k in gdn)
    assert all(torch.equal(init[k], trained[k]) for k in other)


def test_evaluate_reports_per_loops_and_difficulty(tmp_path):
    train(cfg(steps=2), tmp_path / "e", progress=False)
    model, _meta = load_checkpoint(tmp_path / "e")
    task = make_task(DEPO["task"], **DEPO["task_kwargs"])
    result = evaluate(model, task, [1, 2], n=8)
    assert set(result) == {1, 2} and set(result[1]) == {1, 2}
    assert all(0.0 <= a <= 1.0 for row in result.values() for a in row.values())
    png = plot_accuracy(result, tmp_path / "acc.png", title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_task_checkpoint_is_not_a_chat_model(tmp_path):
    from sleepagent.model import SleepModel

    train(cfg(steps=1), tmp_path / "t", progress=False)
    with pytest.raises(CheckpointError, match="task model"):
        SleepModel.from_pretrained(tmp_path / "t")


async def test_docqa_training_gives_a_chat_model(tmp_path):
    from sleepagent import Agent, SleepPolicy
    from sleepagent.model import SleepModel
    from sleepagent.testing import TestModel

    kw = dict(n_places=(3, 4), questions=1, page_chars=100, window=192)
    c = TrainConfig(task="docqa", task_kwargs=kw, loops=2, steps=1, batch_size=2, d_model=32, n_heads=2, min_fill=0.3)
    train(c, tmp_path / "d", progress=False)
    sm = SleepModel.from_pretrained(tmp_path / "d")
    agent = Agent(TestModel(["Done."], base=sm), sleep=SleepPolicy(loops=2), system_prompt="x")
    assert (await agent.run("Read the document.")).output == "Done."
    model, _ = load_checkpoint(tmp_path / "d")
    result = evaluate(model, make_task("docqa", **kw), [1, 2], n=2)
    assert set(result) == {1, 2} and set(result[1]) == {1, 2, 3}


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    from sleepagent.train.trainer import lr_factor

    c = cfg(steps=100, warmup_steps=10, schedule="cosine")
    factors = [lr_factor(c, s) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))  # non-increasing after warm-up
    assert factors[-1] == pytest.approx(0.1, abs=0.01)
    assert all(lr_factor(cfg(steps=100), s) == 1.0 for s in range(100))  # constant, no warm-up


def test_periodic_eval_is_recorded_and_survives_resume(tmp_path):
    train(cfg(steps=2, eval_every=2, eval_n=4), tmp_path / "p", progress=False)
    # eval settings do not change what is learned: resuming with others is allowed
    result = train(cfg(steps=4, eval_every=1, eval_n=4), tmp_path / "p", progress=False)
    evals = json.loads((tmp_path / "p" / "train.json").read_text())["evals"]
    assert [e["step"] for e in evals] == [2, 3, 4] == [e["step"] for e in result["evals"]]
    assert set(evals[0]["accuracy"]) == {"1", "2"}  # N = 1 and the trained N
    assert set(evals[0]["accuracy"]["2"]) == {"1", "2"}  # per difficulty (hops)


def test_init_from_starts_from_another_runs_weights(tmp_path):
    train(cfg(steps=2, loops=1), tmp_path / "n1", progress=False)
    start = weights(tmp_path / "n1")
    result = train(cfg(steps=1, loops=2, init_from=str(tmp_path / "n1")), tmp_path / "n2", progress=False)
    assert result["step"] == 1
    after = weights(tmp_path / "n2")
    assert any(not torch.equal(start[k], after[k]) for k in start)  # trained on from there
    # a fresh run from the same start moves the same way: the start really was n1's weights
    train(cfg(steps=1, loops=2, init_from=str(tmp_path / "n1")), tmp_path / "n2b", progress=False)
    assert all(torch.equal(after[k], v) for k, v in weights(tmp_path / "n2b").items())
    scratch = train(cfg(steps=1, loops=2), tmp_path / "scratch", progress=False)
    assert scratch["step"] == 1 and any(not torch.equal(after[k], v) for k, v in weights(tmp_path / "scratch").items())
    with pytest.raises(CheckpointError, match="another architecture"):
        train(cfg(steps=1, d_model=48, init_from=str(tmp_path / "n1")), tmp_path / "bad", progress=False)


def test_first_only_scores_the_first_answer_of_each_document(tmp_path):
    """first_only equals scoring documents whose answer list was cut to its first answer."""
    import dataclasses

    from sleepagent.train.tasks import Depo

    class FirstAnswer(Depo):
        def sample(self, rng, difficulty=None, n=None):
            ex = super().sample(rng, difficulty, n)
            return dataclasses.replace(ex, answers=ex.answers[:1])

    kwargs = dict(n_max=4, k_max=2, m=4, max_len=1, window=10, edge_windows=1, queries=3)
    # 40 steps: enough to answer some questions, so first-only and all-answer scores can differ
    train(TrainConfig(task="depo", task_kwargs=kwargs, d_model=16, n_layers=2, n_heads=2, loops=1, steps=40,
                      batch_size=8, adam_lr=1e-2), tmp_path / "r", progress=False)
    model, _ = load_checkpoint(tmp_path / "r")
    first = evaluate(model, Depo(**kwargs), [1, 2], n=9, first_only=True)
    assert first == evaluate(model, FirstAnswer(**kwargs), [1, 2], n=9)
    assert first != evaluate(model, Depo(**kwargs), [1, 2], n=9)


def _decode_with_the_runtime(model, ex, loops: int) -> list[int]:
    """The same example answered the way the runtime answers: prefill up to each answer token,
    greedy-decode it (the model's own token stays in the context), sleep whenever the window is
    full. Returns the ids with every answer span filled by the model."""
    ids = list(ex.ids)
    todo = {p for positions in ex.answers for p in positions}
    state, pos, W = model.new_state(1), 0, model.config.window
    while pos < len(ids):
        if state.window_len == W:
            state = model.consolidate(state, loops=loops)
        n = min(W - state.window_len, len(ids) - pos)
        nxt = next((p for p in sorted(todo) if p > pos), None)
        if nxt is not None and nxt <= pos + n:
            n = nxt - pos  # read up to the answer token, then predict it
        logits = model.prefill(torch.tensor([ids[pos : pos + n]]), state)
        pos += n
        if pos in todo:
            ids[pos] = int(logits[0, -1].argmax())
    return ids


def test_free_running_scores_what_greedy_decoding_through_the_runtime_answers(tmp_path):
    """eval's default: each answer is the model's own greedy tokens with its own earlier answers
    (right or wrong) in context, exactly as prefill/step/sleep would produce them; teacher forcing
    (the true earlier answers in context) is another number whenever an earlier answer is wrong."""
    from sleepagent.train.tasks import Depo, collate
    from sleepagent.train.trainer import example_hits, free_run

    kwargs = dict(n_max=5, k_max=2, m=4, max_len=2, window=10, edge_windows=2, queries=4)
    train(TrainConfig(task="depo", task_kwargs=kwargs, d_model=16, n_layers=2, n_heads=2, loops=2, steps=30,
                      batch_size=8, adam_lr=1e-2), tmp_path / "r", progress=False)
    model, _ = load_checkpoint(tmp_path / "r")
    model.eval()
    task = Depo(**kwargs)
    import random

    examples = [task.sample(random.Random(i), 2) for i in range(6)]
    for ex in examples:
        ids, mask = collate([ex], task.pad_id)
        got = free_run(model, [ex], ids, mask, 2, None)[0].tolist()
        assert got == _decode_with_the_runtime(model, ex, 2)
    free = example_hits(model, task, examples, 2)
    forced = example_hits(model, task, examples, 2, teacher_forced=True)
    assert [h[0] for h in free] == [h[0] for h in forced]  # a first answer has no earlier one
    later_wrong = [i for i, h in enumerate(forced) if not all(h[:-1])]
    assert all(len(h) == len(ex.answers) for h, ex in zip(free, examples, strict=True)) and later_wrong


def test_sliding_eviction_trains_and_is_recorded(tmp_path):
    """`train --evict sliding --keep K`: the model slides its window (the oldest W - K tokens are
    consolidated at each sleep), and evaluation runs it the same way."""
    c = cfg(evict="sliding", keep=4, task_kwargs=dict(n_max=6, k_max=2, window=12, edge_windows=3, queries=3))
    train(c, tmp_path / "s", progress=False)
    model, meta = load_checkpoint(tmp_path / "s")
    assert model.config.evict == "sliding" and model.config.keep == 4 and meta["config"]["evict"] == "sliding"
    result = evaluate(model, make_task("depo", **c.task_kwargs), [1, 2], n=4)
    assert set(result) == {1, 2}
    from sleepagent.model import SleepHybridLM

    hard = SleepHybridLM(model.config.model_copy(update={"evict": "hard", "keep": 0}))
    hard.load_state_dict(model.state_dict())
    ids = torch.randint(1, 10, (1, 30))
    assert not torch.equal(
        model(ids, loops=2, return_logits=True).logits, hard(ids, loops=2, return_logits=True).logits
    )
