"""sleepagent: an agent runtime for sleep-enabled hybrid language models."""

from __future__ import annotations

__version__ = "0.1.0"
