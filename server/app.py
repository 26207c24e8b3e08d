"""The composition root: builds the whole app from ``Settings``. Nothing else wires parts together."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import AsyncIterator

from starlette.applications import Starlette
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
from .http_api import HttpApi
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
                          retry_base=settings.job_retry_base, retry_max=settings.job_retry_max)
    api = HttpApi(hub)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.drain()
            await hub.close()

    routes = [
        Route("/healthz", api.healthz),
        Route("/readyz", api.readyz),
        Route("/metrics", api.metrics),
        Route("/api/canvases", api.list_canvases),
        Route("/api/canvases/{canvas_id}", api.get_canvas, methods=["GET", "HEAD"]),
        Route("/api/canvases/{canvas_id}", api.delete_canvas, methods=["DELETE"]),
        Route("/api/canvases/{canvas_id}/updates", api.post_update, methods=["POST"]),
        Route("/api/canvases/{canvas_id}/elements/{element_id}", api.patch_element, methods=["PATCH"]),
        Route("/api/canvases/{canvas_id}/versions", api.list_versions),
        Route("/api/canvases/{canvas_id}/versions/{number:int}", api.get_version),
        Route("/api/canvases/{canvas_id}/versions/{number:int}/restore", api.restore_version, methods=["POST"]),
        Route("/api/canvases/{canvas_id}/generations", api.create_generation, methods=["POST"]),
        Route("/api/canvases/{canvas_id}/generations", api.list_generations, methods=["GET"]),
        Route("/api/generations/{job_id}", api.get_generation),
        Route("/api/generations/{job_id}/cancel", api.cancel_generation, methods=["POST"]),
        Route("/assets/{asset_id}", api.get_asset, methods=["GET", "HEAD"]),
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
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.hub = hub
    app.state.settings = settings
    return app


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory canvashub.server.app:create_app_from_env``."""
    return create_app(Settings.from_env(os.environ))
