"""Training and evaluation on the synthetic tasks: the sleep effect, measured.

``train(cfg, out)`` trains a SleepHybridLM with the training forward of Algorithm 1 (masked
cross-entropy on answer tokens; backprop through every window and sleep pass), writes a checkpoint
directory (``config.json``, ``model.safetensors``, ``train.json``, ``optimizer.safetensors``) every
``save_every`` steps, and resumes from it. Nothing is pickled: optimizer moments go to
safetensors, scalars to JSON.

``evaluate(model, task, loops)`` scores exact match per answer on a fresh seeded test set, per
difficulty and per N, free-running as an agent answers: each answer is the model's own greedy
tokens, with its own earlier answers (right or wrong) in the context. Teacher forcing (the true
earlier answers in context, one forward per batch) only on request, and labelled so.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..errors import CheckpointError, ConfigError
from ..model import SleepHybridConfig, SleepHybridLM
from ..model.hf import is_transformers_checkpoint
from ..model.pretrained import write_prompt
from ..tokenizer import PromptConventions
from .docqa import pause_windows
from .finetune import load_run, prepare_base
from .grow import grow
from .run import (
    Run,
    TrainConfig,
    build_optimizers,
    load_optimizers,
    lr_factor,
    resume_meta,
    save_optimizers,
)
from .tasks import collate, make_task

__all__ = [
    "TrainConfig",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "loss_of_batch",
    "lr_factor",
    "plot_accuracy",
    "sample_batch",
    "train",
]


def build_model(cfg: TrainConfig, task) -> SleepHybridLM:
    mcfg = SleepHybridConfig(
        vocab_size=task.vocab_size,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        gdn_heads=cfg.gdn_heads or cfg.n_heads,
        gdn_v_heads=cfg.gdn_v_heads,
        gdn_head_k_dim=cfg.gdn_head_k_dim,
        gdn_head_v_dim=cfg.gdn_head_v_dim,
        layer_types=cfg.layer_types,
        conv_size=cfg.conv_size,
        window=cfg.window or task.window,
        evict=cfg.evict,
        keep=cfg.keep,
        loops=cfg.loops,
        tie_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    return SleepHybridLM(mcfg)


def save_checkpoint(
    out: Path, model: SleepHybridLM, cfg: TrainConfig, step: int, history: list, opts, task=None,
    evals: list | None = None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".tmp"
    tmp.mkdir(exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(json.loads(model.config.to_json()), indent=2) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    scalars = save_optimizers(opts, tmp / "optimizer.safetensors")
    # chat tasks (docqa) write their byte tokenizer: the checkpoint then loads as a SleepModel
    tok = getattr(task, "tokenizer", None)
    spec = tok.to_dict() if tok is not None else {"type": "task", "task": cfg.task}
    (tmp / "tokenizer.json").write_text(json.dumps(spec) + "\n")
    if getattr(task, "system_prompt", None):  # chat tasks: the prompt the model is trained to read
        write_prompt(tmp, PromptConventions(system_prompt=task.system_prompt))
    (tmp / "train.json").write_text(
        json.dumps({"config": cfg.model_dump(mode="json"), "step": step, "history": history,
                    "evals": evals or [], "optimizer_scalars": scalars}, indent=1) + "\n"
    )
    for f in tmp.iterdir():  # rename file by file: a crash mid-save leaves a loadable checkpoint
        f.replace(out / f.name)
    tmp.rmdir()


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[Any, dict]:
    """A trained task model and its ``train.json`` (config, step, history): a
    :class:`SleepHybridLM`, or for a run of ``train --base`` the transformers hybrid it fine-tuned
    (an :class:`~sleepagent.model.hf.HFHybridLM` with the run's sleep settings)."""
    path = Path(path)
    if is_transformers_checkpoint(path):
        return load_run(path, device)
    try:
        mcfg = SleepHybridConfig.from_json((path / "config.json").read_text())
        meta = json.loads((path / "train.json").read_text()) if (path / "train.json").exists() else {}
        weights = load_file(str(path / "model.safetensors"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load checkpoint {path}: {e}") from None
    model = SleepHybridLM(mcfg)
    model.load_state_dict(weights, strict=not mcfg.tie_embeddings)
    return model.to(device), meta


def train(
    cfg: TrainConfig, out: str | Path, *, progress: bool = True, resume: bool = True, stop_at: int | None = None
) -> dict:
    """Train (or resume) a run; returns ``{"step", "loss", "history"}``.

    ``stop_at``: stop (and save) after that step, on the schedule planned for ``cfg.steps``; the
    same command with a later ``stop_at`` (or none) resumes where it stopped. With ``cfg.base`` a
    local transformers hybrid is fine-tuned to sleep (:mod:`sleepagent.train.finetune`).
    """
    out = Path(out)
    run = prepare_base(cfg, out, resume) if cfg.base else _prepare_native(cfg, out, resume)
    return _fit(cfg, run, out, progress=progress, stop_at=stop_at)


def _prepare_native(cfg: TrainConfig, out: Path, resume: bool) -> Run:
    task = make_task(cfg.task, **cfg.task_kwargs)
    model = build_model(cfg, task).to(cfg.device)
    opts = build_optimizers(cfg, model)
    run = Run(model, task, opts, lambda step, history, evals: save_checkpoint(
        out, model, cfg, step, history, opts, task, evals),
        {id(p) for i in model.config.gdn_layers for p in model.layers[i].parameters()})
    meta = resume_meta(cfg, out) if resume else None
    if meta is not None:
        loaded, _ = load_checkpoint(out, cfg.device)
        model.load_state_dict(loaded.state_dict())
        load_optimizers(opts, out / "optimizer.safetensors", meta.get("optimizer_scalars", {}))
        run.step, run.history, run.evals = meta["step"], meta["history"], meta.get("evals", [])
    elif cfg.init_from:
        start, _ = load_checkpoint(cfg.init_from, cfg.device)
        model.load_state_dict(_initial_weights(start, model, cfg.init_from, cfg.seed).state_dict())
    return run


def _initial_weights(start: SleepHybridLM, model: SleepHybridLM, source: str, seed: int) -> SleepHybridLM:
    """The weights a run starts from: ``start`` itself when it has the run's architecture, or
    ``start`` grown to it (:func:`~sleepagent.train.grow.grow`: more or wider GDN heads, GDN blocks
    inserted) when the run's model is a larger copy of it. The window and N are settings of the
    run, not of the weights (RoPE positions lie within the window; a smaller window only uses
    fewer of them)."""
    def shape(cfg: SleepHybridConfig) -> dict:
        # sizes resolved (an explicit default equals an omitted one); window and N left out
        out = cfg.model_dump(exclude={"loops", "window"})
        out.update(gdn_v_heads=cfg.v_heads, gdn_head_k_dim=cfg.head_k_dim, gdn_head_v_dim=cfg.head_v_dim)
        return out

    want = shape(model.config)
    if shape(start.config) == want:
        return start
    old, new = list(start.config.layer_types or ()), list(model.config.layer_types or ())
    inserted, i = [], 0
    for pos, kind in enumerate(new):
        if i < len(old) and old[i] == kind:
            i += 1
        elif kind == "gdn":
            inserted.append(pos)
        else:
            break
    c = model.config
    try:
        grown = grow(start, gdn_heads=c.gdn_heads, gdn_v_heads=c.v_heads, gdn_head_k_dim=c.head_k_dim,
                     gdn_head_v_dim=c.head_v_dim, insert_gdn=inserted, seed=seed)
    except ConfigError as e:
        raise CheckpointError(f"init_from={source}: cannot grow it into this run's model ({e})") from None
    if i != len(old) or shape(grown.config) != want:
        raise CheckpointError(f"init_from={source} has another architecture than this run, and this run's model "
                              "is not a grown copy of it (more or wider GDN heads, GDN blocks inserted)")
    return grown


def _fit(cfg: TrainConfig, run: Run, out: Path, *, progress: bool, stop_at: int | None) -> dict:
    """The training loop: one seeded batch per step (a resumed run sees the same batches)."""
    end = min(cfg.steps, stop_at) if stop_at else cfg.steps
    model, task, opts = run.model, run.task, run.opts
    base_lrs = [[group["lr"] for group in opt.param_groups] for opt in opts]
    step, history, evals = run.step, run.history, run.evals
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"{cfg.task} N={cfg.loops}")
    t0, tokens, loss_ema = time.perf_counter(), 0, None
    # training wall and CPU seconds of earlier invocations (periodic evaluations excluded)
    spent = next((h["train_s"] for h in reversed(history) if "train_s" in h), 0.0)
    spent_cpu = next((h["cpu_s"] for h in reversed(history) if "cpu_s" in h), 0.0)
    c0, eval_s, eval_cpu = time.process_time(), 0.0, 0.0
    if cfg.time_budget is not None and spent_cpu >= cfg.time_budget:
        end = step  # its budget was spent by earlier invocations
    while step < end:
        rng = random.Random(f"{cfg.seed}-{step}")  # one stream per step: a resumed run sees the same batches
        batch = sample_batch(task, rng, cfg.batch_size)
        factor = lr_factor(cfg, step)
        for opt, lrs in zip(opts, base_lrs, strict=True):
            opt.zero_grad(set_to_none=True)
            for group, lr in zip(opt.param_groups, lrs, strict=True):
                group["lr"] = lr * factor
        loss_t, n_tokens = loss_of_batch(model, task, batch, cfg)
        loss_t.backward()
        if step < cfg.warmup_gdn_steps:  # warm-up: only the GDN layers learn
            for p in params:
                if id(p) not in run.warmup_params:
                    p.grad = None
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        for opt in opts:
            opt.step()
        step += 1
        tokens += n_tokens
        loss = loss_t.detach().item()
        loss_ema = loss if loss_ema is None else 0.98 * loss_ema + 0.02 * loss
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
        train_s = spent + time.perf_counter() - t0 - eval_s
        cpu_s = spent_cpu + time.process_time() - c0 - eval_cpu
        mark = {"step": step, "loss": loss_ema, "train_s": round(train_s, 1), "cpu_s": round(cpu_s, 1)}
        if step % 10 == 0:
            history.append(mark)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            if not evals or evals[-1]["step"] != step:
                e0, ec0 = time.perf_counter(), time.process_time()
                evals.append({"step": step, "accuracy": _jsonable(_periodic_eval(model, task, cfg)),
                              "mode": "teacher_forced" if cfg.eval_teacher_forced else "free",
                              "train_s": round(train_s, 1), "cpu_s": round(cpu_s, 1)})
                eval_s += time.perf_counter() - e0
                eval_cpu += time.process_time() - ec0
            model.train()
        out_of_time = (cfg.time_limit is not None and time.perf_counter() - t0 >= cfg.time_limit) or (
            cfg.time_budget is not None and cpu_s >= cfg.time_budget)
        if step % cfg.save_every == 0 or step == end or out_of_time:
            if not history or history[-1]["step"] != step:
                history.append(mark)  # the saved step's seconds: a resume continues from them
            run.save(step, history, evals)
        if out_of_time:  # a wall-clock budget (a lent GPU): the same command resumes from here
            break
    bar.close()
    return {"step": step, "loss": loss_ema, "history": history, "evals": evals}


def _periodic_eval(model: SleepHybridLM, task, cfg: TrainConfig) -> dict[int, dict[int, float]]:
    # its own seed, apart from evaluate()'s default test set, so the final score stays untouched
    loops = list(cfg.eval_loops or sorted({1, cfg.loops}))
    return evaluate(model, task, loops, n=cfg.eval_n, seed=777, min_fill=cfg.min_fill,
                    teacher_forced=cfg.eval_teacher_forced)


def _jsonable(result: dict[int, dict[int, float]]) -> dict[str, dict[str, float]]:
    return {str(n_loops): {str(d): a for d, a in row.items()} for n_loops, row in result.items()}


def _windows(task, ex, min_fill: float) -> list[int] | None:
    """Explicit windows for tasks whose examples carry the runtime's pause points (docqa)."""
    if "pauses" not in ex.meta:
        return None
    return pause_windows(len(ex.ids), ex.meta["pauses"], task.window, min_fill)


def _groups(task, examples: list, min_fill: float) -> list[tuple[list[int] | None, list]]:
    """Examples that can share one forward pass: rows of a batch share their windows, so examples
    with their own window boundaries (docqa) are grouped by length and boundaries."""
    groups: dict[tuple, tuple[list[int] | None, list]] = {}
    for ex in examples:
        windows = _windows(task, ex, min_fill)
        key = (len(ex.ids), tuple(windows)) if windows is not None else ()
        groups.setdefault(key, (windows, []))[1].append(ex)
    return list(groups.values())


def sample_batch(task, rng: random.Random, size: int) -> list:
    # Tasks may draw a whole batch at once (docqa: one document size per batch, so the batch
    # shares its window boundaries and runs as one forward pass).
    if hasattr(task, "sample_batch"):
        return task.sample_batch(rng, size)
    return [task.sample(rng) for _ in range(size)]


def loss_of_batch(model: SleepHybridLM, task, batch, cfg: TrainConfig) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the batch's answer tokens (and the number of tokens read)."""
    kw = dict(loops=cfg.loops, checkpoint=cfg.checkpoint, detach_every=cfg.detach_every)
    total, count, tokens = None, 0, 0
    for windows, group in _groups(task, batch, cfg.min_fill):
        ids, mask = collate(group, task.pad_id)
        out = model(ids.to(cfg.device), mask.to(cfg.device), window_lengths=windows, **kw)
        part = out.loss * out.n_targets
        total = part if total is None else total + part
        count += out.n_targets
        tokens += ids.numel()
    assert total is not None
    return total / max(count, 1), tokens


def test_set(task, difficulty: int, n: int, seed: int) -> list:
    """The seeded test examples of one difficulty that :func:`answer_hits` scores (probes that
    look at the same documents call this too)."""
    rng = random.Random(f"{seed}-{difficulty}")
    return [task.sample(rng, difficulty) for _ in range(n)]


@torch.no_grad()
def answer_hits(
    model: SleepHybridLM,
    task,
    loops: list[int],
    *,
    n: int = 200,
    seed: int = 12345,
    batch_size: int = 32,
    difficulties: list[int] | None = None,
    min_fill: float = 0.5,
    teacher_forced: bool = False,
) -> dict[int, dict[int, list[list[bool]]]]:
    """Per N and difficulty, one list per test example: whether each of its answers was exact
    (free-running unless ``teacher_forced``; see :func:`example_hits`).

    One forward per batch serves every way of scoring it (:func:`evaluate`, first answers only)."""
    model.eval()
    difficulties = difficulties or task.test_difficulties()
    result: dict[int, dict[int, list[list[bool]]]] = {}
    for d in difficulties:
        examples = test_set(task, d, n, seed)
        for n_loops in loops:
            result.setdefault(n_loops, {})[d] = example_hits(
                model, task, examples, n_loops, batch_size=batch_size, min_fill=min_fill,
                teacher_forced=teacher_forced)
    return result


@torch.no_grad()
def example_hits(model: SleepHybridLM, task, examples: list, loops: int, *, batch_size: int = 32,
                 min_fill: float = 0.5, teacher_forced: bool = False) -> list[list[bool]]:
    """Per example (in order), whether each of its answers was exact, with ``loops`` sleep passes.

    Free-running by default, as an agent answers: every answer is the model's own greedy tokens,
    and later answers are predicted with those (right or wrong) in the context, never the true
    ones. ``teacher_forced=True`` scores every answer with the true earlier answers in context
    (one forward per batch; it over-states later answers whenever an earlier one was wrong).
    """
    model.eval()
    hits: dict[int, list[bool]] = {}
    for windows, group in _groups(task, examples, min_fill):
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            ids, mask = collate(chunk, task.pad_id)
            ids, mask = ids.to(model.device), mask.to(model.device)
            if teacher_forced:
                logits = model(ids, mask, loops=loops, return_logits=True, window_lengths=windows).logits
                got = ids.clone()
                for b, ex in enumerate(chunk):
                    for positions in ex.answers:
                        for p in positions:
                            got[b, p] = logits[b, p - 1].argmax()
            else:
                got = free_run(model, chunk, ids, mask, loops, windows)
            got = got.cpu()
            for b, ex in enumerate(chunk):
                hits[id(ex)] = [all(int(got[b, p]) == ex.ids[p] for p in positions) for positions in ex.answers]
    return [hits[id(ex)] for ex in examples]


def free_run(model: SleepHybridLM, chunk: list, ids: torch.Tensor, mask: torch.Tensor, loops: int,
             windows: list[int] | None) -> torch.Tensor:
    """``ids`` [B, T] with every answer span replaced, in order, by the model's own greedy tokens.

    One forward per answer token, over the prefix that predicts it (the windows and sleeps fall
    exactly as in the full sequence, so the logits equal the full forward's)."""
    ids = ids.clone()
    order = sorted({(j, t) for ex in chunk for j, pos in enumerate(ex.answers) for t in range(len(pos))})
    for j, t in order:
        rows = [(b, ex.answers[j][t]) for b, ex in enumerate(chunk) if j < len(ex.answers) and t < len(ex.answers[j])]
        n = max(p for _, p in rows)  # positions 0..n-1 predict every row's token
        logits = model(ids[:, :n], mask[:, :n], loops=loops, return_logits=True,
                       window_lengths=_truncate(windows, n)).logits
        for b, p in rows:
            ids[b, p] = logits[b, p - 1].argmax()
    return ids


def _truncate(windows: list[int] | None, n: int) -> list[int] | None:
    """The first ``n`` tokens' share of explicit window lengths."""
    if windows is None:
        return None
    out, total = [], 0
    for w in windows:
        if total >= n:
            break
        out.append(min(w, n - total))
        total += out[-1]
    return out


def accuracy(hits: dict[int, dict[int, list[list[bool]]]], first_only: bool = False) -> dict[int, dict[int, float]]:
    """Exact-match accuracy per N and difficulty from :func:`answer_hits` (``first_only``: each
    example's first answer alone)."""
    return {n_loops: {d: k / max(n, 1) for d, (k, n) in row.items()}
            for n_loops, row in tally(hits, first_only).items()}


def tally(
    hits: dict[int, dict[int, list[list[bool]]]], first_only: bool = False
) -> dict[int, dict[int, tuple[int, int]]]:
    """(right, questions) per N and difficulty from :func:`answer_hits`-shaped hits."""
    out: dict[int, dict[int, tuple[int, int]]] = {}
    for n_loops, rows in hits.items():
        for d, per_example in rows.items():
            scored = [h for ex in per_example for h in (ex[:1] if first_only else ex)]
            out.setdefault(n_loops, {})[d] = (sum(scored), len(scored))
    return out


def data_hits(model: SleepHybridLM, task, loops: list[int], *, examples: list | None = None, n: int = 200,
              seed: int = 12345, min_fill: float = 0.5, teacher_forced: bool = False,
              ) -> tuple[dict[int, dict[int, tuple[int, int]]], dict[int, dict[int, tuple[int, int]]]]:
    """(right, questions) per N and difficulty over every answer and over each example's first
    answer, from one scoring pass: on ``examples`` (externally supplied: depo's answers each
    carry their own k in ``meta["hops"]``), else on the seeded generated test set."""
    if examples is None:
        hits = answer_hits(model, task, loops, n=n, seed=seed, min_fill=min_fill, teacher_forced=teacher_forced)
        return tally(hits), tally(hits, first_only=True)
    every: dict[int, dict[int, tuple[int, int]]] = {}
    first: dict[int, dict[int, tuple[int, int]]] = {}
    for n_loops in loops:
        scored: dict[int, list[bool]] = {}
        scored_first: dict[int, list[bool]] = {}
        for ex, hits_ in zip(examples, example_hits(model, task, examples, n_loops, min_fill=min_fill,
                                                    teacher_forced=teacher_forced), strict=False):
            ks = ex.meta.get("hops", [ex.difficulty] * len(hits_))
            for k, hit in zip(ks, hits_, strict=False):
                scored.setdefault(k, []).append(hit)
            scored_first.setdefault(ks[0], []).append(hits_[0])
        every[n_loops] = {k: (sum(h), len(h)) for k, h in sorted(scored.items())}
        first[n_loops] = {k: (sum(h), len(h)) for k, h in sorted(scored_first.items())}
    return every, first


def evaluate(
    model: SleepHybridLM,
    task,
    loops: list[int],
    *,
    n: int = 200,
    seed: int = 12345,
    batch_size: int = 32,
    difficulties: list[int] | None = None,
    min_fill: float = 0.5,
    first_only: bool = False,
    teacher_forced: bool = False,
) -> dict[int, dict[int, float]]:
    """Exact-match accuracy per N (outer key) and difficulty (inner key) on a seeded test set,
    free-running unless ``teacher_forced`` (see :func:`example_hits`).

    ``first_only`` scores only each example's first answer: in depo that question has no earlier
    question and answer in the window to build on, so what it gets right came from the fast weights.
    """
    hits = answer_hits(model, task, loops, n=n, seed=seed, batch_size=batch_size, difficulties=difficulties,
                       min_fill=min_fill, teacher_forced=teacher_forced)
    return accuracy(hits, first_only)


def plot_accuracy(result: dict[int, dict[int, float]], path: str | Path, title: str = "") -> Path:
    """Accuracy vs difficulty, one line per N, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for n_loops, row in sorted(result.items()):
        xs = sorted(row)
        ax.plot(xs, [row[x] for x in xs], marker="o", label=f"N = {n_loops}")
    ax.set_xlabel("difficulty")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
