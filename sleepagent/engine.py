"""Engine: one model on one device; wake work first, sleep work in the gaps.

All model work runs on one worker thread, so the model and every session's state are touched by
one thread only and no lock is held around torch calls. Two classes of work:

- **wake** (a session's prefill or decode; latency-critical): taken first, in engine
  steps with continuous batching: a step has a token budget (``max_step_tokens``); every
  session's waiting decode step (one token) rides along and the rest goes to pieces of waiting
  reads of several sessions (``prefill_chunk`` tokens at most each), run in one forward, or in
  two when padding the decode rows to the reads' length would cost more than a forward
  (``max_pad_tokens``). So a generating session waits for one bounded step of others' reads,
  never for a whole read; a huge input is read a piece per step, a cancelled read stops at the
  next piece, and closing the engine waits for one step at most.
- **sleep** (a block, one layer of one pass, of several sessions' sleeps batched): runs when no
  wake work waits (or, with ``max_sleep_wait_s`` set, once queued sleep has waited that long
  under sustained wake work), within a token budget (``max_sleep_tokens``, the sessions' windows added up), so a wake
  request waits at most one bounded block; the sessions that paused first go first (their wake
  comes first: a tool answers, a user replies), so as many sleeps as the gaps allow are finished
  before their session needs them, instead of all finishing late together.

A fresh session whose first segment (a system prompt with its tools) was read before starts from
a copy of the state after it (``prefix_cache``), so a burst of new conversations reads only what
differs.

A session's sleep starts when the agent pauses (a tool call in flight, a user thinking) and the
:class:`~sleepagent.policy.SleepPolicy` allows it, or is forced when a wake step does not fit the
window. When a session wakes while its own sleep is unfinished, ``on_wake`` decides: finish it,
commit what is done, or abort (the window is intact, so nothing is lost).

The async API is backend-neutral (anyio): a caller awaits an :class:`anyio.Event` that the worker
sets through the caller's event-loop token, without blocking the worker.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import anyio
import torch
from anyio.lowlevel import EventLoopToken, current_token

from .errors import ConfigError, SleepAgentError
from .model import HybridState, SleepModel
from .model.hybrid import SleepJob
from .model.network import SleepTask
from .policy import SleepPolicy
from .tracing import engine_event as trace_engine_event

__all__ = ["Engine", "EngineClosed", "EngineSession", "SleepStats", "kept_tokens"]


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()

# a shorter first segment is not worth a cached state (a state costs about a megabyte)
_MIN_PREFIX = 16


@atexit.register
def _close_all() -> None:
    # A daemon worker killed in the middle of a torch call aborts the interpreter at exit.
    for engine in list(_ENGINES):
        engine.close()


def kept_tokens(state: Any) -> int:
    """Tokens in the window that may be consolidated (never-consolidate ones left out)."""
    mask = state.consolidate_mask
    if isinstance(mask, list):  # transformers hybrids keep a list
        return sum(bool(m) for m in mask[: state.window_len])
    return int(mask[0, : state.window_len].sum()) if state.window_len else 0


class EngineClosed(SleepAgentError):
    """The engine was closed; no more work is accepted."""


@dataclass
class SleepStats:
    """Per-session counters. Sleep seconds split into hidden (overlapped with a pause) and
    exposed (the session was waiting for its own sleep, or the sleep was forced)."""

    sleep_s_total: float = 0.0
    sleep_s_hidden: float = 0.0
    sleep_s_exposed: float = 0.0
    passes: int = 0
    sleeps: int = 0
    forced_sleeps: int = 0
    aborted_sleeps: int = 0
    tokens_consolidated: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    wake_wait_s: float = 0.0
    window_fill: float = 0.0
    excluded_drops: int = 0  # a full window shed its never-consolidate tokens instead of sleeping
    prefix_tokens: int = 0  # tokens not read: the session started from a cached prefix's state

    @property
    def wake_ms_per_token(self) -> float:
        """Mean compute time of a decode step (batched steps are shared among their rows)."""
        return 1000 * self.decode_s / self.decode_tokens if self.decode_tokens else 0.0

    @property
    def hidden_fraction(self) -> float:
        return self.sleep_s_hidden / self.sleep_s_total if self.sleep_s_total else 1.0

    def copy(self) -> SleepStats:
        return SleepStats(**asdict(self))

    def since(self, before: SleepStats) -> SleepStats:
        """The counters accumulated after ``before`` (window_fill is the current value)."""
        now, then = asdict(self), asdict(before)
        diff = {k: now[k] - then[k] for k in now if k != "window_fill"}
        return SleepStats(**diff, window_fill=self.window_fill)

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "wake_ms_per_token": self.wake_ms_per_token}


@dataclass(eq=False)
class EngineSession:
    """One sequence served by an engine: its HybridState, sleep policy and stats.

    Touch ``state`` only through engine calls (or after the engine is idle): the worker thread
    owns it while work is queued.
    """

    id: str
    state: HybridState
    policy: SleepPolicy
    stats: SleepStats = field(default_factory=SleepStats)
    on_event: Callable[[str, dict[str, Any]], None] | None = None
    on_commit: Callable[[EngineSession], None] | None = None
    # tokens queued to be read, as (ids, consolidate) segments; read by flush() on the worker,
    # a chunk at a time (the first segment's first ``pending_offset`` tokens are already read)
    pending: list[tuple[list[int], bool]] = field(default_factory=list)
    pending_offset: int = 0
    persist_error: BaseException | None = None
    # logits after the last token read (a flush whose tokens an earlier flush already read,
    # e.g. one that was cancelled after the worker took it, answers with these)
    last_logits: torch.Tensor | None = None
    # sleep bookkeeping, touched by the worker (and under the engine lock by pause/interrupt)
    _job: SleepTask | None = None
    _job_reason: str = "pause"
    _sleep_requested: bool = False
    _interrupted: bool = False
    _suspended: bool = False  # a pause sleep kept across a wake (Engine resume_sleep): resumes at the next pause
    # a never-consolidate token was queued or decoded while a sleep may be kept: the sleep is then
    # finished before it is read (as on_wake="finish" does), so where the sleep ends never depends
    # on the excluded turn's length
    _excluded_seen: bool = False
    _wake_since: float | None = None
    # (ids, consolidate, cache scope) of the first segment a fresh session reads, to be cached once read
    _prefix_key: tuple[tuple[int, ...], bool, str] | None = None
    # whose prefix cache entries this session may read and write (a tenant): a hit is faster, so a
    # cache shared across tenants would tell one that another sent the same first segment
    cache_scope: str = ""
    _sleep_mark: tuple[float, float, float] = (0.0, 0.0, 0.0)  # sleep seconds (total, hidden, exposed) at its start
    closed: bool = False

    @property
    def sleeping(self) -> bool:
        return not self.closed and (self._job is not None or self._sleep_requested)

    def unread(self) -> list[tuple[list[int], bool]]:
        """The queued segments not read yet (the first one cut at what a chunked read consumed)."""
        segments = list(self.pending)
        if segments and self.pending_offset:
            ids, flag = segments[0]
            segments[0] = (ids[self.pending_offset :], flag)
        return segments


@dataclass(eq=False)
class _Request:
    kind: Literal["flush", "decode", "call", "sleep"]
    session: EngineSession
    payload: Any
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    token: EventLoopToken | None = None
    event: anyio.Event | None = None
    cancelled: bool = False
    started: bool = False  # a chunked read that has read at least one chunk


class Engine:
    """Owns one model on one device and a worker thread that runs all of its work.

    ``model``: a :class:`SleepModel` or a checkpoint name/path. ``batch_wake``: batch decode steps
    of concurrent sessions (``max_batch`` rows at most). ``prefill_chunk``: tokens a read takes
    per turn before other sessions' work runs (smaller: lower latency for the others while a long
    input is read, a little less read throughput; ``sleepagent bench bounded`` measures both).
    ``max_step_tokens``: an engine step's token budget (decode steps, one token each, plus read
    pieces; the first read of a step takes a whole chunk whatever the budget).
    ``max_pad_tokens``: rows of a step share one padded forward while the padding they add stays
    within this many tokens (0: decode steps and reads never share a forward).
    ``resume_sleep``: a session that wakes into its unfinished pause sleep with ``on_wake="finish"``
    keeps it: the wake reads and decodes over the intact window (its output is the output
    without sleeping) and the sleep resumes at the next pause from where it stopped (passes done
    kept), committing what an uninterrupted sleep followed by the same wake would; it is finished
    on the spot (exposed) only when the window must evict for the wake, or before an explicit
    :meth:`consolidate`.
    Sleep runs one block of one pass at a time, so a wake step waits for one block at most.
    ``max_sleep_tokens``: the token budget of one block of sleep (a block is one layer over each
    window it batches; at least one session's): bounds how long an arriving request waits for
    the sleep block in progress. A wake step that must first finish sessions' sleeps (their window
    must evict) runs blocks of the oldest requests' sessions within the same budget, so those
    are answered in turn while the others' decode steps go on.
    ``max_sleep_wait_s``: the longest queued gap sleep waits while wake work keeps coming; then one
    block of it (within ``max_sleep_tokens``) runs before the next wake step (None, the default:
    never, sleep only in real gaps). Under sustained load the pauses are never empty, and a sleep
    left whole until its session's next turn must evict the window is paid all at once by that
    turn; a block now and then finishes more sleeps in their pauses, at the cost of a bounded
    block in wake steps' waits. Off by default: at 16 concurrent conversations of ``bench serve``,
    0.05 s raised the share of sleep hidden but slowed the first turns' decode steps more than it
    shortened the exposed sleep of the turns after the tool call (traced, one run each).
    ``wake_grace_s``: after a wake step, sleep work waits this long for the next one (a session
    that is generating sends it at once), so sleepers never slow down a generation in progress;
    they run in the real gaps (a tool call in flight, a user thinking).
    ``prefix_cache``: how many first segments (a system prompt with its tool list, the same for
    every conversation of an application) the engine keeps the state after: a fresh session
    whose first queued segment is one of them starts from a copy of that state instead of reading
    it (0: never). A burst of new conversations then reads only what differs, so their first
    tokens do not wait for each other's identical system prompts (vLLM's and SGLang's prefix
    caching; for a recurrent model the whole state at the boundary is the prefix, as their Mamba
    caching keeps it; a transformers hybrid's state too, its cache deep-copied). The state is a
    function of the tokens alone, so a copy answers as the read would (up to float rounding, as
    any read split into pieces). Its bytes count against a session table's state budget
    (:meth:`prefix_cache_bytes`), which evicts them before it releases a session
    (:meth:`evict_prefixes`: a cached prefix costs one read to rebuild).
    """

    def __init__(self, model: SleepModel | str, *, batch_wake: bool = True, max_batch: int = 32,
                 prefill_chunk: int = 64, wake_grace_s: float = 0.002, max_step_tokens: int = 256,
                 max_pad_tokens: int = 64, resume_sleep: bool = False, prefix_cache: int = 8,
                 max_sleep_tokens: int = 1024, max_sleep_wait_s: float | None = None) -> None:
        if not isinstance(model, (SleepModel, str, os.PathLike)):
            raise ConfigError(f"model must be a SleepModel, a checkpoint name or a path, got {type(model).__name__}",
                              field="model")
        self.model = model if isinstance(model, SleepModel) else SleepModel.from_pretrained(model)
        for name, value, least in (("max_batch", max_batch, 1), ("prefill_chunk", prefill_chunk, 1),
                                   ("max_step_tokens", max_step_tokens, 1), ("max_pad_tokens", max_pad_tokens, 0),
                                   ("prefix_cache", prefix_cache, 0), ("max_sleep_tokens", max_sleep_tokens, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}", field=name)
        if max_sleep_wait_s is not None and (isinstance(max_sleep_wait_s, bool) or not isinstance(
                max_sleep_wait_s, (int, float)) or max_sleep_wait_s < 0):
            raise ConfigError(f"max_sleep_wait_s must be a number of seconds >= 0 or None, got {max_sleep_wait_s!r}",
                              field="max_sleep_wait_s")
        if isinstance(wake_grace_s, bool) or not isinstance(wake_grace_s, (int, float)) or not 0 <= wake_grace_s < 1:
            raise ConfigError(f"wake_grace_s must be a number of seconds in [0, 1), got {wake_grace_s!r}",
                              field="wake_grace_s")
        self.batch_wake = batch_wake
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.max_step_tokens = max_step_tokens
        self.max_pad_tokens = max_pad_tokens
        self.max_sleep_tokens = max_sleep_tokens
        self.max_sleep_wait_s = max_sleep_wait_s
        self._sleep_waits_since: float | None = None  # when queued gap sleep last ran or began to wait
        self.resume_sleep = bool(resume_sleep)
        self.prefix_cache = prefix_cache
        # first segment (ids, consolidate) -> (the state after reading it, the logits after it); LRU
        self._prefixes: OrderedDict[tuple[tuple[int, ...], bool, str], tuple[HybridState, torch.Tensor]] = (
            OrderedDict())
        self.prefix_hits = 0
        self.wake_grace_s = wake_grace_s
        self._last_wake = 0.0
        self._last_was_decode = False
        self._cv = threading.Condition()
        self._wake: deque[_Request] = deque()
        self._sleepers: deque[EngineSession] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batched_steps = 0  # decode steps that served more than one session
        self.mixed_steps = 0  # engine steps that served decode steps and reads together
        self.forwards = 0  # model forwards run for wake steps (a step runs one or a few)
        # seconds the worker spent running wake steps and sleep blocks (its busy time): against
        # wall time, how close to saturation the engine ran (``sleepagent bench serve`` reports it)
        self.busy_s = 0.0
        self._busy_since: float | None = None  # when the step in progress began
        self.idle_exit_s = 30.0
        _ENGINES.add(self)

    # --- sessions -------------------------------------------------------------------------------

    def session(
        self, session_id: str | None = None, *, policy: SleepPolicy | None = None, state: HybridState | None = None,
        cache_scope: str = "",
    ) -> EngineSession:
        """A new session with a fresh state (or ``state``, e.g. restored from a snapshot).
        ``cache_scope``: the prefix cache entries it shares (sessions of one tenant; see
        :meth:`_from_prefix`)."""
        lm = self.model.model
        if state is not None:
            # SleepHybridLM's own check (not part of the HybridNetwork interface)
            cast(Any, lm)._check_state(state)
        return EngineSession(
            id=session_id or uuid.uuid4().hex[:12],
            state=state if state is not None else lm.new_state(1),
            policy=policy or SleepPolicy(),
            cache_scope=cache_scope,
        )

    # --- async API ------------------------------------------------------------------------------

    def append(self, session: EngineSession, ids: list[int], consolidate: bool = True) -> None:
        """Queue tokens to be read by the next :meth:`flush` (non-blocking).

        Queued tokens belong to the session until read: a cancelled flush leaves them queued, and
        a snapshot taken in between records them.
        """
        if ids:
            with self._cv:
                session.pending.append((list(ids), bool(consolidate)))
                session._excluded_seen |= not consolidate

    async def flush(self, session: EngineSession) -> torch.Tensor:
        """Read every queued token (sleeping first whenever the window is full); returns the
        logits after the last one, [vocab]."""
        if not session.pending:
            raise ConfigError("nothing to read: append tokens first")
        return await self._submit("flush", session, None)

    async def prefill(self, session: EngineSession, ids: list[int], consolidate: bool = True) -> torch.Tensor:
        """:meth:`append` then :meth:`flush`."""
        if not ids:
            raise ConfigError("prefill needs at least one token")
        self.append(session, ids, consolidate)
        return await self.flush(session)

    async def consolidate(self, session: EngineSession) -> None:
        """Sleep now over whatever is in the window (all passes; exposed), e.g. before a close."""
        await self._submit("sleep", session, None)

    async def decode(self, session: EngineSession, token: int, consolidate: bool = True) -> torch.Tensor:
        """Feed one token (the one just emitted); returns the next logits, [vocab].
        ``consolidate=False`` keeps it out of the fast weights (see :meth:`set_consolidate`)."""
        if not consolidate:
            session._excluded_seen = True
        return await self._submit("decode", session, (int(token), bool(consolidate)))

    async def set_consolidate(self, session: EngineSession, start: int, stop: int, value: bool = True) -> int:
        """Mark the session's tokens ``[start, stop)`` (positions counted over everything it has
        read) for or against consolidation, where they are still in the window; returns how many
        were. A reply held out provisionally (it might repeat a never-consolidate secret) is
        released with this once it is known to be clean."""

        def mark(state) -> int:
            lo = state.tokens_seen - state.window_len
            a, b = max(start, lo) - lo, min(stop, state.tokens_seen) - lo
            if b <= a:
                return 0
            if isinstance(state.consolidate_mask, list):  # transformers hybrids keep a list
                state.consolidate_mask[a:b] = [value] * (b - a)
            else:
                state.consolidate_mask[:, a:b] = value
            return b - a

        return await self.call(session, mark)

    async def call(self, session: EngineSession, fn: Callable[[HybridState], Any]) -> Any:
        """Run ``fn(state)`` on the worker, in order with the session's wake work (e.g. snapshot)."""
        return await self._submit("call", session, fn)

    def pause(self, session: EngineSession) -> bool:
        """The session waits (tool in flight, user thinking): start sleeping if the policy says so.

        Non-blocking; returns whether a sleep was scheduled.
        """
        p = session.policy
        st = session.state
        with self._cv:
            if session._suspended and not self._closed and not session.closed:
                # a sleep kept across the last wake: it goes on from where it stopped
                session._suspended = False
                session._wake_since = None
                if session not in self._sleepers:
                    self._sleepers.append(session)
                self._cv.notify()
                return True
            if self._closed or session.closed or p.when != "pause" or session.sleeping:
                return False
            # never-consolidate tokens do not count: a sleep is for what may be consolidated,
            # and when it comes must not depend on an excluded turn
            kept = kept_tokens(st)
            if kept == 0 or kept < p.min_fill * st.window:
                return False
            session._sleep_requested = True
            session._interrupted = False
            session._wake_since = None
            self._sleepers.append(session)
            self._cv.notify()
            return True

    def interrupt(self, session: EngineSession) -> None:
        """Stop the session's sleep per its ``on_wake`` without waking it (used on cancellation).

        Non-blocking: the worker finishes, commits or drops the passes as soon as it can.
        """
        with self._cv:
            if session.sleeping:
                session._interrupted = True
                if session not in self._sleepers:
                    self._sleepers.appendleft(session)
                self._cv.notify()

    async def wait_idle(self, session: EngineSession) -> None:
        """Wait until the session has no sleep in progress (its pending passes ran and committed;
        a sleep kept across a wake goes on now)."""
        if session._suspended:
            self.pause(session)
        while session.sleeping and not self._closed:
            await anyio.sleep(0.002)

    def close_session(self, session: EngineSession) -> None:
        """No more work for this session; a sleep in progress is dropped by the worker."""
        with self._cv:
            session.closed = True
            session._sleep_requested = False
            if session in self._sleepers:
                self._sleepers.remove(session)

    def close(self) -> None:
        """Stop the worker; queued requests fail with :class:`EngineClosed`."""
        with self._cv:
            self._closed = True
            pending = list(self._wake)
            self._wake.clear()
            self._cv.notify_all()
        for req in pending:
            self._finish(req, exc=EngineClosed("the engine was closed"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _submit(self, kind, session: EngineSession, payload) -> Any:
        if session.closed:
            raise EngineClosed(f"session {session.id} is closed")
        event = anyio.Event()
        req = _Request(kind, session, payload, token=current_token(), event=event)
        with self._cv:
            if self._closed:
                raise EngineClosed("the engine was closed")
            self._ensure_worker()
            if session.sleeping and session._wake_since is None:
                session._wake_since = req.enqueued
            self._wake.append(req)
            self._cv.notify()
        try:
            await event.wait()
        except BaseException:
            # Cancelled: a request the worker has not started is dropped; one it is running
            # completes (model steps are atomic) and its result is simply not read.
            req.cancelled = True
            raise
        return req.future.result()

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="sleepagent-engine", daemon=True)
            self._thread.start()

    def _finish(self, req: _Request, result: Any = None, exc: BaseException | None = None) -> None:
        if exc is not None:
            req.future.set_exception(exc)
        else:
            req.future.set_result(result)
        if req.token is not None and req.event is not None:
            with contextlib.suppress(Exception):  # the caller's event loop is gone; nobody is waiting
                req.token.backend_class.run_sync_soon(req.event.set, (), req.token.native_token)

    def _emit(self, session: EngineSession, kind: str, **data: Any) -> None:
        trace_engine_event(session, kind, data)  # sleep spans (sleepagent.tracing); never raises
        if session.on_event is not None:
            with contextlib.suppress(Exception):
                session.on_event(kind, data)

    # --- worker ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cv:
                while not self._closed and not self._wake and not self._sleepers:
                    if not self._cv.wait(timeout=self.idle_exit_s) and not self._wake and not self._sleepers:
                        # idle: let the thread go; the next request starts a new one
                        self._thread = None
                        return
                if self._closed:
                    return
                if not self._wake and self.wake_grace_s:
                    # a session that is generating sends its next step right after the last one
                    # returned: give it that moment before starting sleep work it would wait for
                    grace = self._last_wake + self.wake_grace_s - time.perf_counter()
                    if grace > 0:
                        self._cv.wait(timeout=grace)
                        if not self._wake:
                            self._last_wake = 0.0  # the gap is real: sleep may run now
                        continue
                batch, sleepers = self._take_work()
            self._busy_since = t0 = time.perf_counter()
            if batch is not None:
                self._run_wake(batch)
                self._last_wake = time.perf_counter()
            elif sleepers:
                self._run_sleep_steps(sleepers)
            self.busy_s += time.perf_counter() - t0
            self._busy_since = None

    def busy_seconds(self) -> float:
        """The worker's busy seconds so far (:attr:`busy_s`) with the step in progress counted up
        to now: read twice, the difference is the busy time between the reads."""
        since = self._busy_since
        return self.busy_s + (time.perf_counter() - since if since is not None else 0.0)

    def _take_work(self) -> tuple[list[_Request] | None, list[EngineSession]]:
        """The worker's next turn (called under the lock): wake work whenever any waits (unless
        queued sleep has waited ``max_sleep_wait_s``), else a block of sleep for the sessions that
        paused first, within ``max_sleep_tokens``."""
        now = time.perf_counter()
        if not self._sleepers:
            self._sleep_waits_since = None
        elif self._sleep_waits_since is None:
            self._sleep_waits_since = now
        starved = (self.max_sleep_wait_s is not None and self._sleep_waits_since is not None
                   and now - self._sleep_waits_since >= self.max_sleep_wait_s)
        if self._wake and not starved:
            return self._take_wake_batch(), []
        self._sleep_waits_since = None  # a block runs now: the wait starts over after it
        return None, self._take_sleepers()

    def _take_sleepers(self) -> list[EngineSession]:
        """Sessions for one batched block of gap sleep, from the front of the queue (paused first,
        or interrupted) while their windows add up to ``max_sleep_tokens`` (at least one)."""
        limit = self.max_batch if self.batch_wake else 1
        sleepers: list[EngineSession] = []
        tokens = 0
        while self._sleepers and len(sleepers) < limit:
            s = self._sleepers[0]
            if any(s is t for t in sleepers):
                self._sleepers.popleft()  # queued twice: it steps once
                continue
            n = s.state.window_len
            if sleepers and tokens + n > self.max_sleep_tokens:
                break
            self._sleepers.popleft()
            sleepers.append(s)
            tokens += n
        return sleepers

    def _take_wake_batch(self) -> list[_Request]:
        """The next wake work (FIFO kept per session: a session contributes only its oldest
        request).

        Batched (``batch_wake``), one engine step is continuous batching under a token budget
        (``max_step_tokens``): every session's waiting decode step (one token each) rides along,
        and the rest of the budget goes to pieces of waiting reads of several sessions (at least
        one chunk per step, so reads always progress); :meth:`_run_step` runs them. So a
        generating session never waits for a whole batch of others' reads, only for one step
        whose size the budget bounds. Other work (``call``, an explicit sleep) runs alone, taking
        turns with such steps. Unbatched, one request per turn, decode and other work taking
        turns."""
        queue = self._wake
        seen: set[int] = set()
        heads: list[int] = []
        for i, r in enumerate(queue):  # a session's requests keep their order
            if id(r.session) not in seen:
                heads.append(i)
                seen.add(id(r.session))
        stepping = [i for i in heads if queue[i].kind in ("decode", "flush")]
        other = next((i for i in heads if queue[i].kind not in ("decode", "flush")), None)
        if not self.batch_wake:
            first_decode = next((i for i in stepping if queue[i].kind == "decode"), None)
            first_other = next((i for i in heads if queue[i].kind != "decode"), None)
            take = first_decode if first_decode is not None and (first_other is None or not self._last_was_decode) \
                else first_other if first_other is not None else 0
            first = queue[take]
            del queue[take]
            self._last_was_decode = first.kind == "decode"
            return [first]
        if other is not None and (not stepping or self._last_was_decode):
            first = queue[other]
            del queue[other]
            self._last_was_decode = False
            return [first]
        self._last_was_decode = True
        decodes = [i for i in stepping if queue[i].kind == "decode"][: self.max_batch]
        reads = [i for i in stepping if queue[i].kind == "flush"]
        budget = self.max_step_tokens - len(decodes)
        taken = list(decodes)
        for i in reads:
            if taken and (budget <= 0 or len(taken) >= self.max_batch) and any(queue[j].kind == "flush" for j in taken):
                break
            taken.append(i)
            budget -= min(self.prefill_chunk, max(1, sum(len(ids) for ids, _ in queue[i].session.unread())))
        taken.sort()
        batch = [queue[i] for i in taken]
        for i in reversed(taken):
            del queue[i]
        return batch

    def _run_wake(self, batch: list[_Request]) -> None:
        batch = [r for r in batch if not r.cancelled]  # a cancelled read stops here, between chunks
        if self.batch_wake and batch and all(r.kind in ("decode", "flush") for r in batch):
            self._run_step(batch)
            return
        ready = []
        for req in batch:
            s = req.session
            try:
                if not req.started:
                    s.stats.wake_wait_s += time.perf_counter() - req.enqueued
                    req.started = True
                # sleep work this wake must wait for (its own sleep to settle, a forced sleep):
                # one block per turn, then to the back of the queue so others' steps run between
                if req.kind != "sleep" and self._advance_sleep(s, 1 if req.kind in ("decode", "flush") else 0):
                    self._requeue(req)
                elif req.kind == "decode":
                    ready.append(req)
                elif req.kind == "flush":
                    if self._flush_some(s, self.prefill_chunk):
                        self._finish(req, self._last_logits(s))
                    else:
                        self._requeue(req)
                elif req.kind == "sleep":
                    self._settle_sleep(s)
                    self._sleep_now(s)
                    self._finish(req, None)
                else:
                    self._finish(req, req.payload(s.state))
            except BaseException as e:  # report to the caller, keep serving others
                self._finish(req, exc=e)
        if not ready:
            return
        lm = self.model.model
        try:
            t0 = time.perf_counter()
            if len(ready) == 1:
                token, flag = ready[0].payload
                logits = lm.step(torch.tensor([token]), ready[0].session.state, consolidate=flag)
            else:
                logits = lm.step_many(torch.tensor([r.payload[0] for r in ready]), [r.session.state for r in ready],
                                      consolidate=[r.payload[1] for r in ready])
                self.batched_steps += 1
            dt = (time.perf_counter() - t0) / len(ready)
        except BaseException as e:
            for req in ready:
                self._finish(req, exc=e)
            return
        for i, req in enumerate(ready):
            s = req.session
            s.stats.decode_tokens += 1
            s.stats.decode_s += dt
            s.stats.window_fill = s.state.window_len / s.state.window
            s.last_logits = logits[i].clone()
            self._finish(req, s.last_logits)

    def _run_step(self, batch: list[_Request]) -> None:
        """One engine step of decode steps and reads of several sessions (see
        :meth:`_take_wake_batch`): a session with sleep work to do first (its own sleep settling
        per ``on_wake``, or a forced one) runs one block of it, batched with the others', and
        waits for the next step; every decode step takes its token; the reads take pieces (up to
        ``prefill_chunk`` tokens each, across their queued segments) within what the decode steps
        left of ``max_step_tokens`` (the first read at least one chunk). Then the rows run in as
        few forwards as :meth:`_groups` finds cheapest, and each result equals its session's
        step alone (up to float rounding)."""
        rows: list[tuple[_Request, list[int], list[bool], tuple[int, int] | None]] = []
        deferred: list[EngineSession] = []
        since: dict[int, float] = {}  # session -> when its request came
        budget = self.max_step_tokens - sum(r.kind == "decode" for r in batch)
        read_any = False
        for req in batch:
            s = req.session
            try:
                if not req.started:
                    s.stats.wake_wait_s += time.perf_counter() - req.enqueued
                    req.started = True
                if req.kind == "flush":
                    self._from_prefix(s)
                since[id(s)] = req.enqueued
                if self._advance_sleep(s, 1, deferred):
                    self._requeue(req)
                elif req.kind == "decode":
                    token, flag = req.payload
                    rows.append((req, [token], [flag], None))
                elif not s.pending:
                    self._finish(req, self._last_logits(s))
                elif read_any and budget <= 0:
                    self._requeue(req)  # the budget is spent: the next step reads it
                else:
                    take = self.prefill_chunk if not read_any else min(self.prefill_chunk, budget)
                    piece = self._next_piece(s, min(take, self._prefix_room(s)))
                    rows.append((req, *piece))
                    budget -= len(piece[0])
                    read_any = True
            except BaseException as e:
                self._finish(req, exc=e)
        n_decode = sum(after is None for *_, after in rows)
        if n_decode > 1:
            self.batched_steps += 1
        if n_decode and n_decode < len(rows):
            self.mixed_steps += 1
        for group in reversed(self._groups(rows)):  # the shortest rows (decode steps) first: answered
            self._forward(group)  # before the reads' forward, their sessions send their next steps meanwhile
        # the sleep blocks last: the sessions stepped above (never these ones, whose requests were
        # requeued) are answered before them, and send their next steps while the blocks run
        deferred = self._oldest_within_budget(deferred, since)
        try:
            self._step_deferred(deferred)
        except BaseException as e:  # a broken sleep: its sessions' wake work fails, the worker goes on
            for s in deferred:
                s._job = None
                self._emit(s, "sleep_failed", error=repr(e))

    def _oldest_within_budget(self, sessions: list[EngineSession], since: dict[int, float]) -> list[EngineSession]:
        """The sessions whose sleep block runs in this step: those whose requests came first, while
        their windows add up to ``max_sleep_tokens`` (at least one). The others' requests are
        requeued without a block: they wait for the first ones' sleeps to finish (so those are
        answered first, not all at the end together) and for no more than a bounded block."""
        taken: list[EngineSession] = []
        tokens = 0
        for s in sorted(sessions, key=lambda s: since.get(id(s), 0.0)):
            n = s.state.window_len
            if taken and tokens + n > self.max_sleep_tokens:
                break
            taken.append(s)
            tokens += n
        return taken

    def _groups(self, rows: list[Any]) -> list[list[Any]]:
        """Rows (each a piece of tokens for one session) in forwards: one padded forward costs
        about a fixed overhead plus its rows times its longest piece, so rows sorted by length go
        into one forward while the padding they add stays within ``max_pad_tokens`` (on CPU a
        forward's fixed cost is about the compute of 64 tokens of docqa-small; a decode step
        padded to a 64-token read costs nearly a whole read, so many decode steps run in a
        forward of their own, next to the reads')."""
        groups: list[list[Any]] = []
        waste = 0
        for row in sorted(rows, key=lambda r: -len(r[1])):
            if groups and waste + len(groups[-1][0][1]) - len(row[1]) <= self.max_pad_tokens:
                waste += len(groups[-1][0][1]) - len(row[1])
                groups[-1].append(row)
            else:
                groups.append([row])
                waste = 0
        return groups

    def _forward(self, rows: list[Any]) -> None:
        """One forward over ``rows`` (a step of one token each, a step_many, a prefill, or a
        padded prefill_many), then each row's request answered or requeued."""
        lm = self.model.model
        states = [r.session.state for r, *_ in rows]
        longest = max(len(ids) for _, ids, _, _ in rows)
        try:
            t0 = time.perf_counter()
            if longest == 1 and len(rows) == 1:
                _, ids, flags, _ = rows[0]
                logits = lm.step(torch.tensor(ids), states[0], consolidate=flags[0])
            elif longest == 1:
                logits = lm.step_many(torch.tensor([ids[0] for _, ids, _, _ in rows]), states,
                                      consolidate=[flags[0] for _, _, flags, _ in rows])
            elif len(rows) > 1 and hasattr(lm, "prefill_many"):
                logits = lm.prefill_many([(ids, flags) for _, ids, flags, _ in rows], states)
            else:
                logits = torch.stack([
                    lm.prefill(torch.tensor([ids]), st, consolidate=torch.tensor([flags]))[0, -1]
                    for (_, ids, flags, _), st in zip(rows, states, strict=True)])
            dt = time.perf_counter() - t0
            self.forwards += 1
        except BaseException as e:
            for req, *_ in rows:
                self._finish(req, exc=e)
            return
        total = sum(len(ids) for _, ids, _, _ in rows)
        for i, (req, ids, _, after) in enumerate(rows):
            s = req.session
            share = dt * len(ids) / total
            s.stats.window_fill = s.state.window_len / s.state.window
            s.last_logits = logits[i].clone()
            if after is None:
                s.stats.decode_tokens += 1
                s.stats.decode_s += share
                self._finish(req, s.last_logits)
                continue
            with self._cv:
                del s.pending[: after[0]]
                s.pending_offset = after[1]
            s.stats.prefill_s += share
            s.stats.prefill_tokens += len(ids)
            self._store_prefix(s)
            if s.pending:
                self._requeue(req)
            else:
                self._finish(req, s.last_logits)

    @staticmethod
    def _next_piece(session: EngineSession, budget: int) -> tuple[list[int], list[bool], tuple[int, int]]:
        """The next tokens to read: up to ``budget`` and the window's room, across queued
        segments (one flag per token), and where the queue will stand after them (segments
        finished, offset into the next)."""
        st = session.state
        room = min(budget, st.window - st.window_len)
        ids: list[int] = []
        flags: list[bool] = []
        i, off = 0, session.pending_offset
        while i < len(session.pending) and len(ids) < room:
            seg, flag = session.pending[i]
            take = min(len(seg) - off, room - len(ids))
            ids += seg[off : off + take]
            flags += [flag] * take
            off += take
            if off >= len(seg):
                i, off = i + 1, 0
        return ids, flags, (i, off)

    def _requeue(self, req: _Request) -> None:
        with self._cv:
            self._wake.append(req)

    def _flush_some(self, session: EngineSession, budget: int) -> bool:
        """Read up to ``budget`` queued tokens, or run one block of a sleep the window's filling
        forced; True when nothing is left to read."""
        self._from_prefix(session)
        while session.pending:
            if self._advance_sleep(session, 1):
                return False
            if budget <= 0:
                return False
            # one prefill for as many queued segments as fit (many small messages: one pass)
            ids, flags, (n_segments, offset) = self._next_piece(session, min(budget, self._prefix_room(session)))
            if ids:
                session.last_logits = self._prefill(session, ids, flags)
                budget -= len(ids)
            with self._cv:
                del session.pending[:n_segments]
                session.pending_offset = offset
            self._store_prefix(session)
        return True

    # --- prefix cache ---------------------------------------------------------------------------

    def _from_prefix(self, session: EngineSession) -> None:
        """A fresh session (nothing read, no sleep) whose first queued segment is a cached prefix
        starts from a copy of its state; on a miss, its read of that segment ends at the segment's
        end (:meth:`_prefix_room`) and the state there is cached (:meth:`_store_prefix`).

        Only a segment with more queued after it is cached (a shared header such as a system
        prompt and its tools, not a whole one-off input), only one that fits in the window (the
        read involves no sleep), and never a never-consolidate one: what a policy excludes must
        not outlive its session anywhere, and this cache outlives every session. The cache is
        keyed by the exact tokens, so a hit gives a session the state its own read would have;
        but a hit is faster, which tells a client that someone sent the same first segment
        recently (as vLLM's prefix caching does), so entries are shared only within a session's
        ``cache_scope`` (the server's tenant); ``prefix_cache=0`` turns the cache off."""
        s = session
        st = s.state
        if (not self.prefix_cache or s._prefix_key is not None or not s.pending or s.pending_offset
                or not hasattr(st, "clone") or st.tokens_seen or st.window_len or s._job is not None
                or s._sleep_requested):
            return
        ids, flag = s.pending[0]
        if not flag or not _MIN_PREFIX <= len(ids) <= st.window:
            return
        key = (tuple(ids), flag, s.cache_scope)
        with self._cv:  # the session table reads and evicts the cache from another thread
            hit = self._prefixes.get(key)
            if hit is not None:
                self._prefixes.move_to_end(key)
        if hit is None:
            if len(s.pending) > 1:
                s._prefix_key = key
            return
        state, logits = hit
        s.state = state.clone()
        s.last_logits = logits.clone()
        with self._cv:
            del s.pending[:1]
        s.stats.prefix_tokens += len(ids)
        s.stats.window_fill = s.state.window_len / s.state.window
        self.prefix_hits += 1

    @staticmethod
    def _prefix_room(session: EngineSession) -> int:
        """Tokens the next piece may take so that it ends at the end of a prefix being cached."""
        key = session._prefix_key
        return len(key[0]) - session.state.tokens_seen if key is not None else 1 << 30

    def _store_prefix(self, session: EngineSession) -> None:
        """Cache the state after the session's first segment once it is read (a copy: the session
        goes on changing its own)."""
        key = session._prefix_key
        st = session.state
        if key is None or st.tokens_seen < len(key[0]):
            return
        session._prefix_key = None
        if st.tokens_seen == st.window_len == len(key[0]) and session.last_logits is not None:
            entry = (st.clone(), session.last_logits.clone())
            with self._cv:
                self._prefixes[key] = entry
                self._prefixes.move_to_end(key)
                while len(self._prefixes) > self.prefix_cache:
                    self._prefixes.popitem(last=False)

    @staticmethod
    def _prefix_bytes(entry: tuple[HybridState, torch.Tensor]) -> int:
        state, logits = entry
        return state.nbytes + logits.numel() * logits.element_size()

    def prefix_cache_bytes(self) -> int:
        """Bytes the prefix cache holds (its states and logits)."""
        with self._cv:
            entries = list(self._prefixes.values())
        return sum(map(self._prefix_bytes, entries))

    def evict_prefixes(self, nbytes: int) -> int:
        """Drop the least recently used cached prefixes until ``nbytes`` are freed or none is
        left; returns the bytes freed. A session that would have hit one reads its prefix."""
        freed = 0
        with self._cv:
            while freed < nbytes and self._prefixes:
                freed += self._prefix_bytes(self._prefixes.popitem(last=False)[1])
        return freed

    @staticmethod
    def _last_logits(session: EngineSession) -> torch.Tensor:
        if session.last_logits is None:
            raise ConfigError("nothing to read: append tokens first")
        return session.last_logits

    def _advance_sleep(self, session: EngineSession, need: int, defer: list[EngineSession] | None = None) -> bool:
        """One unit (a block of one pass) of the sleep work that must happen before ``session``
        can take ``need`` more tokens; True while more remains.

        First the session's own pause sleep, which it woke into, per ``on_wake`` (finish: run the
        remaining passes, exposed; commit: complete at least one pass; abort: drop it); then a
        forced sleep if the window has no room for ``need`` tokens (all of it exposed). With
        ``defer``, the block is not run here: the session is added to it, for the caller to run
        its block batched with other sessions' (:meth:`_step_deferred`)."""
        s = session
        with self._cv:
            requested, s._sleep_requested = s._sleep_requested, False
            if s in self._sleepers:
                self._sleepers.remove(s)
        mode = s.policy.on_wake
        if s._job is None and requested and mode != "abort" and not s.closed:
            # the pause asked for a sleep that the worker had not reached yet: it counts as begun,
            # so the window boundary is the pause's, whatever the timing
            self._begin(s, "pause")
        job = s._job
        if job is not None and s._suspended and not self._keeps(s, job):
            s._suspended = False  # an excluded token is coming: the sleep finishes first, below
        if job is not None and s._job_reason != "forced" and self._keeps(s, job):
            st = s.state
            if not need or st.window_len + need <= st.window:
                if isinstance(job, SleepJob) and job.passes_done == 0 and job.reuse_wake:
                    s.stats.passes += job.run_step()  # pass 1 is what wake computed: take it before the wake adds to it
                s._suspended = True  # the window is intact: the wake goes on over it
                return False
            # the window must evict: the sleep finishes now (exposed), then the wake goes on
            s._suspended = False
            if not job.done:
                self._step_or_defer(s, defer)
                return True
            self._commit(s, exposed_from=0.0)
        job = s._job
        if job is not None and s._job_reason != "forced":
            if mode == "abort":
                self._abort(s)
            elif job.done or (mode == "commit" and job.passes_done >= 1):
                self._commit(s, exposed_from=0.0)
            else:
                self._step_or_defer(s, defer)
                return True
        st = s.state
        if s._job is None and need and st.window_len + need > st.window and kept_tokens(st) < st.window_len:
            # never-consolidate tokens fill part of the window: they leave it, the others stay
            # (they sleep with the turns after them, as though the excluded ones were never read)
            t0 = time.perf_counter()
            s.state = st = self.model.model.drop_excluded(st)
            s.stats.excluded_drops += 1
            s.stats.prefill_s += time.perf_counter() - t0
        if s._job is None and need and st.window_len + need > st.window:
            s.stats.forced_sleeps += 1
            self._begin(s, "forced", "forced")
        job = s._job
        if job is not None and s._job_reason == "forced":
            if not job.done:
                self._step_or_defer(s, defer)
                return True
            self._commit(s, exposed_from=0.0)
        if s._job is None:
            s._wake_since = None
        return False

    def _keeps(self, session: EngineSession, job: SleepTask) -> bool:
        """Whether the session's pause sleep is kept across its wake (see ``resume_sleep``): a
        :class:`~sleepagent.model.hybrid.SleepJob` reads its window's first tokens only, so the
        wake may append to the window while it waits."""
        mode = session.policy.on_wake
        if not ((mode == "resume" or (self.resume_sleep and mode == "finish")) and isinstance(job, SleepJob)):
            return False
        # never with never-consolidate tokens in the window or on their way (privacy: what is stored
        # must not depend on an excluded turn, its length included): those sleeps finish first
        return not session._excluded_seen and kept_tokens(session.state) == session.state.window_len

    def _step_or_defer(self, session: EngineSession, defer: list[EngineSession] | None) -> None:
        if defer is None:
            self._timed_step(session, exposed_from=0.0)
        else:
            defer.append(session)

    def _step_deferred(self, sessions: list[EngineSession]) -> None:
        """One block of each session's sleep that a wake is waiting for (all exposed), batched
        across sessions where the model allows it."""
        if not sessions:
            return
        jobs = cast(list[SleepTask], [s._job for s in sessions])  # each of them is sleeping
        t0 = time.perf_counter()
        if len(jobs) > 1 and hasattr(type(jobs[0]), "run_steps"):
            passes = cast(Any, type(jobs[0])).run_steps(jobs)  # SleepJob's batched step
        else:
            passes = [job.run_step() for job in jobs]
        share = (time.perf_counter() - t0) / len(sessions)
        for s, finished_pass in zip(sessions, passes, strict=True):
            self._account(s, t0, t0 + share, 0.0)
            if finished_pass:
                s.stats.passes += 1

    def _sleep_now(self, session: EngineSession) -> None:
        if session.state.window_len:
            self._sleep_through(session, event_reason="requested")

    def _begin(self, session: EngineSession, reason: str, event_reason: str | None = None) -> SleepTask:
        """Start a sleep job; ``reason`` "forced" makes all of its time exposed."""
        job = session._job = self.model.model.begin_sleep(session.state, session.policy.loops)
        session._job_reason = reason
        st = session.stats
        session._sleep_mark = (st.sleep_s_total, st.sleep_s_hidden, st.sleep_s_exposed)
        self._emit(session, "sleep_started", reason=event_reason or reason, loops=session.policy.loops)
        return job

    def _sleep_through(self, session: EngineSession, event_reason: str) -> None:
        """All passes now, on the hot path (exposed), then commit."""
        job = self._begin(session, "forced", event_reason)
        while not job.done:
            self._timed_step(session, exposed_from=0.0)
        self._commit(session, exposed_from=0.0)

    def _prefill(self, session: EngineSession, ids: list[int], flags: list[bool]) -> torch.Tensor:
        """Read ``ids`` (they fit in the window; one consolidate flag each) and return the logits
        after the last one."""
        t0 = time.perf_counter()
        logits = self.model.model.prefill(torch.tensor([ids]), session.state, consolidate=torch.tensor([flags]))
        session.stats.prefill_s += time.perf_counter() - t0
        session.stats.prefill_tokens += len(ids)
        session.stats.window_fill = session.state.window_len / session.state.window
        return logits[0, -1].clone()

    def _settle_sleep(self, session: EngineSession) -> None:
        """Resolve the session's sleep per ``on_wake`` all at once (before an explicit consolidate)."""
        while self._advance_sleep(session, 0):
            pass
        if session._job is not None:  # a sleep kept across a wake: finish it now
            session._suspended = False
            while not session._job.done:
                self._timed_step(session, exposed_from=0.0)
            self._commit(session, exposed_from=0.0)

    def _run_sleep_steps(self, sleepers: list[EngineSession]) -> None:
        """One block of each paused session's sleep (the worker's gap work), batched across
        sessions where their models allow it; round-robin over what is left."""
        stepping: list[EngineSession] = []
        for s in sleepers:
            try:
                if self._sleep_ready(s):
                    stepping.append(s)
            except Exception as e:  # a broken sleep must not stop the worker: drop it
                s._job = None
                self._emit(s, "sleep_failed", error=repr(e))
        if not stepping:
            return
        jobs = cast(list[SleepTask], [s._job for s in stepping])  # each of them is sleeping
        try:
            t0 = time.perf_counter()
            if len(jobs) > 1 and hasattr(type(jobs[0]), "run_steps"):
                passes = cast(Any, type(jobs[0])).run_steps(jobs)  # SleepJob's batched step
            else:
                passes = [job.run_step() for job in jobs]
            t1 = time.perf_counter()
        except Exception as e:
            for s in stepping:
                s._job = None
                self._emit(s, "sleep_failed", error=repr(e))
            return
        share = (t1 - t0) / len(stepping)
        going_on: list[EngineSession] = []
        for s, job, finished_pass in zip(stepping, jobs, passes, strict=True):
            try:
                self._account(s, t0, t0 + share, s._wake_since)
                if finished_pass:
                    s.stats.passes += 1
                if job.done:
                    s._interrupted = False
                    self._commit(s, exposed_from=s._wake_since)
                else:
                    going_on.append(s)
            except Exception as e:
                s._job = None
                self._emit(s, "sleep_failed", error=repr(e))
        with self._cv:  # back to the front, in their order: the oldest sleeps finish first
            self._sleepers.extendleft(s for s in reversed(going_on) if s not in self._sleepers)

    def _sleep_ready(self, session: EngineSession) -> bool:
        """Bring a paused session's sleep to its next block (begin it, or resolve an
        interruption); True when a block is to run now."""
        s = session
        if s.closed:
            s._job = None
            return False
        mode = s.policy.on_wake
        if s._job is None:
            if not s._sleep_requested:
                return False
            s._sleep_requested = False
            if s._interrupted and mode == "abort":  # cancelled before a pass ran: nothing to drop
                s._interrupted = False
                return False
            self._begin(s, "pause")
        job = s._job
        assert job is not None
        if s._interrupted and (mode == "abort" or (mode == "commit" and job.passes_done >= 1)):
            # the run was cancelled: drop, or commit what is done, without waking the session
            s._interrupted = False
            self._abort(s) if mode == "abort" else self._commit(s, exposed_from=s._wake_since)
            return False
        return True

    def _timed_step(self, session: EngineSession, exposed_from: float | None) -> None:
        """Run one block of the sleep's current pass; seconds after ``exposed_from`` (a wake was
        waiting) count as exposed."""
        assert session._job is not None
        t0 = time.perf_counter()
        finished_pass = session._job.run_step()
        t1 = time.perf_counter()
        self._account(session, t0, t1, exposed_from)
        if finished_pass:
            session.stats.passes += 1

    def _account(self, session: EngineSession, t0: float, t1: float, exposed_from: float | None) -> None:
        if session._job_reason == "forced" or (exposed_from is not None and exposed_from <= t0):
            exposed = t1 - t0
        elif exposed_from is not None:
            exposed = max(0.0, t1 - exposed_from)
        else:
            exposed = 0.0
        s = session.stats
        s.sleep_s_total += t1 - t0
        s.sleep_s_exposed += exposed
        s.sleep_s_hidden += (t1 - t0) - exposed

    def _commit(self, session: EngineSession, exposed_from: float | None) -> None:
        job = session._job
        assert job is not None
        t0 = time.perf_counter()
        new_state = job.commit()
        t1 = time.perf_counter()
        self._account(session, t0, t1, exposed_from)
        session.state = new_state
        session.stats.sleeps += 1
        session.stats.tokens_consolidated += job.n_consolidated
        session.stats.window_fill = new_state.window_len / new_state.window
        if session.on_commit is not None:  # before the sleep counts as over: wait_idle covers it
            try:
                session.on_commit(session)
                session.persist_error = None
            except Exception as e:  # a failing store must not take the engine down
                session.persist_error = e
                self._emit(session, "persist_failed", error=str(e))
        session._job = None
        session._suspended = False
        session._excluded_seen = False
        session._wake_since = None
        self._emit(session, "sleep_finished", passes=job.passes_done, committed=True, reason=session._job_reason,
                   tokens=job.n_consolidated, **self._sleep_seconds(session))

    def _abort(self, session: EngineSession) -> None:
        job = session._job
        session._job = None
        session._suspended = False
        session._excluded_seen = False
        session._wake_since = None
        session.stats.aborted_sleeps += 1
        self._emit(session, "sleep_finished", passes=job.passes_done if job else 0, committed=False, reason="abort",
                   tokens=0, **self._sleep_seconds(session))

    @staticmethod
    def _sleep_seconds(session: EngineSession) -> dict[str, float]:
        """This sleep's seconds, total and split (``sleep_s``, ``hidden_s``, ``exposed_s``), for
        its sleep_finished event."""
        st, (total, hidden, exposed) = session.stats, session._sleep_mark
        return {"sleep_s": st.sleep_s_total - total, "hidden_s": st.sleep_s_hidden - hidden,
                "exposed_s": st.sleep_s_exposed - exposed}
