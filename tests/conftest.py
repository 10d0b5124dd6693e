"""Shared fixtures: tiny real models that run in milliseconds on CPU."""

from __future__ import annotations

import pytest
import torch

from sleepagent.model import SleepHybridConfig, SleepHybridLM


def tiny_config(**overrides) -> SleepHybridConfig:
    base = dict(
        vocab_size=61, d_model=32, n_layers=4, n_heads=2, gdn_heads=2, window=16, chunk_size=8,
    )
    base.update(overrides)
    return SleepHybridConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> SleepHybridLM:
    torch.manual_seed(seed)
    return SleepHybridLM(tiny_config(**overrides)).eval()


@pytest.fixture
def model() -> SleepHybridLM:
    return tiny_model()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (Debian's binaries; ``.ci/run`` installs them)."""
    from sleepagent.storage.pgtemp import postgres_bindir, temporary_postgres

    if postgres_bindir() is None:
        pytest.skip("no PostgreSQL server binary (install Debian's postgresql package)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'sleepagent[postgres]')")
    with temporary_postgres() as url:
        yield url


# --- a clean exit status --------------------------------------------------------------------
# Once ray is imported, its C++ terminate handler turns any uncaught C++ exception into abort().
# At interpreter shutdown CPython ends daemon threads that still want the GIL with
# pthread_exit(), whose forced unwind can pass through torch's C++ frames (a tensor freed by an
# event-loop thread left over from a test); ray's handler then aborts the process after every
# test has passed (exit 134, seen once in a fresh-clone CI run). The results are final by then,
# so when ray is loaded the run ends with its real status and skips interpreter teardown.
_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import os
    import sys

    status = config.stash.get(_EXIT_STATUS, None)
    if status is not None and "ray" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

