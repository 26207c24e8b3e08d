"""HTTP endpoints: health, readiness and canvas export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from pycrdt import Map
from starlette.requests import Request
from starlette.responses import Response

from .canvas_ids import CANVAS_ID_RULE, is_valid_canvas_id

if TYPE_CHECKING:
    from .hub import Hub


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, error_type: str, message: str) -> Response:
    """Every API error has this shape: ``{"error": {"type", "message"}}``."""
    return json_response({"error": {"type": error_type, "message": message}}, status)


def document_json(doc) -> dict[str, Any]:
    """The ``elements`` root map as plain JSON (nested Y.Maps become objects)."""
    elements = doc.get("elements", type=Map)
    return {"elements": elements.to_py() or {}}


class HttpApi:
    def __init__(self, hub: "Hub") -> None:
        self.hub = hub

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.hub.shutting_down:
            return json_response({"status": "shutting_down", **self.hub.stats()}, 503)
        return json_response({"status": "ready", **self.hub.stats()})

    async def metrics(self, request: Request) -> Response:
        body = self.hub.metrics.render({k: float(v) for k, v in self.hub.stats().items()})
        return Response(body, media_type="text/plain; version=0.0.4")

    async def get_canvas(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        if not is_valid_canvas_id(canvas_id):
            return error_response(400, "invalid", f"canvas id must be {CANVAS_ID_RULE}")
        room = self.hub.registry.rooms.get(canvas_id)
        if room is not None:
            doc = room.document.doc
        else:
            doc = await self.hub.load_detached(canvas_id)
            if doc is None:
                return error_response(404, "not_found", f"canvas {canvas_id!r} does not exist")
        try:
            body = document_json(doc)
        except Exception as exc:  # e.g. a client made "elements" something other than a map
            return error_response(409, "conflict", f"canvas cannot be exported as JSON: {exc}")
        return json_response({"id": canvas_id, **body})
