"""One WebSocket connection: the only module that speaks ASGI WebSocket messages.

Reading: one task per connection (the ASGI handler) receives frames and hands
them to the room synchronously. Writing: frames are queued on a deque and a
writer task drains it. When the client stops reading, uvicorn's send blocks
(it awaits the transport's drain) and the deque grows; the connection is
dropped from the room (close 1013, its queue released at once) when the
deque holds more than ``send_queue_bytes``, or when frames have waited
``send_stall_seconds`` with no send completing (the hub's periodic sweep
calls ``check_stall``). The number of frames does not decide: a reader
keeping up with thousands of small frames in flight is not slow.

A ``ProtocolError`` from the room is converted into a close code here and
nowhere else; the room and other rooms carry on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from http.cookies import CookieError, SimpleCookie
from time import thread_time
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl

import orjson

from canvashub.crdt.codec import EMPTY_UPDATE, EventRequest, encode_auth_denied, encode_event, parse_frame
from canvashub.crdt.errors import ProtocolError

from .auth import Authenticator, Principal, websocket_token
from .canvas_ids import CANVAS_ID_RULE, is_valid_canvas_id
from .errors import (
    AccessDenied,
    CanvasTooLarge,
    CloseCode,
    Forbidden,
    InvalidRequest,
    Overloaded,
    ServerError,
    ShuttingDown,
    StoreUnavailable,
    answer,
    error_body,
)
from .event_requests import EventRequests
from .extensions import AuthRequest, Hooks, SessionEvent
from .jobs import JobService
from .limits import (
    ConnectionCounter,
    OriginPolicy,
    TokenBucket,
    UpgradePacer,
    client_ip,
    header,
    limit_exceeded,
    offences,
)
from .logs import log
from .metrics import Metrics
from .rooms import Room, RoomRegistry
from .savestatus import SaveStatus
from .settings import Settings

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_ids = itertools.count(1)

# The stall rule's floor for a slow link: after a send, uvicorn's next send waits for the transport to drain
# what the last one wrote. For a large frame (a joiner's sync step 2 of a big canvas) that takes time on a
# slow link that is still reading, so the stall period is extended by its size at this rate.
SLOW_LINK_BYTES_PER_SECOND = 64 * 1024


class BaseConnection:
    """What both transports share for one socket: its room, access, rate buckets, save status and events
    channel. Subclasses own the outbound side (``enqueue``, ``close``, ``check_stall``, ``queued``)."""

    __slots__ = (
        "id",
        "room",
        "canvas_id",
        "metrics",
        "closing",
        "close_code",
        "_close_reason",
        "idle",
        "writer",
        "events",
        "save",
        "requests",
        "principal",
        "may_write",
        "may_announce",
        "denied_told",
        "ip",
        "message_bucket",
        "byte_bucket",
        "expiry",
        "user_id",
        "opened_at",
        "_max_bytes",
        "_stall_seconds",
        "_waiting_since",
    )

    protocol = "y-websocket"  # what the admin API's session listing shows (GET /api/canvases/{id}/sessions)

    def __init__(
        self,
        room: Room,
        *,
        max_bytes: int,
        stall_seconds: float,
        metrics: Metrics,
        principal: Principal,
        ip: str,
        rates: tuple[TokenBucket, TokenBucket] | None,
        events: bool = False,
        announce: bool = True,
        jobs: JobService | None = None,
    ) -> None:
        """Complete when constructed: ``rates`` are the (frames, bytes) buckets (None: unlimited);
        ``announce``: relay presence even if the role may not write; ``jobs`` answers events-channel
        requests (a socket that opted into events may send them). ``max_bytes`` and ``stall_seconds`` are
        the slow-client rule."""
        self.id = next(_ids)
        self.room = room
        self.canvas_id = room.canvas_id
        self.metrics = metrics
        self._max_bytes = max_bytes
        self._stall_seconds = stall_seconds
        self._waiting_since: float | None = None  # first sweep that saw frames waiting without progress
        self.closing = False
        self.close_code: int | None = None
        self._close_reason = ""
        self.idle = True  # nothing sent since the last keepalive tick
        self.writer: asyncio.Future[None] | None = None  # done once the close frame is out (or the socket gone)
        self.events = events  # opted in with ?events=1: receives [100, json] event frames
        self.save = SaveStatus(self.send_event)  # this socket's changes: which are durable (docs/protocol.md)
        self.requests = EventRequests(jobs, self.canvas_id, principal, self.send_event) if events else None
        # Access (see server/auth.py): what this socket's token lets it do.
        self.principal = principal
        self.user_id = principal.user_id
        self.may_write = principal.can("edit")
        self.may_announce = self.may_write or announce
        self.denied_told = False
        self.ip = ip
        self.message_bucket: TokenBucket | None = rates[0] if rates is not None else None
        self.byte_bucket: TokenBucket | None = rates[1] if rates is not None else None
        self.expiry: asyncio.TimerHandle | None = None  # the token's expiry timer, while connected
        self.opened_at = time.time()  # wall clock, for the admin API's session listing

    def __hash__(self) -> int:
        return self.id

    def report_slow(self, reason: str, **queued: int) -> None:
        """Count and log a slow-client disconnect (``queued``: what was waiting, per transport)."""
        self.metrics.slow_client_disconnects += 1
        log(logging.WARNING, "slow_client_disconnected", canvas=self.canvas_id, conn=self.id, reason=reason, **queued)

    def write_denied(self, update: bytes) -> None:
        """A viewer sent a change: it is dropped; the client is told once (y-protocols auth message + event)."""
        if self.denied_told or update == EMPTY_UPDATE:  # every client sends an empty step 2 on join
            return
        self.denied_told = True
        if self.room.locked and self.may_write:
            reason = "read-only: an administrator locked this canvas"
        else:
            reason = f"read-only: role {self.principal.role!r} may not edit this canvas"
        log(logging.INFO, "write_denied", canvas=self.canvas_id, conn=self.id, role=self.principal.role)
        self.enqueue(encode_auth_denied(reason))
        self.send_event({"type": "denied", "action": "edit", "reason": reason})

    def expire(self) -> None:
        """The token ran out while connected: close 4401 (the stock provider does not reconnect on 44xx)."""
        self.expiry = None
        log(logging.INFO, "token_expired", canvas=self.canvas_id, conn=self.id)
        self.room.leave(self)
        self.close(CloseCode.UNAUTHORIZED, "access token expired", flush=True)

    # -- events ---------------------------------------------------------------------------
    def send_event(self, payload: dict[str, Any]) -> None:
        if self.events:
            self.enqueue(encode_event(orjson.dumps(payload)))

    def enqueue(self, frame: bytes) -> None:
        raise NotImplementedError

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        raise NotImplementedError

    def check_stall(self, now: float) -> None:
        raise NotImplementedError

    @property
    def queued(self) -> tuple[int, int]:
        raise NotImplementedError


class AsgiOutbox:
    """The outbound side of one ASGI socket: a deque drained by a writer task, bounded by bytes and by
    time without a completed send (the slow-client rule of the module docstring). Used by ``Connection``
    (one canvas per socket) and by the Hocuspocus socket (server/hocuspocus.py: many documents per
    socket); ``on_overflow(reason)`` is told when the client is not reading."""

    __slots__ = (
        "_send",
        "_queue",
        "_queued_bytes",
        "_max_bytes",
        "_max_messages",
        "_stall_seconds",
        "_sent",
        "_sent_seen",
        "_last_sent_bytes",
        "_waiting_since",
        "_waiter",
        "writer",
        "closing",
        "close_code",
        "_close_reason",
        "idle",
        "on_overflow",
    )

    def __init__(self, send: Send, *, max_bytes: int, max_messages: int, stall_seconds: float) -> None:
        self._send = send
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._max_bytes = max_bytes
        self._max_messages = max_messages
        self._stall_seconds = stall_seconds
        self._sent = 0
        self._sent_seen = 0
        self._last_sent_bytes = 0
        self._waiting_since: float | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.writer: asyncio.Future[None] | None = None
        self.closing = False
        self.close_code: int | None = None
        self._close_reason = ""
        self.idle = True
        self.on_overflow: Callable[[str], None] = lambda reason: None

    def enqueue(self, frame: bytes) -> None:
        if self.closing:
            return
        if self._queued_bytes + len(frame) > self._max_bytes:
            self.on_overflow("bytes")
            return
        if len(self._queue) >= self._max_messages:
            self.on_overflow("frames")
            return
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self.idle = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def queued(self) -> tuple[int, int]:
        return len(self._queue), self._queued_bytes

    def check_stall(self, now: float) -> None:
        """Called by the hub's periodic sweep (``now``: the loop's clock): ``on_overflow("stalled")`` if frames
        have waited ``stall_seconds`` while no send to the client completed.

        No timer per frame: a send counter, compared from one sweep to the next. Frames wait while the
        deque holds some or while the writer is inside a send (uvicorn awaits the transport's drain there
        when the client does not read). Measured from the first sweep that saw the wait, so a client is
        never dropped before the full period, and at most one sweep interval after it; the period grows by
        the last frame's drain time at ``SLOW_LINK_BYTES_PER_SECOND``."""
        if self.closing:
            return
        writer = self.writer
        in_send = self._waiter is None and writer is not None and not writer.done()
        if not (self._queue or in_send):
            self._waiting_since = None
        elif self._waiting_since is None or self._sent != self._sent_seen:
            self._waiting_since = now
            self._sent_seen = self._sent
        elif now - self._waiting_since >= self._stall_seconds + self._last_sent_bytes / SLOW_LINK_BYTES_PER_SECOND:
            self.on_overflow("stalled")

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self._close_reason = reason
        waiter = self._waiter
        parked = waiter is not None and not waiter.done()
        if not flush:
            self._queue.clear()
            self._queued_bytes = 0
            if self.writer is not None and not parked:
                self.writer.cancel()
                self.writer = asyncio.get_running_loop().create_task(self._send_close())
        if waiter is not None and parked:
            waiter.set_result(None)

    async def read(self, receive: Receive, handle: Callable[[bytes | None, int], None]) -> None:
        """Hand each inbound frame to ``handle`` (its bytes, None for a text frame, and its size) until the
        client disconnects; once closing, frames are drained unread until the closing handshake ends."""
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if self.closing:
                continue
            data = message.get("bytes")
            handle(data, len(data) if data is not None else len(message.get("text") or ""))

    async def finish(self, grace: float) -> None:
        """The socket's read side ended: a writer that owes the client a close frame gets ``grace`` seconds
        to send what is queued and the close; any other writer is cancelled."""
        writer = self.writer
        if writer is None or writer.done():
            return
        if self.closing and self.close_code is not None:
            try:
                await asyncio.wait_for(asyncio.shield(writer), grace)
            except (TimeoutError, Exception):
                writer.cancel()
        else:
            writer.cancel()

    async def run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        queue, send = self._queue, self._send
        try:
            while True:
                while queue:
                    frame = queue.popleft()
                    size = len(frame)
                    self._queued_bytes -= size
                    await send({"type": "websocket.send", "bytes": frame})
                    self._sent += 1
                    self._last_sent_bytes = size
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
            pass  # already disconnected


