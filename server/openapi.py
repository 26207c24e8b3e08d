"""The HTTP API as one table: the router is built from it and ``/openapi.json`` is rendered from it.

Each ``Operation`` names its handler (a method of ``HttpApi`` or ``OperationsApi``), so a route
without a description or a description without a route cannot exist. Request bodies are the very
schema objects the handlers validate with (server/schemas.py); response bodies are described here
and checked against live servers by schemathesis in the test suite (tests/test_openapi.py).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from canvashub.storage.base import WEBHOOK_DELIVERY_STATUSES

from .canvas_ids import CANVAS_ID_PATTERN, CANVAS_ID_RULE
from .errors import TABLE, NotFound, answer, error_body
from .schemas import DISCONNECT_REQUEST, ELEMENT_PATCH, GENERATION_REQUEST
from .settings import WEBHOOK_NAME

JSON = "application/json"
BINARY = "application/octet-stream"

ERROR_TYPES = sorted({row.error_type for row in TABLE.values()})

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string", "enum": ERROR_TYPES},
                "message": {"type": "string"},
                "errors": {
                    "type": "array",
                    "description": "each problem of a body of the wrong shape (422)",
                    "items": {
                        "type": "object",
                        "required": ["path", "message"],
                        "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        }
    },
}
TIMESTAMP = {"type": "string", "format": "date-time"}
OPTIONAL_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
ELEMENTS = {
    "type": "object",
    "description": "the canvas's ``elements`` map: element id -> its fields",
    "additionalProperties": {"type": "object"},
}
CANVAS_SUMMARY = {
    "type": "object",
    "required": ["id", "version", "updated_at"],
    "properties": {"id": {"type": "string"}, "version": {"type": "integer"}, "updated_at": OPTIONAL_TIMESTAMP},
}
CANVAS = {
    "type": "object",
    "required": ["id", "version", "elements"],
    "properties": {
        "id": {"type": "string"},
        "version": {"type": "integer", "description": "the snapshot version the state builds on"},
        "updated_at": OPTIONAL_TIMESTAMP,
        "elements": ELEMENTS,
    },
}
VERSION_SUMMARY = {
    "type": "object",
    "required": ["number", "created_at", "size"],
    "properties": {"number": {"type": "integer"}, "created_at": TIMESTAMP, "size": {"type": "integer"}},
}
VERSION = {
    "type": "object",
    "required": ["id", "number", "created_at", "size", "elements"],
    "properties": {**VERSION_SUMMARY["properties"], "id": {"type": "string"}, "elements": ELEMENTS},  # type: ignore[dict-item]
}
WRITE_RESULT = {
    "type": "object",
    "required": ["id", "changed", "durable", "etag"],
    "properties": {
        "id": {"type": "string"},
        "changed": {"type": "boolean", "description": "false: the change was already in the canvas"},
        "durable": {"type": "boolean", "description": "committed to the store (202: not yet, but queued)"},
        "seq": {"type": "integer", "description": "the update log sequence number of the commit"},
        "etag": {"type": "string"},
    },
}
JOB = {
    "type": "object",
    "required": ["id", "canvas_id", "generator", "status", "progress", "attempts", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "canvas_id": {"type": "string"},
        "generator": {"type": "string"},
        "prompt": {"type": ["string", "null"]},
        "params": {"type": ["object", "null"]},
        "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "attempts": {"type": "integer"},
        "max_attempts": {"type": "integer"},
        "error": {
            "type": ["object", "null"],
            "properties": {"type": {"type": "string"}, "message": {"type": ["string", "null"]}},
        },
        "result": {},
        "cancel_requested": {"type": "boolean"},
        "created_at": TIMESTAMP,
        "updated_at": OPTIONAL_TIMESTAMP,
        "started_at": OPTIONAL_TIMESTAMP,
        "finished_at": OPTIONAL_TIMESTAMP,
    },
}
DELIVERY = {
    "type": "object",
    "required": ["id", "endpoint", "webhook_id", "event_type", "status", "attempts", "created_at"],
    "properties": {
        "id": {"type": "integer"},
        "endpoint": {"type": "string"},
        "webhook_id": {"type": "string", "description": "the event's id, sent as the webhook-id header"},
        "event_type": {"type": "string"},
        "status": {"type": "string", "enum": list(WEBHOOK_DELIVERY_STATUSES)},
        "attempts": {"type": "integer"},
        "next_attempt_at": OPTIONAL_TIMESTAMP,
        "last_status_code": {"type": ["integer", "null"]},
        "last_error": {"type": ["string", "null"]},
        "created_at": TIMESTAMP,
        "updated_at": OPTIONAL_TIMESTAMP,
        "delivered_at": OPTIONAL_TIMESTAMP,
        "payload": {"type": "object", "description": "the message body as sent"},
    },
}
NODES = {
    "nodes": {"type": "array", "items": {"type": "string"}, "description": "the processes (node ids) that answered"},
    "missing_nodes": {
        "type": "array",
        "items": {"type": "string"},
        "description": "processes heard from in the last 15 s that did not answer within 1 s: the answer lacks "
        "their part",
    },
}
USER = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
}
ROOM = {
    "type": "object",
    "required": ["id", "connections", "users", "users_truncated", "backlog", "locked", "nodes"],
    "properties": {
        "id": {"type": "string"},
        "connections": {"type": "integer", "description": "sockets on the canvas, all processes together"},
        "users": {"type": "array", "items": USER, "description": "authenticated users on it (at most 20)"},
        "users_truncated": {"type": "boolean"},
        "backlog": {"type": "integer", "description": "updates of the canvas not yet durable"},
        "locked": {"type": "boolean"},
        "nodes": {
            "type": "array",
            "description": "the processes holding the canvas, each with its part",
            "items": {
                "type": "object",
                "required": ["node", "connections", "backlog"],
                "properties": {
                    "node": {"type": "string"},
                    "connections": {"type": "integer"},
                    "backlog": {"type": "integer"},
                },
            },
        },
    },
}
SESSION = {
    "type": "object",
    "required": ["id", "node", "user_id", "name", "role", "protocol", "ip", "connected_at", "may_write"],
    "properties": {
        "id": {"type": "string", "description": "{node}-{number}: unique in the cluster while connected"},
        "node": {"type": "string"},
        "user_id": {"type": ["string", "null"], "description": "the token's sub (null in open mode)"},
        "name": {"type": ["string", "null"]},
        "role": {"type": ["string", "null"], "enum": ["viewer", "editor", "owner", "admin", None]},
        "protocol": {"type": "string"},
        "ip": {"type": ["string", "null"]},
        "connected_at": OPTIONAL_TIMESTAMP,
        "may_write": {"type": "boolean", "description": "its role may edit (a lock refuses its writes all the same)"},
    },
}
LOCK_STATE = {
    "type": "object",
    "required": ["id", "locked"],
    "properties": {"id": {"type": "string"}, "locked": {"type": "boolean"}},
}
DISCONNECTED = {
    "type": "object",
    "required": ["id", "user_id", "disconnected", "nodes", "missing_nodes"],
    "properties": {
        "id": {"type": "string"},
        "user_id": {"type": ["string", "null"]},
        "disconnected": {"type": "integer", "description": "sockets closed (code 4403), all processes together"},
        **NODES,
    },
}


def page(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [key, "next_cursor"],
        "properties": {
            key: {"type": "array", "items": item},
            "next_cursor": {"type": ["string", "null"], "description": "pass as ?cursor= for the next page"},
        },
    }


# -- parameters ------------------------------------------------------------------------------------
def path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


CANVAS_ID = path_param(
    "canvas_id", {"type": "string", "pattern": f"^{CANVAS_ID_PATTERN.pattern}$"}, f"the canvas id: {CANVAS_ID_RULE}"
)
ELEMENT_ID = path_param("element_id", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "the element id")
MAX_VERSION = 2**31 - 2  # versions are 32-bit integers in storage (the handler also looks at number + 1)
VERSION_NUMBER = path_param("number", {"type": "integer", "minimum": 1, "maximum": MAX_VERSION}, "a version number")
JOB_ID = path_param("job_id", {"type": "string", "pattern": "^[0-9a-f]{1,64}$"}, "a generation (job) id")
ASSET_ID = path_param("asset_id", {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "a content-addressed asset id")
LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
    "description": "page size",
}


def paging(cursor: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return (LIMIT, {"name": "cursor", "in": "query", "schema": cursor, "description": "next_cursor of the last page"})


CANVAS_PAGING = paging({"type": "string", "pattern": f"^{CANVAS_ID_PATTERN.pattern}$"})
VERSION_PAGING = paging({"type": "string", "pattern": "^[0-9]{1,9}$"})
JOB_PAGING = paging({"type": "string", "pattern": "^[0-9a-f]{1,64}$"})
ACCEPT = {
    "name": "Accept",
    "in": "header",
    # Any Accept header is negotiated (RFC 9110); these are the ones that select something (others: 406).
    "schema": {"type": "string", "enum": [JSON, BINARY, "*/*", f"{BINARY}, {JSON};q=0.5"]},
    "description": f"{JSON} (default) or {BINARY} (the Yjs v1 update of the whole state)",
}
IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "schema": {"type": "string"},
    "description": "write only if the canvas still has this ETag (412 otherwise)",
}
IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}


# -- responses -------------------------------------------------------------------------------------
def json_body(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


ETAG_HEADER = {"ETag": {"schema": {"type": "string"}}}
ERROR_MEANINGS = {
    400: "invalid input (a bad id, query parameter or body)",
    401: "no valid access token",
    403: "the token, the Origin or a limit does not allow this",
    404: "no such resource",
    406: "the Accept header allows nothing this resource offers",
    409: "the request conflicts with the canvas's state",
    412: "If-Match does not match the current ETag",
    423: "an administrator locked the canvas read-only",
    413: "the body or the canvas would be too large",
    422: "JSON of the wrong shape (``errors`` lists each problem)",
    503: "unavailable: shutting down, storage backlog full or storage unreachable (Retry-After)",
    504: "storage did not answer in time",
}


def errors(*statuses: int) -> dict[int, dict[str, Any]]:
    return {status: json_body(ERROR, ERROR_MEANINGS[status]) for status in statuses}


READ_ERRORS = errors(400, 401, 403, 404, 503, 504)
WRITE_ERRORS = errors(400, 401, 403, 404, 409, 412, 413, 423, 503, 504)


@dataclasses.dataclass(frozen=True)
class Operation:
    """One method on one path. ``owner.handler`` serves it; ``path`` is the router's (``{n:int}``)."""

    method: str
    path: str
    owner: str  # "api" (HttpApi) or "admin" (AdminApi), both mounted at /api; "operations" (OperationsApi) or "docs"
    handler: str
    summary: str
    tag: str
    responses: dict[int, dict[str, Any]]
    parameters: tuple[dict[str, Any], ...] = ()
    request: dict[str, Any] | None = None  # the requestBody object
    action: str | None = None  # the permission the caller's token needs (None: no token)

    @property
    def public_path(self) -> str:
        prefix = "/api" if self.owner in ("api", "admin") else ""
        return prefix + re.sub(r"\{(\w+):\w+\}", r"{\1}", self.path)


