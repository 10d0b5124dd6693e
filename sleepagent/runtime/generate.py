"""The one token loop: every assistant turn, from every front door, is written here.

A turn starts from the logits after the generation prompt. Each step a :class:`TokenPicker`
chooses the next token (the :class:`Sampler`: greedy or sampled, under the turn's constraint,
:func:`~sleepagent.runtime.constraints.turn_constraint`; a scripted test model: its script), the token
goes through a real decode step on the session's state, and the loop ends at the end-of-turn
token, a stop string or the token budget. Tokens the constraint allows alone (a tool call's
``{"name": "``, a lone tool's name, an object's next key) are read in one piece instead, one
prefill rather than a decode step each (jump-forward decoding: the same turn, fewer steps;
``Sampler.forced``). Then the
turn is closed: its ``<|end|>`` is queued, read with the next flush (the model waits for the
tool or the user with its closing token pending, as it was trained).

Memory policy (``gate``): when the policy has never-consolidate rules, the turn's tokens are
decoded out of the fast weights and released into them only once the whole turn is known to be
allowed. A turn cut by the token budget is never released: its end is unknown, and a cut secret
no longer matches the pattern that would have excluded it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from .constraints import visible_text

__all__ = ["CallDelta", "CallPart", "Constraint", "GenerationParams", "Sampler", "Script", "TokenPicker", "TurnText",
           "call_parts", "generate_turn"]


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """How one turn is written: the token budget, sampling, stop strings, tool choice and the
    answer's JSON schema (the OpenAI request's parameters, the Agent's settings and LangChain's,
    in one shape). ``output_schema``: the answer is one JSON value valid against it (OpenAI's
    ``response_format``; ``{"type": "object"}`` for ``json_object``), tool calls still allowed
    under ``tool_choice``; None: free text."""

    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    tool_choice: str = "auto"  # normalised: "auto" | "none" | "required" | a tool's name
    output_schema: dict[str, Any] | None = None


class TokenPicker(Protocol):
    """Chooses a turn's next token from the logits and the turn's tokens so far; the end-of-turn
    token ends the turn."""

    def __call__(self, logits: torch.Tensor, emitted: Sequence[int]) -> int: ...


class Constraint(Protocol):
    """A logits mask over a turn: ``apply(logits, emitted)`` returns ``logits`` [vocab] with every
    token not allowed after ``emitted`` (the turn's tokens so far) at -inf (the
    :class:`~sleepagent.runtime.grammar.GrammarConstraint` of :mod:`.grammar`)."""

    def apply(self, logits: torch.Tensor, emitted: Sequence[int]) -> torch.Tensor: ...


class Sampler:
    """Greedy (``temperature == 0``) or temperature sampling from one RNG stream, under an
    optional :class:`Constraint`."""

    def __init__(self, temperature: float = 0.0, generator: torch.Generator | None = None,
                 constraint: Constraint | None = None) -> None:
        self.temperature = float(temperature)
        self.generator = generator or torch.Generator().manual_seed(0)
        self.constraint = constraint

    def __call__(self, logits: torch.Tensor, emitted: Sequence[int]) -> int:
        if self.constraint is not None:
            logits = self.constraint.apply(logits, emitted)
        if self.temperature == 0:
            return int(torch.argmax(logits))
        # shift by the maximum before dividing: a tiny temperature (1e-304 is a valid float) then
        # sends the others to -inf instead of every logit to inf (inf - inf is a NaN)
        z = logits.double()
        probs = torch.softmax((z - z.max()) / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def forced(self, emitted: Sequence[int], limit: int) -> list[int]:
        """The tokens the constraint allows alone after ``emitted`` (at most ``limit``; none
        without a constraint that can tell): this sampler would pick each of them whatever the
        logits, so :func:`generate_turn` reads them in one piece."""
        fn = getattr(self.constraint, "forced", None)
        return list(fn(emitted, limit)) if fn is not None else []


class Script:
    """A scripted turn (a test model's): its tokens in order, then the end of the turn. Every
    token still goes through the real model."""

    def __init__(self, ids: Sequence[int], end_id: int) -> None:
        self.ids, self.end_id = list(ids), end_id

    def __call__(self, logits: torch.Tensor, emitted: Sequence[int]) -> int:
        return self.ids[len(emitted)] if len(emitted) < len(self.ids) else self.end_id


@dataclass
class TurnText:
    """A written turn. ``text``: what the model wrote, cut at a stop string; ``full_text``: every
    token it wrote, the stop string included (what it read, and what the policy judged);
    ``content``: ``text`` without tool-call markup, what a client is shown; ``tokens``: the tokens
    written, the model's own end-of-turn token included when it wrote one (``ended``; it is read
    with the next flush, as the turn's closing); ``finish``: "stop" (end of turn or a stop string)
    or "length" (the budget ran out); ``consolidate``: whether the turn may enter the fast
    weights."""

    text: str
    full_text: str
    tokens: int
    finish: Literal["stop", "length"]
    consolidate: bool
    ended: bool = False

    @property
    def content(self) -> str:
        return visible_text(self.text)


_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_WS = " \t\n\r"


@dataclass(frozen=True)
class CallPart:
    """What a tool-call block written so far says, read only as far as it is certain: ``name``
    once its string is closed (None before); ``arguments``: the text of its arguments object so
    far, every character of it final (empty while it has not begun, and for arguments that are
    not written as an object); ``done``: the arguments object is closed."""

    name: str | None
    arguments: str
    done: bool


@dataclass(frozen=True)
class CallDelta:
    """A piece of a tool call as it is written (streamed by :func:`generate_turn`'s ``on_call``):
    ``index``: the call's place among the turn's ``<tool_call>`` blocks; ``name``: set on the
    call's first delta only, once the name is fully decoded; ``arguments``: new argument text."""

    index: int
    name: str | None = None
    arguments: str = ""


def call_parts(text: str) -> list[CallPart]:
    """Every ``<tool_call>`` block of ``text`` (found as :func:`sleepagent.tools.parse_tool_calls`
    finds them) read as ``{"name": NAME, "arguments": {...}}`` as far as it goes, one
    :class:`CallPart` each. Parts only grow as ``text`` does, so that what they say may be sent
    before the call is complete; a block written in another shape (a fence, the XML form, keys in
    another order) says nothing until it is parsed whole."""
    out: list[CallPart] = []
    start = text.find(_OPEN)
    while start != -1:
        body_start = start + len(_OPEN)
        close, reopen = text.find(_CLOSE, body_start), text.find(_OPEN, body_start)
        if close == -1 or (reopen != -1 and reopen < close):  # unclosed: up to the next block
            out.append(_call_part(text[body_start:reopen if reopen != -1 else len(text)]))
            start = reopen
            continue
        out.append(_call_part(text[body_start:close]))
        start = text.find(_OPEN, close + len(_CLOSE))
    return out


def _call_part(body: str) -> CallPart:
    i, n = 0, len(body)

    def skip(i: int) -> int:
        while i < n and body[i] in _WS:
            i += 1
        return i

    def expect(i: int, lit: str) -> int | None:
        """The index after ``lit`` at ``i``; -1: the body ends inside it; None: something else."""
        rest = body[i:i + len(lit)]
        if rest == lit:
            return i + len(lit)
        return -1 if lit.startswith(rest) and i + len(rest) == n else None

    nothing = CallPart(None, "", False)
    name: str | None = None
    i = skip(0)
    for lit in ("{", '"name"', ":"):
        j = expect(i, lit)
        if j is None or j == -1:
            return nothing
        i = skip(j)
    if i >= n:
        return nothing
    if body[i] != '"':
        return nothing
    try:
        name, i = json.decoder.scanstring(body, i + 1)  # type: ignore[attr-defined]
    except ValueError:  # not closed yet (or never a name: the call is malformed)
        return nothing
    name = name.strip()
    if not name:
        return nothing
    i = skip(i)
    for lit in (",", '"arguments"', ":"):
        j = expect(i, lit)
        if j is None or j == -1:
            return CallPart(name, "", False)
        i = skip(j)
    if i >= n or body[i] != "{":
        return CallPart(name, "", False)
    depth, in_str, esc = 0, False, False
    for k in range(i, n):
        ch = body[k]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return CallPart(name, body[i:k + 1], True)
    return CallPart(name, body[i:], False)


class _CallStream:
    """Turns the growing text of a turn into :class:`CallDelta` pieces."""

    def __init__(self, emit: Callable[[CallDelta], None]) -> None:
        self.emit = emit
        self.named: list[bool] = []
        self.sent: list[int] = []

    def feed(self, text: str) -> None:
        for idx, part in enumerate(call_parts(text)):
            if idx == len(self.named):
                self.named.append(False)
                self.sent.append(0)
            if part.name is None:
                continue
            if not self.named[idx]:
                self.named[idx] = True
                self.emit(CallDelta(idx, name=part.name))
            if len(part.arguments) > self.sent[idx]:
                self.emit(CallDelta(idx, arguments=part.arguments[self.sent[idx]:]))
                self.sent[idx] = len(part.arguments)


def _until_stop(tok: Any, emitted: list[int], new: list[int], stops: Sequence[str]) -> list[int]:
    """``new`` up to and including the first token after which the turn's text holds a stop
    string it did not hold before (all of ``new`` when none does)."""
    if not stops:
        return new
    for i in range(len(new)):
        if any(s in tok.decode(emitted + new[: i + 1]) for s in stops):
            return new[: i + 1]
    return new


async def generate_turn(
    engine: Any,
    session: Any,
    logits: torch.Tensor,
    *,
    picker: TokenPicker,
    max_tokens: int,
    stop: Sequence[str] = (),
    gate: Callable[[str], bool] | None = None,
    on_token: Callable[[str], None] | None = None,
    on_text: Callable[[str], None] | None = None,
    on_call: Callable[[CallDelta], None] | None = None,
) -> TurnText:
    """Write one assistant turn on ``engine`` for ``session`` from ``logits`` (see the module
    docstring), and queue its closing token.

    ``gate(text) -> bool``: the memory policy (None: everything may be consolidated).
    ``on_token(piece)``: each token's text as it is written (a cut multi-byte character arrives
    as U+FFFD). ``on_text(delta)``: the visible text (:func:`visible_text`) as it grows, held back
    by the longest stop string so that a stop string is never half sent; the deltas add up to
    ``content`` exactly. ``on_call(delta)``: the tool calls as they are written
    (:class:`CallDelta`): a call's name once it is fully decoded, then its argument text as it
    grows (:func:`call_parts`), held back by the stop strings as the text is; the markup itself
    is never part of a delta.
    """
    tok = engine.model.tokenizer
    ends = {tok.end_id, tok.eos_id}
    stops = [s for s in stop if s]
    hold = max((len(s) for s in stops), default=1) - 1
    provisional = gate is not None
    start = session.state.tokens_seen
    emitted: list[int] = []
    text, full, sent, finish = "", "", 0, "length"
    clean = ended = False
    calls = _CallStream(on_call) if on_call is not None else None
    forced_after = getattr(picker, "forced", None)
    try:
        while len(emitted) < max_tokens:
            # tokens the constraint forces (a tool call's '{"name": "'): read in one piece, not
            # one decode step each; cut after the first that completes a stop string, as the
            # token-by-token loop would have stopped there
            new = forced_after(emitted, max_tokens - len(emitted)) if forced_after is not None else []
            if new:
                new = _until_stop(tok, emitted, new, stops)
                emitted.extend(new)
                logits = await engine.prefill(session, new, consolidate=not provisional)
            else:
                nxt = picker(logits, emitted)
                if nxt in ends:
                    finish, ended = "stop", True
                    break
                logits = await engine.decode(session, nxt, consolidate=not provisional)
                emitted.append(nxt)
                new = [nxt]
            if on_token is not None:
                for t in new:
                    on_token(tok.decode([t]))
            text = full = tok.decode(emitted)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
            if on_text is not None:
                shown = visible_text(text.rstrip("\ufffd"))  # a cut multi-byte character waits
                ready = len(shown) - hold
                if ready > sent:
                    on_text(shown[sent:ready])
                    sent = ready
            if calls is not None:
                settled = text.rstrip("\ufffd")
                calls.feed(settled[:len(settled) - hold] if hold else settled)
        clean = not provisional or (finish == "stop" and gate(full))  # type: ignore[misc]
        if provisional and clean and emitted:
            await engine.set_consolidate(session, start, start + len(emitted))
    finally:
        # close the turn, even when cancelled; read with the next flush (a turn held out of the
        # fast weights, or cut off before it could be judged, stays out)
        engine.append(session, tok.close_turn(), clean)
    if on_text is not None:
        shown = visible_text(text)
        if len(shown) > sent:
            on_text(shown[sent:])
    if calls is not None:
        calls.feed(text)
    return TurnText(text=text, full_text=full, tokens=len(emitted) + ended, finish=finish,  # type: ignore[arg-type]
                    consolidate=clean, ended=ended)
