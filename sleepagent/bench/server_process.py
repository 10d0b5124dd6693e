"""A real ``sleepagent serve`` in a process of its own, for the benchmarks that drive it over HTTP.

Its own process, so the load generator's event loop does not share a GIL with the engine (a
client parsing SSE in the server's process would slow the server it measures), and its resident
memory is its own. The server's log goes to a file: a pipe nobody reads fills up and stalls it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["metrics", "rss_mb", "server_process"]

# runs in the server's own process: a ServeConfig from JSON, served on a port
_SERVER = """
import json, sys
from sleepagent.serve import ServeConfig
from sleepagent.serve.runner import serve
serve(ServeConfig(**json.loads(sys.argv[1])), port=int(sys.argv[2]), log_level="warning")
"""


def rss_mb(pid: int) -> float:
    """A process's resident set size in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def metrics(url: str) -> dict[str, float]:
    """The server's ``/metrics`` (Prometheus text) as name -> value, for the unlabelled series."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@contextmanager
def server_process(config: dict[str, Any], *, threads: int = 1) -> Iterator[tuple[str, subprocess.Popen]]:
    """Serve ``ServeConfig(**config)`` in a child process on a free loopback port with ``threads``
    torch threads; yields (the base URL without ``/v1``, the process) once ``/health`` answers."""
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-c", _SERVER, json.dumps(config), str(port)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=log, text=True)
            url = f"http://127.0.0.1:{port}"
            try:
                _wait_up(url, proc, log_path)
                yield url, proc
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start")
