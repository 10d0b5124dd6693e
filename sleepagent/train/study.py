"""Studies: the sleep effect, measured, one command per result.

A study trains the same model on one task with several N (sleep passes during training) and two
or more seeds, each run resumable, scoring a fixed test set every ``eval_every`` steps; then it
scores every final checkpoint on a fresh, larger seeded test set and writes:

- ``<docs>/<name>.json``: every number (settings, per-run curves, final accuracies, margins);
- ``<docs>/<name>.md``: the table, the command that reproduces it, the machine and wall time;
- ``<docs>/<name>_final.png``: accuracy vs difficulty, one line per training N, or for a sweep of
  three or more N accuracy vs N, one line per difficulty (the paper's figure); the mean of the
  seeds as a line, each seed a marker;
- ``<docs>/<name>_curve.png``: accuracy on the deepest difficulties vs training step, per run.

A study may have a second phase (``extend``): every run trained further from its final
checkpoint (say 6000 more steps at a constant lr, since a cosine run ends with its lr near the
floor), into ``<name>_more``, scored and compared the same way. The curve plot continues each run
through its second phase, which is how "N = 4 keeps improving where N = 1 stalls" is read off.

The claim a study checks, per difficulty: the mean accuracy of the largest N beats the mean of
N = 1 by more than the spread (max - min) between seeds of either. ``sleepagent study NAME``
runs a preset from :data:`STUDIES`; the presets are sized for a 2-core CPU (each run well under
an hour there); the same command runs unchanged on CUDA with ``--device cuda``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from .finetune import run_task
from .trainer import TrainConfig, accuracy, answer_hits, load_checkpoint, train

__all__ = ["Study", "STUDIES", "run_study", "summarize"]


@dataclass(frozen=True)
class Study:
    """One comparison: ``task`` trained with each N in ``loops`` and each seed in ``seeds``."""

    name: str
    summary: str
    task: str
    task_kwargs: dict[str, Any]
    train: dict[str, Any]  # TrainConfig fields shared by every run (steps, sizes, lr, ...)
    loops: tuple[int, ...] = (1, 4)
    seeds: tuple[int, ...] = (0, 1)
    eval_n: int = 500  # final test examples per difficulty
    eval_seed: int = 12345
    deep: tuple[int, ...] = ()  # the difficulties the curve plot follows (default: the two hardest)
    notes: str = ""  # markdown appended to the study's page: how the preset was chosen, what it replaced
    extend: dict[str, Any] | None = None  # second phase: TrainConfig updates (steps, schedule, seed, ...)
    first_answer: bool = False  # also score each document's first question alone (see evaluate's first_only)
    # Fine-tuning studies (the paper's pretrained-model experiments): a random transformers hybrid
    # (``save_tiny_hybrid`` arguments) is first trained as an ordinary model, N = 1, with
    # ``pretrain`` (TrainConfig updates); every run then fine-tunes that checkpoint (``train --base``).
    base_model: dict[str, Any] | None = None
    pretrain: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.base_model is None) != (self.pretrain is None):
            raise ValueError(f"study {self.name}: base_model and pretrain go together")
        if self.pretrain is not None and self.extend:
            raise ValueError(f"study {self.name}: a fine-tuning study has no second phase")

    def runs(self) -> list[tuple[str, TrainConfig]]:
        return [
            (f"N{n}_s{seed}", TrainConfig(task=self.task, task_kwargs=dict(self.task_kwargs), loops=n, seed=seed,
                                          **self.train))
            for n in self.loops
            for seed in self.seeds
        ]

    def pretrain_runs(self, out: Path) -> list[tuple[str, TrainConfig]]:
        """The "pretraining" run (N = 1 from the random transformers model), if this study has one."""
        if self.pretrain is None:
            return []
        return [("pretrain", TrainConfig(task=self.task, task_kwargs=dict(self.task_kwargs), loops=1, seed=0,
                                         base=str(out / "random"), **{**self.train, **self.pretrain}))]

    def extended_runs(self, out: Path) -> list[tuple[str, TrainConfig]]:
        """The second phase: each run continued from its final checkpoint under ``out``."""
        if not self.extend:
            return []
        return [(f"{name}_more", cfg.model_copy(update={**self.extend, "init_from": str(out / name)}))
                for name, cfg in self.runs()]


STUDIES: dict[str, Study] = {}


def _register(study: Study) -> Study:
    STUDIES[study.name] = study
    return study


_CPU_TRAIN = dict(steps=2000, batch_size=32, d_model=64, n_layers=4, n_heads=4, adam_lr=3e-3, warmup_steps=100,
                  schedule="cosine", eval_every=250, eval_n=50, save_every=250)

_DEPO_NOTES = """\
Why one GDN layer. A wake pass reads the fast weights once per GDN layer at each position, so
with one GDN layer (the first block) a question can look up one edge there: X → its successor.
A 2-hop answer then needs sleep to have written it (a later pass reads where B leads at the
edge "X B" and writes that under X), or a weaker route: the question window (attention can copy
the lookup made at an earlier question whose start was X's successor, true for about a third of
the questions; hence the first-question tables), or the edge pass itself (the delta rule reads
before it writes, so writing "X B" can pick up an already stored "B C"; see the probe below).
Guessing scores about 0.18 on 2-hop over all questions, not 1/12: the model can rule out the
start, its 1-hop successor and the answers of earlier questions (the starts are distinct, so the
answers are too); about 0.1 on first questions.

Why two phases. After the first phase (6000 steps, cosine) neither N had learned 2-hop (all four
runs 0.17-0.19 on the final test set), but on the periodic test set N = 4's 2-hop had started to
move (0.12 → 0.22 for seed 0), so the preset continues every run at the constant peak lr. With
12000 more steps N4_s0 had jumped to 0.997 but N4_s1 was at 0.42, next to the N = 1 runs (0.40,
0.36): inside the seed spread. Continuing N4_s1 alone from there (another batch seed, 200) it
jumped to 0.98 within 3500 steps, so the second phase became 18000 steps, for every run.

Result. Both N = 4 seeds answer 2-hop questions (1.000, 0.981) only when they sleep 4 passes
(woken after one pass: 0.136, 0.176); the N = 1 runs reach 0.403, 0.413. The N = 1 runs
did not stall at guessing: a single pass has routes to some 2-hop answers, and the probe
`python -m sleepagent.train.probes runs/study/depo/*_more` shows which (first questions only,
split by whether the path's second edge comes before its first edge in the text; one pass can
compose only in that order):

| run | before | after |
|---|---|---|
| N1_s0_more | 0.424 | 0.183 |
| N1_s1_more | 0.487 | 0.166 |
| N4_s0_more (N = 4) | 1.000 | 0.996 |
| N4_s0_more, woken after 1 pass | 0.155 | 0.140 |
| N4_s1_more (N = 4) | 0.982 | 0.961 |
| N4_s1_more, woken after 1 pass | 0.148 | 0.131 |

On the "after" order, which one pass cannot compose, N = 1 stays near guessing; N = 4 composes
the two edges during sleep, which is the paper's mechanism.

Timing (2-core CPU, one thread per run, two runs at a time): N = 4 ~0.2 s a step (first phase
20 min a run, second phase ~65 min), N = 1 ~0.1 s a step (9 min, then ~30 min). The second phase was
trained in steps (6000, then to 12000, then to 18000; its lr is constant, so a resumed run equals one
planned that long).

History of this preset:

