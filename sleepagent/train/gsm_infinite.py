"""``gsm_infinite``: GSM-Infinite's symbolic problems (Zhou et al. 2025), byte level.

Written from the paper's description, not from its code: a random computational graph (a DAG) of
variables, each either assigned a constant or defined from two earlier ones by one operation
(``+``, ``-``, ``*``, all mod 5, so every value is 0..4). The answer graph has exactly ``op``
operations, every one an ancestor of its last variable (``op`` = the operations needed to reach
the answer). Distractors are ``filler`` further graphs drawn by the same generator, with ``op``
from the same distribution and the same operation mix, one of whose constant assignments is left
out, so their operation nodes cannot be computed. All statements are shuffled together; nothing
but the dependencies tells the answer graph from the fillers.

Question forms (``question``):

- ``"symbolic"`` (the default, GSM-Infinite's symbolic subset): ``Q: which variables equal 3?``,
  answered by every variable whose value is determined and equals the answer graph's last value,
  sorted by name and joined by ``", "``: ``A: V12, V47.``;
- ``"value"``: ``Q: V47?`` answered by its value, ``A: 3.``.

Layout: ``Q: <question> <statements joined by ". ">. A: <answer>.``; the loss is on the answer and
its dot. Difficulty = ``op``. Statements: ``assign V12 = 3``, ``assign V47 = V12 * V30``.

Records (``sleepagent eval --data``), one JSON object a line, this module's own layout (not the
original release's field names): ``{"problem": "<statements joined by '. '>", "question":
"which variables equal 3?" | "V47?", "answer": "V12, V47" | "3", "op": 4}``; ``op`` is optional
(:meth:`GsmInfinite.from_problem` recomputes it from the graph and checks the answer against it).
:func:`evaluate` is the graph evaluator the tests and the reader share.
"""

from __future__ import annotations

import random
import re
from typing import Any

from ..errors import DataError
from .example import Example

__all__ = ["MOD", "OPS", "GsmInfinite", "evaluate", "op_count", "parse"]

MOD = 5
OPS = ("+", "-", "*")
_STATEMENT = re.compile(r"assign (V\d+) = (?:(\d+)|(V\d+) ([-+*]) (V\d+))")


def _apply(a: int, op: str, b: int) -> int:
    return (a + b if op == "+" else a - b if op == "-" else a * b) % MOD


def parse(problem: str) -> dict[str, int | tuple[str, str, str]]:
    """The statements of a problem text: variable -> constant or (left, op, right)."""
    defs: dict[str, int | tuple[str, str, str]] = {}
    for st in (x.strip() for x in problem.strip().rstrip(".").split(". ")):
        if not st:
            continue
        m = _STATEMENT.fullmatch(st)
        if m is None:
            raise DataError(f"statement {st!r} is not 'assign Vx = <int>' or 'assign Vx = Vy <+|-|*> Vz'")
        if m[1] in defs:
            raise DataError(f"{m[1]} is assigned twice")
        defs[m[1]] = int(m[2]) % MOD if m[2] is not None else (m[3], m[4], m[5])
    return defs


def evaluate(defs: dict[str, int | tuple[str, str, str]]) -> dict[str, int]:
    """Every variable whose value is determined (its dependencies all assigned, no cycle)."""
    values: dict[str, int] = {}
    state: dict[str, int] = {}  # 1 visiting, 2 done (determined or not)

    def visit(v: str) -> int | None:
        if state.get(v) == 2:
            return values.get(v)
        if state.get(v) == 1 or v not in defs:
            return None
        state[v] = 1
        d = defs[v]
        if isinstance(d, int):
            out: int | None = d
        else:
            a, b = visit(d[0]), visit(d[2])
            out = None if a is None or b is None else _apply(a, d[1], b)
        state[v] = 2
        if out is not None:
            values[v] = out
        return out

    for v in defs:
        visit(v)
    return values


def op_count(defs: dict[str, int | tuple[str, str, str]], var: str) -> int:
    """The operations needed to compute ``var``: operation statements among it and its ancestors."""
    seen: set[str] = set()
    stack = [var]
    while stack:
        v = stack.pop()
        if v in seen or v not in defs:
            continue
        seen.add(v)
        d = defs[v]
        if not isinstance(d, int):
            stack += [d[0], d[2]]
    return sum(not isinstance(defs[v], int) for v in seen)


