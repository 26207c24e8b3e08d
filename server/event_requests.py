"""The events channel's requests: a socket that opted in (``?events=1``) sends ``[100, json]`` frames
asking to start, get or cancel a generation (docs/protocol.md, "Requests"). One object per socket
answers them, at most ``MAX_IN_FLIGHT`` at a time, each in its own task, with ``response`` events.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from canvashub.crdt.errors import PolicyViolation

from .auth import Principal
from .jobs import JobService, answer_request
from .savestatus import SendEvent

MAX_REQUEST_BYTES = 64 * 1024
MAX_IN_FLIGHT = 4


class EventRequests:
    __slots__ = ("jobs", "canvas_id", "principal", "send_event", "in_flight", "tasks")

    def __init__(self, jobs: JobService | None, canvas_id: str, principal: Principal, send_event: SendEvent) -> None:
        self.jobs = jobs
        self.canvas_id = canvas_id
        self.principal = principal
        self.send_event = send_event
        self.in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def receive(self, payload: bytes, size: int) -> None:
        """One request (``size``: its frame's length); ``PolicyViolation`` past the size cap closes the socket."""
        if size > MAX_REQUEST_BYTES:
            raise PolicyViolation(f"event requests are limited to {MAX_REQUEST_BYTES} bytes")
        try:
            request = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._refuse(None, "invalid", "request is not JSON")
            return
        kind, request_id = (
            (request.get("type"), request.get("request_id")) if isinstance(request, dict) else (None, None)
        )
        if kind in ("generate", "cancel_generation") and not self.principal.can("generate"):
            self._refuse(request_id, "forbidden", f"role {self.principal.role!r} may not start or cancel generations")
            return
        if self.in_flight >= MAX_IN_FLIGHT:
            self._refuse(request_id, "unavailable", "too many requests in flight")
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._answer(request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, request: Any) -> None:
        try:
            self.send_event(await answer_request(self.jobs, self.canvas_id, request))
        finally:
            self.in_flight -= 1

    def _refuse(self, request_id: Any, error_type: str, message: str) -> None:
        self.send_event(
            {
                "type": "response",
                "request_id": request_id,
                "ok": False,
                "error": {"type": error_type, "message": message},
            }
        )

    def cancel(self) -> None:
        """The socket is gone: its answers are no longer wanted."""
        for task in list(self.tasks):
            task.cancel()
