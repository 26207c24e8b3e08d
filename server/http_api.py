"""HTTP endpoints: health, readiness, metrics, and the canvas API (export, import, edit, delete, history).

Every error is JSON ``{"error": {"type", "message"}}`` with one of the types
``unauthorized`` (401), ``forbidden`` (403), ``not_found``, ``conflict``, ``invalid``
(400, or 422 with an ``errors`` list), ``too_large``, ``unavailable``, ``timeout``. Writes reach live clients like any other change and answer once
the change is durable (200), or 202 if it is not durable within
``http_durable_timeout`` (it is still queued and will be written).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import re
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from pycrdt import Doc, Map
from starlette.requests import Request
from starlette.responses import Response

from canvashub.crdt.edits import check_element_id, check_fields, patch_element, restore_to
from canvashub.crdt.errors import CanvasTooLarge, Overloaded, ProtocolError
from canvashub.crdt.room import RoomDocument

from .auth import AuthError, bearer_token
from .canvas_ids import CANVAS_ID_RULE, is_valid_canvas_id
from .limits import limit_exceeded
from .compaction import replay
from .hub import PreconditionFailed, StoreUnavailable, etag_matches
from .jobs import InvalidJobRequest, job_json
from .schemas import ELEMENT_PATCH, SchemaViolation, check
from .persistence import CanvasDeleted
from canvashub.storage.base import LoadedCanvas

if TYPE_CHECKING:
    from .hub import Hub

MAX_PAGE = 100
DEFAULT_PAGE = 50
ASSET_ID = re.compile(r"[0-9a-f]{32}")
JOB_ID = re.compile(r"[0-9a-f]{1,64}")
MAX_VERSION = 2**31 - 1  # version numbers are 32-bit INTEGER columns in storage


class ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None,
                 errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers
        self.errors = errors


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, error_type: str, message: str, headers: dict[str, str] | None = None,
                   errors: list[dict[str, str]] | None = None) -> Response:
    """Every API error has this shape: ``{"error": {"type", "message"}}`` (422s add ``errors``)."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if errors:
        error["errors"] = errors
    return json_response({"error": error}, status, headers)


def document_json(doc: Doc) -> dict[str, Any]:
    """The ``elements`` root map as plain JSON (nested Y.Maps become objects)."""
    try:
        elements = doc.get("elements", type=Map)
        return {"elements": elements.to_py() or {}}
    except Exception as exc:  # e.g. a client made "elements" something other than a map
        raise ApiError(409, "conflict", f"canvas cannot be exported as JSON: {exc}") from None


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


