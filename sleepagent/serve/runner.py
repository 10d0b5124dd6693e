"""Running the server: in the foreground (the CLI), or on a thread (tests, benchmarks, notebooks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .app import ServeConfig, create_app

__all__ = ["serve", "serve_in_background"]


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (``sleepagent serve``)."""
    import uvicorn

    uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level)


@contextmanager
def serve_in_background(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """A server on a thread, on a free port (``port=0``); yields its base URL
    (``http://127.0.0.1:PORT/v1``) and stops it (releasing every session) on exit."""
    import uvicorn

    app = create_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="sleepagent-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
