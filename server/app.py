"""The composition root: builds the whole app from ``Settings``. Nothing else wires parts together."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from storage.memory import MemoryStore

from . import logs
from .connection import WebSocketEndpoint
from .http_api import HttpApi
from .hub import Hub
from .settings import Settings


def create_app(settings: Settings) -> Starlette:
    logs.configure(settings.log_level)
    hub = Hub(settings, MemoryStore())
    api = HttpApi(hub)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        yield
        await hub.drain()
        await hub.registry.unload_all()

    routes = [
        Route("/healthz", api.healthz),
        Route("/readyz", api.readyz),
        Route("/metrics", api.metrics),
        Route("/api/canvases/{canvas_id}", api.get_canvas),
        WebSocketRoute("/ws/{canvas_id}", WebSocketEndpoint(hub)),
    ]
    if Path(settings.demo_dir, "index.html").is_file():
        routes.append(Mount("/", StaticFiles(directory=settings.demo_dir, html=True)))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    app.state.settings = settings
    return app


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory server.app:create_app_from_env``."""
    return create_app(Settings.from_env(os.environ))
