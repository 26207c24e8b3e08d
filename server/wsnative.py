"""canvashub's own WebSocket transport for ``/ws/{canvas_id}`` under ``canvashub serve``.

A uvicorn WebSocket protocol class (uvicorn's HTTP protocol hands it the upgrade request). For
``/ws/{canvas_id}`` it runs the same admission as the ASGI endpoint (``WebSocketEndpoint.admit``: one
function for both transports), answers the handshake itself, parses frames in ``data_received`` (the
masking in C: ``websockets.speedups.apply_mask``) and hands each message to the room synchronously
(``receive_message``): no ASGI message dicts, no task and no coroutine per frame or per connection.
Any other upgrade (another path, a malformed handshake) is handed to uvicorn's own sans-I/O protocol
and so to the ASGI app, unchanged.

Writes: what the room queues for one recipient during one loop iteration is written with one
``transport.write`` at the end of it (one shared callback per iteration, not a task per connection).
A recipient whose transport pushed back (``pause_writing``) keeps its frames here until
``resume_writing``. The slow-client rule is the same as the ASGI path's (docs/operations.md, "Slow
clients"): bytes buffered (ours plus the transport's) over ``send_queue_bytes``, or no write progress
(bytes the transport handed to the kernel) for ``send_stall_seconds``, closes 1013 and drops our queue.

Keepalive pings: one periodic sweep over the open sockets, not a timer per socket.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import struct
import time
from typing import Any, cast
from urllib.parse import unquote

from websockets.speedups import apply_mask

from .connection import (
    Admitted,
    BaseConnection,
    Upgrade,
    WebSocketEndpoint,
    receive_message,
    refuse,
    rejection,
)
from .errors import CloseCode, ServerError
from .limits import offences
from .logs import log
from .metrics import Metrics
from .rooms import Room
from .settings import Settings

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_BINARY = 0x82  # FIN + binary
_SMALL_HEADERS = [bytes((_BINARY, n)) for n in range(126)]
_PONG = 0x8A
_PING = 0x89
_CLOSE = 0x88
CLOSE_TIMEOUT = 10.0  # seconds the client has to answer our close frame (re-armed while it still reads)

# Protocol states.
_HANDSHAKE, _ADMITTING, _OPEN, _DISCARD, _CLOSED, _DELEGATED = range(6)


def binary_header(size: int) -> bytes:
    if size < 126:
        return _SMALL_HEADERS[size]
    if size < 65536:
        return struct.pack("!BBH", _BINARY, 126, size)
    return struct.pack("!BBQ", _BINARY, 127, size)


def close_frame(code: int, reason: str) -> bytes:
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return bytes((_CLOSE, len(payload))) + payload


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


class NativeConnection(BaseConnection):
    """Outbound side of one socket of the native transport: a list of frames waiting for the end of the
    loop iteration (or for the transport to resume), written with one ``transport.write``."""

    __slots__ = (
        "_transport",
        "_sockets",
        "_out",
        "_out_bytes",
        "_max_parts",
        "paused",
        "lost",
        "_written",
        "_delivered_seen",
    )

    def __init__(self, room: Room, transport: asyncio.Transport, sockets: NativeSockets, **kwargs: Any) -> None:
        settings = sockets.settings
        super().__init__(room, max_bytes=settings.send_queue_bytes, stall_seconds=settings.send_stall_seconds, **kwargs)
        self._transport = transport
        self._sockets = sockets
        self._out: list[bytes] | None = None  # header, frame, header, frame...
        self._out_bytes = 0
        self._max_parts = 2 * settings.send_queue_messages
        self.paused = False  # the transport pushed back: frames wait here until it resumes
        self.lost = False
        self._written = 0  # bytes handed to the transport
        self._delivered_seen = 0  # bytes it had passed on to the kernel at the last sweep that saw progress

    def enqueue(self, frame: bytes) -> None:
        if self.closing:
            return
        size = len(frame)
        out = self._out
        if out is None:
            out = self._out = []
            if not self.paused:
                self._sockets.dirty(self)
        queued = self._out_bytes + size
        if self.paused:
            queued += self._transport.get_write_buffer_size()
        if queued > self._max_bytes:
            self._overflow("bytes")
            return
        if len(out) >= self._max_parts:
            self._overflow("frames")
            return
        out.append(_SMALL_HEADERS[size] if size < 126 else binary_header(size))
        out.append(frame)
        self._out_bytes += size
        self.idle = False

    def flush(self) -> None:
        """Write what is queued in one ``transport.write`` (unless the transport pushed back)."""
        out = self._out
        if out is None or self.paused or self.lost:
            return
        self._out = None
        self._out_bytes = 0
        data = out[0] + out[1] if len(out) == 2 else b"".join(out)
        self._written += len(data)
        self._transport.write(data)  # may call pause_writing before it returns

    def resume(self) -> None:
        self.paused = False
        if self._out is not None:
            self._sockets.dirty(self)

    def check_stall(self, now: float) -> None:
        """The hub's sweep: drop the client if bytes waited ``send_stall_seconds`` (measured from the first
        sweep that saw them wait) while the transport passed none of its buffer on to the kernel."""
        if self.closing or self.lost:
            return
        buffered = self._transport.get_write_buffer_size()
        if self._out is None and not buffered:
            self._waiting_since = None
            return
        delivered = self._written - buffered
        if self._waiting_since is None or delivered != self._delivered_seen:
            self._waiting_since = now
            self._delivered_seen = delivered
        elif now - self._waiting_since >= self._stall_seconds:
            self._overflow("stalled")

    def _overflow(self, reason: str) -> None:
        self.report_slow(
            reason,
            queued_frames=len(self._out or ()) // 2,
            queued_bytes=self._out_bytes,
            transport_bytes=self._transport.get_write_buffer_size(),
        )
        message = "client stopped reading" if reason == "stalled" else "send queue full: client is not reading"
        self.close(CloseCode.TRY_AGAIN_LATER, message, flush=False)
        asyncio.get_running_loop().call_soon(self.room.leave, self)  # we may be inside the room's fan-out

    @property
    def queued(self) -> tuple[int, int]:
        return len(self._out or ()) // 2, self._out_bytes

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        """Stop taking frames; write what is queued (if ``flush``), then the close frame, now. ``writer``
        is done once the socket is gone (the client answered, or the close timeout)."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.metrics.closes_by_code[int(code)] += 1
        self._close_reason = reason
        out = self._out if flush else None
        self._out = None
        self._out_bytes = 0
        self.writer = asyncio.get_running_loop().create_future()
        if self.lost:
            self.writer.set_result(None)
            return
        data = close_frame(code, reason)
        if out:
            out.append(data)
            data = b"".join(out)
        self._written += len(data)
        self._transport.write(data)
        self._sockets.close_sent(self)

    def gone(self) -> None:
        """The socket is closed: nothing more is written; ``writer`` is done."""
        self.lost = True
        self.closing = True
        self._out = None
        self._out_bytes = 0
        writer = self.writer
        if writer is not None and not writer.done():
            writer.set_result(None)

    def delivered(self) -> int:
        return self._written - self._transport.get_write_buffer_size()


