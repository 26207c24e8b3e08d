"""The ``http`` generator: hands the job to an external generation service and polls it.

Protocol with the service (``base_url`` without a trailing slash, JSON bodies):

1. ``POST {base_url}/generate`` with ``{"prompt": str, "params": object, "job_id": str}``
   → ``202 {"id": remote_id}`` (``200`` with the same body is accepted too).
   ``job_id`` is ours and stable across retries, so the service may deduplicate on it.
2. ``GET {base_url}/jobs/{remote_id}`` every ``poll_interval`` seconds →
   ``{"status": "queued"|"running"|"succeeded"|"failed", "progress": 0..1,
   "output_url": str, "error": str, "retryable": bool}``. ``progress`` is passed on.
3. On ``succeeded``: ``GET output_url`` (absolute http(s), or relative to
   ``base_url/``) → the image. Its ``Content-Type`` must be ``image/*``; the
   body is limited to ``max_bytes`` (the constructor's, or a smaller
   ``params.max_bytes``). The element size comes from ``params.width``/``height``
   (16..2048, default 512).
4. On cancellation (our task cancelled after the service accepted the job):
   best-effort ``POST {base_url}/jobs/{remote_id}/cancel``, bounded by
   ``CANCEL_TIMEOUT`` seconds; any answer (or none) is fine.

Failures are classified for the worker's retry policy:

====================================================  ==================================
connect error, connection dropped, HTTP 5xx or 429     RetryableError('unavailable')
a request timed out (HTTP 408 too)                     RetryableError('timeout')
no result within ``max_wait`` seconds                  RetryableError('timeout')
HTTP 400/413/422                                       PermanentError('invalid')
other HTTP 4xx, 3xx, malformed answers                 PermanentError('upstream')
remote status ``failed``                               PermanentError('upstream'), or
                                                       RetryableError('upstream') if it
                                                       says ``"retryable": true``
output not ``image/*``                                 PermanentError('invalid')
output larger than the limit                           PermanentError('too_large')
====================================================  ==================================

Every call of ``generate`` uses its own ``httpx.AsyncClient`` (from
``client_factory``, default a plain client) and closes it on the way out,
cancellation included; every response is read as a stream and closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ..logs import log
from .base import (
    SIZE_PARAMS,
    GenerationOutput,
    GenerationRequest,
    PermanentError,
    ProgressFn,
    RetryableError,
    int_param,
    output_size,
    request_params,
)

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024  # the service's JSON answers
CANCEL_TIMEOUT = 2.0
INVALID_STATUSES = (400, 413, 422)
ACTIVE_STATUSES = ("queued", "running")


def _status_error(response: httpx.Response, what: str) -> Exception | None:
    """The classified error for a non-success HTTP status, or None for 2xx."""
    code = response.status_code
    if 200 <= code < 300:
        return None
    message = f"{what}: HTTP {code}"
    if code == 429 or code >= 500:
        return RetryableError(message, error_type="unavailable")
    if code == 408:
        return RetryableError(message, error_type="timeout")
    if code in INVALID_STATUSES:
        return PermanentError(message, error_type="invalid")
    return PermanentError(message, error_type="upstream")


async def _read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    """The body of a streamed response, or PermanentError('too_large') once it exceeds ``limit`` bytes."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PermanentError(f"{what}: {declared} bytes exceed the limit of {limit}", error_type="too_large")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise PermanentError(f"{what}: more than {limit} bytes", error_type="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