def _op(
    method: str,
    path: str,
    handler: str,
    summary: str,
    tag: str,
    responses: dict[int, dict[str, Any]],
    *,
    owner: str = "api",
    parameters: tuple[dict[str, Any], ...] = (),
    request: dict[str, Any] | None = None,
    action: str | None = None,
) -> Operation:
    return Operation(method, path, owner, handler, summary, tag, responses, parameters, request, action)


OPERATIONS: tuple[Operation, ...] = (
    _op(
        "GET",
        "/canvases",
        "list_canvases",
        "List canvases (ordered by id)",
        "canvases",
        {200: json_body(page("canvases", CANVAS_SUMMARY), "one page of canvases"), **READ_ERRORS},
        parameters=CANVAS_PAGING,
        action="read",
    ),
    _op(
        "GET",
        "/canvases/{canvas_id}",
        "get_canvas",
        "Export a canvas as JSON or as one binary Yjs update",
        "canvases",
        {
            200: {
                "description": "the canvas",
                "headers": ETAG_HEADER,
                "content": {JSON: {"schema": CANVAS}, BINARY: {"schema": {"type": "string", "format": "binary"}}},
            },
            304: {"description": "If-None-Match matched", "headers": ETAG_HEADER},
            **errors(400, 401, 403, 404, 406, 409, 503, 504),
        },
        parameters=(CANVAS_ID, ACCEPT, IF_NONE_MATCH),
        action="read",
    ),
    _op(
        "DELETE",
        "/canvases/{canvas_id}",
        "delete_canvas",
        "Delete a canvas, its history and its generations; its sockets close with 4404",
        "canvases",
        {204: {"description": "deleted"}, **errors(400, 401, 403, 404, 503, 504)},
        parameters=(CANVAS_ID,),
        action="delete",
    ),
    _op(
        "POST",
        "/canvases/{canvas_id}/updates",
        "post_update",
        "Apply a binary Yjs (v1) update, as a client would; answers once it is durable",
        "canvases",
        {
            200: json_body(WRITE_RESULT, "applied and durable (or already in the canvas)", ETAG_HEADER),
            202: json_body(WRITE_RESULT, "applied and relayed, not yet durable", ETAG_HEADER),
            **WRITE_ERRORS,
        },
        parameters=(CANVAS_ID, IF_MATCH),
        request={
            "required": True,
            "content": {BINARY: {"schema": {"type": "string", "format": "binary"}}},
        },
        action="edit",
    ),
    _op(
        "PATCH",
        "/canvases/{canvas_id}/elements/{element_id}",
        "patch_element",
        "Set fields of one element (null deletes a field); creates the element if needed",
        "canvases",
        {
            200: json_body(WRITE_RESULT, "applied and durable (or nothing changed)", ETAG_HEADER),
            202: json_body(WRITE_RESULT, "applied and relayed, not yet durable", ETAG_HEADER),
            **WRITE_ERRORS,
            **errors(422),
        },
        parameters=(CANVAS_ID, ELEMENT_ID, IF_MATCH),
        request={"required": True, "content": {JSON: {"schema": ELEMENT_PATCH}}},
        action="edit",
    ),
    _op(
        "GET",
        "/canvases/{canvas_id}/versions",
        "list_versions",
        "List a canvas's snapshot versions, newest first",
        "history",
        {200: json_body(page("versions", VERSION_SUMMARY), "one page of versions"), **READ_ERRORS},
        parameters=(CANVAS_ID, *VERSION_PAGING),
        action="read",
    ),
    _op(
        "GET",
        "/canvases/{canvas_id}/versions/{number:int}",
        "get_version",
        "Export one version as JSON or as its binary snapshot",
        "history",
        {
            200: {
                "description": "the version",
                "content": {JSON: {"schema": VERSION}, BINARY: {"schema": {"type": "string", "format": "binary"}}},
            },
            **errors(400, 401, 403, 404, 406, 409, 503, 504),
        },
        parameters=(CANVAS_ID, VERSION_NUMBER, ACCEPT),
        action="read",
    ),
    _op(
        "POST",
        "/canvases/{canvas_id}/versions/{number:int}/restore",
        "restore_version",
        "Make the live canvas equal to a version (as one new change everyone receives)",
        "history",
        {
            200: json_body(WRITE_RESULT, "restored and durable (or nothing changed)", ETAG_HEADER),
            202: json_body(WRITE_RESULT, "restored, not yet durable", ETAG_HEADER),
            **WRITE_ERRORS,
        },
        parameters=(CANVAS_ID, VERSION_NUMBER, IF_MATCH),
        action="restore",
    ),
    _op(
        "GET",
        "/canvases/{canvas_id}/generations",
        "list_generations",
        "List a canvas's generations, newest first",
        "generations",
        {200: json_body(page("generations", JOB), "one page of generations"), **READ_ERRORS},
        parameters=(CANVAS_ID, *JOB_PAGING),
        action="read",
    ),
    _op(
        "POST",
        "/canvases/{canvas_id}/generations",
        "create_generation",
        "Start a generation job (idempotent with idempotency_key)",
        "generations",
        {
            202: json_body(
                {
                    "type": "object",
                    "required": ["job", "created"],
                    "properties": {"job": JOB, "created": {"type": "boolean"}},
                },
                "accepted: the job (created false: an earlier request with the same idempotency key)",
                {"Location": {"schema": {"type": "string"}}},
            ),
            **errors(400, 401, 403, 404, 409, 413, 422, 503, 504),
        },
        parameters=(CANVAS_ID,),
        request={"required": True, "content": {JSON: {"schema": GENERATION_REQUEST}}},
        action="generate",
    ),
    _op(
        "GET",
        "/generations/{job_id}",
        "get_generation",
        "One generation's state",
        "generations",
        {200: json_body(JOB, "the generation"), **READ_ERRORS},
        parameters=(JOB_ID,),
        action="read",
    ),
    _op(
        "POST",
        "/generations/{job_id}/cancel",
        "cancel_generation",
        "Ask a generation to stop (a finished one is answered as it is)",
        "generations",
        {200: json_body(JOB, "the generation after the request"), **errors(400, 401, 403, 404, 409, 503, 504)},
        parameters=(JOB_ID,),
        action="generate",
    ),
    _op(
        "GET",
        "/webhooks/deliveries",
        "list_webhook_deliveries",
        "Webhook deliveries, newest first (admin)",
        "webhooks",
        {200: json_body(page("deliveries", DELIVERY), "one page of deliveries"), **errors(400, 401, 403, 503, 504)},
        parameters=(
            *paging({"type": "string", "pattern": "^[0-9]{1,18}$"}),
            {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(WEBHOOK_DELIVERY_STATUSES)}},
            {"name": "endpoint", "in": "query", "schema": {"type": "string", "pattern": f"^{WEBHOOK_NAME.pattern}$"}},
        ),
        action="admin",
    ),
    _op(
        "GET",
        "/rooms",
        "list_rooms",
        "Live canvases across the cluster, with connections, users, storage backlog and lock (admin)",
        "admin",
        {
            200: json_body(
                {
                    **page("rooms", ROOM),
                    "required": ["rooms", "next_cursor", "nodes", "missing_nodes"],
                    "properties": {**page("rooms", ROOM)["properties"], **NODES},
                },
                "one page of live canvases, by id, as every process answered just now",
            ),
            **errors(400, 401, 403),
        },
        parameters=CANVAS_PAGING,
        owner="admin",
        action="admin",
    ),
    _op(
        "GET",
        "/canvases/{canvas_id}/sessions",
        "list_sessions",
        "Who is on a canvas, on every process (admin)",
        "admin",
        {
            200: json_body(
                {
                    **page("sessions", SESSION),
                    "required": ["sessions", "next_cursor", "nodes", "missing_nodes"],
                    "properties": {**page("sessions", SESSION)["properties"], **NODES},
                },
                "one page of sessions, by session id (none if the canvas is not live anywhere)",
            ),
            **errors(400, 401, 403),
        },
        parameters=(CANVAS_ID, *paging({"type": "string", "pattern": "^[!-~]{1,100}-[0-9]{1,18}$"})),
        owner="admin",
        action="admin",
    ),
    _op(
        "POST",
        "/canvases/{canvas_id}/disconnect",
        "disconnect",
        "Disconnect everyone on a canvas, or one user, on every process: their sockets close with 4403 (admin)",
        "admin",
        {200: json_body(DISCONNECTED, "the sockets closed"), **errors(400, 401, 403, 413, 422)},
        parameters=(CANVAS_ID,),
        request={"required": False, "content": {JSON: {"schema": DISCONNECT_REQUEST}}},
        owner="admin",
        action="admin",
    ),
    _op(
        "PUT",
        "/canvases/{canvas_id}/lock",
        "lock_canvas",
        "Lock a canvas read-only on every process, until unlocked (survives restarts) (admin)",
        "admin",
        {200: json_body(LOCK_STATE, "locked"), **errors(400, 401, 403, 404, 503, 504)},
        parameters=(CANVAS_ID,),
        owner="admin",
        action="admin",
    ),
    _op(
        "DELETE",
        "/canvases/{canvas_id}/lock",
        "unlock_canvas",
        "Unlock a canvas (admin)",
        "admin",
        {200: json_body(LOCK_STATE, "unlocked"), **errors(400, 401, 403, 404, 503, 504)},
        parameters=(CANVAS_ID,),
        owner="admin",
        action="admin",
    ),
    _op(
        "GET",
        "/assets/{asset_id}",
        "get_asset",
        "A generated asset (content-addressed, immutable)",
        "generations",
        {
            200: {"description": "the asset", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
            304: {"description": "If-None-Match matched"},
            **errors(404, 503, 504),
        },
        owner="assets",
        parameters=(ASSET_ID, IF_NONE_MATCH),
    ),
    _op(
        "GET",
        "/healthz",
        "healthz",
        "Liveness: the process answers",
        "operations",
        {
            200: json_body(
                {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}, "alive"
            )
        },
        owner="operations",
    ),
    _op(
        "GET",
        "/readyz",
        "readyz",
        "Readiness: connections, storage health and backlog, pub/sub",
        "operations",
        {
            200: json_body(
                {"type": "object", "required": ["status", "storage"], "properties": {"status": {"const": "ready"}}},
                "ready",
            ),
            503: json_body(
                {
                    "type": "object",
                    "required": ["status", "storage"],
                    "properties": {"status": {"enum": ["shutting_down", "backlog_full"]}},
                },
                "not ready: take the node out of rotation",
            ),
        },
        owner="operations",
    ),
    _op(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics (text exposition format)",
        "operations",
        {200: {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        owner="operations",
    ),
    _op(
        "GET",
        "/openapi.json",
        "openapi_json",
        "This document",
        "operations",
        {200: json_body({"type": "object", "required": ["openapi", "paths"]}, "the OpenAPI 3.1 document")},
        owner="docs",
    ),
    _op(
        "GET",
        "/docs",
        "docs_page",
        "This document, rendered (works offline: the renderer is served by canvashub)",
        "operations",
        {
            200: {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}},
            **errors(404),
        },
        owner="docs",
    ),
)


def document(version: str, extra: tuple[Operation, ...] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``OPERATIONS`` (+ ``extra``)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS + extra:
        operation: dict[str, Any] = {
            "operationId": op.handler,
            "summary": op.summary,
            "tags": [op.tag],
            "responses": {
                str(status): {
                    **spec,
                    **(
                        {"headers": {**spec.get("headers", {}), "Retry-After": {"schema": {"type": "string"}}}}
                        if status == 503
                        else {}
                    ),
                }
                for status, spec in sorted(op.responses.items())
            },
        }
        if op.parameters:
            operation["parameters"] = list(op.parameters)
        if op.request is not None:
            operation["requestBody"] = op.request
        if op.action is not None:
            # Open development mode (no secret or key configured) needs no token; otherwise a bearer JWT.
            operation["security"] = [{}, {"bearer": []}]
            operation["description"] = f"Needs a token whose role may `{op.action}` on the canvas."
        paths.setdefault(op.public_path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "canvashub",
            "version": version,
            "description": "Realtime collaboration server for Yjs canvases: the HTTP API. The realtime "
            "protocol (WebSocket, y-websocket) is described in docs/protocol.md.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Error": ERROR, "Canvas": CANVAS, "Job": JOB, "WriteResult": WRITE_RESULT},
        },
    }


