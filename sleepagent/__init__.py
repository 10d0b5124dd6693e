"""sleepagent: an agent runtime for sleep-enabled hybrid language models.

``Agent(model=...).run(task)`` drives a hybrid LM (windowed attention + Gated DeltaNet fast
weights) whose window is consolidated into the fast weights while the agent waits.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .agent import Agent, AgentRun, AgentSession
from .engine import Engine, SleepStats
from .messages import Message, RunResult, Usage, UsageLimits
from .model import SleepHybridConfig, SleepModel
from .policy import MemoryPolicy, SleepPolicy
from .tools import Tool, tool

__all__ = [
    "Agent",
    "AgentRun",
    "AgentSession",
    "Engine",
    "MemoryPolicy",
    "Message",
    "RunResult",
    "SleepHybridConfig",
    "SleepModel",
    "SleepPolicy",
    "SleepStats",
    "Tool",
    "Usage",
    "UsageLimits",
    "__version__",
    "tool",
]
