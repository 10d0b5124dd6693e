"""Training a transformers hybrid to sleep: the adapter's Algorithm-1 forward is differentiable
and right (float64 finite differences), equals the inference path, lowers the loss of every
supported architecture in a step, and `train --base` writes a checkpoint that transformers and
sleepagent both load, with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from sleepagent.model import SleepModel
from sleepagent.model.hf_tiny import save_tiny_hybrid
from sleepagent.model.ops import gated_delta_rule

TYPES = ["qwen3_5", "qwen3_next", "olmo_hybrid"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {t: save_tiny_hybrid(root / t, t) for t in TYPES}


def reference_kernel(query, key, value, g, beta, chunk_size=64, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, **kwargs):
    """The project's token-by-token reference (fla's naive recurrence), in the inputs' precision
    (float64 here), behind transformers' kernel signature."""
    rep = value.shape[2] // key.shape[2]
    query, key = query.repeat_interleave(rep, dim=2), key.repeat_interleave(rep, dim=2)
    return gated_delta_rule(query, key, value, g.to(value.dtype), beta.to(value.dtype), initial_state=initial_state,
                            output_final_state=output_final_state, use_qk_l2norm=use_qk_l2norm_in_kernel,
                            backend="torch_recurrent")


def float64_model(path):
    """The same checkpoint in float64, its GDN layers on the float64 reference kernel."""
    sm = SleepModel.from_pretrained(path, window=8, loops=2, dtype=torch.float64)
    for module in sm.model.gdn.values():
        module.forward.__func__.__globals__["torch_chunk_gated_delta_rule"] = reference_kernel
    return sm.model


def test_gradients_through_sleep_match_finite_differences_in_float64(checkpoints):
    """Three windows, two sleeps of N = 2: autograd's gradient of the loss (which reaches the
    earlier windows only through the fast weights the sleep passes wrote) equals central
    differences, for weights of a GDN layer, an attention layer and the embedding. (transformers
    computes the GDN gate in float32 even in a float64 model, which limits the differences'
    precision: hence a step of 1e-3 and a tolerance of 2e-3.)"""
    torch.manual_seed(0)
    lm = float64_model(checkpoints["qwen3_5"])
    ids = torch.randint(10, 250, (1, 22))
    ids[0, 3] = 7  # a token only the first window holds
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 17:] = True  # loss on the last window only: its gradient comes through two sleeps
    lm.zero_grad()
    lm(ids, mask, loops=2).loss.backward()
    params = dict(lm.named_parameters())
    embed = next(p for n, p in params.items() if n.endswith("embed_tokens.weight"))
    through_sleep = embed.grad[7].clone()
    assert through_sleep.abs().max() > 1e-4  # it reaches the first window, through the fast weights
    lm.zero_grad()
    lm(ids, mask, loops=2, detach_every=1).loss.backward()
    assert float(embed.grad[7].abs().max()) == 0.0  # and only through them
    lm.zero_grad()
    lm(ids, mask, loops=2).loss.backward()
    names = [n for n in params if n.endswith(("0.linear_attn.in_proj_qkv.weight", "3.self_attn.q_proj.weight",
                                             "embed_tokens.weight"))]
    assert len(names) == 3
    gen = torch.Generator().manual_seed(1)
    for name in names:
        p = params[name]
        flat = p.grad.flatten().abs()
        picks = torch.topk(flat, 2).indices.tolist() + [int(torch.randint(0, flat.numel(), (1,), generator=gen))]
        if p is embed:
            picks.append(7 * embed.shape[1] + int(through_sleep.abs().argmax()))
        for idx in picks:
            with torch.no_grad():
                orig = p.view(-1)[idx].item()
                p.view(-1)[idx] = orig + 1e-3
                up = lm(ids, mask, loops=2).loss.item()
                p.view(-1)[idx] = orig - 1e-3
                down = lm(ids, mask, loops=2).loss.item()
                p.view(-1)[idx] = orig
            fd = (up - down) / 2e-3
            assert abs(fd - p.grad.view(-1)[idx].item()) <= 2e-3 * (1 + abs(fd)), (name, idx, fd)


def test_float32_gradients_agree_with_the_float64_reference(checkpoints):
    lm64 = float64_model(checkpoints["qwen3_5"])
    lm32 = SleepModel.from_pretrained(checkpoints["qwen3_5"], window=8, loops=2).model
    ids = torch.randint(0, 250, (2, 22), generator=torch.Generator().manual_seed(3))
    for lm in (lm32, lm64):
        lm.zero_grad()
        lm(ids, loops=2).loss.backward()
    g32 = dict(lm32.named_parameters())
    for name, p in lm64.named_parameters():
        torch.testing.assert_close(g32[name].grad.double(), p.grad, rtol=2e-3, atol=2e-5, msg=name)


