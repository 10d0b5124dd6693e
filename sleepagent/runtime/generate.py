"""The one token loop: every assistant turn, from every front door, is written here.

A turn starts from the logits after the generation prompt. Each step a :class:`TokenPicker`
chooses the next token (the :class:`Sampler`: greedy or sampled, under the turn's constraint,
:func:`~sleepagent.runtime.constraints.turn_constraint`; a scripted test model: its script), the token
goes through a real decode step on the session's
state, and the loop ends at the end-of-turn token, a stop string or the token budget. Then the
turn is closed: its ``<|end|>`` is queued, read with the next flush (the model waits for the
tool or the user with its closing token pending, as it was trained).

Memory policy (``gate``): when the policy has never-consolidate rules, the turn's tokens are
decoded out of the fast weights and released into them only once the whole turn is known to be
allowed. A turn cut by the token budget is never released: its end is unknown, and a cut secret
no longer matches the pattern that would have excluded it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from .constraints import visible_text

__all__ = ["Constraint", "GenerationParams", "Sampler", "Script", "TokenPicker", "TurnText", "generate_turn"]


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
) -> TurnText:
    """Write one assistant turn on ``engine`` for ``session`` from ``logits`` (see the module
    docstring), and queue its closing token.

    ``gate(text) -> bool``: the memory policy (None: everything may be consolidated).
    ``on_token(piece)``: each token's text as it is written (a cut multi-byte character arrives
    as U+FFFD). ``on_text(delta)``: the visible text (:func:`visible_text`) as it grows, held back
    by the longest stop string so that a stop string is never half sent; the deltas add up to
    ``content`` exactly.
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
    try:
        for _ in range(max_tokens):
            nxt = picker(logits, emitted)
            if nxt in ends:
                finish, ended = "stop", True
                break
            logits = await engine.decode(session, nxt, consolidate=not provisional)
            emitted.append(nxt)
            if on_token is not None:
                on_token(tok.decode([nxt]))
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
    return TurnText(text=text, full_text=full, tokens=len(emitted) + ended, finish=finish,  # type: ignore[arg-type]
                    consolidate=clean, ended=ended)