class Connection(BaseConnection):
    """One ASGI socket on one canvas: its outbound side is an ``AsgiOutbox`` (bounded queue + writer task)."""

    __slots__ = ("out",)

    def __init__(
        self,
        room: Room,
        send: Send,
        *,
        max_messages: int,
        max_bytes: int,
        stall_seconds: float,
        metrics: Metrics,
        principal: Principal,
        ip: str,
        rates: tuple[TokenBucket, TokenBucket] | None,
        events: bool = False,
        announce: bool = True,
        jobs: JobService | None = None,
    ) -> None:
        """``send``: the ASGI send; ``max_messages`` is only a safety bound on per-frame overhead."""
        self.out = AsgiOutbox(send, max_bytes=max_bytes, max_messages=max_messages, stall_seconds=stall_seconds)
        super().__init__(
            room,
            max_bytes=max_bytes,
            stall_seconds=stall_seconds,
            metrics=metrics,
            principal=principal,
            ip=ip,
            rates=rates,
            events=events,
            announce=announce,
            jobs=jobs,
        )
        self.out.on_overflow = self._overflow

    @property
    def writer(self) -> asyncio.Future[None] | None:
        """The outbox's writer task (``close`` may replace it with one that only sends the close frame)."""
        return self.out.writer

    @writer.setter
    def writer(self, task: asyncio.Future[None] | None) -> None:
        self.out.writer = task

    def enqueue(self, frame: bytes) -> None:
        self.out.enqueue(frame)
        self.idle = False

    def check_stall(self, now: float) -> None:
        """Called by the hub's periodic sweep: see ``AsgiOutbox.check_stall``."""
        self.out.check_stall(now)

    def _overflow(self, reason: str) -> None:
        """The client is not reading (``reason``: ``bytes`` over the cap, ``stalled`` without write
        progress, or the ``frames`` safety bound): drop it now so the room's memory stays flat.

        Leaving the room is deferred to the next loop turn because we may be inside
        the room's broadcast loop over its connections."""
        queued_frames, queued_bytes = self.out.queued
        self.report_slow(reason, queued_frames=queued_frames, queued_bytes=queued_bytes)
        message = "client stopped reading" if reason == "stalled" else "send queue full: client is not reading"
        self.close(CloseCode.TRY_AGAIN_LATER, message, flush=False)
        asyncio.get_running_loop().call_soon(self.room.leave, self)

    @property
    def queued(self) -> tuple[int, int]:
        return self.out.queued

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        """Stop accepting frames; the writer sends what is queued (if ``flush``), then the close frame."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.metrics.closes_by_code[int(code)] += 1
        self.out.close(code, reason, flush=flush)

    async def run_writer(self) -> None:
        await self.out.run_writer()


class Lobby(Protocol):
    """What a joining socket needs of the hub besides the room registry."""

    shutting_down: bool

    def snapshot_events(self, canvas_id: str) -> list[dict[str, Any]]: ...


class Upgrade(NamedTuple):
    """What admission needs of an upgrade request, whichever transport parsed it."""

    canvas_id: str
    ip: str
    origin: str | None
    host: str | None
    query_string: bytes
    subprotocols: Sequence[str]
    headers: Sequence[tuple[bytes, bytes]] = ()  # (lower-case name, value): what an authenticate hook sees


class Admitted(NamedTuple):
    """An upgrade that passed every check: the caller holds one of ``ip``'s connection slots."""

    canvas_id: str
    ip: str
    principal: Principal
    subprotocol: str | None
    events: bool