@pytest.mark.parametrize("kind", TYPES)
def test_the_training_forward_equals_the_inference_path_and_a_step_lowers_the_loss(checkpoints, kind):
    sm = SleepModel.from_pretrained(checkpoints[kind], window=16, loops=3)
    lm = sm.model
    ids = torch.randint(0, 250, (2, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # the logits of window 2 after window 1's sleep: as the runtime computes them
        out = lm(ids[:1, :32], loops=3, return_logits=True)
        state = lm.new_state()
        lm.prefill(ids[:1, :16], state)
        state = lm.consolidate(state, loops=3)
        torch.testing.assert_close(out.logits[0, 16:], lm.prefill(ids[:1, 16:32], state)[0], rtol=1e-5, atol=1e-5)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    before = lm(ids, loops=3).loss
    before.backward()
    opt.step()
    with torch.no_grad():
        after = lm(ids, loops=3).loss
    assert after < before - 1e-3


@pytest.mark.slow
def test_train_base_writes_a_checkpoint_transformers_and_sleepagent_load(checkpoints, tmp_path):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from sleepagent.cli import app

    out = tmp_path / "run"
    args = ["train", "--base", str(checkpoints["qwen3_5"]), "--task", "docqa", "--loops", "2", "--steps", "2",
            "--batch-size", "2", "--optimizer", "adamw", "--adam-lr", "1e-3", "--window", "128", "--loop-layers", "1,3",
            "--warmup-gdn-steps", "1", "--task-args",
            '{"n_places": [2, 3], "hops": [1], "questions": 2, "page_chars": 56, "name_len": 1}', "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "sleepagent.json").read_text())
    assert settings == {"window": 128, "loops": 2, "loop_layers": [1, 3], "evict": "hard", "keep": 0}
    hf = AutoModelForCausalLM.from_pretrained(out)  # the base architecture, with the trained weights
    sm = SleepModel.from_pretrained(out)
    assert sm.config.loops == 2 and sm.config.span == (1, 3) and sm.prompt.system_prompt
    ids = torch.randint(0, 250, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(sm.model.prefill(ids, sm.model.new_state()), hf(ids).logits.float(),
                                   rtol=1e-5, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_5"])
    changed = {n for n, p in hf.state_dict().items() if not torch.equal(p, base.state_dict()[n])}
    assert changed and any("linear_attn" in n for n in changed)  # it trained
    assert json.loads((out / "train.json").read_text())["step"] == 2


@pytest.mark.slow
def test_lora_trains_only_adapters_and_merges_them_into_the_checkpoint(checkpoints, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from sleepagent.train import TrainConfig, train

    kw = {"n_places": [2, 3], "hops": [1], "questions": 2, "page_chars": 56, "name_len": 1}
    cfg = TrainConfig(task="docqa", task_kwargs=kw, base=str(checkpoints["qwen3_5"]), loops=2, steps=2, batch_size=2,
                      optimizer="adamw", adam_lr=1e-2, window=128, lora=4)
    train(cfg, tmp_path / "lora", progress=False)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora").state_dict()
    base = AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_5"]).state_dict()
    changed = {n for n in base if not torch.equal(base[n], merged[n])}
    assert changed and all(n.endswith("weight") and "layers." in n for n in changed)  # linear layers only
    assert not any("embed" in n or "norm" in n for n in changed)


def test_train_base_reads_gsm_inf_through_the_models_tokenizer_and_eval_data_scores_it(checkpoints, tmp_path):
    """The GPU recipe's data path at tiny size: GSM-Infinite-style problems rendered through the
    checkpoint's own tokenizer (what a real Qwen3.5 must read), and records in the original
    generator's layout scored through `eval --data` the same way."""
    import random

    from typer.testing import CliRunner

    from sleepagent.cli import app
    from sleepagent.train.finetune import TokenizedTask
    from sleepagent.train.tasks import GsmInf
    from sleepagent.train.trainer import load_checkpoint

    out = tmp_path / "gsm"
    task_args = '{"ops": [1, 2], "filler": 2, "window": 48, "digits": 2}'
    result = CliRunner().invoke(app, ["train", "--base", str(checkpoints["qwen3_5"]), "--task", "gsm_inf", "--loops",
                                      "2", "--steps", "2", "--batch-size", "2", "--task-args", task_args,
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, _meta = load_checkpoint(out)
    assert model.config.window == 48 and model.config.loops == 2
    tokenized = TokenizedTask(GsmInf(ops=(1, 2), filler=2, window=48, digits=2), model.tokenizer)
    ex = tokenized.sample(random.Random(3), 2)
    text = model.tokenizer.decode(ex.ids)
    assert text.startswith("Q: V") and model.tokenizer.decode([ex.ids[p] for p in ex.answers[0]]) == \
        text.rsplit("A: ", 1)[1]  # the answer span is exactly the value and its dot
    assert all(ex.loss_mask[p] for p in ex.answers[0]) and sum(ex.loss_mask) == len(ex.answers[0])
    records = tmp_path / "gsm.jsonl"
    records.write_text(json.dumps({"question_var": "V12", "context": "assign V11 = 4. assign V12 = V11 + 1",
                                   "answer": 5}) + "\n")
    result = CliRunner().invoke(app, ["eval", str(out), "--data", str(records), "--loops", "1,2", "--json"])
    assert result.exit_code == 0, result.output
    report, _ = json.JSONDecoder().raw_decode(result.output[result.output.index('{"task"'):])
    assert report["task"] == "gsm_inf" and report["counts"]["2"] == {"1": [report["counts"]["2"]["1"][0], 1]}