def handler(action: str | None) -> Callable[[Callable[..., Awaitable[Response]]], Callable[..., Awaitable[Response]]]:
    """Validate path ids, authenticate (``Authorization: Bearer``), check ``action`` on the canvas, and turn
    exceptions into classified JSON errors. ``action`` None: no token needed (assets: content-addressed URLs)."""

    def decorate(fn: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        @functools.wraps(fn)
        async def wrapped(self: "HttpApi", request: Request) -> Response:
            canvas_id = request.path_params.get("canvas_id")
            job_id = request.path_params.get("job_id")
            if job_id is not None and not JOB_ID.fullmatch(job_id):
                return error_response(404, "not_found", f"generation {job_id!r} does not exist")
            if canvas_id is not None and not is_valid_canvas_id(canvas_id):
                return error_response(400, "invalid", f"canvas id must be {CANVAS_ID_RULE}")
            if request.method not in ("GET", "HEAD") and not self.hub.origins.allows(
                    request.headers.get("origin"), request.headers.get("host")):
                # Browsers send Origin on cross-site writes: without this, any page could write to an
                # open-mode server its visitor can reach (simple requests need no CORS preflight).
                limit_exceeded("origin", ip=request.client.host if request.client else None, canvas=canvas_id)
                return error_response(403, "forbidden", "this Origin may not write here")
            try:
                if action is not None:
                    auth = self.hub.auth
                    principal = auth.authenticate(bearer_token(request.headers.get("authorization")))
                    request.state.principal = principal
                    if job_id is None:  # job routes check the job's canvas once they know it
                        auth.authorize(principal, canvas_id, action)
                return await fn(self, request)
            except AuthError as exc:
                headers = {"WWW-Authenticate": 'Bearer realm="canvashub"'} if exc.status == 401 else None
                return error_response(exc.status, exc.error_type, exc.message, headers)
            except ApiError as exc:
                return error_response(exc.status, exc.error_type, exc.message, exc.headers, exc.errors)
            except PreconditionFailed as exc:
                return error_response(412, "conflict", "If-Match does not match the current ETag",
                                      {"ETag": exc.current_etag})
            except Overloaded as exc:
                return error_response(503, "unavailable", exc.reason, {"Retry-After": "1"})
            except CanvasTooLarge as exc:
                limit_exceeded("canvas_size", canvas=canvas_id)
                return error_response(413, "too_large", exc.reason)
            except ProtocolError as exc:
                return error_response(400, "invalid", exc.reason)
            except StoreUnavailable as exc:
                return error_response(503, "unavailable", str(exc), {"Retry-After": "1"})
            except CanvasDeleted:
                return error_response(409, "conflict", "the canvas was deleted while the change was pending")
            except asyncio.TimeoutError:
                return error_response(504, "timeout", "storage did not answer in time")

        return wrapped

    return decorate


async def read_json(request: Request, limit: int, schema: dict[str, Any] | None = None) -> Any:
    """The body as JSON: 413 past ``limit`` bytes, 400 if it is not JSON, 422 if it breaks ``schema``."""
    try:
        body = orjson.loads(await read_body(request, limit))
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid", f"body is not JSON: {exc}") from None
    if schema is not None:
        try:
            check(schema, body)
        except SchemaViolation as exc:
            raise ApiError(422, "invalid", str(exc), errors=exc.errors) from None
    return body


def page_args(request: Request) -> tuple[int, str | None]:
    raw = request.query_params.get("limit", str(DEFAULT_PAGE))
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, "invalid", "limit must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, "invalid", f"limit must be between 1 and {MAX_PAGE}")
    return limit, request.query_params.get("cursor") or None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without buffering them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def wants_binary(request: Request) -> bool:
    return "application/octet-stream" in request.headers.get("accept", "")


def page_response(key: str, rows: list, limit: int, item: Callable[[Any], Any],
                  cursor_of: Callable[[Any], str]) -> Response:
    """One page of a cursor-paginated listing; ``rows`` was fetched with ``limit + 1`` to learn if more follow."""
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response({key: [item(r) for r in rows], "next_cursor": cursor_of(rows[-1]) if more else None})


class HttpApi:
    def __init__(self, hub: "Hub") -> None:
        self.hub = hub
        self.store = hub.store

    async def _bounded(self, call: Awaitable[Any]) -> Any:
        """A storage call that gives up (504 ``timeout``) after ``store_timeout``."""
        return await asyncio.wait_for(call, self.hub.settings.store_timeout)

    # -- operations ------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        hub = self.hub
        persister = hub.persister
        try:
            healthy = await asyncio.wait_for(self.store.health(), 1.0)
        except asyncio.TimeoutError:
            healthy = False
        backlog_full = not persister.admit(0)
        storage = {
            "backend": hub.backend,
            "healthy": healthy,
            "backlog_updates": persister.backlog_updates,
            "backlog_bytes": persister.backlog_bytes,
            "backlog_limit_bytes": persister.max_backlog_bytes,
            "retrying": persister.retrying,
            "last_error": persister.last_error,
        }
        # A store outage alone does not make the node unready: editing and relaying go on and
        # the backlog flushes later. A full backlog does (new writes would be refused).
        if hub.shutting_down:
            status, code = "shutting_down", 503
        elif backlog_full:
            status, code = "backlog_full", 503
        else:
            status, code = "ready", 200
        return json_response({"status": status, **hub.stats(), "storage": storage,
                              "pubsub": hub.cluster.status()}, code)

    async def metrics(self, request: Request) -> Response:
        body = self.hub.metrics.render({k: float(v) for k, v in self.hub.stats().items()})
        return Response(body, media_type="text/plain; version=0.0.4")

    # -- canvases --------------------------------------------------------------------------
    @handler("read")
    async def list_canvases(self, request: Request) -> Response:
        limit, cursor = page_args(request)
        rows = await self._bounded(self.store.list_canvases(cursor, limit + 1))
        return page_response("canvases", rows, limit,
                             lambda r: {"id": r.canvas_id, "version": r.version, "updated_at": iso(r.updated_at)},
                             lambda r: r.canvas_id)

    @handler("read")
    async def get_canvas(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        found = await self.hub.read_document(canvas_id)
        if found is None:
            raise ApiError(404, "not_found", f"canvas {canvas_id!r} does not exist")
        doc, etag, version, updated_at = found
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        if wants_binary(request):
            return Response(doc.get_update(), media_type="application/octet-stream", headers=headers)
        body = {"id": canvas_id, "version": version, "updated_at": iso(updated_at), **document_json(doc)}
        return json_response(body, headers=headers)

    @handler("edit")
    async def post_update(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        update = await read_body(request, self.hub.settings.max_frame_bytes)
        if not update:
            raise ApiError(400, "invalid", "body must be a binary Yjs (v1) update")
        return await self._write(request, canvas_id, len(update), lambda document: document.apply_update(update))

    @handler("edit")
    async def patch_element(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        element_id = request.path_params["element_id"]
        try:
            check_element_id(element_id)
        except ProtocolError as exc:
            raise ApiError(400, "invalid", exc.reason) from None
        fields = await read_json(request, self.hub.settings.max_json_body_bytes, ELEMENT_PATCH)
        try:
            check_fields(fields)
        except ProtocolError as exc:
            raise ApiError(422, "invalid", exc.reason, errors=[{"path": "", "message": exc.reason}]) from None
        size = len(orjson.dumps(fields))
        return await self._write(request, canvas_id, size,
                                 lambda document: document.transact(lambda doc: patch_element(doc, element_id, fields)))

    @handler("delete")
    async def delete_canvas(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        if not await self.hub.delete_canvas(canvas_id):
            raise ApiError(404, "not_found", f"canvas {canvas_id!r} does not exist")
        return Response(status_code=204)

    # -- history ---------------------------------------------------------------------------
    @handler("read")
    async def list_versions(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        limit, cursor = page_args(request)
        try:
            before = None if cursor is None else int(cursor)
        except ValueError:
            raise ApiError(400, "invalid", "cursor must be a version number") from None
        if before is not None and not 0 <= before <= MAX_VERSION:
            raise ApiError(400, "invalid", "cursor must be a version number")
        rows = await self._bounded(self.store.list_versions(canvas_id, before, limit + 1))
        if not rows and cursor is None and await self.hub.read_document(canvas_id) is None:
            raise ApiError(404, "not_found", f"canvas {canvas_id!r} does not exist")
        return page_response("versions", rows, limit,
                             lambda r: {"number": r.number, "created_at": iso(r.created_at), "size": r.size},
                             lambda r: str(r.number))

    async def _version(self, canvas_id: str, number: int) -> tuple[Any, Doc, bytes]:
        if not 1 <= number < MAX_VERSION:  # number + 1 below must fit too
            raise ApiError(404, "not_found", f"canvas {canvas_id!r} has no version {number}")
        infos = await self._bounded(self.store.list_versions(canvas_id, number + 1, 1))
        snapshot = await self._bounded(self.store.get_version(canvas_id, number))
        if not infos or infos[0].number != number or snapshot is None:
            raise ApiError(404, "not_found", f"canvas {canvas_id!r} has no version {number}")
        doc = replay(LoadedCanvas(snapshot, number, [], None), canvas_id, strict=False)
        return infos[0], doc, snapshot

    @handler("read")
    async def get_version(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        number = request.path_params["number"]
        info, doc, snapshot = await self._version(canvas_id, number)
        if wants_binary(request):
            return Response(snapshot, media_type="application/octet-stream")
        return json_response({"id": canvas_id, "number": info.number, "created_at": iso(info.created_at),
                              "size": info.size, **document_json(doc)})

    @handler("restore")
    async def restore_version(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        number = request.path_params["number"]
        _, target, snapshot = await self._version(canvas_id, number)
        return await self._write(request, canvas_id, len(snapshot),
                                 lambda document: document.transact(lambda doc: restore_to(doc, target)))

    # -- shared write path -----------------------------------------------------------------
    async def _write(self, request: Request, canvas_id: str, size: int,
                     change: Callable[[RoomDocument], Any]) -> Response:
        hub = self.hub
        if not hub.persister.admit(size):
            raise Overloaded("storage backlog full: write refused, retry later")
        if hub.shutting_down:
            raise ApiError(503, "unavailable", "server is shutting down", {"Retry-After": "1"})
        etag, done = await hub.write(canvas_id, change, request.headers.get("if-match"), size)
        headers = {"ETag": etag}
        if done is None:
            return json_response({"id": canvas_id, "changed": False, "durable": True, "etag": etag}, headers=headers)
        try:
            seq = await asyncio.wait_for(asyncio.shield(done), hub.settings.http_durable_timeout)
        except asyncio.TimeoutError:
            return json_response({"id": canvas_id, "changed": True, "durable": False, "etag": etag}, 202, headers)
        return json_response({"id": canvas_id, "changed": True, "durable": True, "seq": seq, "etag": etag},
                             headers=headers)

    # -- generations -----------------------------------------------------------------------
    @property
    def jobs(self):
        jobs = self.hub.jobs
        if jobs is None:  # pragma: no cover - the composition root always sets it
            raise ApiError(503, "unavailable", "generations are not enabled")
        return jobs

    @handler("generate")
    async def create_generation(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        body = await read_json(request, self.hub.settings.max_json_body_bytes)
        try:
            job, created = await self._bounded(self.jobs.create(canvas_id, body))
        except InvalidJobRequest as exc:
            raise ApiError(422, "invalid", str(exc), errors=exc.errors) from None
        return json_response({"job": job_json(job), "created": created}, 202,
                             {"Location": f"/api/generations/{job.id}"})

    @handler("read")
    async def list_generations(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        limit, cursor = page_args(request)
        jobs = await self._bounded(self.store.list_jobs(canvas_id, cursor, limit + 1))
        return page_response("generations", jobs, limit, job_json, lambda j: j.id)

    async def _job(self, request: Request, action: str) -> Any:
        """The path's job, once the caller may ``action`` on its canvas (404 if there is no such job)."""
        job_id = request.path_params["job_id"]
        job = await self._bounded(self.store.get_job(job_id))
        if job is None:
            raise ApiError(404, "not_found", f"generation {job_id!r} does not exist")
        self.hub.auth.authorize(request.state.principal, job.canvas_id, action)
        return job

    @handler("read")
    async def get_generation(self, request: Request) -> Response:
        return json_response(job_json(await self._job(request, "read")))

    @handler("generate")
    async def cancel_generation(self, request: Request) -> Response:
        job_id = (await self._job(request, "generate")).id
        job = await self._bounded(self.jobs.cancel(job_id))
        if job is None:
            raise ApiError(404, "not_found", f"generation {job_id!r} does not exist")
        return json_response(job_json(job))

    @handler(None)
    async def get_asset(self, request: Request) -> Response:
        asset_id = request.path_params["asset_id"]
        if not ASSET_ID.fullmatch(asset_id):
            raise ApiError(404, "not_found", "no such asset")
        etag = f'"{asset_id}"'  # content-addressed: the id is a digest of the bytes
        headers = {
            "ETag": etag,
            "Cache-Control": "public, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
            # Generated SVGs are shown as images; if opened directly, nothing in them may run.
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
        }
        if etag_matches(request.headers.get("if-none-match") or "", etag):
            return Response(status_code=304, headers=headers)
        asset = await self._bounded(self.store.get_asset(asset_id))
        if asset is None:
            raise ApiError(404, "not_found", "no such asset")
        return Response(asset.data, media_type=asset.content_type, headers=headers)