def handlers_by_path(owner: str, target: object) -> dict[str, dict[str, Callable[..., Any]]]:
    """``{router path: {METHOD: bound handler}}`` of the operations ``owner`` serves."""
    found: dict[str, dict[str, Callable[..., Any]]] = {}
    for op in OPERATIONS:
        if op.owner == owner:
            found.setdefault(op.path, {})[op.method] = getattr(target, op.handler)
    return found


DOCS_PAGE = "api-docs.html"  # built into the demo's dist/ with its renderer (client-demo/build.mjs)


class ApiDocs:
    """``/openapi.json`` and ``/docs``."""

    def __init__(self, spec: dict[str, Any], demo_dir: str) -> None:
        self.body = orjson.dumps(spec)
        self.page = Path(demo_dir, DOCS_PAGE)

    async def openapi_json(self, request: Request) -> Response:
        return Response(self.body, media_type=JSON, headers={"Cache-Control": "no-cache"})

    async def docs_page(self, request: Request) -> Response:
        if not self.page.is_file():
            error = NotFound("the API page is not built (client-demo: npm run build)")
            row = answer(error)
            return Response(orjson.dumps({"error": error_body(error, row)}), row.status, media_type=JSON)
        return FileResponse(self.page, headers={"Cache-Control": "no-cache"})
