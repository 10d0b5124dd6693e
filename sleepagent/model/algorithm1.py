"""The training forward of Algorithm 1, written once for every model that can sleep.

Both :class:`~sleepagent.model.SleepHybridLM` and the transformers adapter
(:class:`~sleepagent.model.hf.HFHybridLM`) train through :func:`training_forward`. It needs the
paper's three pieces and nothing else (:class:`Sleeper`): ``h = embed(ids)``,
``h, fast = blocks(h, fast, start, stop)`` (pure: attention causal within ``h``, no KV kept;
``fast`` not mutated) and ``logits = head(h)``. How a model runs a span of its blocks is its own
business; how a sequence is cut into windows, which pass gives the loss and how states chain is
written here, so the two models cannot drift apart.

The computation, for a sequence split into windows exactly as the runtime splits it
(:func:`split_windows`):

- pass 1 over the window from the committed FastState: its logits give the masked
  cross-entropy (targets are the next tokens where ``loss_mask`` says so);
- unless it is the last window, Algorithm 1 over the tokens the runtime would consolidate: the
  blocks before the looped span once, the span ``loops`` times (pass 1 is the wake pass when the
  whole window is consolidated), the blocks after the span once over the loop's final h; the
  result is the next window's committed FastState.

Backprop runs through every pass and window (the refined h is discarded, so gradients reach
earlier windows only through the fast weights). ``checkpoint`` recomputes each window in
backward; ``detach_every=k`` truncates backprop every k windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from ..errors import ConfigError, ShapeError
from .state import FastState

__all__ = [
    "LMOutput",
    "Sleeper",
    "Window",
    "check_ids",
    "check_loops",
    "commit",
    "split_windows",
    "training_forward",
]

_INTEGER_DTYPES = (torch.long, torch.int32, torch.int16, torch.uint8, torch.int8)


@dataclass
class LMOutput:
    """Result of the training forward: mean cross-entropy over loss positions (and, on request,
    the wake-pass logits of every position)."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    n_targets: int = 0


class Sleeper(Protocol):
    """What Algorithm 1 needs of a model.

    ``config`` has ``vocab_size``, ``n_layers``, ``window``, ``evict``, ``keep``, ``loops``
    (the default N) and ``span`` (the looped blocks ``(a, b)``).
    """

    config: Any

    @property
    def device(self) -> torch.device: ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> hidden states [B, T, d] (the input of block 0)."""
        ...

    def blocks(
        self, h: torch.Tensor, fast: FastState, start: int = 0, stop: int | None = None
    ) -> tuple[torch.Tensor, FastState]:
        """Blocks ``[start, stop)`` once over ``h`` [B, T, d] from ``fast``; the new h and the
        FastState with those blocks' GDN entries advanced (the others are ``fast``'s)."""
        ...

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, d] (the last block's output) -> logits [B, T, vocab]."""
        ...

    def new_fast(self, batch_size: int = 1) -> FastState:
        """The zero FastState a sequence starts from."""
        ...


# --- input checks (one set, for every model and entry point) ----------------------------------


def check_ids(ids: torch.Tensor, vocab_size: int) -> None:
    """Token ids must be an integer tensor with values in ``[0, vocab_size)``."""
    if ids.dtype not in _INTEGER_DTYPES:
        raise ShapeError(f"token ids must be an integer tensor, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ShapeError(
            f"token ids must lie in [0, {vocab_size}), got range [{int(ids.min())}, {int(ids.max())}]"
        )


def check_loops(loops: Any, default: int) -> int:
    """N for one call: ``loops``, or the model's ``default`` when None; an integer >= 1."""
    n = default if loops is None else loops
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"loops must be an integer >= 1, got {loops!r}", field="loops")
    return n


