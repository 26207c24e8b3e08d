"""The admin API under ``/api``: live canvases and sessions across the cluster, disconnecting, locking.

Every endpoint needs the ``admin`` action (a token with role ``admin`` and ``canvas: "*"``; anyone in open
mode). Cluster-wide answers come from server/directory.py: each process is asked and answers from its
own rooms at that moment (``missing_nodes`` names the processes that did not answer in time). Locks are
stored first (so they survive restarts and reach processes that load the canvas later), then applied
here and announced to the other processes (server/cluster.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response

from canvashub.storage.base import CanvasStore

from .auth import Authenticator
from .canvas_ids import is_valid_canvas_id
from .directory import Directory, Gathered, parse_session_cursor
from .errors import InvalidRequest, NotFound, StorageTimeout, UnprocessableBody
from .extensions import Hooks
from .http_api import handler, json_response, page_args, read_body
from .limits import OriginPolicy
from .schemas import DISCONNECT_REQUEST, SchemaViolation, check
from .settings import Settings


class Locks(Protocol):
    """Tells the canvas's rooms, here and on the other processes, that its lock changed (the cluster)."""

    def lock_changed(self, canvas_id: str, locked: bool) -> None: ...


def cluster_part(gathered: Gathered) -> dict[str, Any]:
    return {"nodes": sorted(gathered.answers), "missing_nodes": gathered.missing}


class AdminApi:
    """``GET /api/rooms``, ``GET /api/canvases/{id}/sessions``, ``POST /api/canvases/{id}/disconnect``,
    ``PUT`` and ``DELETE /api/canvases/{id}/lock``."""

    def __init__(
        self,
        directory: Directory,
        locks: Locks,
        store: CanvasStore,
        auth: Authenticator,
        origins: OriginPolicy,
        settings: Settings,
        hooks: Hooks,
    ) -> None:
        self.hooks = hooks  # the ``handler`` decorator asks the extensions' authenticate first
        self.directory = directory
        self.locks = locks
        self.store = store
        self.auth = auth  # ... then authenticates and checks the Origin with these two
        self.origins = origins
        self.settings = settings

    async def _bounded(self, call: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(call, self.settings.store_timeout)
        except TimeoutError:
            raise StorageTimeout("storage did not answer in time") from None

    @handler("admin")
    async def list_rooms(self, request: Request) -> Response:
        limit, cursor = page_args(request)
        if cursor is not None and not is_valid_canvas_id(cursor):
            raise InvalidRequest("cursor must be a canvas id")
        rooms, more, gathered = await self.directory.rooms_page(cursor, limit)
        return json_response(
            {"rooms": rooms, "next_cursor": rooms[-1]["id"] if more else None, **cluster_part(gathered)}
        )

    @handler("admin")
    async def list_sessions(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        limit, cursor = page_args(request)
        after = None
        if cursor is not None:
            after = parse_session_cursor(cursor)
            if after is None:
                raise InvalidRequest("cursor must be a session id")
        sessions, more, gathered = await self.directory.sessions_page(canvas_id, after, limit)
        return json_response(
            {
                "sessions": sessions,
                "next_cursor": sessions[-1]["id"] if more else None,
                **cluster_part(gathered),
            }
        )

    @handler("admin")
    async def disconnect(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        raw = await read_body(request, self.settings.max_json_body_bytes)
        body: Any = {}
        if raw.strip():  # optional: none disconnects everyone (nothing of it is stored: a NUL is harmless)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"body is not JSON: {exc}") from None
            try:
                check(DISCONNECT_REQUEST, body)
            except SchemaViolation as exc:
                raise UnprocessableBody(str(exc), errors=exc.errors) from None
        user_id = body.get("user_id")
        disconnected, gathered = await self.directory.disconnect(canvas_id, user_id)
        return json_response(
            {"id": canvas_id, "user_id": user_id, "disconnected": disconnected, **cluster_part(gathered)}
        )

    @handler("admin")
    async def lock_canvas(self, request: Request) -> Response:
        return await self._set_lock(request, True)

    @handler("admin")
    async def unlock_canvas(self, request: Request) -> Response:
        return await self._set_lock(request, False)

    async def _set_lock(self, request: Request, locked: bool) -> Response:
        canvas_id = request.path_params["canvas_id"]
        if not await self._bounded(self.store.set_canvas_lock(canvas_id, locked)):
            raise NotFound(f"canvas {canvas_id!r} does not exist")
        self.locks.lock_changed(canvas_id, locked)  # after the commit: a later load reads it from storage
        return json_response({"id": canvas_id, "locked": locked})
