"""Synthetic tasks of the paper, generated procedurally from a seed.

Every task yields :class:`Example` objects: token ids, a loss mask on the answer tokens (the
target convention of :meth:`SleepHybridLM.forward`: ``loss_mask[t]`` marks token t as predicted
from position t - 1), the positions of each answer (exact match per answer), and a difficulty.
Exact match under teacher forcing equals exact match of greedy decoding, so evaluation is one
batched forward pass.

``rule110`` (character level, vocabulary ``0``=bit 0, ``1``=bit 1, ``2``=query, ``3``=pad):
    R independent rows of width 24, one per hard-evicted window of W = 24 tokens, then the query
    window ``2 l_1 .. l_R``: l_i is the first bit of row i after t Rule-110 steps (periodic
    boundary). t is the difficulty. Exact = all R labels right (chance 2^-R). The text does not
    say t, so a model learns one t, as in the paper (one model per t): train with ``steps=(t,)``.

``depo`` (Physics of LMs 4.1's Depo, token level): node names are words of 1..max_len tokens from
    ``1..m`` with the last token shifted to ``m+1..2m`` (marks the word end). ONE directed cycle
    over n nodes; the edges ``u v`` (two words back to back) in random order, left-padded with
    ``pad`` to a fixed length so they fill exactly ``edge_windows`` windows; then Q queries
    ``<hop_k> start <ans> answer`` (distinct starts): answer = the node k steps along the cycle.
    Loss on ``<ans>`` and the answer tokens. Difficulty = k; test examples (a given k) use
    n = n_max, training draws n in 3..n_max with weight 1/(n + sqrt(n_max)). Ids: 0 bos, 1..2m names, 2m+1 pad,
    2m+2 ``<ans>``, 2m+3+j ``<hop_{2^j}>`` (with ``hop_counts="all"``: every k in 1..k_max, as the
    original draws them, ``<hop_k>`` = 2m+2+k). ``train_hops`` limits the k that training draws (a
    curriculum knob); test examples cover every k. :meth:`Depo.from_original` maps a sequence
    in the original generator's ids (``9000+k``, ``9500``, separator ``9700``) onto this layout,
    for ``sleepagent eval --data``.

``gsm_infinite`` (:mod:`sleepagent.train.gsm_infinite`): GSM-Infinite's semantics (a random
    dependency DAG, distractor graphs with the same operation mix and no marker, the symbolic
    question "which variables equal v?" answered by a list). It supersedes ``gsm_inf``.

``gsm_inf`` (the earlier, simpler task, kept so its study and checkpoints still load; NOT
    GSM-Infinite: one chain to one value, and its fillers all use ``+ 1``, which marks the chain):
    the question ``Q: V123456?`` first
    (``digits`` per name, 6 as in the original; fewer make shorter text for CPU studies),
    then shuffled statements ``assign V1 = V2 + 1.`` / ``- 1`` / plain copy, one chain of ``op``
    statements from a root ``assign Vx = <0..10>``, plus filler chains whose root is never
    assigned; then ``A: <value>.``. Difficulty = op. Loss on the answer digits and the ``.``.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

from ..errors import DataError
from .docqa import DocQA
from .example import Example, collate
from .gsm_infinite import GsmInfinite

__all__ = ["TASKS", "Depo", "Example", "GsmInf", "GsmInfinite", "Rule110", "collate", "make_task", "read_data"]


def rule110_step(row: list[int]) -> list[int]:
    n = len(row)
    # Rule 110: new = (center OR right) AND NOT (left AND center AND right)
    return [
        int((row[i] or row[(i + 1) % n]) and not (row[i - 1] and row[i] and row[(i + 1) % n]))
        for i in range(n)
    ]


class Rule110:
    """See module docstring. ``steps`` is the training distribution of t."""

    name = "rule110"
    window = 24

    def __init__(self, rows: int = 4, width: int = 24, steps: tuple[int, ...] = (32,)) -> None:
        if width != self.window:
            raise ValueError("rule110 rows fill exactly one window of 24 tokens")
        if not steps or min(steps) < 0:
            raise ValueError(f"rule110 steps must be one or more t >= 0, got {steps}")
        self.rows, self.width, self.steps = rows, width, steps
        self.vocab_size = 4
        self.pad_id = 3

    def sample(self, rng: random.Random, difficulty: int | None = None) -> Example:
        t = difficulty if difficulty is not None else rng.choice(self.steps)
        ids: list[int] = []
        labels = []
        for _ in range(self.rows):
            row = [rng.randint(0, 1) for _ in range(self.width)]
            ids += row
            for _ in range(t):
                row = rule110_step(row)
            labels.append(row[0])
        ids.append(2)
        start = len(ids)
        ids += labels
        mask = [False] * start + [True] * self.rows
        return Example(ids, mask, [list(range(start, start + self.rows))], t)  # exact = all R labels

    def test_difficulties(self) -> list[int]:
        return sorted(set(self.steps))


class Depo:
    """See module docstring. ``n_max`` nodes at most, hops up to ``k_max``."""

    name = "depo"

    def __init__(
        self, n_max: int = 75, k_max: int = 16, m: int = 50, max_len: int = 2, queries: int = 10,
        window: int = 75, edge_windows: int = 4, train_hops: tuple[int, ...] | None = None,
        hop_counts: str = "pow2",
    ) -> None:
        self.n_max, self.k_max, self.m, self.max_len, self.queries = n_max, k_max, m, max_len, queries
        self.window, self.edge_windows = window, edge_windows
        self.bos, self.pad, self.ans = 0, 2 * m + 1, 2 * m + 2
        if hop_counts not in ("pow2", "all"):
            raise ValueError(f"depo: hop_counts is 'pow2' or 'all', not {hop_counts!r}")
        self.hop_counts = hop_counts
        if hop_counts == "all":  # every k in 1..k_max, drawn uniformly, as the original generator draws them
            self.hops = list(range(1, k_max + 1))
        else:
            self.hops = [2**j for j in range(int(math.log2(k_max)) + 1)]
            if k_max not in self.hops:
                self.hops.append(k_max)
        self.vocab_size = 2 * m + 3 + len(self.hops)
        # the hop counts training draws from (default all); tests always cover every hop count
        self.train_hops = list(train_hops) if train_hops is not None else list(self.hops)
        if not self.train_hops or set(self.train_hops) - set(self.hops):
            raise ValueError(f"train_hops {train_hops} must be a non-empty subset of {self.hops}")
        self.pad_id = self.pad
        distinct = sum(m**length for length in range(1, max_len + 1))  # words of 1..max_len tokens
        if distinct < n_max:
            raise ValueError(f"m={m} and max_len={max_len} give {distinct} distinct names, fewer than n_max={n_max}")
        if 1 + 2 * n_max * (1 + max_len) / 2 > window * edge_windows:
            raise ValueError(f"{n_max} edges do not fit {edge_windows} windows of {window} tokens on average")

    def hop_token(self, k: int) -> int:
        return 2 * self.m + 3 + self.hops.index(k)

    def _names(self, rng: random.Random, n: int) -> list[list[int]]:
        names: set[tuple[int, ...]] = set()
        while len(names) < n:
            length = rng.randint(1, self.max_len)
            word = [rng.randint(1, self.m) for _ in range(length)]
            word[-1] += self.m
            names.add(tuple(word))
        out = [list(w) for w in names]
        rng.shuffle(out)
        return out

    def sample(self, rng: random.Random, difficulty: int | None = None, n: int | None = None) -> Example:
        if n is None and difficulty is not None:
            n = self.n_max  # test examples: the full graph, as in the paper's test set
        if n is None:
            # n in 3..N with weight 1 / (n + sqrt(N)), as the original generator
            ns = list(range(3, self.n_max + 1))
            n = rng.choices(ns, weights=[1 / (x + math.sqrt(self.n_max)) for x in ns])[0]
        edge_len = self.window * self.edge_windows - 1
        while True:  # names are random-length words; redraw in the rare case the edges overflow
            names = self._names(rng, n)
            edges = [names[i] + names[(i + 1) % n] for i in range(n)]
            rng.shuffle(edges)
            body = [t for e in edges for t in e]
            if len(body) <= edge_len:
                break
        ids = [self.bos] + [self.pad] * (edge_len - len(body)) + body
        mask = [False] * len(ids)
        answers = []
        starts = rng.sample(range(n), min(self.queries, n))
        for s in starts:
            k = difficulty if difficulty is not None else rng.choice(self.train_hops)
            ids += [self.hop_token(k)] + names[s]
            a0 = len(ids)
            ids += [self.ans] + names[(s + k) % n]
            mask += [False] * (1 + len(names[s])) + [True] * (1 + len(names[(s + k) % n]))
            answers.append(list(range(a0, len(ids))))
        return Example(ids, mask, answers, difficulty or 0, {"n": n})

    # the original generator's ids (PhysicsLM4's depo.py): names 1..2m and bos 0 as here
    ORIGINAL_HOP, ORIGINAL_ANS, ORIGINAL_SEP = 9000, 9500, 9700

    def from_original(self, tokens: list[int], label: list[int]) -> Example:
        """One sequence in the original generator's id layout, mapped onto this task's vocabulary.

        The layout: ``0``, the edges (each optionally preceded by the separator 9700, which has no
        counterpart here and is dropped), then queries ``9000+k start 9500 answer``; ``label`` is 1
        on each ``9500`` and answer token. The edges are left-padded as :meth:`sample` pads them,
        so the windows fall where they fall in training. Each answer keeps its own k, in
        ``meta["hops"]`` (the original draws k per query). Raises :class:`DataError` naming the
        first thing that does not fit."""
        if len(label) != len(tokens):
            raise DataError(f"label has {len(label)} entries for {len(tokens)} tokens")
        if not tokens or tokens[0] != self.bos:
            raise DataError(f"a sequence starts with bos {self.bos}, not {tokens[:1]}")
        names = range(1, 2 * self.m + 1)
        q0 = next((i for i, t in enumerate(tokens) if t >= self.ORIGINAL_HOP and t != self.ORIGINAL_SEP), len(tokens))
        body = [t for t in tokens[1:q0] if t != self.ORIGINAL_SEP]
        if bad := [t for t in body if t not in names]:
            raise DataError(f"edge token {bad[0]} is not a name token (1..{2 * self.m}) of this task")
        edge_len = self.window * self.edge_windows - 1
        if len(body) > edge_len:
            raise DataError(f"the edges take {len(body)} tokens; this task's {self.edge_windows} window(s) of "
                            f"{self.window} hold {edge_len}")
        ids = [self.bos] + [self.pad] * (edge_len - len(body)) + body
        mask, answers, hops = [False] * len(ids), [], []
        i = q0
        while i < len(tokens):
            k = tokens[i] - self.ORIGINAL_HOP
            if k not in self.hops:
                raise DataError(f"token {tokens[i]} at position {i}: this task asks {self.hops} hops, not {k}")
            ans = next((j for j in range(i + 1, len(tokens)) if tokens[j] == self.ORIGINAL_ANS), None)
            end = next((j for j in range(i + 1, len(tokens)) if self.ORIGINAL_HOP <= tokens[j] < self.ORIGINAL_ANS),
                       len(tokens))
            if ans is None or ans > end or not all(t in names for t in tokens[i + 1 : ans] + tokens[ans + 1 : end]):
                raise DataError(f"the query at position {i} is not '{tokens[i]} start 9500 answer' of name tokens")
            if any(label[j] != (j >= ans) for j in range(i, end)):
                raise DataError(f"label of the query at position {i} does not mark exactly its 9500 and answer")
            a0 = len(ids) + (ans - i)
            ids += [self.hop_token(k)] + tokens[i + 1 : ans] + [self.ans] + tokens[ans + 1 : end]
            mask += [False] * (ans - i) + [True] * (end - ans)
            answers.append(list(range(a0, len(ids))))
            hops.append(k)
            i = end
        if not answers:
            raise DataError("the sequence has no query (a token 9000 + k after the edges)")
        return Example(ids, mask, answers, hops[0], {"hops": hops})

    def test_difficulties(self) -> list[int]:
        return self.hops


def read_data(path: str | Path, task: Any) -> list[Example]:
    """Externally supplied test sequences, one JSON object per line, mapped onto ``task``:
    depo ``{"tokens": [...], "label": [...]}`` in the original generator's layout
    (:meth:`Depo.from_original`), gsm_inf ``{"question_var": ..., "context": ..., "answer": int}``
    (:meth:`GsmInf.from_record`), gsm_infinite ``{"problem": ..., "question": ..., "answer": ..., "op": int}``
    (:meth:`GsmInfinite.from_problem`; ``op`` optional)."""
    keys: tuple[str, ...]
    if isinstance(task, Depo):
        keys, build = ("tokens", "label"), lambda r: task.from_original([int(t) for t in r[0]], [int(x) for x in r[1]])
    elif isinstance(task, GsmInfinite):
        keys, build = ("problem", "question", "answer"), lambda r: task.from_problem(
            str(r[0]), str(r[1]), str(r[2]), None if r[3] is None else int(r[3]))
    elif hasattr(task, "from_record"):  # gsm_inf, or gsm_inf through a model's tokenizer
        keys, build = ("question_var", "context", "answer"), lambda r: task.from_record(str(r[0]), str(r[1]), int(r[2]))
    else:
        raise DataError(f"--data reads depo, gsm_inf and gsm_infinite sequences, not {getattr(task, 'name', task)!r}")
    examples = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                examples.append(build([*(row[k] for k in keys), row.get("op")]))
            except DataError as e:
                raise DataError(str(e), line=n) from None
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"expected a JSON object with {', '.join(keys)}: {e!r}", line=n) from None
    if not examples:
        raise DataError(f"{path} holds no sequence")
    return examples


def op_max(ops: tuple[int, ...]) -> int:
    return max(ops, default=0)


class GsmInf:
    """See module docstring. ``ops`` is the training distribution of the number of operations."""

    name = "gsm_inf"

    def __init__(
        self, ops: tuple[int, ...] = (1, 2, 4, 8), filler: int = 12, window: int = 256, digits: int = 6
    ) -> None:
        if not 2 <= digits <= 6 or op_max(ops) + 1 + 2 * filler > 9 * 10 ** (digits - 1) - 1:
            raise ValueError(f"gsm_inf: {digits}-digit names cannot name {op_max(ops) + 1 + 2 * filler} variables "
                             "(digits 2..6)")
        self.ops, self.filler, self.window, self.digits = ops, filler, window, digits
        self.vocab_size = 268
        self.pad_id = 256

    def sample(self, rng: random.Random, difficulty: int | None = None) -> Example:
        op = difficulty if difficulty is not None else rng.choice(self.ops)
        names = rng.sample(range(10 ** (self.digits - 1), 10 ** self.digits - 1), op + 1 + self.filler * 2)
        var = [f"V{x}" for x in names]
        value = rng.randint(0, 10)
        statements = [f"assign {var[0]} = {value}"]
        for i in range(1, op + 1):
            kind = rng.choice(["+ 1", "- 1", ""])
            statements.append(f"assign {var[i]} = {var[i - 1]}" + (f" {kind}" if kind else ""))
            value += 1 if kind == "+ 1" else -1 if kind == "- 1" else 0
        pool = var[op + 1 :]
        for i in range(0, len(pool) - 1, 2):  # filler: the source is never assigned
            statements.append(f"assign {pool[i + 1]} = {pool[i]} + 1")
        rng.shuffle(statements)
        return self._example(var[op], statements, value, op)

    @staticmethod
    def _example(question_var: str, statements: list[str], answer: int, op: int) -> Example:
        """The byte layout: ``Q: Vx? s1. s2. ... A: <answer>.``, the loss on the answer and its dot."""
        prompt = (f"Q: {question_var}? " + ". ".join(statements) + ". A: ").encode()
        answer_bytes = f"{answer}.".encode()
        ids = list(prompt) + list(answer_bytes)
        mask = [False] * len(prompt) + [True] * len(answer_bytes)
        return Example(ids, mask, [list(range(len(prompt), len(ids)))], op)

    _STATEMENT = re.compile(r"assign (V\d+) = (?:(\d+)|(V\d+)(?: ([+-]) 1)?)")

    def from_record(self, question_var: str, context: str, answer: int) -> Example:
        """An externally written problem (``eval --data``): the asked variable, the statements
        joined by ". ", the integer answer; laid out as :meth:`sample` lays out its own. The
        difficulty is the number of operations on the asked variable's chain, found by following
        the chain back to its root (a :class:`DataError` when it does not reach one)."""
        statements = [x.strip() for x in context.strip().rstrip(".").split(". ") if x.strip()]
        source: dict[str, str | None] = {}
        for st in statements:
            match = self._STATEMENT.fullmatch(st)
            if match is None:
                raise DataError(f"statement {st!r} is not 'assign Vx = <int>' or 'assign Vx = Vy [+ 1 | - 1]'")
            source[match[1]] = match[3]  # None for the root
        op, var, seen = 0, question_var, set()
        while (nxt := source.get(var, "")) is not None:
            if nxt == "" or var in seen:
                raise DataError(f"{question_var} cannot be derived: {var} is {'never' if nxt == '' else 'circularly'} "
                                "assigned")
            seen.add(var)
            op, var = op + 1, nxt
        return self._example(question_var, statements, int(answer), op)

    def test_difficulties(self) -> list[int]:
        return sorted(set(self.ops))


TASKS = {"rule110": Rule110, "depo": Depo, "gsm_inf": GsmInf, "gsm_infinite": GsmInfinite}


def make_task(name: str, **kwargs):
    if name == "docqa":
        return DocQA(**kwargs)
    try:
        return TASKS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted([*TASKS, 'docqa'])}") from None