class WebSocketEndpoint:
    """Admission and lifecycle of ``/ws/{canvas_id}`` sockets for both transports, and the portable ASGI
    app for them (mounted by the composition root; ``canvashub serve`` uses server/wsnative.py instead).

    Checks, in order and before any document is loaded: pacing per address, canvas id (400), Origin
    (403), token (401) and its canvas and role (403), shutdown (503), connections per IP (403).
    """

    def __init__(
        self,
        canvases: Lobby,
        rooms: RoomRegistry,
        *,
        auth: Authenticator,
        origins: OriginPolicy,
        ip_connections: ConnectionCounter,
        upgrades: UpgradePacer,
        jobs: JobService | None,
        settings: Settings,
        metrics: Metrics,
        hooks: Hooks | None = None,
    ) -> None:
        self.hooks = hooks  # the extensions: authenticate, connect and disconnect
        self.canvases = canvases
        self.rooms = rooms
        self.auth = auth
        self.origins = origins
        self.ip_connections = ip_connections
        self.upgrades = upgrades
        self.jobs = jobs
        self.settings = settings
        self.metrics = metrics

    # -- shared by both transports ----------------------------------------------------------
    async def admit(self, upgrade: Upgrade) -> Admitted:
        """Every check an upgrade passes before any document is loaded; raises the refusal (a
        ``ServerError`` the caller answers with ``reject``). On success one of the address's connection
        slots is held: the caller gives it back with ``release_ip``."""
        canvas_id, ip = upgrade.canvas_id, upgrade.ip
        # Every upgrade from one address takes its turn first, valid or not: a flood of short-lived
        # sockets is paced to a bounded handshake rate instead of starving established rooms.
        if not await self.upgrades.admit(ip):
            limit_exceeded("upgrade_rate_per_ip", ip=ip, canvas=canvas_id, rate=self.upgrades.rate)
            raise Overloaded("too many new connections from this address, retry later")
        if not is_valid_canvas_id(canvas_id):
            raise InvalidRequest(f"canvas id must be {CANVAS_ID_RULE}")
        origin = upgrade.origin
        if not self.origins.allows(origin, upgrade.host):
            limit_exceeded("origin", ip=ip, canvas=canvas_id, origin=origin[:200] if origin else None)
            raise Forbidden("this Origin may not open WebSockets here")
        query = parse_qsl(upgrade.query_string.decode("latin-1"))
        token, subprotocol = websocket_token(query, upgrade.subprotocols)
        try:
            vouched = None
            if self.hooks is not None and self.hooks.has("authenticate"):
                vouched = await self.hooks.authenticate(auth_request("y-websocket", canvas_id, token, upgrade))
            principal = vouched if vouched is not None else self.auth.authenticate(token)
            self.auth.authorize(principal, canvas_id, "read")
        except AccessDenied as exc:
            offences.record(
                logging.WARNING,
                "ws_auth_refused",
                ip,
                answer(exc).status,
                canvas=canvas_id,
                status=answer(exc).status,
                reason=exc.message,
            )
            raise
        if self.canvases.shutting_down:
            raise ShuttingDown("server is shutting down")
        if not self.ip_connections.acquire(ip):
            limit = self.ip_connections.limit
            limit_exceeded("connections_per_ip", ip=ip, canvas=canvas_id, maximum=limit)
            raise Forbidden(f"too many connections from this address (limit {limit})")
        return Admitted(canvas_id, ip, principal, subprotocol, wants_events(query))

    def release_ip(self, admitted: Admitted) -> None:
        self.ip_connections.release(admitted.ip)

    async def enter(self, admitted: Admitted) -> Room:
        """The admitted socket's room (loaded if needed); ``StoreUnavailable`` to refuse with."""
        try:
            return await self.rooms.acquire(admitted.canvas_id)
        except StoreUnavailable as exc:
            log(logging.DEBUG, "ws_load_failed", canvas=admitted.canvas_id, error=str(exc))  # see canvas_load_failed
            raise StoreUnavailable("canvas storage is unavailable, retry later") from None

    def rates(self) -> tuple[TokenBucket, TokenBucket]:
        """A new socket's (frames, bytes) rate buckets."""
        settings, now = self.settings, time.monotonic()
        return (
            TokenBucket(settings.rate_messages_per_second, settings.rate_messages_burst, now),
            TokenBucket(settings.rate_bytes_per_second, max(settings.rate_bytes_burst, settings.max_frame_bytes), now),
        )

    def start(self, conn: BaseConnection, room: Room) -> bool:
        """Right after the upgrade was accepted: join the room (True), or close the socket because the room
        was deleted meanwhile or is full (False; the close frame is queued)."""
        settings = self.settings
        full = settings.max_connections_per_canvas and len(room.connections) >= settings.max_connections_per_canvas
        if room.deleted or full:  # deleted while we were accepting, or no room for one more
            if full:
                limit_exceeded(
                    "connections_per_canvas",
                    ip=conn.ip,
                    canvas=conn.canvas_id,
                    maximum=settings.max_connections_per_canvas,
                )
                conn.close(CloseCode.TRY_AGAIN_LATER, "canvas is full, retry later", flush=False)
            else:
                conn.close(CloseCode.CANVAS_DELETED, "canvas deleted", flush=False)
            return False
        principal = conn.principal
        room.join(conn)
        room.document.set_identity(conn, principal.identity)
        if conn.events:
            conn.send_event(principal.describe())
            if room.locked:
                conn.send_event({"type": "lock", "locked": True})  # an administrator locked the canvas
            for event in self.canvases.snapshot_events(conn.canvas_id):
                conn.send_event(event)
            room.report_storage(conn)  # what is durable: sync step 1's state vector does not say
        if principal.expires_at is not None:
            conn.expiry = asyncio.get_running_loop().call_later(
                max(0.0, principal.expires_at - time.time()), conn.expire
            )
        log(logging.DEBUG, "ws_open", canvas=conn.canvas_id, conn=conn.id, user=principal.user_id, role=principal.role)
        self.metrics.connections_opened += 1
        if self.hooks is not None and self.hooks.has("connect"):
            self.hooks.notify("connect", session_event(conn))
        return True

    def finish(self, conn: BaseConnection) -> None:
        """The socket is gone: leave the room, give back its hold on the room and its timers."""
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        room = conn.room
        room.leave(conn)
        self.rooms.release(room)
        if conn.requests is not None:
            conn.requests.cancel()
        log(logging.DEBUG, "ws_closed", canvas=conn.canvas_id, conn=conn.id, code=conn.close_code)
        if self.hooks is not None and self.hooks.has("disconnect"):
            self.hooks.notify("disconnect", session_event(conn, ended=True))

    # -- the ASGI transport ---------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        upgrade = Upgrade(
            scope["path_params"]["canvas_id"],
            client_ip(scope),
            header(scope, b"origin"),
            header(scope, b"host"),
            scope.get("query_string", b""),
            scope.get("subprotocols") or (),
            scope.get("headers") or (),
        )
        try:
            admitted = await self.admit(upgrade)
        except ServerError as exc:
            await reject(scope, send, exc)
            return
        try:
            await self._serve(scope, receive, send, admitted)
        finally:
            self.release_ip(admitted)

    async def _serve(self, scope: dict[str, Any], receive: Receive, send: Send, admitted: Admitted) -> None:
        settings, metrics = self.settings, self.metrics
        try:
            room = await self.enter(admitted)
        except StoreUnavailable as exc:
            await reject(scope, send, exc)
            return
        conn = Connection(
            room,
            send,
            max_messages=settings.send_queue_messages,
            max_bytes=settings.send_queue_bytes,
            stall_seconds=settings.send_stall_seconds,
            metrics=metrics,
            principal=admitted.principal,
            ip=admitted.ip,
            rates=self.rates(),
            events=admitted.events,
            announce=settings.viewer_awareness,
            jobs=self.jobs,
        )
        loop = asyncio.get_running_loop()
        try:
            accept: dict[str, Any] = {"type": "websocket.accept"}
            if admitted.subprotocol is not None:
                accept["subprotocol"] = admitted.subprotocol
            await send(accept)
            self.start(conn, room)  # if it did not join, the writer sends just the close frame
            conn.writer = loop.create_task(conn.run_writer())
            # Feed the room until the client disconnects; a bad frame closes only ``conn``.
            await conn.out.read(
                receive, lambda data, size: receive_message(conn, data, size, settings.max_frame_bytes, metrics)
            )
        finally:
            self.finish(conn)
            await conn.out.finish(settings.shutdown_timeout)


