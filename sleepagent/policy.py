"""Policies: when the model sleeps (SleepPolicy) and what a session may remember (MemoryPolicy).

Both are frozen pydantic models: validated where they are built, safe to share between sessions.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema

from .errors import ConfigError

__all__ = ["MAX_LOOPS", "MemoryPolicy", "SleepPolicy"]

# Sleep passes per consolidation. The paper goes to N = 6; each pass costs a forward over the
# window, so a runaway value would keep a session asleep (and its engine busy) for hours.
MAX_LOOPS = 64

logger = logging.getLogger(__name__)


class _Policy(BaseModel):
    # strict: "4" is not 4 and True is not 1 (a typo must not become a different policy)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or None
            msg = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'policy'}: {x['msg']}" for x in e.errors())
            raise ConfigError(f"invalid {type(self).__name__}: {msg}", field=field) from None


class SleepPolicy(_Policy):
    """When and how a session consolidates its window into the fast weights.

    loops:    N, passes per consolidation (1 = plain hybrid, no extra offline compute).
    when:     "pause": also sleep opportunistically whenever the agent waits (a tool call is in
              flight, or the user is thinking) and the window is at least ``min_fill`` full;
              "full": sleep only when a wake step does not fit the window (forced, exposed).
    min_fill: fraction of the window that must be filled before a pause triggers a sleep.
    on_wake:  the session wakes before the passes finish: "resume" them at the next pause (the
              wake reads and writes over the intact window, as though no sleep had begun; the
              passes done are kept, and the commit is what an uninterrupted sleep followed by
              the same wake gives; the rest runs exposed only when the window must evict first),
              "finish" them first (the wait is exposed), "commit" the passes done so far (at
              least one), or "abort" them (the window is intact, nothing is lost; the next sleep
              starts over). "resume" needs the native model's sleep job; a transformers hybrid's
              sleep finishes instead. A sleep counts
              as begun at the pause, even if no pass ran yet, so window boundaries do not
              depend on timing (except with "abort").
    """

    loops: int = Field(default=4, ge=1, le=MAX_LOOPS)
    when: Literal["pause", "full"] = "pause"
    min_fill: float = Field(default=0.5, ge=0.0, le=1.0, strict=False)  # 1 means 1.0
    on_wake: Literal["resume", "finish", "commit", "abort"] = "resume"


class MemoryPolicy(_Policy):
    """What a session may keep, where, and for how long (enforced by the agent and the store).

    retention:         "ephemeral" (never stored), "session" (stored while the session lives),
                       "persistent" (kept after close, until ttl / erase).
    ttl:               seconds a snapshot stays readable; expired ones are never returned.
    max_snapshots:     keep only the newest k snapshots of a session.
    never_consolidate: regexes. A turn that matches any (a user message, a tool result, or the
                       assistant's own reply, e.g. when it repeats a secret) is usable while in
                       the window but is never written anywhere: not into the fast weights, not
                       into a snapshot's window, not into metadata, logs or audit rows. The
                       whole turn is excluded, not only the match. While a reply is being
                       written it is held out provisionally (it could still turn out to match),
                       so a sleep forced in the middle of a reply leaves the part written so
                       far out of the fast weights. The store keeps only how many patterns
                       there were, not the patterns (one may spell out the secret it guards).
    classify:          ``classify(text) -> bool``, called on the WHOLE text of every turn the
                       patterns let through; a true result means "sensitive": the turn is kept
                       out exactly as a pattern match is. If it raises, the turn counts as
                       sensitive (fail closed; a warning names the exception type only). It must
                       be a plain (not async) callable; it is code, not data, so it is never
                       serialised: not in ``model_dump``/JSON, a stored session row, snapshot
                       metadata, a repr or a log line; a policy read back from the store has
                       ``classify=None``.
    erase_on_close:    delete the session's snapshots (for real) when it closes.
    persist_window:    also store the window's token ids (never-consolidate turns left out), for
                       an exact mid-window resume: the restore re-reads them. A resume says how
                       many tokens the policy kept out (``AgentSession.resume``).
    lease:             "session" retention: seconds the stored state outlives its last turn or
                       snapshot; a crashed process never closes its sessions, so the store
                       reclaims them (erases them for real) once the lease runs out.
    snapshot_dtype:    "bfloat16" stores snapshots at half the bytes; each value keeps 8
                       significant bits (relative error up to 2^-8, about 0.4%, as
                       ``sleepagent bench store`` measures), so a resumed session continues close
                       to, not exactly as, one that never stopped. "float32" (default) is exact.

    What pattern matching cannot catch, because each turn is checked on its own text as written:

    - a secret split across two messages ("my pin is 12" then "34"): neither turn matches;
    - another spelling: regexes are case-sensitive ("HUNTER2" does not match ``hunter2``; write
      ``(?i)hunter2``), and blind to spaces or dashes inserted, look-alike characters, or an
      encoding (base64, hex, digits spelled out);
    - an assistant (or a tool) that rewrites the secret (paraphrases, translates, reverses or
      sums it): its reply no longer matches, yet carries the information.

    What a user can do: pass ``classify``, which sees the whole turn and may normalise it (case,
    whitespace, Unicode), decode it, or call a DLP service or a model. It too sees one turn at a
    time; a callable object may keep state across turns (e.g. the previous turn's tail, in memory
    only) to flag the turn that completes a split secret, but the earlier part was already let
    through. Mark a message ``Message(..., consolidate=False)`` when the caller
    knows it is sensitive, and use ``retention="ephemeral"`` when nothing may be kept at all.
    """

    retention: Literal["ephemeral", "session", "persistent"] = "session"
    ttl: float | None = Field(default=None, gt=0, strict=False)
    max_snapshots: int | None = Field(default=None, ge=1)
    never_consolidate: tuple[str, ...] = Field(default=(), strict=False)  # a list is fine too
    erase_on_close: bool = False
    persist_window: bool = False
    lease: float = Field(default=900.0, gt=0, strict=False)
    snapshot_dtype: Literal["float32", "bfloat16"] = "float32"
    # exclude/repr=False: code is never serialised or printed (a callable object's repr could
    # hold whatever it was built with); SkipJsonSchema: the schema describes data only
    classify: SkipJsonSchema[Callable[[str], Any] | None] = Field(default=None, exclude=True, repr=False)

    @field_validator("never_consolidate")
    @classmethod
    def _compile(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {p!r} is not a valid regex: {e}") from None
        return patterns

    @field_validator("classify")
    @classmethod
    def _plain_callable(cls, fn: Callable[[str], Any] | None) -> Callable[[str], Any] | None:
        # an async function would return a coroutine, which is truthy: every turn "sensitive"
        if fn is not None and (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)):
            raise ValueError("must be a plain function returning a bool, not an async one")
        return fn

    @property
    def screens_text(self) -> bool:
        """True when :meth:`allows_consolidation` can refuse a turn (patterns or a classifier);
        the runtime holds a reply out provisionally only then."""
        return bool(self.never_consolidate) or self.classify is not None

    def allows_consolidation(self, text: str) -> bool:
        """False if ``text`` (a whole turn) matches a never-consolidate pattern, or ``classify``
        calls it sensitive (or raises on it)."""
        if any(re.search(p, text) for p in self.never_consolidate):
            return False
        if self.classify is None:
            return True
        try:
            return not bool(self.classify(text))
        except Exception as e:  # a failing classifier must not let a turn through
            # the type only: the message of an exception raised on the text may quote the text
            logger.warning("MemoryPolicy.classify raised %s on a turn of %d characters; the turn is kept out "
                           "of memory", type(e).__name__, len(text))
            return False
