"""The runtime core under every front door.

The Agent, the OpenAI-compatible server and the LangChain chat model are thin doors over these
modules; each translates its protocol into their parameters and back, so a rule about a turn (a
memory-policy check, a usage field, a stop, markup that must not reach content) lives in one
place and holds for every door::

    doors:     agent.py (tool loop)   serve/ (HTTP)   langchain.py
                        \\                |               /
    runtime:   chat.py (a history in, one reply out)  models.py (TurnModel)
               sessions.py (the one session table)     generate.py (the one token loop)
               persistence.py (the one persistence path) render.py, constraints.py + grammar.py
                                        |
    engine.py (one model on one device) -> model/ (the hybrid network)

``tools/`` and ``storage/`` sit beside the core; nothing below imports from above.
"""

from __future__ import annotations

from .chat import ChatRuntime, PreparedTurn, Reply
from .constraints import normalize_tool_choice, turn_constraint, visible_text
from .generate import Constraint, GenerationParams, Sampler, Script, TokenPicker, TurnText, generate_turn
from .models import SampledModel, TurnInfo, TurnModel
from .persistence import Persistence, ResumeInfo, SessionMeta, SessionStore, open_store, restore, snapshot
from .render import DEFAULT_SYSTEM_PROMPT, ChatTurn, render_system_turn, render_tool_prompt, render_turns
from .sessions import ChatSession, SessionTable

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "ChatRuntime",
    "ChatSession",
    "ChatTurn",
    "Constraint",
    "GenerationParams",
    "Persistence",
    "PreparedTurn",
    "Reply",
    "ResumeInfo",
    "SampledModel",
    "Sampler",
    "Script",
    "SessionMeta",
    "SessionStore",
    "SessionTable",
    "TokenPicker",
    "TurnInfo",
    "TurnModel",
    "TurnText",
    "generate_turn",
    "normalize_tool_choice",
    "open_store",
    "render_system_turn",
    "render_tool_prompt",
    "render_turns",
    "restore",
    "snapshot",
    "turn_constraint",
    "visible_text",
]