def receive_message(
    conn: BaseConnection, data: bytes | None, size: int, max_frame_bytes: int, metrics: Metrics
) -> None:
    """One whole message from the client (``data`` None: a text message of ``size`` bytes), for both
    transports: rate limits (1008), text (1003), the frame cap (1009), then the room. A bad frame closes
    only ``conn``."""
    messages, volume = conn.message_bucket, conn.byte_bucket
    if messages is not None and volume is not None:
        now = time.monotonic()
        limit = None
        if not messages.take(1, now):
            limit = "messages_per_second"
        elif not volume.take(size, now):
            limit = "bytes_per_second"
        if limit is not None:
            limit_exceeded(limit, ip=conn.ip, canvas=conn.canvas_id, conn=conn.id)
            refuse(conn, CloseCode.POLICY_VIOLATION, f"rate limit exceeded ({limit.replace('_', ' ')})")
            return
    if data is None:
        refuse(conn, CloseCode.UNSUPPORTED_DATA, "text frames are not supported")
        return
    if size > max_frame_bytes:
        refuse(conn, CloseCode.MESSAGE_TOO_BIG, f"frame exceeds {max_frame_bytes} bytes")
        return
    started = thread_time()  # CPU time of the loop thread: what handling the frame cost, not preemption
    try:
        parsed = parse_frame(data)
        if type(parsed) is EventRequest and conn.requests is not None:
            conn.requests.receive(parsed.payload, size)
        else:
            conn.room.receive(conn, parsed, size)
    except ServerError as exc:  # a write refused by policy (backlog full, canvas too large)
        if isinstance(exc, CanvasTooLarge):
            limit_exceeded("canvas_size", ip=conn.ip, canvas=conn.canvas_id, conn=conn.id)
        conn.save.failed(exc.message)  # the client keeps the change (and resends it on reconnect)
        refuse(conn, answer(exc).close_code, exc.message, flush=True)
    except ProtocolError as exc:
        refuse(conn, answer(exc).close_code, exc.reason)
    elapsed = thread_time() - started
    metrics.frames_received += 1
    metrics.bytes_received += size
    metrics.frame_handled(elapsed)


