"""``HttpClient``: the canvas HTTP API of docs/protocol.md ("HTTP", "Admin", "Generations") over httpx.

Every non-2xx answer raises ``HttpError`` with the status and the JSON error's ``type`` and
``message`` (``errors`` for a 422), as the server's one error table produces them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from pycrdt import Doc

from .errors import HttpError

JOB_TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
BINARY = "application/octet-stream"


class HttpClient:
    """``async with HttpClient("http://127.0.0.1:8000", token=...) as api: await api.export_json("demo")``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._owned = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout)
        self._base = base_url.rstrip("/")
        self._headers = headers

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    # -- plumbing ---------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = {**self._headers, **(headers or {})}
        if json is not None:
            content = orjson.dumps(json)
            all_headers["Content-Type"] = "application/json"
        query = {key: value for key, value in (params or {}).items() if value is not None}
        response = await self.http.request(
            method, self._base + path, params=query or None, content=content, headers=all_headers
        )
        if response.is_success or response.status_code == 304:
            return response
        raise _http_error(response)

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._request(method, path, **kwargs)
        data = response.json()
        if not isinstance(data, dict):
            raise HttpError(response.status_code, "invalid", "the server did not answer a JSON object")
        return data

    # -- canvases ---------------------------------------------------------------------------------

    async def list_canvases(self, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """One page: ``{"canvases": [{"id", "version", "updated_at"}], "next_cursor"}`` (needs a ``*`` token)."""
        return await self._json("GET", "/api/canvases", params={"limit": limit, "cursor": cursor})

    async def iter_canvases(self, *, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every canvas, page after page."""
        cursor = None
        while True:
            page = await self.list_canvases(limit=page_size, cursor=cursor)
            for canvas in page["canvases"]:
                yield canvas
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def export_json(self, canvas_id: str) -> dict[str, Any]:
        """``{"id", "version", "updated_at", "elements"}``."""
        return await self._json("GET", _canvas(canvas_id), headers={"Accept": "application/json"})

    async def export_update(self, canvas_id: str) -> bytes:
        """The Yjs v1 update that reproduces the document."""
        return (await self._request("GET", _canvas(canvas_id), headers={"Accept": BINARY})).content

    async def export_doc(self, canvas_id: str) -> Doc[Any]:
        """A pycrdt ``Doc`` holding the canvas (``doc.get("elements", type=Map)``)."""
        doc: Doc[Any] = Doc()
        doc.apply_update(await self.export_update(canvas_id))
        return doc

    async def etag(self, canvas_id: str, *, binary: bool = False) -> str:
        """The current ETag (of the JSON or the binary representation), for ``if_match``."""
        accept = BINARY if binary else "application/json"
        response = await self._request("HEAD", _canvas(canvas_id), headers={"Accept": accept})
        return response.headers["ETag"]

    async def post_update(self, canvas_id: str, update: bytes, *, if_match: str | None = None) -> dict[str, Any]:
        """Apply a Yjs v1 update: ``{"id", "changed", "durable": true, "seq", "etag"}`` once committed,
        or ``{"durable": false}`` (202) if it was not committed in time (it stays queued)."""
        headers = {"Content-Type": BINARY, **_if_match(if_match)}
        return await self._json("POST", _canvas(canvas_id, "/updates"), content=update, headers=headers)

    async def patch_element(
        self, canvas_id: str, element_id: str, fields: dict[str, Any], *, if_match: str | None = None
    ) -> dict[str, Any]:
        """Set fields of one element (``None`` deletes a field); creates the element if absent."""
        path = _canvas(canvas_id, f"/elements/{quote(element_id, safe='')}")
        return await self._json("PATCH", path, json=fields, headers=_if_match(if_match))

    async def delete_canvas(self, canvas_id: str, *, if_match: str | None = None) -> None:
        """Delete the canvas (its clients are closed with 4404)."""
        await self._request("DELETE", _canvas(canvas_id), headers=_if_match(if_match))

    async def list_versions(
        self, canvas_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        params = {"limit": limit, "cursor": cursor}
        return await self._json("GET", _canvas(canvas_id, "/versions"), params=params)

    async def get_version(self, canvas_id: str, number: int) -> dict[str, Any]:
        return await self._json("GET", _canvas(canvas_id, f"/versions/{int(number)}"))

    async def restore_version(self, canvas_id: str, number: int) -> dict[str, Any]:
        return await self._json("POST", _canvas(canvas_id, f"/versions/{int(number)}/restore"))

    # -- generations ------------------------------------------------------------------------------

    async def start_generation(
        self,
        canvas_id: str,
        generator: str,
        prompt: str,
        params: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a job: ``{"job": {...}, "created": bool}``."""
        body: dict[str, Any] = {"generator": generator, "prompt": prompt, "params": params or {}}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return await self._json("POST", _canvas(canvas_id, "/generations"), json=body)

    async def get_generation(self, job_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/api/generations/{quote(job_id, safe='')}")

    async def cancel_generation(self, job_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/api/generations/{quote(job_id, safe='')}/cancel")

    async def list_generations(
        self, canvas_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        params = {"limit": limit, "cursor": cursor}
        return await self._json("GET", _canvas(canvas_id, "/generations"), params=params)

    async def wait_generation(
        self, job_id: str, *, timeout: float = 120.0, placed: bool = True, poll: float = 0.1, max_poll: float = 2.0
    ) -> dict[str, Any]:
        """Poll the job until it is ``succeeded``, ``failed`` or ``cancelled`` (the interval doubles from
        ``poll`` up to ``max_poll``); ``TimeoutError`` after ``timeout`` seconds. The job record says
        ``succeeded`` a moment before the server's job watcher has put its image element into the
        canvas: with ``placed`` (the default) this also waits until the canvas holds that element. A
        connected ``Canvas`` hears the same from its ``generation`` events, without polling."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = poll
        job: dict[str, Any] | None = None
        while True:
            if job is None or job.get("status") not in JOB_TERMINAL_STATUSES:
                job = await self.get_generation(job_id)
            if job.get("status") in JOB_TERMINAL_STATUSES:
                element_id = (job.get("result") or {}).get("element_id")
                if not placed or job["status"] != "succeeded" or not element_id:
                    return job
                exported = await self.export_json(str(job["canvas_id"]))
                if element_id in exported.get("elements", {}):
                    return job
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"generation {job_id} not finished and placed after {timeout} s")
            await asyncio.sleep(min(interval, remaining))  # polling interval of a bounded wait
            interval = min(max_poll, interval * 2)

    # -- admin (an ``admin`` token; docs/integrating.md, "Admin API") ----------------------------------

    async def list_rooms(self, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """Live canvases across the cluster: ``{"rooms": [...], "next_cursor", "nodes", "missing_nodes"}``."""
        return await self._json("GET", "/api/rooms", params={"limit": limit, "cursor": cursor})

    async def list_sessions(
        self, canvas_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """Who is on the canvas, on every process: ``{"sessions": [...], "next_cursor", ...}``."""
        return await self._json("GET", _canvas(canvas_id, "/sessions"), params={"limit": limit, "cursor": cursor})

    async def disconnect(self, canvas_id: str, user_id: str | None = None) -> dict[str, Any]:
        """Close everyone's sockets on the canvas (or ``user_id``'s) with 4403: ``{"disconnected", ...}``."""
        body = {"user_id": user_id} if user_id is not None else {}
        return await self._json("POST", _canvas(canvas_id, "/disconnect"), json=body)

    async def lock(self, canvas_id: str) -> dict[str, Any]:
        """Make the canvas read-only for everyone until ``unlock`` (``HttpError`` 404 if it does not exist)."""
        return await self._json("PUT", _canvas(canvas_id, "/lock"))

    async def unlock(self, canvas_id: str) -> dict[str, Any]:
        return await self._json("DELETE", _canvas(canvas_id, "/lock"))


def _canvas(canvas_id: str, rest: str = "") -> str:
    return f"/api/canvases/{quote(canvas_id, safe='')}{rest}"


def _if_match(etag: str | None) -> dict[str, str]:
    return {"If-Match": etag} if etag is not None else {}


def _http_error(response: httpx.Response) -> HttpError:
    error_type, message, errors = f"http_{response.status_code}", response.reason_phrase, None
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            error_type = str(error.get("type", error_type))
            message = str(error.get("message", message))
            errors = error.get("errors")
    except (ValueError, AttributeError):
        pass
    return HttpError(response.status_code, error_type, message, errors=errors, headers=dict(response.headers))