class NativeSockets:
    """The native transport's shared parts: the endpoint (admission and lifecycle), the per-iteration
    write flush, the keepalive ping sweep and the close timeouts."""

    def __init__(self, endpoint: WebSocketEndpoint, settings: Settings, metrics: Metrics) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.metrics = metrics
        self.open: set[NativeProtocol] = set()
        self._dirty: list[NativeConnection] = []
        self._flush_scheduled = False
        self._sweeping = False
        self._trusted: Any = None  # uvicorn's trusted proxy hosts, from its config

    def protocol_class(self) -> type[asyncio.Protocol]:
        """The class to give uvicorn as ``ws``: it builds one per upgraded connection."""
        return type("CanvashubWebSocket", (NativeProtocol,), {"__slots__": (), "sockets": self})

    def dirty(self, conn: NativeConnection) -> None:
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    def opened(self, protocol: NativeProtocol) -> None:
        self.open.add(protocol)
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(self._tick, self._sweep)

    @property
    def _tick(self) -> float:
        return min(self.settings.ws_ping_interval, self.settings.ws_ping_timeout) / 2

    def _sweep(self) -> None:
        """Ping each open socket every ``ws_ping_interval``; drop one whose pong is ``ws_ping_timeout`` late."""
        now = time.monotonic()
        interval, timeout = self.settings.ws_ping_interval, self.settings.ws_ping_timeout
        for protocol in list(self.open):
            protocol.keepalive(now, interval, timeout)
        if self.open:
            asyncio.get_running_loop().call_later(self._tick, self._sweep)
        else:
            self._sweeping = False

    def close_sent(self, conn: NativeConnection) -> None:
        """Our close frame is written: give the client ``CLOSE_TIMEOUT`` (re-armed while it still reads
        what was buffered before it) to answer, then drop the socket."""
        loop = asyncio.get_running_loop()
        seen = conn.delivered()

        def expire() -> None:
            nonlocal seen
            if conn.lost:
                return
            delivered = conn.delivered()
            if delivered != seen:
                seen = delivered
                loop.call_later(CLOSE_TIMEOUT, expire)
                return
            conn._transport.abort()

        loop.call_later(CLOSE_TIMEOUT, expire)

    def client_ip(self, config: Any, peer: str, forwarded: list[bytes]) -> str:
        """The client's address as the ASGI path sees it: uvicorn's proxy-headers rule (``X-Forwarded-For``
        from a trusted proxy, ``FORWARDED_ALLOW_IPS``), applied by the same uvicorn code."""
        if not forwarded or not getattr(config, "proxy_headers", False):
            return peer
        if self._trusted is None:
            from uvicorn.middleware.proxy_headers import _TrustedHosts

            self._trusted = _TrustedHosts(config.forwarded_allow_ips)
        if peer not in self._trusted:
            return peer
        host, _ = self._trusted.get_trusted_client_address(b", ".join(forwarded).decode("latin-1"))
        return host or peer


