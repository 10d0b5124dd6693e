"""A throwaway PostgreSQL server for tests and benchmarks (Debian's ``postgresql`` binaries).

``initdb`` + ``pg_ctl`` into a temporary directory, listening on a Unix socket only, trust auth,
fsync off. Run as the ``postgres`` user when the caller is root (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["create_database", "postgres_bindir", "temporary_postgres"]


def postgres_bindir() -> Path | None:
    """The directory holding ``pg_ctl``/``initdb``, or None if no server is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """Start a server; yields a SQLAlchemy URL (``postgresql+psycopg://...``) to its ``postgres`` db."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binary found (install Debian's postgresql package)")
    root = Path(tempfile.mkdtemp(prefix="sleepagent-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        pw = pwd.getpwnam(user)
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)

    def run(*args: str) -> None:
        cmd = [str(bindir / args[0]), *args[1:]]
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    try:
        run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        run("pg_ctl", "-D", str(data), "-w", "-l", str(root / "log"),
            "-o", f"-c listen_addresses='' -k {sock} -c fsync=off", "start")
        yield f"postgresql+psycopg://postgres@/postgres?host={sock}"
    finally:
        if (data / "postmaster.pid").exists():
            run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str, name: str | None = None) -> str:
    """Create a fresh database on the server; returns its URL."""
    import psycopg

    name = name or "sa_" + uuid.uuid4().hex[:12]
    base = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.replace("@/postgres?", f"@/{name}?")
