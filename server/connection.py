"""One WebSocket connection: the only module that speaks ASGI WebSocket messages.

Reading: one task per connection (the ASGI handler) receives frames and hands
them to the room synchronously. Writing: frames are queued on a bounded deque
and a writer task drains it; when the client stops reading, uvicorn's send
blocks, the deque fills, and the connection is dropped from the room
immediately (close 1013) instead of letting memory grow.

A ``ProtocolError`` from the room is converted into a close code here and
nowhere else; the room and other rooms carry on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from urllib.parse import parse_qsl
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson

from crdt.codec import MSG_EVENT, Reader, encode_event
from crdt.errors import CloseCode, Overloaded, PolicyViolation, ProtocolError

from .canvas_ids import CANVAS_ID_RULE, is_valid_canvas_id
from .logs import log
from .metrics import Metrics

from .hub import StoreUnavailable
from .jobs import answer_request

if TYPE_CHECKING:
    from .hub import Hub
    from .rooms import Room

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_ids = itertools.count(1)


class Connection:
    """Outbound side of one socket: bounded queue plus writer task."""

    __slots__ = ("id", "room", "canvas_id", "metrics", "_send", "_queue", "_queued_bytes", "_max_messages",
                 "_max_bytes", "_waiter", "closing", "close_code", "_close_reason", "idle", "writer",
                 "events", "changes_submitted", "changes_durable", "durable_clock",
                 "hub_jobs", "requests_in_flight", "tasks")

    def __init__(self, room: "Room", send: Send, max_messages: int, max_bytes: int, metrics: Metrics,
                 events: bool = False) -> None:
        self.id = next(_ids)
        self.room = room
        self.canvas_id = room.canvas_id
        self.metrics = metrics
        self._send = send
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._waiter: asyncio.Future[None] | None = None
        self.closing = False
        self.close_code: int | None = None
        self._close_reason = ""
        self.idle = True  # nothing sent since the last keepalive tick
        self.writer: asyncio.Task[None] | None = None
        # Save status (see docs/protocol.md, "Events"): counts of this socket's changes.
        self.events = events  # opted in with ?events=1: receives [100, json] event frames
        self.changes_submitted = 0
        self.changes_durable = 0
        self.durable_clock: dict[int, int] = {}
        self.hub_jobs = None  # the JobService answering event requests (set by the endpoint)
        self.requests_in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def __hash__(self) -> int:
        return self.id

    def enqueue(self, frame: bytes) -> None:
        if self.closing:
            return
        queued = len(self._queue)
        if queued >= self._max_messages or self._queued_bytes + len(frame) > self._max_bytes:
            self._overflow()
            return
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self.idle = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- events ---------------------------------------------------------------------------
    def send_event(self, payload: dict[str, Any]) -> None:
        if self.events:
            self.enqueue(encode_event(orjson.dumps(payload)))

    def merge_durable_clock(self, clocks: dict[int, int]) -> None:
        durable = self.durable_clock
        for client, clock in clocks.items():
            if clock > durable.get(client, 0):
                durable[client] = clock

    def _save_event(self, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": "save",
            "status": status,
            "through": self.changes_durable,
            "pending": self.changes_submitted - self.changes_durable,
            "clock": {str(k): v for k, v in self.durable_clock.items()},
            **extra,
        }

    def save_succeeded(self, number: int, seq: int) -> None:
        self.changes_durable = number
        if self.events:
            self.send_event(self._save_event("saved", seq=seq))

    def save_retrying(self, attempt: int, delay: float, error: str | None) -> None:
        if self.events:
            self.send_event(self._save_event("retrying", attempt=attempt, retry_in_ms=round(delay * 1000),
                                             error=error))

    def save_failed(self, reason: str) -> None:
        if self.events:
            self.send_event(self._save_event("failed", reason=reason))

    def _overflow(self) -> None:
        """The client stopped reading: drop it now so the room's memory stays flat.

        Leaving the room is deferred to the next loop turn because we may be inside
        the room's broadcast loop over its connections."""
        self.metrics.slow_client_disconnects += 1
        log(logging.WARNING, "slow_client_disconnected", canvas=self.canvas_id, conn=self.id,
            queued_frames=len(self._queue), queued_bytes=self._queued_bytes)
        self.close(CloseCode.TRY_AGAIN_LATER, "send queue full: client is not reading", flush=False)
        asyncio.get_running_loop().call_soon(self.room.leave, self)

    @property
    def queued(self) -> tuple[int, int]:
        return len(self._queue), self._queued_bytes

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        """Stop accepting frames; the writer sends what is queued (if ``flush``), then the close frame."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.metrics.closes_by_code[int(code)] += 1
        self._close_reason = reason
        if not flush:
            self._queue.clear()
            self._queued_bytes = 0
            if self.writer is not None:
                self.writer.cancel()  # it may be blocked on a client that stopped reading
                self.writer = asyncio.get_running_loop().create_task(self._send_close())
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        send = self._send
        try:
            while True:
                while queue:
                    frame = queue.popleft()
                    self._queued_bytes -= len(frame)
                    await send({"type": "websocket.send", "bytes": frame})
                if self.closing:
                    break
                self._waiter = loop.create_future()
                await self._waiter
                self._waiter = None
        except asyncio.CancelledError:
            raise
        except Exception:  # the client went away while we were sending: the reader sees the disconnect
            return
        await self._send_close()

    async def _send_close(self) -> None:
        try:
            await self._send({"type": "websocket.close", "code": self.close_code, "reason": self._close_reason})
        except Exception:
            pass  # already disconnected: nothing left to tell the client


class WebSocketEndpoint:
    """ASGI app for ``/ws/{canvas_id}``, mounted by the composition root."""

    def __init__(self, hub: "Hub") -> None:
        self.hub = hub

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        hub = self.hub
        settings = hub.settings
        canvas_id = scope["path_params"]["canvas_id"]
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        if not is_valid_canvas_id(canvas_id):
            await reject(scope, send, 400, "invalid", f"canvas id must be {CANVAS_ID_RULE}")
            return
        if hub.shutting_down:
            await reject(scope, send, 503, "unavailable", "server is shutting down")
            return
        try:
            room = await hub.registry.acquire(canvas_id)
        except StoreUnavailable as exc:
            log(logging.WARNING, "ws_load_failed", canvas=canvas_id, error=str(exc))
            await reject(scope, send, 503, "unavailable", "canvas storage is unavailable, retry later")
            return
        conn = Connection(room, send, settings.send_queue_messages, settings.send_queue_bytes, hub.metrics,
                          events=wants_events(scope))
        conn.hub_jobs = hub.jobs
        try:
            await send({"type": "websocket.accept"})
            if room.deleted:  # deleted while we were accepting
                conn.close(CloseCode.CANVAS_DELETED, "canvas deleted", flush=False)
                await read_loop(conn, receive, settings.max_frame_bytes, hub.metrics)
                return
            room.join(conn)
            if conn.events:
                for event in hub.snapshot_events(canvas_id):
                    conn.send_event(event)
            conn.writer = asyncio.get_running_loop().create_task(conn.run_writer())
            log(logging.DEBUG, "ws_open", canvas=canvas_id, conn=conn.id)
            hub.metrics.connections_opened += 1
            await read_loop(conn, receive, settings.max_frame_bytes, hub.metrics)
        finally:
            room.leave(conn)
            hub.registry.release(room)
            for task in list(conn.tasks):
                task.cancel()
            writer = conn.writer
            if writer is not None and not writer.done():
                if conn.closing:
                    try:
                        await asyncio.wait_for(asyncio.shield(writer), settings.shutdown_timeout)
                    except (asyncio.TimeoutError, Exception):
                        writer.cancel()
                else:
                    writer.cancel()
            log(logging.DEBUG, "ws_closed", canvas=canvas_id, conn=conn.id, code=conn.close_code)


async def read_loop(conn: Connection, receive: Receive, max_frame_bytes: int, metrics: Metrics) -> None:
    """Feed the room until the client disconnects; a bad frame closes only ``conn``."""
    clock = time.perf_counter
    room = conn.room
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if conn.closing:
            continue  # drain until uvicorn reports the end of the closing handshake
        data = message.get("bytes")
        if data is None:
            refuse(conn, CloseCode.UNSUPPORTED_DATA, "text frames are not supported")
        elif len(data) > max_frame_bytes:
            refuse(conn, CloseCode.MESSAGE_TOO_BIG, f"frame exceeds {max_frame_bytes} bytes")
        elif data[:1] == EVENT_TYPE_BYTE and conn.events:
            request_from_client(conn, data)
        else:
            started = clock()
            try:
                room.receive(conn, data)
            except Overloaded as exc:
                conn.save_failed(exc.reason)  # the client keeps the change and resends it on reconnect
                refuse(conn, exc.code, exc.reason, flush=True)
            except ProtocolError as exc:
                refuse(conn, exc.code, exc.reason)
            elapsed = clock() - started
            metrics.frames_received += 1
            metrics.bytes_received += len(data)
            if elapsed > metrics.frame_handling_max_seconds:
                metrics.frame_handling_max_seconds = elapsed


EVENT_TYPE_BYTE = bytes((MSG_EVENT,))
MAX_REQUEST_BYTES = 64 * 1024
MAX_REQUESTS_IN_FLIGHT = 4


def request_from_client(conn: Connection, frame: bytes) -> None:
    """A request on the events channel: answered by a task, at most a few in flight per socket."""
    try:
        if len(frame) > MAX_REQUEST_BYTES:
            raise PolicyViolation(f"event requests are limited to {MAX_REQUEST_BYTES} bytes")
        reader = Reader(frame)
        reader.var_uint()
        payload = reader.var_bytes()
        reader.expect_end()
    except ProtocolError as exc:
        refuse(conn, exc.code, exc.reason)
        return
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError:
        conn.send_event({"type": "response", "request_id": None, "ok": False,
                         "error": {"type": "invalid", "message": "request is not JSON"}})
        return
    if conn.requests_in_flight >= MAX_REQUESTS_IN_FLIGHT:
        conn.send_event({"type": "response", "request_id": request.get("request_id") if isinstance(request, dict)
                         else None, "ok": False, "error": {"type": "unavailable", "message": "too many requests in flight"}})
        return
    conn.requests_in_flight += 1

    async def answer() -> None:
        try:
            conn.send_event(await answer_request(conn.hub_jobs, conn.canvas_id, request))
        finally:
            conn.requests_in_flight -= 1

    task = asyncio.get_running_loop().create_task(answer())
    conn.tasks.add(task)
    task.add_done_callback(conn.tasks.discard)


def refuse(conn: Connection, code: int, reason: str, *, flush: bool = False) -> None:
    """The one place a protocol error becomes a close: leave the room, then close this socket only."""
    log(logging.WARNING, "ws_protocol_error", canvas=conn.canvas_id, conn=conn.id, code=int(code), reason=reason)
    conn.room.leave(conn)
    conn.close(code, reason[:120], flush=flush)  # close reasons are capped at 123 bytes


def wants_events(scope: dict[str, Any]) -> bool:
    """``?events=1`` opts a connection into canvashub event frames (stock clients never get them)."""
    return any(value in ("1", "true") for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"))
               if key == "events")


async def reject(scope: dict[str, Any], send: Send, status: int, error_type: str, message: str) -> None:
    """Refuse an upgrade with an HTTP status and a JSON error (or 403 if the server can't)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = orjson.dumps({"error": {"type": error_type, "message": message}})
        await send({
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
