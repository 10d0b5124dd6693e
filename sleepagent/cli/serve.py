"""``sleepagent serve``: the OpenAI-compatible HTTP server, alone or as engine replicas on Ray Serve."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import console, fail, first_error

__all__ = ["serve"]


def serve(
    model: Annotated[str, typer.Option(help="shipped checkpoint name or local directory")] = "docqa-small",
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    store: Annotated[str | None, typer.Option(help="snapshot store URL: idle sessions are released to it")] = None,
    api_keys: Annotated[str | None, typer.Option(help="file of 'key tenant' lines (also $SLEEPAGENT_API_KEYS)")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="accept requests without a key (local use)")] = False,
    loops: Annotated[int | None, typer.Option(min=1, max=64, help="sleep passes N (default: the model's)")] = None,
    idle_release: Annotated[float, typer.Option(min=0.1, help="seconds before an idle session is released")] = 300.0,
    persist_window: Annotated[bool, typer.Option(help="snapshots keep the window (exact resume)")] = False,
    max_in_flight: Annotated[int, typer.Option(min=1, help="requests served at once; more get 429")] = 64,
    max_prompt_tokens: Annotated[
        int, typer.Option(min=16, help="new tokens a request may bring; more get 413")
    ] = 32_768,
    max_state_mb: Annotated[
        float | None, typer.Option(min=0.001, help="MiB of live session state (fast weights, KV windows, sleeps) "
                                   "before the least recently used idle sessions are released; default: a "
                                   "quarter of the device's memory")
    ] = None,
    compile_decode: Annotated[bool, typer.Option(
        "--compile-decode", help="compile the one-session decode step with torch.compile at startup (a "
        "sleepagent checkpoint; on a CPU it needs a C++ compiler; see `sleepagent bench decode`)")] = False,
    ray_mode: Annotated[bool, typer.Option("--ray", help="engine replicas on Ray Serve (needs --store)")] = False,
    replicas: Annotated[int, typer.Option(min=1, help="--ray: engine replicas")] = 2,
    ray_address: Annotated[
        str | None, typer.Option(help="--ray: a running Ray cluster (default: start one here)")
    ] = None,
) -> None:
    """Serve a model over the OpenAI API: POST /v1/chat/completions, GET /v1/models, /health, /metrics.
    With --ray, K engine replicas on Ray Serve share sessions through the store."""
    from pydantic import ValidationError

    from ..errors import SleepAgentError

    try:
        from ..serve import ServeConfig, create_app, load_api_keys

        cfg = ServeConfig(model=model, store=store, api_keys=load_api_keys(api_keys), no_auth=no_auth, loops=loops,
                          idle_release_s=idle_release, persist_window=persist_window, max_in_flight=max_in_flight,
                          max_prompt_tokens=max_prompt_tokens, max_state_mb=max_state_mb,
                          compile_decode=compile_decode)
        if ray_mode:
            from ray import serve as ray_serve

            from ..model.pretrained import resolve_checkpoint
            from ..serve.ray_serve import build_app

            resolve_checkpoint(model)  # the replicas load it: a wrong name fails here, not in each replica
            app_ = build_app(cfg, replicas=replicas)  # checks keys and store before anything starts
        else:
            app_ = create_app(cfg)  # checks the keys and loads the model: every bad setting fails here
    except SleepAgentError as e:
        raise fail(str(e)) from None
    except ValidationError as e:
        raise fail(f"invalid server settings: {first_error(e)}") from None
    except ImportError as e:
        extra = "ray" if ray_mode else "serve"
        raise fail(
            f"{'--ray' if ray_mode else 'the server'} needs its extra: pip install 'sleepagent[{extra}]' ({e})"
        ) from None
    console.print(f"[bold]sleepagent serve[/]: {model} on http://{host}:{port}/v1 "
                  f"({'no auth' if no_auth else f'{len(cfg.api_keys)} API key(s)'}, store: {store or 'none'}"
                  + (f", {replicas} Ray Serve replicas" if ray_mode else "") + ")")
    if ray_mode:
        import ray

        ray.init(address=ray_address)
        ray_serve.start(http_options={"host": host, "port": port})
        ray_serve.run(app_, name="sleepagent", route_prefix="/", blocking=True)
        return
    import uvicorn

    uvicorn.run(app_, host=host, port=port, log_level="info")
