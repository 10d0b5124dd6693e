"""Typed exceptions: callers catch by meaning, not by message text.

Every error sleepagent raises on purpose derives from :class:`SleepAgentError`. Misuse errors also
derive from the builtin they refine (``ValueError``, ``KeyError``, ...) so generic handlers keep
working.

- misuse: :class:`ConfigError`, :class:`ShapeError`, :class:`StateMismatch`
- wake/sleep: :class:`WindowFull`
- loading and snapshots: :class:`CheckpointError`, :class:`FingerprintMismatch`,
  :class:`SnapshotCorrupted`, :class:`SnapshotNotFound`, :class:`SnapshotExpired`,
  :class:`AccessDenied`, :class:`StoreError`
- agent runs: :class:`ToolError`, :class:`UsageLimitExceeded`, :class:`InputTooLarge`,
  :class:`ModelBehaviorError`
- conversations (the runtime core under every front door; the HTTP server maps each to a status):
  :class:`RequestError` (400), :class:`SessionNotFound` (404), :class:`SessionConflict` (409),
  :class:`SessionsFull` (429)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AccessDenied",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FingerprintMismatch",
    "InputTooLarge",
    "ModelBehaviorError",
    "RequestError",
    "SessionConflict",
    "SessionNotFound",
    "SessionsFull",
    "ShapeError",
    "SleepAgentError",
    "SnapshotCorrupted",
    "SnapshotError",
    "SnapshotExpired",
    "SnapshotNotFound",
    "StateMismatch",
    "StoreError",
    "ToolError",
    "UsageLimitExceeded",
    "WindowFull",
]


class SleepAgentError(Exception):
    """Root of every error sleepagent raises on purpose."""


# --- misuse -------------------------------------------------------------------------------------


class ConfigError(SleepAgentError, ValueError):
    """A configuration value is invalid. ``field`` names the offending field when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DataError(SleepAgentError, ValueError):
    """Externally supplied data (a task's sequences read from a file) does not fit the task.
    ``line`` is the 1-based line of the file when there is one."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


class ShapeError(SleepAgentError, ValueError):
    """Tensors passed to a public entry point have incompatible shapes, dtypes or devices."""


class StateMismatch(SleepAgentError, ValueError):
    """A state does not belong to this model (wrong layer layout, batch size or device)."""


# --- wake / sleep -------------------------------------------------------------------------------


class WindowFull(SleepAgentError):
    """The tokens do not fit in the attention window: the caller must sleep (consolidate) first."""

    def __init__(self, *, window: int, used: int, requested: int) -> None:
        super().__init__(
            f"{requested} token(s) do not fit in the attention window: {used} of {window} slots are "
            f"used; consolidate the state (sleep) before feeding more"
        )
        self.window = window
        self.used = used
        self.requested = requested


# --- checkpoints and snapshots ------------------------------------------------------------------


class CheckpointError(SleepAgentError, ValueError):
    """A checkpoint path or name cannot be loaded (missing, unknown name, unsupported type)."""


class FingerprintMismatch(SleepAgentError, ValueError):
    """A saved state or snapshot was made by a different model (config or weights differ)."""

    def __init__(self, *, expected: str, found: str) -> None:
        super().__init__(
            f"the state was saved by a model with fingerprint {found[:16]}…, but this model's "
            f"fingerprint is {expected[:16]}…; a state restores only into the model that made it"
        )
        self.expected = expected
        self.found = found


class SnapshotError(SleepAgentError):
    """Base class of snapshot-store errors."""


class SnapshotCorrupted(SnapshotError):
    """A stored payload failed its integrity check (hash or format); nothing else is affected."""


class SnapshotNotFound(SnapshotError, KeyError):
    """No snapshot or session with that id exists (or it was erased)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class SnapshotExpired(SnapshotError):
    """The snapshot's TTL has passed; expired snapshots are never returned."""


class AccessDenied(SnapshotError, PermissionError):
    """A tenant tried to read or change another tenant's session. The store itself answers such
    attempts exactly as it answers a missing id (:class:`SnapshotNotFound`), so that nothing about
    another tenant leaks; this class remains for callers that deny access by their own rules."""


class StoreError(SnapshotError):
    """The store cannot do what was asked: not a store (or another schema version), unreachable,
    read-only for a write, or a database failure; the message names the store."""


# --- agent runs ---------------------------------------------------------------------------------


class ToolError(SleepAgentError):
    """A tool failed; inside an agent run this becomes a tool-error message to the model."""

    def __init__(self, message: str, *, tool_name: str | None = None) -> None:
        super().__init__(message)
        self.tool_name = tool_name


class UsageLimitExceeded(SleepAgentError):
    """A run hit one of its usage limits. ``messages`` holds the conversation so far."""

    def __init__(self, message: str, *, messages: list[Any] | None = None) -> None:
        super().__init__(message)
        self.messages = messages or []


class InputTooLarge(SleepAgentError, ValueError):
    """A message is longer than the agent accepts (``Agent(max_input_tokens=...)``): refused
    before any of it is read, so a huge input cannot stall the engine."""

    def __init__(self, message: str, *, tokens: int, limit: int) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit


class ModelBehaviorError(SleepAgentError):
    """The model produced something the runtime cannot act on (e.g. too many steps)."""

    def __init__(self, message: str, *, body: str | None = None) -> None:
        super().__init__(message)
        self.body = body


# --- conversations ------------------------------------------------------------------------------


class RequestError(SleepAgentError, ValueError):
    """A conversation request cannot be served as sent (a tool message that answers no call, a
    ``tool_choice`` the tools do not allow, nothing new to read). ``param`` names the part of the
    request at fault when there is one (OpenAI's error ``param``)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class SessionNotFound(SleepAgentError, KeyError):
    """No session of this id for this tenant, live or stored (another tenant's id answers the
    same: ids are per tenant, and existence is not revealed across tenants)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id!r}")
        self.session_id = session_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SessionConflict(SleepAgentError):
    """The session changed while a request waited for it (another request ran first): resend."""


class SessionsFull(SleepAgentError):
    """Every live session is in use and none can be released to make room: retry later."""
