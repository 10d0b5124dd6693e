"""Scale-out on Ray Serve: many engines, sessions that move between them through the store.

Two deployments: a stateless **router** (the OpenAI HTTP endpoints: auth, limits, validation,
routing) and **engine replicas**, each one :class:`~sleepagent.Engine` (one model on one device)
with its live sessions. PostgreSQL (any shared :class:`~sleepagent.storage.SnapshotStore`) holds
the snapshots every replica can resume from.

- **Affinity, with or without a session id**: Ray Serve's model multiplexing. Every request
  carries a multiplexed id and Ray routes it to a replica that has that id loaded, else to the
  replica with the fewest ids (which loads it: :meth:`EngineReplica._hold`), with Ray's own
  failover when a replica dies. The id of a named session (``X-Session-Id`` or
  ``session_id``) is ``tenant/id``. A plain OpenAI client names nothing and resends its history:
  its conversation's id is the keyed transcript digest (the one the replicas' session tables
  index, :func:`~sleepagent.runtime.sessions.transcript_digests`) of the history's opening, up to
  its first user message. Every request of a conversation starts the same way, so they all carry
  the same id from the first one on, and reach the replica that read it, whose table finds the
  session by its full transcript (reused, forked, or new). This is prefix-affinity routing as
  SGLang's cache-aware router and vLLM's production-stack prefix router do it (route requests
  that share a prefix to the worker that holds it), with Ray's multiplexing doing the routing
  and the load spreading (a new id goes to the replica holding the fewest), not code of ours.
  The opening is used rather than the digest up to the last reply, which changes every turn:
  that would need a new routing entry per reply, published through Ray's controller before the
  client's next request arrives (a race), while the opening's id is known at the first request
  and never changes. Conversations that open alike share a replica; the tables keep them apart.
  The digest key is made when the application is built and handed to the router and the
  replicas as a deployment argument: Ray keeps it in memory (its controller and GCS; with GCS
  fault tolerance on Redis, there too); sleepagent never writes it anywhere.
- **Migration**: each replica holds at most ``max_sessions`` live sessions; the least recently
  used is snapshotted and released, and any replica resumes any session from the store. A
  session has one owner at a time: a replica that resumes it claims it in the store, and a
  replica that finds its claim taken drops its copy and resumes the newer one.
- **Failover**: every reply is followed by a snapshot (with ``persist_window``, the window's ids
  too), so when a replica dies the next request of a named session resumes on another from the
  last reply: no committed turn is lost, and the response says ``resumed`` and how many window
  tokens were lost (zero with ``persist_window``). An unnamed conversation's transcript digests
  lived in the dead replica's memory only: the replica Ray routes it to next reads its history
  once (``new``) and it continues there.
- **Errors**: the router reads and validates requests with the single server's code
  (:func:`~sleepagent.serve.app.read_chat`) and installs its error handlers; a replica answers
  with the same table (:func:`~sleepagent.serve.app.api_error`). One bad request gets the same
  status and body from both.

``sleepagent serve --ray --replicas K --store postgresql+psycopg://...`` runs it; ``build_app``
returns the application for ``serve run`` or a Ray Serve config file.
"""

# (no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime)

import os
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from ..errors import ConfigError, SleepAgentError
from ..runtime.sessions import transcript_digests
from .app import (
    ServeConfig,
    _Server,
    _stream,
    api_error,
    authenticate,
    install_errors,
    parse_request,
    read_chat,
    turn_of,
)
from .protocol import ApiError, ChatRequest, chat_openapi, chat_response, new_id

__all__ = ["EngineReplica", "Router", "app_builder", "build_app", "conversation_route"]

SESSION_HEADER = "x-session-id"


def conversation_route(key: bytes, tenant: str, req: ChatRequest) -> str:
    """The multiplexed id a request routes on: ``tenant/id`` of a named session (a header or
    ``session_id``) is applied by the caller; this is the unnamed conversation's, the keyed digest
    of its messages up to its first user message (see the module docstring)."""
    turns = [turn_of(m) for m in req.messages]
    first_user = next((i for i, t in enumerate(turns) if t.role == "user"), len(turns) - 1)
    return f"{tenant}/~{transcript_digests(key, turns[: first_user + 1])[-1][:32]}"


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class EngineReplica:
    """One engine and its live sessions (see module docstring)."""

    def __init__(self, cfg: dict[str, Any], key: bytes) -> None:
        import torch

        torch.set_num_threads(int(os.environ.get("SLEEPAGENT_REPLICA_THREADS", "1")))
        # the replica's Ray id: a session's responses name it, and it names the replica's claims
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.server = _Server(ServeConfig(**cfg), claimant=self.replica, key=key)

    @serve.multiplexed(max_num_models_per_replica=4096)
    async def _hold(self, key: str) -> str:
        # Ray calls this when it routes an id here that this replica has not held: the session
        # is found (reused, resumed from the store, forked or new) when the request runs
        return key

    async def chat(self, body: bytes, tenant: str, session_id: str | None) -> dict[str, Any]:
        await self._hold(serve.get_multiplexed_model_id())
        try:
            _, job = await self._job(body, tenant, session_id)
            parts = await self.server.run(job)
        except ApiError as e:
            return {"error": e.body(), "status": e.status}
        except SleepAgentError as e:
            err = api_error(e)
            return {"error": err.body(), "status": err.status}
        body_out = chat_response(new_id(), self.server.model_name, parts["content"], parts["calls"], parts["finish"],
                                 parts["usage"], {**parts["session"], "replica": self.replica})
        return {"body": body_out, "status": 200}

    async def chat_stream(self, body: bytes, tenant: str, session_id: str | None):
        """First a head (``{"status", "headers"}``, or ``{"status", "error"}`` when the request
        cannot be served: the router answers it as a plain error, as the single server does),
        then the server-sent events."""
        await self._hold(serve.get_multiplexed_model_id())
        try:
            req, job = await self._job(body, tenant, session_id)
        except ApiError as e:
            yield {"status": e.status, "error": e.body()}
            return
        except SleepAgentError as e:
            err = api_error(e)
            yield {"status": err.status, "error": err.body()}
            return
        yield {"status": 200, "headers": {SESSION_HEADER: job.session.id, "x-session-status": job.status}}
        async for piece in _stream(self.server, job, req, new_id()):
            yield piece

    async def _job(self, body: bytes, tenant: str, session_id: str | None):
        req = parse_request(body)
        job = await self.server.prepare(req, tenant, session_id)
        # its id routes here too: a client that sends it back (X-Session-Id) reaches this replica
        await self._hold(f"{tenant}/{job.session.id}")
        return req, job

    async def stats(self) -> dict[str, Any]:
        return {"replica": self.replica, "sessions": sorted(f"{t}/{s}" for t, s in self.server.sessions.live)}