- Version 2 (4 blocks, GDN and attention alternating, k up to 8, 6000 steps): one of three
  N = 4 seeds learned 2-hop (0.81 on the final test set, 0.10 when the same weights slept once),
  no N = 1 seed did. But with two GDN layers one wake pass can make two lookups: trained on
  k in {1, 2} only (`train_hops`), an N = 1 run learned 2-hop too (0.88 on the periodic test set;
  its other seed 0.17; the two N = 4 runs 0.92 and 0.28). So in that model 2 hops do not need
  sleep, and this version keeps one GDN layer. Other attempts on version 2 (N = 4, seed 0):
  `n_heads` 2, Muon (lr 2e-3), `adam_lr` 2e-3: none made the 2-hop jump within 4000-6000 steps.
- Version 1 (the cycle's edges over 2 windows of 24 tokens, `adam_lr` 3e-3, 2000 steps) left
  both N = 4 seeds at chance at every depth. A likely cause, not verified: with N = 4 the first
  window's facts must survive 4 x 24 tokens of decay during the second window's sleep, and the
  Mamba-style gate init forgets most of that; since version 2 every edge is in one 32-token
  window, so exactly one sleep lies between the facts and the questions.

"""


_register(Study(
    name="depo",
    summary="k-hop queries over a 12-node cycle whose edges fill one window, evicted before the queries",
    task="depo",
    task_kwargs=dict(n_max=12, k_max=2, m=16, max_len=1, window=32, edge_windows=1, queries=8),
    # one GDN layer, first: a wake pass can look up the fast weights once, so 2 hops need sleep
    train=dict(_CPU_TRAIN, steps=6000, adam_lr=1e-3, eval_every=500, save_every=500, n_layers=3,
               layer_types=("gdn", "attn", "attn")),
    deep=(2,),
    extend=dict(steps=18000, schedule="constant", seed=100),
    first_answer=True,
    notes=_DEPO_NOTES,
))

_DEPO_SWEEP_NOTES = """\
The depo preset's task, model and optimiser (AdamW, the recipe that learned 2 hops on the CPU)
with N = 1, 2, 3 and 4, in one phase: 24000 steps at the constant lr of the depo preset's second
phase (its first phase, 6000 cosine steps, ended with the lr near its floor before any run had
made the 2-hop jump, which is why that preset needed a second phase). Budget, from the depo preset's
timings (one thread per run, two runs at a time on 2 cores): N = 1 ~0.1 s a step, N = 4 ~0.2 s,
so about 500 core-minutes for the eight runs, 4 to 5 hours on 2 cores. Run it in pieces:
`sleepagent study depo-sweep --jobs 2 --threads 1 --time-limit 3600` trains each run for an hour
at most and saves; the same command resumes every run where it stopped.

Muon was tried here first (N = 4, seed 0, lr 2e-3, 3500 steps): 1-hop 0.77, 2-hop flat at
0.09 to 0.13 on the periodic test set, where AdamW's runs also stayed until step 6000 or later; it
was not faster on this task within that budget, so the sweep keeps the optimiser with which the
depo result was obtained.

Result (`sleepagent study depo-sweep --jobs 2 --threads 1 --time-limit 2280`, two invocations: the
first trained the N = 1 runs to their 24000 steps (~0.08 s a step), the second gave every other
run 38 minutes, which stopped N = 2 at ~19400 steps, N = 3 at ~13300 and N = 4 at ~9850; each larger
N had fewer steps than N = 1, a handicap against it; 114 min of training on 2 cores, then 11 min
of scoring; ~300 core-minutes in all). 2-hop, 500 fresh documents per run, free-running: N = 1
0.302, 0.299 [95% interval of each: 0.26, 0.34]; N = 2 0.974, 0.951; N = 3 0.993, 0.981; N = 4
0.989, 0.990 [0.98, 1.00]. Monotone in N, as in the paper: the step is at N = 2 (+0.66) and N = 3
and 4 add ~0.03 and tighten the seeds (spread 0.023, 0.012, 0.001). The graded part is in how soon
a run makes the 2-hop jump (periodic test at the run's own N first >= 0.8): N = 2 at steps 5000
and 17000, N = 3 at 4000 and 8000, N = 4 at 4000 and 5000; N = 1 stayed at 0.26 to 0.30 from
step 12000 to 24000. The N >= 2 weights woken after a single pass lose what sleep gave them (2-hop
0.10 to 0.34), so the answers come from the consolidation, not from better wake-time weights.

"""

_DEPO_SWEEP_GPU_NOTES = """\
The `depo-deep-gpu` preset (1 to 4 hops, d = 128, batch 256, AdamW) with N = 1, 2, 3 and 4:
the paper's Depo figure (N = 1 stalls from k = 4, N = 2 from k = 8) at k = 4. Sized for a lent
GPU: `LIMIT=360 bash scripts/gpu_sweeps.sh` trains its eight runs side by side with the other
sweeps, 360 s each (the runs save and the same command resumes them).

"""

_DEPO_WINDOWS_NOTES = """\
The paper's setting for Depo: the cycle's edges spread over two evicted windows (16 tokens each;
with 12 nodes the first window holds 4 edges after the padding, the second 8), then the queries.
A fact from the first window must survive the second window's sleep, N x 16 tokens of decay
and overwriting, before a question reads it. The CPU attempt at this (2 windows of 24 tokens,
d = 64, 2000 steps) stayed at chance with either N, likely for want of steps (the one-window
depo preset needed 12000 or more); this preset is sized like `depo-deep-gpu` for a lent GPU
(`scripts/gpu_sweeps.sh`).

"""

_DEPO_DEEP_NOTES = """\
The depo preset's model and text with deeper questions added, sized for a GPU lent for minutes:
d = 128, batch 256, constant lr, run with `--time-limit` (N = 1 runs take about 1.6 times the
steps of N = 4 runs in the same time, which can only favour N = 1). With one GDN layer, first, a
wake pass looks up one edge in the fast weights, so a deeper answer must have been written there
during sleep: a sleep pass's attention can follow edges inside the window, and the GDN layer of
the next pass writes what the pass before computed, so N = 4 passes can compose paths that one
pass cannot.

How it ran: one NVIDIA H200, the four runs side by side (MPS on), training on the `torch_chunk`
GDN kernel (fla's gated backward is refused on Hopper with Triton 3.6, fla #640).

"""

_DEPO_DEEP_RESULTS = {
    4: """\
Result (`--time-limit 360`: N = 4 ~3900 steps, N = 1 ~6300). Both N = 4 seeds answer 4-hop
questions (0.913, 0.988) and 2-hop (0.992, 1.000); both N = 1 seeds stay near guessing on 4-hop
(0.152, 0.171; 0.15 to 0.18 on the periodic test set from step 500 to the end) and climb slowly on
2-hop (0.304, 0.478). Woken after one pass, the N = 4 weights answer nothing deep (4-hop 0.150,
0.006). On the periodic test set N = 4 learned 1, then 2, then 4 hops: seed 1 had 2-hop at step
750 and 4-hop (0.91) at 1000; seed 0 had 2-hop at 1250 and climbed on 4-hop from 0.22 to 0.88
between steps 1250 and 3750. The edge-order probe (`python -m sleepagent.train.probes
runs/study/depo-deep-gpu/*`, first questions, 2-hop) reads as in the depo study: N = 1 before /
after 0.255 / 0.183 and 0.664 / 0.175; N = 4 0.989 / 0.991 and 1.000 / 1.000.

""",
    8: """\
Result (`--time-limit 270`: N = 4 ~2800 steps, N = 1 ~4500): not settled at this budget. N4_s1
answers 4-hop (0.950) and had started on 8-hop (0.13 at step 1500, 0.31 at 2750 on the periodic
test set; 0.330 on the final one); N4_s0 was climbing on 2-hop (0.22 → 0.47 from step 1500 to
2750) and had not begun 4-hop. The N = 1 runs: 1-hop 0.865, 0.870, 2-hop 0.586, 0.172, 4- and
8-hop at guessing (0.16 to 0.17). Every margin is positive, none beats the seed spread, because
N4_s0 was cut off mid-climb. The same preset with a longer `--time-limit` resumes the runs.

""",
}

for _k, _suffix in ((4, ""), (8, "-k8")):
    _register(Study(
        name=f"depo-deep-gpu{_suffix}",
        summary=f"queries of 1 to {_k} hops over a 12-node cycle whose edges fill one window, evicted before the "
                "queries (GPU)",
        task="depo",
        task_kwargs=dict(n_max=12, k_max=_k, m=16, max_len=1, window=32, edge_windows=1, queries=8),
        train=dict(steps=20000, batch_size=256, d_model=128, n_layers=3, n_heads=4, adam_lr=1e-3, warmup_steps=200,
                   schedule="constant", eval_every=250, eval_n=200, save_every=1000,
                   layer_types=("gdn", "attn", "attn")),
        deep=(_k // 2, _k),
        first_answer=True,
        notes=_DEPO_DEEP_NOTES + _DEPO_DEEP_RESULTS[_k],
    ))

_register(dataclasses.replace(
    STUDIES["depo"],  # the same task and model; N = 1 to 4, one phase at the second phase's constant lr
    name="depo-sweep",
    summary="2-hop queries over a 12-node cycle whose edges fill one window; N = 1 to 4 (CPU, hours)",
    train={**STUDIES["depo"].train, "steps": 24000, "schedule": "constant", "eval_every": 1000},
    loops=(1, 2, 3, 4),
    extend=None,
    notes=_DEPO_SWEEP_NOTES,
))

_register(dataclasses.replace(
    STUDIES["depo-deep-gpu"],
    name="depo-sweep-gpu",
    summary="queries of 1 to 4 hops over a 12-node cycle whose edges fill one window; N = 1 to 4 (GPU)",
    loops=(1, 2, 3, 4),
    notes=_DEPO_DEEP_NOTES + _DEPO_SWEEP_GPU_NOTES,
))

_register(dataclasses.replace(
    STUDIES["depo-deep-gpu"],
    name="depo-windows-gpu",
    summary="queries of 1 to 4 hops over a 12-node cycle whose edges span two evicted windows; N = 1 to 4 (GPU)",
    task_kwargs={**STUDIES["depo-deep-gpu"].task_kwargs, "window": 16, "edge_windows": 2},
    loops=(1, 2, 3, 4),
    notes=_DEPO_WINDOWS_NOTES,
))

_RULE110_NOTES = """\
This preset is the CPU-sized twin of `rule110-gpu-t2` (same task, model and lr; batch 64 instead of
256, a fixed 1000 steps instead of a time limit). The text never says t, so each model learns one t
(the paper, too, trains one model per t). Two rows, one per evicted window: one GDN layer, first,
so a wake pass writes from token embeddings (and a 4-token convolution) while sleep passes write
what the attention layers computed in the pass before. Guessing the majority label of each row
scores about 0.56 per row, about 0.31 exact. `python -m sleepagent.train.probes RUN...` splits
each run's accuracy by row.

Pilots (seed 0, N = 4, t = 2, periodic test set of 100 documents): d = 128 with batch 64 reached
1.0 by step 250; d = 64 with batch 64 was still at 0.26 at step 500, and d = 64 with batch 32 at
lr 3e-3 at 0.28 at step 1250 (an N = 1 twin of that one reached 0.45).

Result: both N = 4 seeds 1.000 (0.83 and 0.96 on the periodic test set at step 125, 1.0 by 250),
both N = 1 seeds 0.346, 0.408; the N = 4 weights woken after one pass score 0.320, 0.204. Per row
(probe): N = 4 1.000 on both rows; N = 1 0.560 / 0.588 and 0.716 / 0.584 (older / newer), against
a majority share of 0.560 on each. 27 min for the four runs, one thread each, two at a time.

The first version of this preset (four rows of width 24, t = 4, d = 64, 4 layers with two GDN
layers, batch 32, 2000 cosine steps) learned nothing with either N: all four runs ended at 0.096
with the loss at ln 2 per bit throughout. The GPU study `rule110-gpu` (t = 4) shows where t = 4
stands with more compute.

"""


_RULE110_GPU_NOTES = """\
Sized for a GPU lent for minutes (run with `--time-limit`; `steps` is only a ceiling): two rows,
so a document is two evicted windows and a 3-token query, batch 256, d = 128, and the depo
preset's lesson in the layer order: one GDN layer, first. A wake pass then writes its fast
weights from the token embeddings alone (plus the GDN's 4-token convolution), so N = 1 can store
bits but not a label computed from 2t + 1 of them; with N passes, pass n's GDN layer writes what
the attention layers of pass n - 1 computed. Runs cut by the time limit stop at different steps:
N = 1 runs take about twice as many steps in the same time, which can only favour N = 1.

How it ran: one NVIDIA H200, `LIMIT=300 bash scripts/gpu_session.sh`, which trains the eight
runs of `rule110-gpu` and `rule110-gpu-t2` and a docqa run side by side (MPS on), 300 s each, while
the CUDA tests run. Training used the `torch_chunk` GDN kernel on the GPU: fla 0.6 refuses its
gated backward on Hopper with that machine's Triton 3.6 (wrong gradients, fla #640); the periodic
and final scoring ran fla's forward kernels.

Results (500 fresh documents). t = 2: both N = 4 seeds 1.000 (0.99 on the periodic test set by
step 250), both N = 1 seeds 0.438, 0.468 after twice the steps; the N = 4 weights woken after one
pass score 0.224, 0.200. t = 4: N = 4 0.544, 0.544 against N = 1 0.346, 0.330, a margin of +0.206
over seed spreads of 0.016 and 0.000; but the probe shows what N = 4 learned in 1500 steps:

| per row (oldest first), t = 4 | N1_s0 | N1_s1 | N4_s0 | N4_s1 |
|---|---|---|---|---|
| older row | 0.544 | 0.544 | 0.544 | 0.544 |
| newer row | 0.624 | 0.608 | **1.000** | **1.000** |
| (majority label share) | 0.544 / 0.556 | | | |

Both N = 4 seeds compute the newer row's 4-step label exactly (9 bits in, during sleep) and
answer the majority bit for the older row; N = 1 gets neither far past the majority. Keeping the
older row's label once the newer row's sleep has written over the fast weights is what t = 4 still
lacks at this budget; at t = 2 (`python -m sleepagent.train.probes runs/study/rule110-gpu-t2/*`)
N = 4 gets both rows (1.000, 1.000) and N = 1 0.754/0.768 on the older row, 0.596/0.612 on the
newer.

"""

# model and optimiser shared by the GPU presets and their CPU twin (which differ in batch and steps)
_RULE110_MODEL = dict(d_model=128, n_layers=4, n_heads=4, adam_lr=1e-3, warmup_steps=200, schedule="constant",
                      eval_n=200, layer_types=("gdn", "attn", "attn", "attn"))

for _t, _suffix in ((4, ""), (2, "-t2")):
    _register(Study(
        name=f"rule110-gpu{_suffix}",
        summary=f"rows of 2 Rule 110 automata, one per evicted window; the first bit of each {_t} steps later (GPU)",
        task="rule110",
        task_kwargs=dict(rows=2, width=24, steps=(_t,)),
        train=dict(_RULE110_MODEL, steps=20000, batch_size=256, eval_every=250, save_every=1000),
        deep=(_t,),
        notes=_RULE110_GPU_NOTES,
    ))


_register(Study(
    name="rule110",
    summary="rows of 2 Rule 110 automata, one per evicted window; the first bit of each 2 steps later",
    task="rule110",
    task_kwargs=dict(rows=2, width=24, steps=(2,)),
    train=dict(_RULE110_MODEL, steps=1000, batch_size=64, eval_every=125, save_every=250),
    deep=(2,),
    notes=_RULE110_NOTES,
))


_register(dataclasses.replace(
    STUDIES["rule110"],  # the same task, model, optimiser and steps; only N and the page differ
    name="rule110-sweep",
    summary="the `rule110` preset with N = 1, 2, 3 and 4: the paper's accuracy-against-N figure at t = 2",
    loops=(1, 2, 3, 4),
    notes="Same task, model, optimiser (AdamW, as the `rule110` preset it extends) and steps as "
          "`rule110`, with N = 2 and 3 added; the N = 1 and N = 4 runs are retrained, not reused "
          "(they came out identical to `rule110`'s, run for run: training is deterministic on the CPU).\n\n"
          "Result: at t = 2 the trend is a step, not a slope. One extra pass is enough: N = 2, 3 "
          "and 4 all reach 1.000 (periodic test set at step 125: 0.835 / 0.65, 0.95 / 0.885, 0.83 / "
          "0.955 for seeds 0 / 1; 1.0 or 0.985 to 0.995 by step 250), while N = 1 stays at 0.30 to "
          "0.42 all run. Each N > 1 model woken after one pass scores 0.20 to 0.32: the label is "
          "written during sleep. The paper's graded rise with N (t = 32: about 10%, 20%, over 30% "
          "for N = 1, 2, 3 and 4) needs a t deep enough that one extra pass does not suffice, "
          "beyond this CPU budget (the GPU study at t = 4 was half solved by N = 4).\n",
))

_register(dataclasses.replace(
    STUDIES["rule110"],  # the same task, model, steps and N; only the optimiser differs
    name="rule110-muon",
    summary="the `rule110` preset trained with Muon (the paper's optimiser) instead of AdamW",
    train={**STUDIES["rule110"].train, "optimizer": "muon", "lr": 1e-3},
    notes="Same task, model, steps, lr schedule and N as `rule110` (AdamW there); here Muon updates the "
          "hidden matrices (lr 1e-3, scaled to AdamW's update size: `adjust_lr_fn=\"match_rms_adamw\"`) "
          "and AdamW (lr 1e-3) the embeddings, head, norms and gates, the paper's optimiser.\n\n"
          "Result: the outcome is AdamW's. Both N = 4 seeds solve the task (0.978, 1.000; with AdamW 1.000, "
          "1.000), both N = 1 seeds stay near the majority guess (0.342, 0.428; with AdamW 0.346, 0.408), and "
          "the N = 4 weights woken after one pass score 0.238, 0.246. Muon got there sooner: 0.96 and 0.98 on "
          "the periodic test set at step 125 (AdamW 0.835, 0.955), and wobbled afterwards (0.965 to 1.0). On "
          "this task the optimiser changes the speed, not the result, so the presets trained with AdamW keep "
          "it (their results were obtained with it); presets added since (`gsm-inf`) train with Muon. Wall "
          "time: 68 min for the four runs, one at a time on one core while another study used the other.\n",
))

_RULE110_T4_NOTES = """\
The paper's accuracy-against-N figure on the CPU at the deepest t this budget reaches: the
`rule110-muon` preset (model, Muon, batch 64, 1000 steps) with t = 4, so each row's label depends
on 9 of its cells, and N = 1, 2, 3 and 4. The same t on the GPU with AdamW (`rule110-gpu`, batch
256, 1500 steps of N = 4) solved only the newer row. A pilot of this preset's N4_s0 run (which
then became that run: it was resumed from the pilot's step-250 checkpoint) scored 0.385 at step
125 and 0.925 at step 250 on the periodic test set.

Result (500 fresh documents per run): N = 1 0.334, 0.334 (the majority labels); N = 2 0.998,
0.542; N = 3 0.996, 0.548; N = 4 0.980, 0.544. The same weights woken after one pass: 0.13 to
0.28. Every run with N >= 2 beats both N = 1 runs, but the seed decides how far: seed 0 solves
both rows at each N = 2, 3, 4, seed 1 the newer row only at each. Per row (`python -m
sleepagent.train.probes runs/study/rule110-t4/*`, oldest row first; majority shares 0.544,
0.556):

| run | older row | newer row |
|---|---|---|
| N1_s0, N1_s1 | 0.544, 0.544 | 0.594, 0.594 |
| N2_s0 / N2_s1 | **1.000** / 0.544 | **0.998** / **0.998** |
| N3_s0 / N3_s1 | **1.000** / 0.548 | **0.996** / **1.000** |
| N4_s0 / N4_s1 | **0.994** / 0.544 | **0.986** / **1.000** |

So the trend is again a step at N = 2 with nothing added by N = 3 and 4 at this t and budget:
the means (0.334, 0.770, 0.772, 0.762) rise once and stay, and the margin N = 4 - N = 1
(+0.428) does not beat the seed spread (0.436) only because seed 1 keeps the older row's label at
no N. Computing a label from 9 cells during sleep is within reach of two passes; keeping the older
row's label while the newer row's sleep writes over the fast weights is what seed 1 never found
(the GPU study at this t, trained with AdamW, stopped at the same place with both seeds). The
optimiser matters here: `rule110-t4-adamw`, the N = 4 runs trained with AdamW, scores 0.460 and
0.316 after the same 1000 steps. Wall time: 81 min for the eight runs, two at a time on 2 cores
beside other studies (N = 1 ~8 min a run, N = 4 ~35).

"""

_register(dataclasses.replace(
    STUDIES["rule110"],  # the same task, model, optimiser, steps and N; only the eviction differs
    name="rule110-sliding",
    summary="the `rule110` preset with sliding eviction: each sleep evicts 16 tokens and keeps the newest 8",
    train={**STUDIES["rule110"].train, "evict": "sliding", "keep": 8},
    notes="Same task, model, optimiser, steps and N as `rule110` (hard eviction there). Here the window of 24 "
          "tokens slides (the paper's Ouro experiment, L = 512 there): when it is full, the oldest 16 tokens "
          "are consolidated and evicted and the newest 8 stay in the window, exact. A row's label (its first "
          "cell t = 2 steps later, on a ring) depends on cells 22, 23, 0, 1 and 2, so the kept tokens hold two "
          "of the five inputs of the newer row's label exactly when the query is read; the others, and every "
          "cell of the older row, are in the fast weights only.\n\n"
          "Result: no gain; N = 4 learns less than N = 1. Both N = 4 seeds answer one constant pair of labels "
          "(0.350, 0.350, the same at N = 1: nothing is written during sleep that the answer uses), and their "
          "periodic test scores stayed at 0.26 to 0.31 all run, where under hard eviction N = 4 had the task "
          "by step 250. The N = 1 seeds reach 0.382, 0.452 (hard eviction: 0.346, 0.408): the 8 kept cells "
          "help one pass a little. Why sleep does not help here: the 16 tokens a sleep consolidates do not "
          "hold one row. The first sleep takes cells 0 to 15 of row 1, the second cells 16 to 23 of row 1 and "
          "0 to 7 of row 2, so no sleep window holds all five inputs of a label (cells 22, 23, 0, 1, 2), and "
          "the label has to be composed from what an earlier sleep wrote plus what is in the window, a step "
          "1000 steps did not find. Under hard eviction a sleep window is one row: its passes compute the "
          "label inside the window, and the GDN layer writes it. The paper's sliding result (Ouro, L = 512) "
          "is on text, where consolidation boundaries do not cut one fact in two. Wall time: 91 min for the "
          "four runs, one at a time on one core beside other studies.\n\n",
))

_GSM_NOTES = """\
GSM-Infinite's symbolic subset (the paper's main benchmark) at CPU size: the question `Q: Vx?`
first, then the shuffled statements of one chain of `op` operations (`assign Vb = Va + 1`, `- 1`
or a plain copy) from a root `assign Va = <0..10>`, and four filler statements whose source is
never assigned; then `A: <value>.`, scored on the value and its dot. Two-digit names (`V10` to
`V98`) instead of the original's six keep an op-4 problem near 200 bytes, four windows of 64
bytes, so three sleeps lie between the question and the answer. The layout is the original
generator's (`eval --data` reads its records: `{question_var, context, answer}`). The answer is
a lookup chain through the fast weights (the question's variable to its source, and so on to
the root), like Depo's hops, plus counting the `+ 1` and `- 1` on the way. Trained with Muon, the
paper's optimiser (lr 3e-3 for the matrices, AdamW 3e-3 for the rest), on the CPU studies' small
model (d = 64, four blocks alternating GDN and attention).

Result: the reverse of the paper's at this budget. Trained with N = 1, both seeds solve the task
(0.993, 0.960, 0.880 on 1, 2 and 4 operations; 300 fresh problems each); trained with N = 4, both
are still near guessing after the same 1000 steps (0.217, 0.173, 0.140; the same weights woken
after one pass 0.08 to 0.11). The N = 1 runs learned late and fast (periodic test set at step 500:
0.1 to 0.3; at 750: 0.6 to 0.96), and the N = 4 runs had begun to move (0.04 to 0.10 at step 500,
0.16 to 0.18 at 1000), so this says that the task is within one pass of this model, with two GDN
layers and attention over 64-byte windows, and that N = 4 learns it more slowly, not that sleep
cannot help. Deeper problems (8 and more operations) and longer runs are where the paper's gain
would have to appear. Wall time: N = 1 about 8 min a run, N = 4 about 20 min (one core each, up to
four processes on the two cores).

"""

_register(dataclasses.replace(
    STUDIES["rule110-muon"],  # the same model, optimiser (Muon), batch and steps; t = 4 and N = 1 to 4
    name="rule110-t4",
    summary="rows of 2 Rule 110 automata, one per evicted window; the first bit of each 4 steps later; N = 1 to 4",
    task_kwargs=dict(rows=2, width=24, steps=(4,)),
    loops=(1, 2, 3, 4),
    deep=(4,),
    notes=_RULE110_T4_NOTES,
))

_register(dataclasses.replace(
    STUDIES["rule110-t4"],  # the same task, model, steps and seeds; AdamW instead of Muon, N = 4 only
    name="rule110-t4-adamw",
    summary="the AdamW row for `rule110-t4`: the same N = 4 runs trained with AdamW instead of Muon",
    train=STUDIES["rule110"].train,
    loops=(4,),
    notes="The optimiser row the issue asks for where it changes the outcome: `rule110-t4`'s N = 4 runs "
          "(same task, model, batch, steps, seeds and lr schedule) with AdamW (lr 1e-3 for every parameter, "
          "as in `rule110`) instead of Muon.\n\n"
          "Result: the optimiser decides the outcome at this budget. With AdamW the N = 4 runs score 0.460 "
          "and 0.316 (Muon: 0.980, 0.544); per row (probe) seed 0 is part way on both rows (0.662, 0.662 "
          "against majority shares 0.544, 0.556) and seed 1 answers the majority labels (0.544, 0.556). "
          "On the periodic test set both stayed at 0.23 to 0.32 until step 625 (Muon's N4_s0: 0.925 at "
          "step 250). Wall time: 95 min for the two runs, run at low priority beside the other studies "
          "(about 25 core-minutes each).\n\n",
))

_register(dataclasses.replace(
    STUDIES["rule110-gpu"],  # the GPU model and batch; Muon, t = 8, N = 1 to 4
    name="rule110-t8-gpu",
    summary="rows of 2 Rule 110 automata, one per evicted window; the first bit of each 8 steps later; "
            "N = 1 to 4, Muon (GPU)",
    task_kwargs=dict(rows=2, width=24, steps=(8,)),
    train={**STUDIES["rule110-gpu"].train, "optimizer": "muon", "lr": 1e-3},
    loops=(1, 2, 3, 4),
    deep=(8,),
    notes="`rule110-t4` one step deeper in the direction of the paper's t = 32 (each label depends on 17 "
          "of the row's 24 cells), with the GPU presets' d = 128 and batch 256: where one extra pass may no "
          "longer suffice and the paper's graded rise with N could show. Run with `--time-limit` "
          "(`STUDIES=rule110-t8-gpu LIMIT=300 bash scripts/gpu_sweeps.sh`).\n\n",
))

_register(Study(
    name="gsm-inf",
    summary="GSM-Infinite-style symbolic problems of 1, 2 and 4 operations, read across evicted windows of 64 bytes",
    task="gsm_inf",
    task_kwargs=dict(ops=(1, 2, 4), filler=4, window=64, digits=2),
    train=dict(_CPU_TRAIN, steps=1000, batch_size=16, optimizer="muon", lr=3e-3),
    eval_n=300,
    deep=(2, 4),
    notes=_GSM_NOTES,
))

_ATTN_NOTES = """\
The paper's attention-only baseline: the `rule110` preset's model with every GDN layer replaced
by softmax attention (4 attention layers, no fast weights), same task, optimiser and steps. With
the task's window of 24 tokens (`rule110-attn`) each row is evicted before the query and nothing
of it remains (sleep has no fast weights to write, so N does not matter and only N = 1 is run):
the floor, what the labels' statistics alone give. With a window of 64 tokens
(`rule110-attn-full`) the whole example (51 tokens) lies in one window and nothing is ever
evicted: a plain transformer that sees every cell exactly, the ceiling a memory could approach.

Result. Evicted, attention alone scores 0.320 and 0.320: a constant answer, the majority labels
(every periodic test from step 125 on gave 0.16 to 0.29). With the whole example in its window it
learns the task, slowly: 0.860 and 0.992 after 1000 steps (periodic test set 0.36 and 0.74 at step
375, 0.78 and 0.99 at 875). The hybrid of the `rule110` preset, which sees each row only through
its fast weights, reaches 1.000 by step 250 with N = 4 and stays at 0.35 to 0.41 with N = 1. At
t = 2, then, the label is within reach of four attention layers that see the row; the paper's
attention-only baseline fails at t = 32, a depth this CPU budget does not reach. Wall time (one
core, beside another study): 15 and 11 min for the two pairs of runs.

"""

for _suffix, _update, _what in (("", {}, "rows evicted as in `rule110`, nothing carried across windows"),
                                ("-full", {"window": 64}, "a 64-token window holding the whole example: no eviction")):
    _register(dataclasses.replace(
        STUDIES["rule110"],
        name=f"rule110-attn{_suffix}",
        summary=f"attention-only baseline for `rule110` (4 attention layers, no GDN): {_what}",
        train={**STUDIES["rule110"].train, "layer_types": ("attn",) * 4, **_update},
        loops=(1,),
        notes=_ATTN_NOTES,
    ))

_FINETUNE_NOTES = """\
The paper's fine-tuning experiments (Jet-Nemotron 2B and Ouro 1.4B taught to sleep) at CPU size,
through transformers modules only: a random `qwen3_5`-architecture model (one Gated DeltaNet
layer, then three attention layers, as in the `rule110` preset; hidden size 128, about 0.6 M
parameters with its 320-token byte vocabulary) is trained first as an ordinary model (N = 1: the
"pretraining" stage), then fine-tuned with `train --base` to sleep with N = 4, against a control
fine-tuned with N = 1 for the same steps from the same checkpoint. Each fine-tune first trains only
the GDN layer (`warmup_gdn_steps`), as the paper does. The task is Rule 110 at t = 2 (rows of 24
cells, one per evicted window of 24 tokens), fed as raw token ids; the long-document task
(`docqa`) and `gsm_inf` were too slow for this budget through the transformers modules on two
cores (1.6 s a step at N = 1 and 6 s at N = 4 for docqa's 16 x 1000-token batches).

What it took. A first attempt with `save_tiny_hybrid`'s then defaults (8 attention heads of 16
dimensions with a quarter of each rotated, as Qwen3.5 does, and transformers' GDN decay init)
stayed at guessing with either N through 400 fine-tuning steps (periodic test set 0.28 to 0.35),
and so did an N = 4 run from the random model. Two causes, both changed: transformers initialises
every GDN time step to softplus(1) = 1.3, so with decay rates up to 16 most heads forget within a
token or two (`save_tiny_hybrid` now gives the native model's Mamba-style init; a real
pretrained checkpoint has learned its gates); and 4 rotated dimensions of 16 gave attention too
little sense of position to find a row's cells 22, 23, 0, 1 and 2 (this model rotates all 32
dimensions of its 4 heads). The model has 0.76 M parameters, most of them in its 320 x 128
embedding and output matrices.

"""

_FINETUNE_RESULTS = {
    "hard": """\
Result: the paper's shape. Fine-tuned to sleep, both N = 4 seeds answer 0.560 and 0.564 (500
fresh documents, both rows right), both N = 1 controls 0.350 and 0.338, from the same checkpoint
with the same steps: a margin of +0.218, beyond the seed spread. The N = 4 weights woken after one
pass score 0.272 and 0.316, and the pretrained checkpoint itself, never trained to sleep, scores
0.356 at N = 1 and 0.320 made to sleep with N = 4: sleep is worth something only to a model
trained to use it. The N = 4 runs were still climbing when their 400 steps ended (periodic test set
0.17 to 0.35 up to step 250, then 0.44 to 0.60), where the native model of the same size solves the
task from scratch in 250 steps (`rule110`). Wall time on one core: pretraining 3 min, an N = 1
fine-tune about 3.5 min, an N = 4 fine-tune 10 to 13 min (N4_s1 ran in a second process beside the
study, which then only scored it).

""",
    "sliding": """\
Result with sliding eviction: no gain at this budget. Both N = 4 fine-tunes score exactly what
their N = 1 controls score (0.350, 0.338: the same answers as the pretrained checkpoint's majority
labels), and their periodic test scores stayed at 0.29 to 0.35 through the 400 steps, where the
hard-eviction fine-tunes had started to climb by step 200. Under sliding eviction a sleep
consolidates 16 tokens that straddle the two rows (the window no longer holds one whole row when
it sleeps), so what sleep must compute is not the label of one row it sees whole; the paper's
sliding result (Ouro 1.4B, L = 512) is on a model and task far from this one. Not tried: more
steps, or a GDN-only warm-up under hard eviction first (DESIGN's recipe for sliding runs).

""",
}

# a qwen3_5-architecture model laid out as the rule110 preset's: one GDN layer first, then attention
_TINY_QWEN = dict(model_type="qwen3_5", layer_types=["linear_attention", "full_attention", "full_attention",
                                                     "full_attention"],
                  sizes=dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, head_dim=32,
                             linear_num_value_heads=4, linear_num_key_heads=4, linear_key_head_dim=32,
                             linear_value_head_dim=32,
                             # every head dimension rotated (Qwen3.5 rotates a quarter): attention must
                             # find a row's cells 22, 23, 0, 1, 2 by position
                             rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=1.0)))
_FINETUNE_TRAIN = dict(steps=400, batch_size=64, adam_lr=1e-3, warmup_steps=50, schedule="constant",
                       warmup_gdn_steps=50, eval_every=50, eval_n=100, save_every=100)
# the "pretraining" stage of both fine-tuning presets: an ordinary model, hard eviction, N = 1
_FINETUNE_PRETRAIN = dict(steps=400, warmup_steps=100, warmup_gdn_steps=0, evict="hard", keep=0)

_register(Study(
    name="finetune-rule110",
    summary="a transformers qwen3_5 hybrid pretrained as an ordinary model (N = 1), then fine-tuned to sleep "
            "(N = 4) against an N = 1 control; Rule 110, t = 2, hard eviction",
    task="rule110",
    task_kwargs=dict(rows=2, width=24, steps=(2,)),
    train=_FINETUNE_TRAIN,
    deep=(2,),
    base_model=_TINY_QWEN,
    pretrain=_FINETUNE_PRETRAIN,
    notes=_FINETUNE_NOTES + _FINETUNE_RESULTS["hard"],
))

_register(dataclasses.replace(
    STUDIES["finetune-rule110"],
    name="finetune-rule110-sliding",
    summary="`finetune-rule110` with sliding eviction in the fine-tuning: each sleep evicts 16 tokens and keeps "
            "the newest 8 in the window",
    train={**_FINETUNE_TRAIN, "evict": "sliding", "keep": 8},
    notes=_FINETUNE_NOTES + _FINETUNE_RESULTS.get("sliding", "") + "Sliding eviction (the paper's Ouro experiment, L = 512 there): the window holds 24 "
          "tokens; when it is full the oldest 16 are consolidated and evicted and the newest 8 stay, exact. The "
          "pretraining stage has `finetune-rule110`'s settings (the same random model, hard eviction, steps "
          "and seed).\n\n",
))

def _train_one(args: tuple[dict, str, int | None, bool]) -> str:
    cfg_json, out, threads, progress = args
    if threads:
        torch.set_num_threads(threads)
    train(TrainConfig(**cfg_json), out, progress=progress)
    return out


def run_study(
    study: Study,
    out: str | Path = "runs/study",
    docs: str | Path = "docs",
    *,
    jobs: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: str | None = None,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """Train every run (resuming finished or partial ones), score them, write the docs files.

    ``time_limit`` caps each run's training time in seconds (then it saves and the study scores
    it where it stopped; the same call resumes it), for a GPU lent for a fixed time."""
    out, docs = Path(out) / study.name, Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    runs = study.runs()
    if study.base_model is not None:  # fine-tuning: every run starts from the pretrained checkpoint
        runs = [(name, cfg.model_copy(update={"base": str(out / "pretrain")})) for name, cfg in runs]
        if not (out / "random" / "config.json").exists():
            from ..model.hf_tiny import save_tiny_hybrid

            save_tiny_hybrid(out / "random", **study.base_model)
    pretrain, *phases = [[(name, cfg.model_copy(update={"device": device, "time_limit": time_limit}))
                         for name, cfg in group]
                        for group in (study.pretrain_runs(out), runs, study.extended_runs(out))]
    t0 = time.perf_counter()
    if pretrain:
        _train_one((pretrain[0][1].model_dump(mode="json"), str(out / "pretrain"), threads, progress))
    for runs in phases:  # the second phase starts from the first one's checkpoints
        work = [(cfg.model_dump(mode="json"), str(out / name), threads, progress) for name, cfg in runs]
        if jobs > 1:
            # spawn, not fork: forking a process that already runs torch threads can deadlock
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
                list(pool.map(_train_one, work))
        else:
            for item in work:
                _train_one(item)
    train_s = time.perf_counter() - t0

    results = {name: _score(study, out / name, cfg, device) for name, cfg in phases[0]}
    extended = {name: _score(study, out / name, cfg, device) for name, cfg in phases[1]}
    report = {
        "study": study.name,
        "summary": study.summary,
        "task": study.task,
        "task_kwargs": study.task_kwargs,
        "train": study.train,
        "loops": list(study.loops),
        "seeds": list(study.seeds),
        "eval_n": study.eval_n,
        "notes": study.notes,
        "runs": results,
        "comparison": summarize(results, study.loops),
        "extend": study.extend,
        "extended_runs": extended,
        "comparison_extended": summarize(extended, study.loops) if extended else None,
        "comparison_first": summarize(results, study.loops, "final_first") if study.first_answer else None,
        "comparison_extended_first": (summarize(extended, study.loops, "final_first")
                                      if study.first_answer and extended else None),
        "machine": _machine(device),
        "train_wall_s": round(train_s, 1),
        "command": command or f"sleepagent study {study.name}",
        "scoring": "free-running",
    }
    if pretrain:
        report["base_model"], report["pretrain"] = study.base_model, study.pretrain
        # the pretrained model itself, at N = 1 and woken with the largest N (never trained to sleep)
        report["pretrain_run"] = _score(study, out / "pretrain",
                                        pretrain[0][1].model_copy(update={"loops": max(study.loops)}), device)
    (docs / f"{study.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_final(report, docs / f"{study.name}_final.png")
    plot_curves(report, docs / f"{study.name}_curve.png", deep=study.deep)
    (docs / f"{study.name}.md").write_text(markdown(report))
    return report


def _score(study: Study, run_dir: Path, cfg: TrainConfig, device: str) -> dict[str, Any]:
    """A finished run on the study's final test set, at its own N and at N = 1, plus its curve."""
    model, meta = load_checkpoint(run_dir, device)
    task = run_task(model, cfg.model_dump())
    scored = {"loops": cfg.loops, "seed": cfg.seed, "steps": meta.get("step"), "curve": meta.get("evals", [])}
    hits = answer_hits(model, task, sorted({1, cfg.loops}), n=study.eval_n, seed=study.eval_seed,
                       min_fill=cfg.min_fill)
    for key, first_only in (("final", False), ("final_first", True)):
        if first_only and not study.first_answer:
            continue
        scored[key] = {str(N): {str(d): a for d, a in row.items()} for N, row in accuracy(hits, first_only).items()}
    return scored


def summarize(
    results: dict[str, Any], loops: tuple[int, ...], key: str = "final"
) -> dict[str, dict[str, float | bool]]:
    """Per difficulty: each training N's mean accuracy (at its own N), the seed spread, and
    whether the largest N beats N = 1 by more than either spread. ``key``: which scores
    (``final``, or ``final_first`` for the first question of each document)."""
    lo, hi = min(loops), max(loops)
    by_n: dict[int, list[dict[str, float]]] = {}
    for r in results.values():
        by_n.setdefault(r["loops"], []).append(r[key][str(r["loops"])])
    difficulties = sorted({int(d) for rows in by_n.values() for row in rows for d in row})
    out: dict[str, dict[str, float | bool]] = {}
    for d in difficulties:
        row: dict[str, float | bool] = {}
        for n, finals in sorted(by_n.items()):
            accs = [f[str(d)] for f in finals]
            row[f"N{n}_mean"] = sum(accs) / len(accs)
            row[f"N{n}_spread"] = max(accs) - min(accs)
        margin = float(row[f"N{hi}_mean"]) - float(row[f"N{lo}_mean"])
        row["margin"] = margin
        row["beats_spread"] = margin > max(float(row[f"N{lo}_spread"]), float(row[f"N{hi}_spread"]))
        out[str(d)] = row
    return out


def _machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def markdown(report: dict[str, Any]) -> str:
    """The study as a markdown page: settings, table, claim per difficulty, plots."""
    minutes = report["train_wall_s"] / 60
    trained = (f"the invocation that wrote this page trained for {minutes:.0f} min" if minutes >= 1
               else "the runs were trained before the invocation that wrote this page, which only scored them")
    loops = report["loops"]
    lo, hi = min(loops), max(loops)
    lines = [
        f"# Study `{report['study']}`: {report['summary']}",
        "",
        f"Reproduce: `{report['command']}` (resumable: finished runs are only re-scored; {trained}; "
        f"machine: {report['machine']}).",
        "",
        f"Task `{report['task']}` with `{json.dumps(report['task_kwargs'])}`; every run: "
        f"`{json.dumps(report['train'])}`; seeds {report['seeds']}; final test set: {report['eval_n']} "
        "examples per difficulty (fresh seed), exact match per answer.",
        "",
        scoring_note(report),
        "",
        "| difficulty | " + " | ".join(f"trained N={n} (mean ± spread/2)" for n in sorted(set(loops)))
        + (f" | margin N={hi} − N={lo} | beats seed spread |" if hi > lo else " |"),
    ]
    header = lines[-1:]
    lines += _comparison_rows(report["comparison"], loops)
    extend = f"`{json.dumps(report.get('extend'))}` (runs `<name>_more`)"
    for key, caption in (
        ("comparison_extended", f"After the second phase: every run trained further from its final checkpoint with {extend}:"),
        ("comparison_first", "First phase, the first question of each document only (nothing earlier in the window to build on):"),
        ("comparison_extended_first", "Second phase, the first question of each document only:"),
    ):
        if report.get(key):
            lines += ["", caption, "", *header, *_comparison_rows(report[key], loops)]
    phase1 = report["runs"]
    for key, caption in (("final", "every question"), ("final_first", "first question of each document")):
        if key not in next(iter(phase1.values())):
            continue
        lines += ["", f"Per run, {caption} (accuracy at the run's own N, and at N = 1 for the same weights):", ""]
        lines.append("| run | steps | " + " | ".join(f"d={d}" for d in report["comparison"]) + " |")
        lines.append("|---" * (len(report["comparison"]) + 2) + "|")
        for name, r in {**phase1, **(report.get("extended_runs") or {})}.items():
            base = phase1.get(name.removesuffix("_more")) if name not in phase1 else None
            steps = f"{base['steps']} + {r['steps']}" if base else str(r["steps"])
            for N, row in sorted(r[key].items(), key=lambda kv: -int(kv[0])):
                label = name if int(N) == r["loops"] else f"{name} at N=1"
                lines.append(f"| {label} | {steps} | " + " | ".join(f"{row[d]:.3f}" for d in report["comparison"]) + " |")
    if report.get("pretrain_run"):
        pre = report["pretrain_run"]
        lines += ["", f"Fine-tuning: every run above starts from one pretrained checkpoint, a random transformers "
                      f"model (`{json.dumps(report['base_model'])}`) trained as an ordinary model (N = 1, "
                      f"`{json.dumps(report['pretrain'])}`, {pre['steps']} steps). That checkpoint, before "
                      "fine-tuning:", ""]
        for N, row in sorted(pre["final"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"- at N = {N}: " + ", ".join(f"d={d} {row[d]:.3f}" for d in row))
    lines += [
        "",
        f"![accuracy vs {'N' if against_n(report) else 'difficulty'}]({report['study']}_final.png)",
        f"![accuracy vs training step]({report['study']}_curve.png)",
        "",
    ]
    if report.get("notes"):
        lines += ["## Notes", "", report["notes"].strip(), ""]
    return "\n".join(lines)


def scoring_note(report: dict[str, Any]) -> str:
    """How the page's accuracies were scored. Pages written before free-running scoring existed
    were teacher-forced: for an example's first (or only) answer that is the same number, since
    nothing earlier is in its context; later answers had the true earlier answers in context."""
    if report.get("scoring") == "free-running":
        return ("Scoring: free-running, as an agent answers (each answer is the model's own greedy tokens, its "
                "earlier answers right or wrong in the context).")
    if report["task"] == "rule110":
        return ("Scoring: each example has one answer (both rows' labels), scored teacher-forced when this page was "
                "written; for a single answer that equals free-running exact match (the first wrong token already "
                "makes it wrong).")
    return ("Scoring: written before free-running scoring existed, so the 'every question' rows are teacher-forced "
            "(the true earlier answers were in the context); the first-question rows equal free-running scores "
            "(nothing earlier is in a first question's context). The README quotes only the latter.")


def render_page(json_path: str | Path) -> Path:
    """Rewrite ``<name>.md`` and ``<name>_final.png`` from its ``<name>.json`` (no training, no scoring)."""
    json_path = Path(json_path)
    report = json.loads(json_path.read_text())
    plot_final(report, json_path.with_name(f"{json_path.stem}_final.png"))
    out = json_path.with_suffix(".md")
    out.write_text(markdown(report))
    return out


def _comparison_rows(comparison: dict[str, Any], loops: list[int]) -> list[str]:
    """The table's rows; a study of one N (a baseline) has no margin columns."""
    compare = len(set(loops)) > 1
    rows = ["|---" * (len(set(loops)) + (3 if compare else 1)) + "|"]
    for d, row in comparison.items():
        cells = [f"{row[f'N{n}_mean']:.3f} ± {float(row[f'N{n}_spread']) / 2:.3f}" for n in sorted(set(loops))]
        margin = f" | {row['margin']:+.3f} | {'yes' if row['beats_spread'] else 'no'}" if compare else ""
        rows.append(f"| {d} | " + " | ".join(cells) + margin + " |")
    return rows


def against_n(report: dict[str, Any]) -> bool:
    """A sweep (three or more N, one phase) is drawn as the paper draws it: accuracy against N."""
    return len(set(report["loops"])) >= 3 and not report.get("comparison_extended")


def final_series(report: dict[str, Any]) -> tuple[str, list[tuple[str, list[int], list[float], list[tuple[int, float]]]]]:
    """What the final plot draws: the x axis, then per line (label, xs, mean accuracies, seed points).

    Two N: one line per training N against difficulty. A sweep (:func:`against_n`): one line per
    difficulty against N, the paper's figure, each seed a point so the spread shows."""
    loops = sorted(set(report["loops"]))
    difficulties = [int(d) for d in report["comparison"]]
    seeds = {n: [r["final"][str(n)] for r in report["runs"].values() if r["loops"] == n] for n in loops}
    if against_n(report):
        return "trained N (sleep passes)", [
            (f"difficulty {d}", loops, [report["comparison"][str(d)][f"N{n}_mean"] for n in loops],
             [(n, row[str(d)]) for n in loops for row in seeds[n]])
            for d in difficulties
        ]
    return "difficulty", [
        (f"trained N = {n}", difficulties, [report["comparison"][str(d)][f"N{n}_mean"] for d in difficulties],
         [(d, row[str(d)]) for row in seeds[n] for d in difficulties])
        for n in loops
    ]


def plot_final(report: dict[str, Any], path: Path) -> Path:
    """Accuracy vs difficulty per training N, or vs N per difficulty for a sweep: the mean as a
    line, each seed as a marker (with a second phase: its results solid, the first phase's dotted)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    if report.get("comparison_extended"):
        first = {**report, "comparison_extended": None}
        extended = {**report, "runs": report["extended_runs"], "comparison": report["comparison_extended"],
                    "comparison_extended": None}
        phases = [(first, " (first phase)", False), (extended, " (extended)", True)]
    else:
        phases = [(report, "", True)]
    for phase, tag, last in phases:
        xlabel, series = final_series(phase)
        for i, (label, xs, means, points) in enumerate(series):
            ax.plot(xs, means, color=f"C{i}", marker="o", linestyle="-" if last else ":",
                    alpha=1.0 if last else 0.5, label=label + tag)
            if last and points:
                ax.scatter(*zip(*points, strict=True), color=f"C{i}", marker="x", alpha=0.6)
        ax.set_xticks(xs)
    _finish(ax, xlabel, f"{report['task']}: accuracy (x = seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(report: dict[str, Any], path: Path, deep: tuple[int, ...] = ()) -> Path:
    """Accuracy vs training step on the deepest difficulties, one line per run."""
    plt = _pyplot()
    difficulties = [str(d) for d in deep] or list(report["comparison"])[-2:]
    fig, axes = plt.subplots(1, len(difficulties), figsize=(4.5 * len(difficulties), 3.5), dpi=120, squeeze=False)
    for ax, d in zip(axes[0], difficulties, strict=True):
        for i, n in enumerate(sorted(set(report["loops"]))):
            for j, (name, r) in enumerate(x for x in report["runs"].items() if x[1]["loops"] == n):
                more = (report.get("extended_runs") or {}).get(f"{name}_more", {"curve": []})
                evals = r["curve"] + [{**e, "step": r["steps"] + e["step"]} for e in more["curve"]]
                curve = [(e["step"], e["accuracy"][str(n)][d]) for e in evals if str(n) in e["accuracy"]]
                if curve:
                    xs, ys = zip(*curve, strict=True)
                    ax.plot(xs, ys, color=f"C{i}", linestyle="-" if j == 0 else "--", label=name)
        if report.get("extended_runs"):
            ax.axvline(max(r["steps"] for r in report["runs"].values()), color="grey", linewidth=0.5)
        _finish(ax, "training step", f"difficulty {d}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is assumed
    import matplotlib.pyplot as plt

    return plt


def _finish(ax, xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7)


if __name__ == "__main__":  # python -m sleepagent.train.study render docs/depo.json ...
    import sys

    if sys.argv[1:2] != ["render"] or len(sys.argv) < 3:
        raise SystemExit("usage: python -m sleepagent.train.study render docs/NAME.json [...]")
    for path in sys.argv[2:]:
        print(render_page(path))
