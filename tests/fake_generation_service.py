"""A fake external generation service (the protocol of ``server/generators/http.py``) on loopback.

Runs as a Starlette app under uvicorn in the test's event loop, on port 0.
Behaviours are plain attributes, set directly or with the chainable helpers:

* ``succeed(after_polls=n)`` — a job reports ``running`` for ``n`` polls, then ``succeeded``.
* ``fail_times(n)`` — the first ``n`` ``POST /generate`` answer 503.
* ``always_fail(retryable=False)`` — jobs report ``failed``.
* ``slow()`` — jobs stay ``running`` forever.
* ``reject_with = status`` — ``POST /generate`` answers that status.
* ``hang_generate``/``hang_polls = True`` — ``POST /generate``/``GET /jobs/{id}`` never
  answer (until the service stops).
* ``stall_output = True`` — the output sends a first chunk, then nothing; ``output_closed`` is set
  once the server notices the client went away.
* ``output``/``output_type``/``chunked_output``/``absolute_output_url`` — what the output looks like.

``requests`` counts requests per kind (``generate``, ``poll``, ``output``, ``cancel``);
``submitted`` keeps the POSTed bodies; ``submit_seen``, ``polled``, ``output_started`` and ``cancelled``
are events tests wait on (with timeouts).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def make_png(width: int, height: int, seed: bytes = b"fake") -> bytes:
    """A real RGB PNG of deterministic noise (barely compressible, so its size is predictable)."""
    pixels, counter = b"", 0
    while len(pixels) < width * height * 3:
        pixels += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[row * stride : (row + 1) * stride] for row in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class _QuietServer(uvicorn.Server):
    """uvicorn without signal handlers: the test process keeps its own."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


class FakeGenerationService:
    def __init__(self) -> None:
        self.mode = "succeed"
        self.polls_before_done = 2
        self.post_failures_left = 0
        self.retryable_failure = False
        self.reject_with: int | None = None
        self.hang_generate = False
        self.hang_polls = False
        self.stall_output = False
        self.output = make_png(8, 8)
        self.output_type = "image/png"
        self.chunked_output = False
        self.absolute_output_url = False
        self.requests: collections.Counter[str] = collections.Counter()
        self.submitted: list[dict[str, Any]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.cancelled_ids: list[str] = []
        self.submit_seen = asyncio.Event()
        self.polled = asyncio.Event()
        self.output_started = asyncio.Event()
        self.output_closed = asyncio.Event()
        self.cancelled = asyncio.Event()
        self._release = asyncio.Event()  # set at stop: hanging handlers return
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0
        self.app = Starlette(
            routes=[
                Route("/generate", self._generate, methods=["POST"]),
                Route("/jobs/{remote_id}", self._poll, methods=["GET"]),
                Route("/jobs/{remote_id}/cancel", self._cancel, methods=["POST"]),
                Route("/outputs/{remote_id}", self._output, methods=["GET"]),
            ]
        )

    # Behaviours -------------------------------------------------------------

    def succeed(self, after_polls: int = 2) -> FakeGenerationService:
        self.mode, self.polls_before_done = "succeed", after_polls
        return self

    def fail_times(self, n: int) -> FakeGenerationService:
        self.post_failures_left = n
        return self

    def always_fail(self, retryable: bool = False) -> FakeGenerationService:
        self.mode, self.retryable_failure = "always_fail", retryable
        return self

    def slow(self) -> FakeGenerationService:
        self.mode = "slow"
        return self

    # Lifecycle --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 10.0) -> FakeGenerationService:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _QuietServer(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise AssertionError("fake generation service exited during startup")
            if loop.time() > deadline:
                raise AssertionError("fake generation service did not start")
            await asyncio.sleep(0.005)  # poll interval: uvicorn has no started event; bounded by the deadline
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 10)

    # Handlers ---------------------------------------------------------------

    async def _generate(self, request: Request) -> Response:
        self.requests["generate"] += 1
        body = await request.json()
        self.submitted.append(body)
        self.submit_seen.set()
        if self.hang_generate:
            await self._release.wait()
        if self.reject_with is not None:
            return JSONResponse({"error": "rejected"}, status_code=self.reject_with)
        if self.post_failures_left > 0:
            self.post_failures_left -= 1
            return JSONResponse({"error": "overloaded"}, status_code=503)
        remote_id = f"r{len(self.jobs) + 1}"
        self.jobs[remote_id] = {"polls": 0, "body": body}
        return JSONResponse({"id": remote_id}, status_code=202)

    async def _poll(self, request: Request) -> Response:
        self.requests["poll"] += 1
        self.polled.set()
        remote_id = request.path_params["remote_id"]
        job = self.jobs.get(remote_id)
        if job is None:
            return JSONResponse({"error": "no such job"}, status_code=404)
        if self.hang_polls:
            await self._release.wait()
        job["polls"] += 1
        if self.mode == "always_fail":
            return JSONResponse(
                {"status": "failed", "progress": 0.5, "error": "model exploded", "retryable": self.retryable_failure}
            )
        if self.mode == "slow" or job["polls"] <= self.polls_before_done:
            done = min(job["polls"], self.polls_before_done) / (self.polls_before_done + 1)
            return JSONResponse({"status": "running", "progress": done if self.mode != "slow" else 0.1})
        output_url = f"/outputs/{remote_id}"
        if self.absolute_output_url:
            output_url = self.base_url + output_url
        return JSONResponse({"status": "succeeded", "progress": 1.0, "output_url": output_url})

    async def _cancel(self, request: Request) -> Response:
        self.requests["cancel"] += 1
        self.cancelled_ids.append(request.path_params["remote_id"])
        self.cancelled.set()
        return JSONResponse({})

    async def _output(self, request: Request) -> Response:
        self.requests["output"] += 1
        self.output_started.set()
        if not (self.stall_output or self.chunked_output):
            return Response(self.output, media_type=self.output_type)
        data, stall, closed, release = self.output, self.stall_output, self.output_closed, self._release

        async def body() -> AsyncIterator[bytes]:
            try:
                for start in range(0, len(data), 256):
                    yield data[start : start + 256]
                    if stall:
                        await release.wait()
                        return
            finally:
                closed.set()

        return StreamingResponse(body(), media_type=self.output_type)