class NativeProtocol(asyncio.Protocol):
    """One upgraded TCP connection (built by uvicorn's HTTP protocol with the request as first data)."""

    sockets: NativeSockets  # set on the class ``NativeSockets.protocol_class`` makes

    __slots__ = (
        "_config",
        "_server_state",
        "_app_state",
        "transport",
        "conn",
        "_admitted",
        "_state",
        "_buf",
        "_frags",
        "_frag_size",
        "_frag_text",
        "_ping_at",
        "_ping_payload",
        "_delegate",
        "_paused",
    )

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self.transport: asyncio.Transport | None = None
        self.conn: NativeConnection | None = None
        self._admitted: Admitted | None = None
        self._state = _HANDSHAKE
        self._buf: bytearray | None = None  # an incomplete frame
        self._frags: list[bytes] | None = None  # a fragmented message's parts
        self._frag_size = 0
        self._frag_text = False
        self._ping_at = 0.0  # when the last ping was sent
        self._ping_payload: bytes | None = None  # the ping waiting for its pong
        self._delegate: Any = None  # uvicorn's WebSocketsSansIOProtocol, for upgrades that are not ours
        self._paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._delegate is not None:
            self._delegate.connection_lost(exc)
            return
        state, self._state = self._state, _CLOSED
        self._server_state.connections.discard(self)
        self.sockets.open.discard(self)
        self._buf = self._frags = None
        conn = self.conn
        if conn is not None:
            conn.gone()
            self.sockets.endpoint.finish(conn)
        if self._admitted is not None and state != _ADMITTING:  # admission in progress releases it itself
            self.sockets.endpoint.release_ip(self._admitted)
            self._admitted = None

    def pause_writing(self) -> None:
        if self._delegate is not None:
            self._delegate.pause_writing()
        elif self.conn is not None:
            self.conn.paused = True
        else:
            self._paused = True

    def resume_writing(self) -> None:
        if self._delegate is not None:
            self._delegate.resume_writing()
        elif self.conn is not None:
            self.conn.resume()
        else:
            self._paused = False

    def eof_received(self) -> bool | None:
        if self._delegate is not None:
            return self._delegate.eof_received()
        return None  # the transport closes itself

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _OPEN:
            self._frames(data)
        elif state == _HANDSHAKE:
            self._handshake(data)
        elif state == _DELEGATED:
            assert self._delegate is not None
            self._delegate.data_received(data)
        elif state == _ADMITTING:  # a client that does not wait for the 101: keep a little
            buf = self._buf
            if buf is None:
                self._buf = bytearray(data)
            elif len(buf) + len(data) <= 65536:
                buf += data
            else:
                assert self.transport is not None
                self.transport.abort()
        # _DISCARD, _CLOSED: ignored

    # -- uvicorn's shutdown --------------------------------------------------------------------
    def shutdown(self) -> None:
        """uvicorn stops: the hub has drained (1001); close what is left with 1012, as uvicorn does."""
        if self._delegate is not None:
            self._delegate.shutdown()
            return
        conn, transport = self.conn, self.transport
        if conn is not None and not conn.closing:
            conn.close(CloseCode.SERVICE_RESTART, "server restarting", flush=False)
        if transport is not None:
            transport.close()

    # -- the handshake -------------------------------------------------------------------------
    def _handshake(self, data: bytes) -> None:
        head, sep, _ = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        request_line = lines[0].split(b" ")
        headers: dict[bytes, bytes] = {}
        forwarded: list[bytes] = []
        subprotocols: list[str] = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"x-forwarded-for":
                forwarded.append(value)
            elif name == b"sec-websocket-protocol":
                subprotocols.extend(item.strip() for item in value.decode("latin-1").split(",") if item.strip())
            headers.setdefault(name, value)
        target = request_line[1] if len(request_line) == 3 else b""
        path, _, query = target.partition(b"?")
        key = headers.get(b"sec-websocket-key", b"")
        if (
            not sep
            or request_line[0] != b"GET"
            or not path.startswith(b"/ws/")
            or b"/" in path[4:]
            or self._config.root_path
            or headers.get(b"upgrade", b"").lower() != b"websocket"
            or b"upgrade" not in headers.get(b"connection", b"").lower()
            or headers.get(b"sec-websocket-version") != b"13"
            or not _valid_key(key)
            or (self._config.ws_per_message_deflate and b"sec-websocket-extensions" in headers)
        ):
            self._hand_over(data)
            return
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        ip = self.sockets.client_ip(self._config, peer[0] if peer else "unknown", forwarded)
        upgrade = Upgrade(
            unquote(path[4:].decode("latin-1")),
            ip,
            _text(headers.get(b"origin")),
            _text(headers.get(b"host")),
            query,
            subprotocols,
            tuple(headers.items()),
        )
        self._state = _ADMITTING
        task = asyncio.get_running_loop().create_task(self._admit(upgrade, key))
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _hand_over(self, data: bytes) -> None:
        """Not ours: uvicorn's own WebSocket protocol and the ASGI app take the connection."""
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

        self._server_state.connections.discard(self)
        delegate = WebSocketsSansIOProtocol(
            config=self._config, server_state=self._server_state, app_state=self._app_state
        )
        self._delegate = delegate
        self._state = _DELEGATED
        assert self.transport is not None
        delegate.connection_made(self.transport)
        delegate.data_received(data)

    async def _admit(self, upgrade: Upgrade, key: bytes) -> None:
        endpoint = self.sockets.endpoint
        try:
            admitted = await endpoint.admit(upgrade)
        except ServerError as exc:
            self._respond(*rejection(exc))
            return
        except Exception:
            log(logging.ERROR, "ws_handshake_failed", canvas=upgrade.canvas_id, exc_info=True)
            self._respond(500, b'{"error":{"type":"server_error"}}')
            return
        try:
            room = await endpoint.enter(admitted)
        except ServerError as exc:
            endpoint.release_ip(admitted)
            self._respond(*rejection(exc))
            return
        except BaseException:
            endpoint.release_ip(admitted)
            raise
        transport = self.transport
        if self._state != _ADMITTING or transport is None or transport.is_closing():  # the client went away
            endpoint.rooms.release(room)
            endpoint.release_ip(admitted)
            return
        self._admitted = admitted
        settings = self.sockets.settings
        conn = NativeConnection(
            room,
            transport,
            self.sockets,
            metrics=self.sockets.metrics,
            principal=admitted.principal,
            ip=admitted.ip,
            rates=endpoint.rates(),
            events=admitted.events,
            announce=settings.viewer_awareness,
            jobs=endpoint.jobs,
        )
        conn.paused = self._paused
        self.conn = conn
        response = [
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n"
        ]
        if admitted.subprotocol is not None:
            response.append(b"Sec-WebSocket-Protocol: " + admitted.subprotocol.encode("latin-1") + b"\r\n")
        response.append(b"\r\n")
        data = b"".join(response)
        conn._written += len(data)
        transport.write(data)
        self._state = _OPEN
        self._ping_at = time.monotonic()
        self.sockets.opened(self)
        endpoint.start(conn, room)  # joins, or closes (full, deleted)
        early, self._buf = self._buf, None
        if early:
            self._frames(bytes(early))

    def _respond(self, status: int, body: bytes) -> None:
        """Refuse the upgrade with an HTTP answer (the error table's status and JSON error)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        from http import HTTPStatus

        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        transport.write(
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode("latin-1")
            + body
        )
        self._state = _CLOSED
        transport.close()

    # -- frames --------------------------------------------------------------------------------
    def _frames(self, data: bytes) -> None:
        """Parse whole frames from what arrived (and what was left over), hand each message over."""
        buf = self._buf
        view: bytes | bytearray = data
        if buf is not None:
            buf += data
            view = buf
        size = len(view)
        pos = 0
        max_size = self.sockets.settings.max_frame_bytes
        while size - pos >= 2:
            b0 = view[pos]
            b1 = view[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(view[head : head + 2], "big")
                head += 2
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(view[head : head + 8], "big")
                head += 8
            opcode = b0 & 0x0F
            if not b1 & 0x80:
                return self._fail(CloseCode.PROTOCOL_ERROR, "unmasked frame")
            if b0 & 0x70:
                return self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
            if opcode >= 8:
                if length > 125 or not b0 & 0x80:
                    return self._fail(CloseCode.PROTOCOL_ERROR, "invalid control frame")
            elif length + self._frag_size > max_size:  # decided from the header, before buffering
                return self._fail(CloseCode.MESSAGE_TOO_BIG, f"frame exceeds {max_size} bytes")
            end = head + 4 + length
            if end > size:
                break
            payload = apply_mask(view[head + 4 : end], view[head : head + 4]) if length else b""
            pos = end
            if opcode >= 8:
                self._control(opcode, payload)
            else:
                self._data(opcode, b0 & 0x80, payload)
            if self._state != _OPEN:
                return
        if pos >= size:
            self._buf = None
        elif buf is not None:
            del buf[:pos]
        else:
            self._buf = bytearray(view[pos:])

    def _data(self, opcode: int, fin: int, payload: bytes) -> None:
        frags = self._frags
        if opcode == 0:
            if frags is None:
                return self._fail(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
            frags.append(payload)
            self._frag_size += len(payload)
            if not fin:
                return
            payload = b"".join(frags)
            text = self._frag_text
            self._frags = None
            self._frag_size = 0
        elif opcode in (1, 2):
            if frags is not None:
                return self._fail(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            text = opcode == 1
            if not fin:
                self._frags = [payload]
                self._frag_size = len(payload)
                self._frag_text = text
                return
        else:
            return self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        conn = self.conn
        if conn is None or conn.closing:
            return  # drain until the client answers the close
        receive_message(
            conn, None if text else payload, len(payload), self.sockets.settings.max_frame_bytes, self.sockets.metrics
        )

    def _control(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if opcode == 9:  # ping: pong with its payload
            if not (self.conn is not None and self.conn.closing):
                transport.write(bytes((_PONG, len(payload))) + payload)
        elif opcode == 10:  # pong
            if self._ping_payload is not None and payload == self._ping_payload:
                self._ping_payload = None
        elif opcode == 8:  # close
            conn = self.conn
            if conn is not None and not conn.closing:
                conn.closing = True  # the client closed: no close code of ours, nothing more to send
                echo = payload[:2] if len(payload) >= 2 and _valid_close_code(payload) else b""
                transport.write(bytes((_CLOSE, len(echo))) + echo)
            self._state = _DISCARD
            transport.close()
        else:
            self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")

    def _fail(self, code: int, reason: str) -> None:
        """The framing is broken, or a message is over the cap (decided from its header): close ``code``,
        then parse nothing more (the client's echo can no longer be found) and half-close, as websockets does."""
        conn = self.conn
        if conn is not None and not conn.closing:
            refuse(conn, code, reason)
        elif conn is None:
            offences.record(logging.WARNING, "ws_protocol_error", None, int(code), code=int(code), reason=reason)
        self._state = _DISCARD
        self._buf = self._frags = None
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    # -- keepalive -----------------------------------------------------------------------------
    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        transport, conn = self.transport, self.conn
        if self._state != _OPEN or transport is None or conn is None or conn.closing:
            return
        if self._ping_payload is not None:
            if now - self._ping_at >= timeout:
                log(logging.INFO, "ws_ping_timeout", canvas=conn.canvas_id, conn=conn.id)
                conn.room.leave(conn)
                conn.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout", flush=False)
                transport.abort()
        elif now - self._ping_at >= interval:
            self._ping_payload = os.urandom(4)
            self._ping_at = now
            transport.write(bytes((_PING, 4)) + self._ping_payload)


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def _valid_close_code(payload: bytes) -> bool:
    code = int.from_bytes(payload[:2], "big")
    return 1000 <= code < 5000 and code not in (1004, 1005, 1006, 1015)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