class GsmInfinite:
    """See module docstring. ``ops``: the training distribution of operation counts (fillers draw
    theirs from it too); ``filler``: distractor graphs a problem; ``digits`` per variable name."""

    name = "gsm_infinite"

    def __init__(self, ops: tuple[int, ...] = (2, 4, 6), filler: int = 3, window: int = 256, digits: int = 2,
                 question: str = "symbolic") -> None:
        if question not in ("symbolic", "value"):
            raise ValueError(f"gsm_infinite: question is 'symbolic' or 'value', not {question!r}")
        if not ops or min(ops) < 1:
            raise ValueError("gsm_infinite: ops are counts >= 1")
        need = (max(ops) + max(ops) // 2 + 1) * (filler + 1)
        if not 2 <= digits <= 6 or need > 9 * 10 ** (digits - 1):
            raise ValueError(f"gsm_infinite: {digits}-digit names cannot name {need} variables (digits 2..6)")
        self.ops, self.filler, self.window, self.digits, self.question = tuple(ops), filler, window, digits, question
        self.vocab_size = 268
        self.pad_id = 256

    @staticmethod
    def _graph(rng: random.Random, op: int, names: list[str]) -> list[tuple[str, int | tuple[str, str, str]]]:
        """A DAG with ``op`` operations, every one an ancestor of the last: roots (constants) first,
        then each operation on the previous node and one other earlier node (unused roots first)."""
        n_roots = rng.randint(2, max(2, op // 2 + 1))
        nodes: list[tuple[str, int | tuple[str, str, str]]] = [
            (names.pop(), rng.randrange(MOD)) for _ in range(n_roots)]
        unused = [v for v, _ in nodes[2:]]
        prev = nodes[0][0]
        other = nodes[1][0]
        for i in range(op):
            if i > 0:
                earlier = [v for v, _ in nodes if v != prev]
                other = unused.pop(0) if unused else rng.choice(earlier)
            left, right = (prev, other) if rng.random() < 0.5 else (other, prev)
            var = names.pop()
            nodes.append((var, (left, rng.choice(OPS), right)))
            prev = var
        return nodes

    def sample(self, rng: random.Random, difficulty: int | None = None) -> Example:
        op = difficulty if difficulty is not None else rng.choice(self.ops)
        fill_ops = [rng.choice(self.ops) for _ in range(self.filler)]
        total = sum(o + o // 2 + 1 for o in [op, *fill_ops])
        names = [f"V{x}" for x in rng.sample(range(10 ** (self.digits - 1), 10 ** self.digits), total)]
        chain = self._graph(rng, op, names)
        statements = list(chain)
        for fo in fill_ops:
            g = self._graph(rng, fo, names)
            del g[rng.randrange(2)]  # a root every operation depends on, never assigned: none is determined
            statements += g
        rng.shuffle(statements)
        defs = dict(statements)
        target = chain[-1][0]
        values = evaluate(defs)
        if self.question == "symbolic":
            question = f"which variables equal {values[target]}?"
            answer = ", ".join(sorted(v for v, x in values.items() if x == values[target]))
        else:
            question, answer = f"{target}?", str(values[target])
        return self._example(question, [self._text(v, d) for v, d in statements], answer, op)

    @staticmethod
    def _text(var: str, d: int | tuple[str, str, str]) -> str:
        return f"assign {var} = {d}" if isinstance(d, int) else f"assign {var} = {d[0]} {d[1]} {d[2]}"

    @staticmethod
    def _example(question: str, statements: list[str], answer: str, op: int) -> Example:
        prompt = (f"Q: {question} " + ". ".join(statements) + ". A: ").encode()
        answer_bytes = f"{answer}.".encode()
        ids = list(prompt) + list(answer_bytes)
        mask = [False] * len(prompt) + [True] * len(answer_bytes)
        return Example(ids, mask, [list(range(len(prompt), len(ids)))], op,
                       {"question": question, "answer": answer})

    @staticmethod
    def record(ex: Example) -> dict[str, Any]:
        """An example as a JSONL record of this module's layout (the inverse of :meth:`from_problem`)."""
        text = bytes(ex.ids[: ex.answers[0][0]]).decode()
        head, problem = text[: -len(". A: ")].split("? ", 1)
        return {"problem": problem, "question": head[len("Q: "):] + "?", "answer": ex.meta["answer"],
                "op": ex.difficulty}

    def from_problem(self, problem: str, question: str, answer: str, op: int | None = None) -> Example:
        """A record (``eval --data``) laid out as :meth:`sample` lays out its own; the answer is checked
        against :func:`evaluate` and ``op`` against :func:`op_count` (a :class:`DataError` if either differs)."""
        defs = parse(problem)
        values = evaluate(defs)
        m = re.fullmatch(r"which variables equal (\d+)\?|(V\d+)\?", question.strip())
        if m is None:
            raise DataError(f"question {question!r} is neither 'which variables equal <v>?' nor 'V<n>?'")
        if m[1] is not None:
            asked = sorted(v for v, x in values.items() if x == int(m[1]))
            expect = ", ".join(asked)
            depth = max((op_count(defs, v) for v in asked), default=0)
        else:
            if m[2] not in values:
                raise DataError(f"{m[2]} cannot be computed from the statements")
            expect, depth = str(values[m[2]]), op_count(defs, m[2])
        if str(answer).strip() != expect:
            raise DataError(f"answer {answer!r} is not what the statements give ({expect!r})")
        if op is not None and int(op) != depth:
            raise DataError(f"op {op} is not the {depth} operations the answer needs")
        statements = [x.strip() for x in problem.strip().rstrip(".").split(". ") if x.strip()]
        return self._example(question.strip(), statements, expect, depth)

    def test_difficulties(self) -> list[int]:
        return sorted(set(self.ops))