class HttpGenerator:
    """Runs generations on an external HTTP service (see the module docstring for the protocol)."""

    name = "http"

    def __init__(
        self,
        base_url: str,
        timeout: float = 30.0,
        poll_interval: float = 0.5,
        max_wait: float = 600.0,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        if timeout <= 0 or poll_interval < 0 or max_wait <= 0 or max_bytes < 1:
            raise ValueError("timeout, max_wait and max_bytes must be positive, poll_interval >= 0")
        self.base_url = base_url.rstrip("/")
        # Other params go to the service as they are; these two the server reads itself.
        self.params_schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                **SIZE_PARAMS,
                "max_bytes": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": max_bytes,
                    "description": "largest image accepted from the service (may only lower the default)",
                },
            },
        }
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.max_wait = max_wait
        self.max_bytes = max_bytes
        self.client_factory = client_factory or httpx.AsyncClient

    async def generate(self, request: GenerationRequest, progress: ProgressFn) -> GenerationOutput:
        params = request_params(request)
        width, height = output_size(params)
        limit = int_param(params, "max_bytes", self.max_bytes, 1, self.max_bytes)  # params may only lower it
        deadline = asyncio.get_running_loop().time() + self.max_wait
        last = [0.0]

        def report(value: float) -> None:
            last[0] = value
            progress(value)

        async with self.client_factory() as client:
            remote_id = await self._submit(client, request, params)
            try:
                output_url = await self._wait(client, remote_id, deadline, report)
                content_type, data = await self._download(client, output_url, limit)
            except asyncio.CancelledError:
                await self._cancel_remote(client, remote_id)
                raise
        if last[0] < 1.0:
            progress(1.0)
        log(logging.INFO, "generator_http_done", job=request.job_id, remote_id=remote_id, bytes=len(data))
        return GenerationOutput(content_type, data, width, height)

    async def _request(
        self, client: httpx.AsyncClient, method: str, url: str, what: str, limit: int, **kwargs: Any
    ) -> tuple[httpx.Headers, bytes]:
        """One request, streamed, status-checked and size-bounded; transport failures classified."""
        try:
            async with client.stream(method, url, timeout=self.timeout, **kwargs) as response:
                error = _status_error(response, what)
                if error is not None:
                    raise error
                return response.headers, await _read_limited(response, limit, what)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise RetryableError(f"{what}: cannot connect: {exc!r}", error_type="unavailable") from exc
        except httpx.TimeoutException as exc:
            raise RetryableError(f"{what}: timed out after {self.timeout:g}s", error_type="timeout") from exc
        except httpx.UnsupportedProtocol as exc:
            raise PermanentError(f"{what}: {exc}", error_type="upstream") from exc
        except httpx.TransportError as exc:
            raise RetryableError(f"{what}: {exc!r}", error_type="unavailable") from exc
        except httpx.InvalidURL as exc:
            raise PermanentError(f"{what}: {exc}", error_type="upstream") from exc

    async def _json(self, client: httpx.AsyncClient, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        _, body = await self._request(client, method, url, what, MAX_JSON_BYTES, **kwargs)
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(f"{what}: the answer is not JSON", error_type="upstream") from exc
        if not isinstance(answer, dict):
            raise PermanentError(f"{what}: the answer is not a JSON object", error_type="upstream")
        return answer

    async def _submit(self, client: httpx.AsyncClient, request: GenerationRequest, params: dict[str, Any]) -> str:
        answer = await self._json(
            client,
            "POST",
            f"{self.base_url}/generate",
            "submit",
            json={"prompt": request.prompt, "params": params, "job_id": request.job_id},
        )
        remote_id = answer.get("id")
        if not isinstance(remote_id, str) or not remote_id:
            raise PermanentError("submit: the answer has no job id", error_type="upstream")
        log(logging.INFO, "generator_http_submitted", job=request.job_id, remote_id=remote_id)
        return remote_id

    async def _wait(self, client: httpx.AsyncClient, remote_id: str, deadline: float, progress: ProgressFn) -> str:
        """Poll the remote job until it succeeded (its output URL) or failed (raised)."""
        loop = asyncio.get_running_loop()
        url = f"{self.base_url}/jobs/{quote(remote_id, safe='')}"
        while True:
            answer = await self._json(client, "GET", url, "poll")
            status, value = answer.get("status"), answer.get("progress")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                progress(min(max(float(value), 0.0), 1.0))
            if status == "succeeded":
                output_url = answer.get("output_url")
                if not isinstance(output_url, str) or not output_url:
                    raise PermanentError("poll: succeeded without an output_url", error_type="upstream")
                return output_url
            if status == "failed":
                message = f"remote job failed: {str(answer.get('error') or 'no reason given')[:500]}"
                if answer.get("retryable") is True:
                    raise RetryableError(message, error_type="upstream")
                raise PermanentError(message, error_type="upstream")
            if status not in ACTIVE_STATUSES:
                raise PermanentError(f"poll: unknown status {str(status)[:50]!r}", error_type="upstream")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RetryableError(f"no result within {self.max_wait:g}s", error_type="timeout")
            await asyncio.sleep(min(self.poll_interval, remaining))

    async def _download(self, client: httpx.AsyncClient, output_url: str, limit: int) -> tuple[str, bytes]:
        try:
            url = httpx.URL(self.base_url + "/").join(output_url)
        except httpx.InvalidURL as exc:
            raise PermanentError(f"output_url is invalid: {exc}", error_type="upstream") from exc
        if url.scheme not in ("http", "https"):
            raise PermanentError(f"output_url scheme {url.scheme!r} is not http(s)", error_type="upstream")
        headers, data = await self._request(client, "GET", str(url), "download", limit)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith("image/"):
            raise PermanentError(f"output is {content_type or 'untyped'!r}, not an image", error_type="invalid")
        if not data:
            raise PermanentError("output is empty", error_type="upstream")
        return content_type, data

    async def _cancel_remote(self, client: httpx.AsyncClient, remote_id: str) -> None:
        """Best effort: ask the service to stop a job we no longer want (never raises, bounded)."""
        url = f"{self.base_url}/jobs/{quote(remote_id, safe='')}/cancel"
        try:
            async with client.stream("POST", url, timeout=min(self.timeout, CANCEL_TIMEOUT)):
                pass
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            log(logging.DEBUG, "generator_http_cancel_failed", remote_id=remote_id, error=repr(exc))
        else:
            log(logging.INFO, "generator_http_cancelled", remote_id=remote_id)
