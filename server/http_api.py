"""HTTP endpoints: health, readiness, metrics, and the canvas API (export, import, edit, delete, history).

Every error is JSON ``{"error": {"type", "message"}}`` with one of the types
``unauthorized`` (401), ``forbidden`` (403), ``not_found``, ``conflict``, ``invalid``
(400, or 422 with an ``errors`` list), ``too_large``, ``locked`` (423), ``unavailable``, ``timeout``. Writes reach live clients like any other change and answer once
the change is durable (200), or 202 if it is not durable within
``http_durable_timeout`` (it is still queued and will be written).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from canvashub.crdt.edits import check_element_id, check_fields, patch_element, restore_to
from canvashub.crdt.errors import ProtocolError
from canvashub.crdt.room import Effects, RoomDocument
from canvashub.storage.base import WEBHOOK_DELIVERY_STATUSES, LoadedCanvas, Store, WebhookDelivery, WebhookEvent

from .auth import Authenticator, bearer_token
from .canvas_ids import CANVAS_ID_RULE, is_valid_canvas_id
from .cluster import Cluster
from .compaction import replay
from .errors import (
    Answer,
    CanvasTooLarge,
    Conflict,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    ServerError,
    StorageTimeout,
    TooLarge,
    UnprocessableBody,
    answer,
    answer_for,
    error_body,
)
from .extensions import AuthRequest, DeletedEvent, Hooks
from .health import HealthMonitor
from .hub import CanvasExport, binary_etag, etag_matches
from .isotime import iso
from .jobs import JOB_ID, JobService, job_json
from .limits import OriginPolicy, limit_exceeded
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .persistence import Persister
from .replayer import Replayer
from .schemas import ELEMENT_PATCH, SchemaViolation, check, contains_nul
from .settings import WEBHOOK_NAME, Settings
from .webhooks import WebhookPublisher, canvas_deleted_data

MAX_PAGE = 100
DEFAULT_PAGE = 50
ASSET_ID = re.compile(r"[0-9a-f]{32}")
MAX_VERSION = 2**31 - 1  # version numbers are 32-bit INTEGER columns in storage


Endpoint = Callable[[Request], Awaitable[Response]]


def route(path: str, **endpoints: Endpoint) -> Route:
    """One route per path, dispatching on the method: a 405 then lists every method the path accepts
    (Starlette's ``Allow`` names only the one route it matched). ``GET`` implies ``HEAD``."""
    if "GET" in endpoints:
        endpoints.setdefault("HEAD", endpoints["GET"])

    async def dispatch(request: Request) -> Response:
        return await endpoints[request.method](request)

    return Route(path, dispatch, methods=list(endpoints))


async def http_exception_response(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors (no route: 404; wrong method: 405) in the API's JSON error shape."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    error: ServerError
    if exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed here", headers=headers)
    elif exc.status_code == 404:
        error = NotFound(f"no such resource: {request.url.path}", headers=headers)
    else:
        error = InvalidRequest(str(exc.detail), headers=headers)
    return error_response_for(error, answer(error))


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


def error_response_for(exc: BaseException, answer: Answer) -> Response:
    """The response for an error with a row in the error table (server/errors.py)."""
    headers = dict(getattr(exc, "headers", None) or {})
    if answer.retry_after:
        headers.setdefault("Retry-After", "1")
    if answer.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="canvashub"')
    return json_response({"error": error_body(exc, answer)}, answer.status, headers or None)


def json_with_elements(
    head: dict[str, Any], elements_json: bytes | None, error: str, headers: dict[str, str]
) -> Response:
    """``head`` and the worker-rendered ``{"elements": ...}`` as one JSON object, spliced as bytes (the
    elements are not parsed again on the loop)."""
    if elements_json is None:
        raise Conflict(f"canvas cannot be exported as JSON: {error}")
    body = orjson.dumps(head)[:-1] + b"," + elements_json[1:] if head else elements_json
    return Response(body, media_type=JSON_TYPE, headers=headers)


JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
EXPORT_TYPES = (JSON_TYPE, BINARY_TYPE)  # the first is the default


def negotiate(accept: str | None, offers: tuple[str, ...]) -> str | None:
    """The offer the ``Accept`` header prefers (RFC 9110 §12.5.1): each offer takes the q of the most
    specific range that matches it; the highest q above 0 wins, ties go to the earlier offer.
    None if nothing offered is acceptable."""
    if not accept or not accept.strip():
        return offers[0]
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, _, parameters = part.partition(";")
        media = media.strip().lower()
        if not media:
            continue
        q = 1.0
        for parameter in parameters.split(";"):
            name, _, raw = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(raw.strip())))
                except ValueError:
                    q = 0.0
        ranges.append((media, q))
    best, best_q = None, 0.0
    for offer in offers:
        wildcard = offer.split("/")[0] + "/*"
        specificity, q = -1, 0.0
        for media, media_q in ranges:
            rank = 2 if media == offer else 1 if media == wildcard else 0 if media == "*/*" else -1
            if rank > specificity:
                specificity, q = rank, media_q
        if q > best_q:
            best, best_q = offer, q
    return best


