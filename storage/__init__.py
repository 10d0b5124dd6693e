"""Snapshot store, shipped as ``sleepagent.storage``."""