# --- windows, as the runtime cuts them ------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One window of a sequence: tokens ``[start, end)``.

    ``scored_from``: first column (relative to ``start``) this window scores; earlier ones are
    tokens a sliding eviction kept, already scored in the previous window. ``commit``: how many of
    the window's first tokens the sleep at its end consolidates (0 for the last window).
    """

    start: int
    end: int
    scored_from: int = 0
    commit: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start


def split_windows(
    n_tokens: int, *, window: int, evict: str = "hard", keep: int = 0, window_lengths: list[int] | None = None
) -> list[Window]:
    """The windows the runtime reads ``n_tokens`` in.

    Hard eviction: full windows of ``window`` tokens, each consolidated whole when the next token
    does not fit; or, with ``window_lengths``, windows of those lengths (the runtime's pause-time
    sleeps come before the window is full). Sliding eviction: a full window consolidates its
    oldest ``window - keep`` tokens and keeps the last ``keep``, so windows overlap by ``keep``.
    """
    if n_tokens < 1:
        raise ShapeError("the training forward needs at least one token")
    if window_lengths is not None:
        if evict != "hard":
            raise ConfigError("window_lengths needs evict='hard'", field="window_lengths")
        if sum(window_lengths) != n_tokens or not all(0 < n <= window for n in window_lengths):
            raise ShapeError(
                f"window_lengths must be positive, at most window={window}, and sum to {n_tokens} tokens; "
                f"got {window_lengths}"
            )
        out, start = [], 0
        for n in window_lengths:
            out.append(Window(start, start + n, 0, n))
            start += n
    else:
        stride = window - keep if evict == "sliding" else window
        out, start = [], 0
        while True:
            end = min(start + window, n_tokens)
            out.append(Window(start, end, keep if evict == "sliding" and start else 0, min(stride, end - start)))
            if end >= n_tokens:
                break
            start += stride
    last = out[-1]
    out[-1] = Window(last.start, last.end, last.scored_from, 0)
    return out


# --- Algorithm 1 ----------------------------------------------------------------------------


def commit(model: Sleeper, ids: torch.Tensor, fast: FastState, loops: int) -> FastState:
    """Algorithm 1 over ``ids`` [B, T] from ``fast``: the committed FastState after the blocks
    before the looped span once, the span ``loops`` times and the blocks after it once."""
    b = model.config.span[1]
    h, fast = model.blocks(model.embed(ids), fast, 0, b)
    return _after_pass1(model, h, fast, loops)


def _after_pass1(model: Sleeper, h: torch.Tensor, fast: FastState, loops: int) -> FastState:
    """The rest of Algorithm 1 once pass 1 reached the span's end (``h``, ``fast`` there, the
    suffix blocks' entries still the committed ones): ``loops - 1`` more passes of the span,
    then the suffix once over the final h."""
    a, b = model.config.span
    for _ in range(loops - 1):
        h, fast = model.blocks(h, fast, a, b)
    if b < model.config.n_layers:
        fast = model.blocks(h, fast, b, model.config.n_layers)[1]
    return fast


def _window_step(
    model: Sleeper, win: Window, loops: int, want_logits: bool, ids: torch.Tensor, targets: torch.Tensor,
    *flat: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One window: pass 1 (loss) and the consolidation passes. Takes and returns the FastState
    as flat tensors, the form activation checkpointing saves and recomputes from."""
    fast = FastState.unflatten(flat)
    b, n = model.config.span[1], model.config.n_layers
    h_span, f_span = model.blocks(model.embed(ids), fast, 0, b)
    h, f_wake = model.blocks(h_span, f_span, b, n) if b < n else (h_span, f_span)
    logits = model.head(h)
    flat_logits = logits.flatten(0, 1)
    if flat_logits.dtype not in (torch.float32, torch.float64):  # the loss in float32 at least
        flat_logits = flat_logits.float()
    loss_sum = F.cross_entropy(flat_logits, targets.flatten(), ignore_index=-100, reduction="sum")
    if win.commit == 0:
        nxt = fast
    elif win.commit == win.length:  # the whole window: the wake pass is pass 1
        nxt = f_wake if loops == 1 else _after_pass1(model, h_span, f_span, loops)
    else:
        nxt = commit(model, ids[:, : win.commit], fast, loops)
    out_logits = logits[:, win.scored_from :] if want_logits else logits.new_empty(0)
    return (loss_sum, out_logits, *nxt.flatten())


def training_forward(
    model: Sleeper,
    ids: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    loops: int | None = None,
    *,
    checkpoint: bool = False,
    detach_every: int | None = None,
    return_logits: bool = False,
    fast: FastState | None = None,
    window_lengths: list[int] | None = None,
) -> LMOutput:
    """Algorithm 1 over ``ids`` [B, T] split into windows as the runtime splits them (see module
    docstring); returns the mean cross-entropy over the targets as an :class:`LMOutput`.

    ``loss_mask`` [B, T] marks token t as a target (predicted from position t - 1); default every
    token after the first. ``loops``: N (default ``model.config.loops``). ``fast``: the committed
    FastState the sequence starts from (default zeros). ``window_lengths`` (hard eviction): the
    windows explicitly, e.g. the boundaries the runtime's pause-time sleeps will produce.
    ``return_logits``: also the pass-1 logits of every position [B, T, vocab].
    """
    cfg = model.config
    if ids.dim() != 2:
        raise ShapeError(f"the training forward expects token ids [batch, tokens], got {tuple(ids.shape)}")
    check_ids(ids, cfg.vocab_size)
    B, T = ids.shape
    if T < 1:
        raise ShapeError("the training forward needs at least one token")
    ids = ids.to(model.device)
    if loss_mask is None:
        loss_mask = torch.ones(B, T, dtype=torch.bool, device=ids.device)
        loss_mask[:, 0] = False
    elif loss_mask.shape != ids.shape:
        raise ShapeError(f"loss_mask shape {tuple(loss_mask.shape)} must equal ids shape {tuple(ids.shape)}")
    loops = check_loops(loops, cfg.loops)
    if detach_every is not None and detach_every < 1:
        raise ConfigError(f"detach_every must be >= 1 or None, got {detach_every}", field="detach_every")
    windows = split_windows(T, window=cfg.window, evict=cfg.evict, keep=cfg.keep, window_lengths=window_lengths)
    fast = fast if fast is not None else model.new_fast(B)
    # targets[t] = ids[t + 1] where loss_mask[t + 1]
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = torch.where(loss_mask[:, 1:].to(ids.device).bool(), ids[:, 1:], -100)
    n_targets = int((targets != -100).sum())  # each target lies in one window's scored columns
    total = torch.zeros((), device=ids.device)
    logits_out: list[torch.Tensor] = []
    for k, win in enumerate(windows):
        win_ids, win_tgt = ids[:, win.start : win.end], targets[:, win.start : win.end].clone()
        win_tgt[:, : win.scored_from] = -100  # kept tokens were scored in the previous window
        step = partial(_window_step, model, win, loops, return_logits, win_ids, win_tgt)
        if checkpoint and torch.is_grad_enabled():
            loss_sum, logits, *flat = activation_checkpoint(step, *fast.flatten(), use_reentrant=False)
        else:
            loss_sum, logits, *flat = step(*fast.flatten())
        total = total + loss_sum
        if return_logits:
            logits_out.append(logits)
        fast = FastState.unflatten(flat)
        if detach_every and (k + 1) % detach_every == 0:
            fast = fast.detach()
    return LMOutput(
        loss=total / max(n_targets, 1),
        logits=torch.cat(logits_out, 1) if return_logits else None,
        n_targets=n_targets,
    )