def export_type(request: Request) -> str:
    """JSON or binary, as the request's ``Accept`` prefers; 406 if it accepts neither."""
    chosen = negotiate(request.headers.get("accept"), EXPORT_TYPES)
    if chosen is None:
        raise NotAcceptable(f"this resource is available as {' or '.join(EXPORT_TYPES)}")
    return chosen


def handler(action: str | None) -> Callable[[Callable[..., Awaitable[Response]]], Callable[..., Awaitable[Response]]]:
    """Validate path ids, authenticate (``Authorization: Bearer``), check ``action`` on the canvas, and turn
    exceptions into classified JSON errors. ``action`` None: no token needed (assets: content-addressed URLs)."""

    def decorate(fn: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        @functools.wraps(fn)
        async def wrapped(self: HttpApi, request: Request) -> Response:
            try:
                if has_nul(request):
                    raise InvalidRequest(NUL_MESSAGE)
                canvas_id = request.path_params.get("canvas_id")
                job_id = request.path_params.get("job_id")
                if job_id is not None and not JOB_ID.fullmatch(job_id):
                    raise NotFound(f"generation {job_id!r} does not exist")
                if canvas_id is not None and not is_valid_canvas_id(canvas_id):
                    raise InvalidRequest(f"canvas id must be {CANVAS_ID_RULE}")
                if request.method not in ("GET", "HEAD") and not self.origins.allows(
                    request.headers.get("origin"), request.headers.get("host")
                ):
                    # Browsers send Origin on cross-site writes: without this, any page could write to an
                    # open-mode server its visitor can reach (simple requests need no CORS preflight).
                    limit_exceeded("origin", ip=request.client.host if request.client else None, canvas=canvas_id)
                    raise Forbidden("this Origin may not write here")
                if action is not None:
                    auth = self.auth
                    token = bearer_token(request.headers.get("authorization"))
                    vouched = None
                    if self.hooks.has("authenticate"):
                        vouched = await self.hooks.authenticate(
                            AuthRequest(
                                "http",
                                canvas_id,
                                token,
                                dict(request.headers),
                                dict(request.cookies),
                                request.client.host if request.client else None,
                            )
                        )
                    principal = vouched if vouched is not None else auth.authenticate(token)
                    request.state.principal = principal
                    if job_id is None:  # job routes check the job's canvas once they know it
                        auth.authorize(principal, canvas_id, action)
                return await fn(self, request)
            except Exception as exc:
                row = answer_for(exc)
                if row is None:
                    raise  # a bug: Starlette answers 500 and logs it
                if isinstance(exc, CanvasTooLarge):
                    limit_exceeded("canvas_size", canvas=request.path_params.get("canvas_id"))
                return error_response_for(exc, row)

        return wrapped

    return decorate


NUL_MESSAGE = "NUL characters are not accepted in paths, query parameters or JSON"


def has_nul(request: Request) -> bool:
    """A NUL in a path or query parameter (storage cannot keep it in text, and no id or cursor has one)."""
    return any("\x00" in value for value in request.path_params.values() if isinstance(value, str)) or any(
        "\x00" in key or "\x00" in value for key, value in request.query_params.multi_items()
    )


async def read_json(request: Request, limit: int, schema: dict[str, Any] | None = None) -> Any:
    """The body as JSON: 413 past ``limit`` bytes, 400 if it is not JSON or carries a NUL character,
    422 if it breaks ``schema``."""
    raw = await read_body(request, limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"body is not JSON: {exc}") from None
    if b"\\u0000" in raw and contains_nul(body):  # JSON can only carry NUL escaped
        raise InvalidRequest(NUL_MESSAGE)
    if schema is not None:
        try:
            check(schema, body)
        except SchemaViolation as exc:
            raise UnprocessableBody(str(exc), errors=exc.errors) from None
    return body


def page_args(request: Request) -> tuple[int, str | None]:
    raw = request.query_params.get("limit", str(DEFAULT_PAGE))
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequest("limit must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}")
    return limit, request.query_params.get("cursor") or None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without buffering them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def page_response(
    key: str, rows: list, limit: int, item: Callable[[Any], Any], cursor_of: Callable[[Any], str]
) -> Response:
    """One page of a cursor-paginated listing; ``rows`` was fetched with ``limit + 1`` to learn if more follow."""
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response({key: [item(r) for r in rows], "next_cursor": cursor_of(rows[-1]) if more else None})


class Canvases(Protocol):
    """What the canvas API needs of the canvases this process holds (the hub provides it)."""

    def live_etag(self, canvas_id: str) -> str | None: ...

    async def canvas_exists(self, canvas_id: str) -> bool: ...

    async def export_canvas(self, canvas_id: str, binary: bool) -> CanvasExport | None: ...

    async def write(
        self, canvas_id: str, change: Callable[[RoomDocument], Effects], if_match: str | None = None, size: int = 0
    ) -> tuple[str, asyncio.Future[int] | None]: ...

    async def delete_canvas(self, canvas_id: str, events: Sequence[WebhookEvent] = ()) -> bool: ...


class Readiness(Protocol):
    """What ``/readyz`` and ``/metrics`` report of the hub."""

    shutting_down: bool

    def stats(self) -> dict[str, int]: ...


class OperationsApi:
    """``/healthz``, ``/readyz`` and ``/metrics``: what load balancers and operators poll. Nothing here
    waits on the store (its health is probed in the background, server/health.py)."""

    def __init__(
        self,
        hub: Readiness,
        persister: Persister,
        health: HealthMonitor,
        cluster: Cluster,
        metrics: Metrics,
        backend: str,
    ) -> None:
        self.hub = hub
        self.persister = persister
        self.health = health
        self.cluster = cluster
        self.metrics_registry = metrics
        self.backend = backend

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        persister = self.persister
        probed_healthy, checked_ms_ago = self.health.status()
        backlog_full = not persister.admit(0)
        storage = {
            "backend": self.backend,
            # A failing (or stalled) write is fresher evidence than the last probe.
            "healthy": probed_healthy and not persister.retrying,
            "checked_ms_ago": checked_ms_ago,
            "backlog_updates": persister.backlog_updates,
            "backlog_bytes": persister.backlog_bytes,
            "backlog_limit_bytes": persister.max_backlog_bytes,
            "retrying": persister.retrying,
            "last_error": persister.last_error,
        }
        # A store outage alone does not make the node unready: editing and relaying go on and
        # the backlog flushes later. A full backlog does (new writes would be refused).
        if self.hub.shutting_down:
            status, code = "shutting_down", 503
        elif backlog_full:
            status, code = "backlog_full", 503
        else:
            status, code = "ready", 200
        return json_response(
            {"status": status, **self.hub.stats(), "storage": storage, "pubsub": self.cluster.status()}, code
        )

    async def metrics(self, request: Request) -> Response:
        return Response(self.metrics_registry.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


class HttpApi:
    """The canvas, history, generation and asset endpoints under ``/api`` (and ``/assets``)."""

    def __init__(
        self,
        canvases: Canvases,
        store: Store,
        jobs: JobService,
        replayer: Replayer,
        auth: Authenticator,
        origins: OriginPolicy,
        settings: Settings,
        webhooks: WebhookPublisher,
        hooks: Hooks,
    ) -> None:
        self.hooks = hooks
        self.canvases = canvases
        self.replayer = replayer
        self.store = store
        self.jobs = jobs
        self.auth = auth
        self.origins = origins
        self.settings = settings
        self.webhooks = webhooks

    async def _bounded(self, call: Awaitable[Any]) -> Any:
        """A storage call that gives up (504 ``timeout``) after ``store_timeout``."""
        try:
            return await asyncio.wait_for(call, self.settings.store_timeout)
        except TimeoutError:
            raise StorageTimeout("storage did not answer in time") from None

    # -- canvases --------------------------------------------------------------------------
    @handler("read")
    async def list_canvases(self, request: Request) -> Response:
        limit, cursor = page_args(request)
        rows = await self._bounded(self.store.list_canvases(cursor, limit + 1))
        return page_response(
            "canvases",
            rows,
            limit,
            lambda r: {"id": r.canvas_id, "version": r.version, "updated_at": iso(r.updated_at)},
            lambda r: r.canvas_id,
        )

    @handler("read")
    async def get_canvas(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        export_type(request)  # 406 before any work
        binary = export_type(request) == BINARY_TYPE
        if_none_match = request.headers.get("if-none-match")
        live = self.canvases.live_etag(canvas_id)
        if live is not None and if_none_match is not None:  # a loaded canvas: 304 before any rendering
            tag = binary_etag(live) if binary else live
            if etag_matches(if_none_match, tag):
                return Response(status_code=304, headers={"ETag": tag, "Cache-Control": "no-cache", "Vary": "Accept"})
        found = await self.canvases.export_canvas(canvas_id, binary)
        if found is None:
            raise NotFound(f"canvas {canvas_id!r} does not exist")
        # Two representations, two strong ETags (RFC 9110 §8.8.3); either one is a valid If-Match for writes.
        etag = found.etag
        headers = {"ETag": binary_etag(etag) if binary else etag, "Cache-Control": "no-cache", "Vary": "Accept"}
        if if_none_match is not None and etag_matches(if_none_match, headers["ETag"]):
            return Response(status_code=304, headers=headers)
        if binary:
            return Response(found.body, media_type=BINARY_TYPE, headers=headers)
        head = {"id": canvas_id, "version": found.version, "updated_at": iso(found.updated_at)}
        return json_with_elements(head, found.body, found.error, headers)

    @handler("edit")
    async def post_update(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        update = await read_body(request, self.settings.max_frame_bytes)
        if not update:
            raise InvalidRequest("body must be a binary Yjs (v1) update")
        return await self._write(request, canvas_id, len(update), lambda document: document.apply_update(update))

    @handler("edit")
    async def patch_element(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        element_id = request.path_params["element_id"]
        try:
            check_element_id(element_id)
        except ProtocolError as exc:
            raise InvalidRequest(exc.reason) from None
        fields = await read_json(request, self.settings.max_json_body_bytes, ELEMENT_PATCH)
        try:
            check_fields(fields)
        except ProtocolError as exc:
            raise UnprocessableBody(exc.reason, errors=[{"path": "", "message": exc.reason}]) from None
        size = len(orjson.dumps(fields))
        return await self._write(
            request,
            canvas_id,
            size,
            lambda document: document.transact(lambda doc: patch_element(doc, element_id, fields)),
        )

    @handler("delete")
    async def delete_canvas(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        principal = request.state.principal
        # canvas.deleted is written in the delete's own transaction (only if the canvas existed).
        events = self.webhooks.prepare(
            "canvas.deleted", canvas_deleted_data(canvas_id, principal.user_id, principal.role)
        )
        if not await self.canvases.delete_canvas(canvas_id, events):
            raise NotFound(f"canvas {canvas_id!r} does not exist")
        if events:
            self.webhooks.committed()
        self.hooks.notify("deleted", DeletedEvent(canvas_id))
        return Response(status_code=204)

    # -- webhooks --------------------------------------------------------------------------
    @handler("admin")
    async def list_webhook_deliveries(self, request: Request) -> Response:
        limit, cursor = page_args(request)
        try:
            before = None if cursor is None else int(cursor)
        except ValueError:
            raise InvalidRequest("cursor must be a delivery id") from None
        if before is not None and not 0 <= before < 2**63:
            raise InvalidRequest("cursor must be a delivery id")
        status = request.query_params.get("status") or None
        if status is not None and status not in WEBHOOK_DELIVERY_STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(WEBHOOK_DELIVERY_STATUSES)}")
        endpoint = request.query_params.get("endpoint") or None
        if endpoint is not None and not WEBHOOK_NAME.fullmatch(endpoint):
            raise InvalidRequest("endpoint must be an endpoint name")
        rows = await self._bounded(self.store.list_webhook_deliveries(before, limit + 1, status, endpoint))
        return page_response("deliveries", rows, limit, delivery_json, lambda d: str(d.id))

    # -- history ---------------------------------------------------------------------------
    @handler("read")
    async def list_versions(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        limit, cursor = page_args(request)
        try:
            before = None if cursor is None else int(cursor)
        except ValueError:
            raise InvalidRequest("cursor must be a version number") from None
        if before is not None and not 0 <= before <= MAX_VERSION:
            raise InvalidRequest("cursor must be a version number")
        rows = await self._bounded(self.store.list_versions(canvas_id, before, limit + 1))
        if not rows and cursor is None and not await self.canvases.canvas_exists(canvas_id):
            raise NotFound(f"canvas {canvas_id!r} does not exist")
        return page_response(
            "versions",
            rows,
            limit,
            lambda r: {"number": r.number, "created_at": iso(r.created_at), "size": r.size},
            lambda r: str(r.number),
        )

    async def _version(self, canvas_id: str, number: int) -> tuple[Any, bytes]:
        if not 1 <= number < MAX_VERSION:  # number + 1 below must fit too
            raise NotFound(f"canvas {canvas_id!r} has no version {number}")
        infos = await self._bounded(self.store.list_versions(canvas_id, number + 1, 1))
        snapshot = await self._bounded(self.store.get_version(canvas_id, number))
        if not infos or infos[0].number != number or snapshot is None:
            raise NotFound(f"canvas {canvas_id!r} has no version {number}")
        return infos[0], snapshot

    @handler("read")
    async def get_version(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        number = request.path_params["number"]
        binary = export_type(request) == BINARY_TYPE
        info, snapshot = await self._version(canvas_id, number)
        headers = {"Vary": "Accept"}
        if binary:
            return Response(snapshot, media_type=BINARY_TYPE, headers=headers)
        exported = await self.replayer.export([(f"version {number}", snapshot)], binary=False)
        head = {"id": canvas_id, "number": info.number, "created_at": iso(info.created_at), "size": info.size}
        return json_with_elements(head, exported.body, exported.error, headers)

    @handler("restore")
    async def restore_version(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        number = request.path_params["number"]
        _, snapshot = await self._version(canvas_id, number)
        # The restore edits the live document, so the target is built here, on the loop (a known stall
        # for big canvases: docs/architecture.md).
        target = replay(LoadedCanvas(snapshot, number, [], None), canvas_id, strict=False)
        return await self._write(
            request, canvas_id, len(snapshot), lambda document: document.transact(lambda doc: restore_to(doc, target))
        )

    # -- shared write path -----------------------------------------------------------------
    async def _write(
        self, request: Request, canvas_id: str, size: int, change: Callable[[RoomDocument], Any]
    ) -> Response:
        etag, done = await self.canvases.write(canvas_id, change, request.headers.get("if-match"), size)
        headers = {"ETag": etag}
        if done is None:
            return json_response({"id": canvas_id, "changed": False, "durable": True, "etag": etag}, headers=headers)
        try:
            seq = await asyncio.wait_for(asyncio.shield(done), self.settings.http_durable_timeout)
        except TimeoutError:
            return json_response({"id": canvas_id, "changed": True, "durable": False, "etag": etag}, 202, headers)
        return json_response(
            {"id": canvas_id, "changed": True, "durable": True, "seq": seq, "etag": etag}, headers=headers
        )

    # -- generations -----------------------------------------------------------------------
    @handler("generate")
    async def create_generation(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        body = await read_json(request, self.settings.max_json_body_bytes)
        job, created = await self._bounded(self.jobs.create(canvas_id, body))
        return json_response(
            {"job": job_json(job), "created": created}, 202, {"Location": f"/api/generations/{job.id}"}
        )

    @handler("read")
    async def list_generations(self, request: Request) -> Response:
        canvas_id = request.path_params["canvas_id"]
        limit, cursor = page_args(request)
        jobs = await self._bounded(self.store.list_jobs(canvas_id, cursor, limit + 1))
        if not jobs and cursor is None and not await self.canvases.canvas_exists(canvas_id):
            raise NotFound(f"canvas {canvas_id!r} does not exist")
        return page_response("generations", jobs, limit, job_json, lambda j: j.id)

    async def _job(self, request: Request, action: str) -> Any:
        """The path's job, once the caller may ``action`` on its canvas (404 if there is no such job)."""
        job_id = request.path_params["job_id"]
        job = await self._bounded(self.store.get_job(job_id))
        if job is None:
            raise NotFound(f"generation {job_id!r} does not exist")
        self.auth.authorize(request.state.principal, job.canvas_id, action)
        return job

    @handler("read")
    async def get_generation(self, request: Request) -> Response:
        return json_response(job_json(await self._job(request, "read")))

    @handler("generate")
    async def cancel_generation(self, request: Request) -> Response:
        job_id = (await self._job(request, "generate")).id
        job = await self._bounded(self.jobs.cancel(job_id))
        if job is None:
            raise NotFound(f"generation {job_id!r} does not exist")
        return json_response(job_json(job))

    @handler(None)
    async def get_asset(self, request: Request) -> Response:
        asset_id = request.path_params["asset_id"]
        if not ASSET_ID.fullmatch(asset_id):
            raise NotFound("no such asset")
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
            raise NotFound("no such asset")
        return Response(asset.data, media_type=asset.content_type, headers=headers)


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    """One row of ``GET /api/webhooks/deliveries``."""
    return {
        "id": delivery.id,
        "endpoint": delivery.endpoint,
        "webhook_id": delivery.event_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": iso(delivery.created_at),
        "updated_at": iso(delivery.updated_at),
        "delivered_at": iso(delivery.delivered_at),
        "payload": delivery.payload,
    }


class RequestMetrics:
    """ASGI middleware: every HTTP request's duration by route template, method and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.observe = metrics.http_requests

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before starting a response

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.observe.labels(route_template(scope), scope["method"], str(status)).observe(
                time.perf_counter() - started
            )


def route_template(scope: dict[str, Any]) -> str:
    """The matched route's path template (bounded label values); ``unmatched`` if none matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    if isinstance(route, Route):
        mount = scope.get("root_path", "")
        return (mount if mount == "/api" else "") + path
    return "static"
