"""Store fixtures: a real SQLite file, and a real PostgreSQL server started for the test session.

The server comes from Debian's ``postgresql`` package (``.ci/run`` installs it; see
:mod:`sleepagent.storage.pgtemp`). When no server binary exists the PostgreSQL cases are skipped
with that reason; CI has one.
"""

from __future__ import annotations

import pytest
from sleepagent.storage import SnapshotStore
from sleepagent.storage.pgtemp import create_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return create_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def store(store_url):
    s = SnapshotStore(store_url)
    yield s
    s.close()