app = FastAPI(title="sleepagent (Ray Serve)")
install_errors(app)  # the single server's error handlers: one error contract


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Router:
    """The OpenAI endpoints: authenticates, bounds and validates each request, then hands it to
    the engine replica that holds its conversation (multiplexed id: see the module docstring)."""

    def __init__(self, engine, cfg: dict[str, Any], key: bytes) -> None:
        self.engine = engine
        self.cfg = ServeConfig(**cfg)
        _Server.check(self.cfg)
        self.model_name = self.cfg.model_name or str(self.cfg.model)
        self._key = key

    def _tenant(self, authorization: str | None) -> str:
        return authenticate(self.cfg, authorization)  # the same key check as a single server

    @app.get("/health")
    async def health(self):
        return {"status": "ok", "model": self.model_name}

    @app.get("/v1/models")
    async def models(self, request: Request):
        self._tenant(request.headers.get("authorization"))
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "sleepagent"}]}

    @app.post("/v1/chat/completions", openapi_extra=chat_openapi())  # as on a single server
    async def chat(self, request: Request):
        tenant, req, body = await read_chat(request, self.cfg)  # a bad request ends here, as on a single server
        session_id = request.headers.get(SESSION_HEADER) or req.session_id
        route = f"{tenant}/{session_id}" if session_id else conversation_route(self._key, tenant, req)
        handle = self.engine.options(multiplexed_model_id=route)
        if req.stream:
            gen = handle.options(stream=True).chat_stream.remote(body, tenant, session_id)
            head = await gen.__anext__()
            if head["status"] != 200:
                return JSONResponse(head["error"], status_code=head["status"])
            return StreamingResponse(gen, media_type="text/event-stream", headers=head["headers"])
        out = await handle.chat.remote(body, tenant, session_id)
        if out["status"] != 200:
            return JSONResponse(out["error"], status_code=out["status"])
        session = out["body"]["session"]
        return JSONResponse(out["body"], headers={SESSION_HEADER: session["id"], "x-session-status": session["status"]})


def build_app(cfg: ServeConfig, replicas: int = 2, num_cpus: float = 0.5):
    """The Ray Serve application: ``serve.run(build_app(cfg, replicas=K))``. ``cfg.store`` must be
    a store every replica reaches (PostgreSQL across machines; a SQLite file only on one)."""
    if not cfg.store:
        raise ConfigError("Ray Serve replicas share sessions through a store: give --store (PostgreSQL)", field="store")
    _Server.check(cfg)
    data = cfg.model_dump()
    if not isinstance(cfg.model, str):
        raise ConfigError("Ray Serve replicas load the model themselves: give a checkpoint name or path", field="model")
    key = os.urandom(32)  # the transcript digests' key, shared by the router and the replicas (module docstring)
    # @serve.deployment classes gain .options/.bind at runtime; the stubs do not say so
    engine = cast(Any, EngineReplica).options(num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus},
                                   # the replica bounds its own work; Ray must not route around a busy one
                                   max_ongoing_requests=cfg.max_in_flight).bind(data, key)
    return cast(Any, Router).bind(engine, data, key)


def app_builder(args: dict[str, Any]):
    """For ``serve run sleepagent.serve.ray_serve:app_builder model=docqa-small store=... replicas=2``
    (or a Ray Serve config file's ``import_path``): the arguments of :class:`ServeConfig`, plus
    ``replicas`` and ``num_cpus`` per replica."""
    args = dict(args)
    replicas = int(args.pop("replicas", 2))
    num_cpus = float(args.pop("num_cpus", 0.5))
    for flag in ("no_auth", "persist_window"):
        if isinstance(args.get(flag), str):
            args[flag] = args[flag].lower() in ("1", "true", "yes")
    return build_app(ServeConfig(**args), replicas=replicas, num_cpus=num_cpus)
