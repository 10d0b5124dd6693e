"""``sleepagent serve``: an OpenAI-compatible HTTP server that sleeps between requests.

Needs the ``serve`` extra (``pip install 'sleepagent[serve]'``): FastAPI, uvicorn and the
Prometheus client are imported only when a server is created.
"""

from __future__ import annotations

__all__ = ["ServeConfig", "create_app", "load_api_keys", "serve", "serve_in_background"]


def __getattr__(name: str):
    if name in ("serve", "serve_in_background"):
        from . import runner

        return getattr(runner, name)
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
