"""The composition root: builds the whole app from ``Settings``. Nothing else wires parts together."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from canvashub.storage.base import Store
from canvashub.storage.postgres import PostgresStore
from canvashub.storage.sqlite import SQLiteStore

from . import logs
from .auth import Authenticator
from .connection import WebSocketEndpoint
from .http_api import HttpApi, http_exception_response, route
from .generators import build_generators
from .hub import Hub
from .jobs import JobService
from .pubsub import MemoryPubSub, PubSub, RedisPubSub
from .settings import Settings


def make_store(settings: Settings) -> tuple[Store, str]:
    """PostgreSQL when ``database_url`` is set, else the embedded SQLite file under ``data_dir``."""
    if settings.database_url:
        return PostgresStore(settings.database_url, pool_size=settings.db_pool_size,
                             acquire_timeout=settings.db_acquire_timeout), "postgres"
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(str(data_dir / "canvashub.sqlite3")), "sqlite"


def make_authenticator(settings: Settings) -> Authenticator:
    """Tokens are required once a secret or public key is set; otherwise open mode, announced loudly."""
    try:
        auth = Authenticator(secret=settings.auth_secret, public_key=settings.auth_public_key,
                             action_roles={"delete": settings.role_to_delete, "restore": settings.role_to_restore,
                                           "generate": settings.role_to_generate}, leeway=5.0)
    except OSError as exc:
        raise ValueError(f"CANVASHUB_AUTH_PUBLIC_KEY: cannot read the key file: {exc}") from None
    if auth.open:
        logs.log(logging.WARNING, "open_mode",
                 message="NO ACCESS CONTROL: CANVASHUB_AUTH_SECRET is not set, so anyone who can reach this "
                         "server may read, edit and delete every canvas. Fine for development; set a secret "
                         "(see docs/security.md) before exposing it.")
    return auth


def make_pubsub(settings: Settings) -> PubSub:
    """Redis when ``redis_url`` is set; otherwise in-process (a single process has no peers)."""
    if settings.redis_url:
        return RedisPubSub(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryPubSub()


def create_app(settings: Settings, pubsub: PubSub | None = None) -> Starlette:
    """``pubsub``: tests pass in-process nodes sharing one ``MemoryBroker`` to run several hubs as a cluster."""
    logs.configure(settings.log_level)
    auth = make_authenticator(settings)
    store, backend = make_store(settings)
    hub = Hub(settings, store, backend, auth, pubsub if pubsub is not None else make_pubsub(settings))
    generators = build_generators(settings.pattern_step_delay, settings.generator_http_url or None,
                                  settings.generator_http_timeout)
    hub.jobs = JobService(hub, store, generators, workers=settings.job_workers,
                          lease_seconds=settings.job_lease_seconds, poll_interval=settings.job_poll_interval,
                          watch_interval=settings.job_watch_interval, max_attempts=settings.job_max_attempts,
                          retry_base=settings.job_retry_base, retry_max=settings.job_retry_max,
                          store_timeout=settings.store_timeout)
    api = HttpApi(hub)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.drain()
            await hub.close()

    api_routes = [
        route("/canvases", GET=api.list_canvases),
        route("/canvases/{canvas_id}", GET=api.get_canvas, DELETE=api.delete_canvas),
        route("/canvases/{canvas_id}/updates", POST=api.post_update),
        route("/canvases/{canvas_id}/elements/{element_id}", PATCH=api.patch_element),
        route("/canvases/{canvas_id}/versions", GET=api.list_versions),
        route("/canvases/{canvas_id}/versions/{number:int}", GET=api.get_version),
        route("/canvases/{canvas_id}/versions/{number:int}/restore", POST=api.restore_version),
        route("/canvases/{canvas_id}/generations", GET=api.list_generations, POST=api.create_generation),
        route("/generations/{job_id}", GET=api.get_generation),
        route("/generations/{job_id}/cancel", POST=api.cancel_generation),
    ]
    routes = [
        route("/healthz", GET=api.healthz),
        route("/readyz", GET=api.readyz),
        route("/metrics", GET=api.metrics),
        # Its own router: under /api, no match is a JSON 404 and a wrong method a JSON 405 listing the
        # path's methods, never a fall through to the demo's static files below.
        Mount("/api", routes=api_routes),
        route("/assets/{asset_id}", GET=api.get_asset),
        WebSocketRoute("/ws/{canvas_id}", WebSocketEndpoint(hub)),
    ]
    editor_page = Path(settings.demo_dir, "canvas.html")
    if editor_page.is_file():
        async def editor(request: Request) -> Response:
            return FileResponse(editor_page, headers={"Cache-Control": "no-cache"})

        routes.append(Route("/c/{canvas_id}", editor))
    if Path(settings.demo_dir, "index.html").is_file():
        routes.append(Mount("/", StaticFiles(directory=settings.demo_dir, html=True)))
    middleware = []
    cors_origins = hub.origins.cors_origins
    if cors_origins:  # only origins configured explicitly; same-origin pages need no CORS
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "If-None-Match"],
            expose_headers=["ETag", "Location", "Retry-After"], max_age=600,
        ))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={HTTPException: http_exception_response})
    app.state.hub = hub
    app.state.settings = settings
    return app


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory canvashub.server.app:create_app_from_env``."""
    return create_app(Settings.from_env(os.environ))
