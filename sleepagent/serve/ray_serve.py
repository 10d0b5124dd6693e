"""Scale-out on Ray Serve: many engines, sessions that move between them through the store.

Two deployments: a stateless **router** (the OpenAI HTTP endpoints: auth, limits, session ids)
and **engine replicas**, each one :class:`~sleepagent.Engine` (one model on one device) with its
live sessions. PostgreSQL (any shared :class:`~sleepagent.storage.SnapshotStore`) holds the
snapshots every replica can resume from.

- **Affinity**: Ray Serve's model multiplexing, keyed by ``tenant/session id``: Ray routes a
  request to the replica that holds that id, and otherwise to another one, which loads it. We
  use it rather than a custom request router because it is Ray's own mechanism for exactly this
  (requests for a key go where the key is loaded, with LRU unloading per replica), and its
  failover is Ray's: when a replica dies, its keys route elsewhere. The router gives every new
  conversation its id before the first request, so affinity holds from the first turn; clients
  send it back (``X-Session-Id``, returned with every response). A continuation without an id can
  only be recognised by the replica that read it, so across replicas it starts a new session.
- **Migration**: each replica holds at most ``max_sessions`` live sessions; the least recently
  used is snapshotted and released, and any replica resumes any session from the store. A
  session has one owner at a time: a replica that resumes it claims it in the store, and a
  replica that finds its claim taken drops its copy and resumes the newer one.
- **Failover**: every reply is followed by a snapshot (with ``persist_window``, the window's ids
  too), so when a replica dies the next request resumes on another from the last reply: no
  committed turn is lost, and the response says ``resumed`` and how many window tokens were lost
  (zero with ``persist_window``).

``sleepagent serve --ray --replicas K --store postgresql+psycopg://...`` runs it; ``build_app``
returns the application for ``serve run`` or a Ray Serve config file.
"""

# (no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime)

import json
import os
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve

from ..errors import SleepAgentError
from .app import ServeConfig, _Server, _stream, api_error, authenticate
from .protocol import ApiError, ChatRequest, chat_response, new_id

__all__ = ["build_app", "app_builder", "EngineReplica", "Router"]

SESSION_HEADER = "x-session-id"


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class EngineReplica:
    """One engine and its live sessions (see module docstring)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(int(os.environ.get("SLEEPAGENT_REPLICA_THREADS", "1")))
        # the replica's Ray id: a session's responses name it, and it names the replica's claims
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.server = _Server(ServeConfig(**cfg), claimant=self.replica, checkpoint_turns=True)

    @serve.multiplexed(max_num_models_per_replica=1024)
    async def _hold(self, key: str) -> str:
        # Ray calls this when it routes a session here that this replica has not held: the
        # session is resumed from the store when the request runs (SessionRegistry.find)
        return key

    async def chat(self, body: bytes, tenant: str, session_id: str, created: bool) -> dict[str, Any]:
        await self._hold(serve.get_multiplexed_model_id())
        try:
            _, job = await self._job(body, tenant, session_id, created)
            parts = await self.server.run(job)
        except ApiError as e:
            return {"error": e.body(), "status": e.status}
        except SleepAgentError as e:
            err = api_error(e)
            return {"error": err.body(), "status": err.status}
        body_out = chat_response(new_id(), self.server.model_name, parts["content"], parts["calls"], parts["finish"],
                                 parts["usage"], {**parts["session"], "replica": self.replica})
        return {"body": body_out, "status": 200}

    async def chat_stream(self, body: bytes, tenant: str, session_id: str, created: bool):
        await self._hold(serve.get_multiplexed_model_id())
        try:
            req, job = await self._job(body, tenant, session_id, created)
        except ApiError as e:
            yield f"data: {json.dumps(e.body())}\n\n".encode()
            return
        async for piece in _stream(self.server, job, req, new_id()):
            yield piece

    async def _job(self, body: bytes, tenant: str, session_id: str, created: bool):
        try:
            req = ChatRequest.model_validate_json(body)
        except ValidationError as e:
            err = e.errors()[0]
            raise ApiError(400, f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
        return req, await self.server.prepare(req, tenant, session_id, create=created)

    async def stats(self) -> dict[str, Any]:
        return {"replica": self.replica, "sessions": sorted(f"{t}/{s}" for t, s in self.server.sessions.live)}


app = FastAPI(title="sleepagent (Ray Serve)")


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Router:
    """The OpenAI endpoints: authenticates, bounds and names each request, then hands it to the
    engine replica that holds its session (multiplexed id ``tenant/session``)."""

    def __init__(self, engine, cfg: dict[str, Any]) -> None:
        self.engine = engine
        self.cfg = ServeConfig(**cfg)
        _Server.check(self.cfg)
        self.model_name = self.cfg.model_name or str(self.cfg.model)

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

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        try:
            tenant = self._tenant(request.headers.get("authorization"))
            body = await request.body()
            if len(body) > self.cfg.max_request_bytes:
                raise ApiError(413, f"the request is over {self.cfg.max_request_bytes} bytes", code="request_too_large")
            try:
                peek = json.loads(body)
            except json.JSONDecodeError:
                raise ApiError(400, "the body is not JSON") from None
            if not isinstance(peek, dict):
                raise ApiError(400, "the body must be a JSON object")
            session_id = request.headers.get(SESSION_HEADER) or peek.get("session_id")
            created = session_id is None
            if created:  # a new conversation: named now, so that its replica is known from turn one
                session_id = uuid.uuid4().hex[:16]
        except ApiError as e:
            return JSONResponse(e.body(), status_code=e.status)
        handle = self.engine.options(multiplexed_model_id=f"{tenant}/{session_id}")
        headers = {SESSION_HEADER: session_id}
        if peek.get("stream"):
            gen = handle.options(stream=True).chat_stream.remote(body, tenant, session_id, created)
            return StreamingResponse(gen, media_type="text/event-stream", headers=headers)
        out = await handle.chat.remote(body, tenant, session_id, created)
        if out["status"] != 200:
            return JSONResponse(out["error"], status_code=out["status"])
        headers["x-session-status"] = out["body"]["session"]["status"]
        return JSONResponse(out["body"], headers=headers)


def build_app(cfg: ServeConfig, replicas: int = 2, num_cpus: float = 0.5):
    """The Ray Serve application: ``serve.run(build_app(cfg, replicas=K))``. ``cfg.store`` must be
    a store every replica reaches (PostgreSQL across machines; a SQLite file only on one)."""
    if not cfg.store:
        raise SleepAgentError("Ray Serve replicas share sessions through a store: give --store (PostgreSQL)")
    _Server.check(cfg)
    data = cfg.model_dump()
    if not isinstance(cfg.model, str):
        raise SleepAgentError("Ray Serve replicas load the model themselves: give a checkpoint name or path")
    engine = EngineReplica.options(num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus}).bind(data)
    return Router.bind(engine, data)


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