def refuse(conn: BaseConnection, code: int, reason: str, *, flush: bool = False) -> None:
    """The one place a protocol error becomes a close: leave the room, then close this socket only."""
    offences.record(
        logging.WARNING,
        "ws_protocol_error",
        conn.ip,
        int(code),
        canvas=conn.canvas_id,
        conn=conn.id,
        code=int(code),
        reason=reason,
    )
    conn.room.leave(conn)
    conn.close(code, reason[:120], flush=flush)  # close reasons are capped at 123 bytes


def auth_request(protocol: str, canvas_id: str | None, token: str | None, upgrade: Upgrade) -> AuthRequest:
    """What an ``authenticate`` hook sees of an upgrade: the token, headers and cookies, the address."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in upgrade.headers}
    cookies: dict[str, str] = {}
    raw = headers.get("cookie")
    if raw:
        jar = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            pass
        cookies = {name: morsel.value for name, morsel in jar.items()}
    return AuthRequest(protocol, canvas_id, token, headers, cookies, upgrade.ip)


def session_event(conn: BaseConnection, *, ended: bool = False) -> SessionEvent:
    principal = conn.principal
    return SessionEvent(
        conn.canvas_id,
        str(conn.id),
        principal.user_id,
        principal.name,
        principal.role,
        conn.protocol,
        conn.ip,
        conn.close_code if ended else None,
        round(time.time() - conn.opened_at, 3) if ended else None,
    )


def wants_events(query: list[tuple[str, str]]) -> bool:
    """``?events=1`` opts a connection into canvashub event frames (stock clients never get them)."""
    return any(value in ("1", "true") for key, value in query if key == "events")


def rejection(error: ServerError) -> tuple[int, bytes]:
    """The HTTP status and JSON body refusing an upgrade with ``error`` (the error table's row)."""
    row = answer(error)
    return row.status, orjson.dumps({"error": error_body(error, row)})


async def reject(scope: dict[str, Any], send: Send, error: ServerError) -> None:
    """Refuse an upgrade with the error table's HTTP status and JSON error (or a 1008 close if the ASGI
    server cannot answer an upgrade with a response)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        status, body = rejection(error)
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
