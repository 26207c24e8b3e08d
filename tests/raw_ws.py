"""A minimal raw WebSocket client for hostile-input runs.

The ``websockets`` client costs far more Python per connection than a hostile
run can afford: it opens tens of thousands of sockets on the event loop it
shares with the latency-measuring clients. This one does only what it must, as a
callback state machine (no streams, no tasks, one future per socket): write a
precomputed upgrade request, read the 101 and the server's sync step 1, write
one pre-masked hostile frame plus a probe, and read until the server's close
frame.

``attack`` returns the server's close code (the frame was refused),
``SURVIVED`` (the server processed the frame and kept the socket), or one of
the failure strings below.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

SURVIVED = "survived"
DROPPED = "dropped without a close frame"  # EOF/reset before any close frame
TIMEOUT = "timeout"
REFUSED = "upgrade refused"
CONNECT_FAILED = "connect failed"
BAD_HANDSHAKE = "unexpected first frame"

SYNC_STEP1 = b"\x00\x00"
SYNC_STEP2 = b"\x00\x01"

_MASK = bytes.fromhex("37fa213d")  # any key is valid; a fixed one keeps precomputed frames deterministic


def upgrade_request(port: int, canvas_id: str) -> bytes:
    return (
        f"GET /ws/{canvas_id} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def client_frame(payload: bytes, opcode: int = OP_BINARY, mask: bytes = _MASK) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        key = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    return header + mask + payload


def close_frame(code: int) -> bytes:
    return client_frame(struct.pack("!H", code), OP_CLOSE)


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


class TextPayload(bytes):
    """Raw bytes to send in a *text* frame (e.g. invalid UTF-8), where ``str`` cannot go."""


def wire_frame(frame: bytes | str) -> bytes:
    """A message as it goes on the wire: bytes in a binary frame; str or ``TextPayload`` in a text frame."""
    if isinstance(frame, str):
        return client_frame(frame.encode(), OP_TEXT)
    if isinstance(frame, TextPayload):
        return client_frame(bytes(frame), OP_TEXT)
    return client_frame(frame, OP_BINARY)


# A connection flood's offenders (bench/flood.py, tests/test_flood.py): what each socket sends after the
# server's sync step 1, and the outcomes that are right for it.
REFUSED_CODES = {1002, 1003, 1007, 1008, 1009}
FLOOD_KINDS: dict[str, set[int | str]] = {
    "bad_varint": {1002},  # a varint longer than 10 bytes where the update length goes
    "unknown_type": {1002},
    "length_past_end": {1002},
    "garbage": REFUSED_CODES | {SURVIVED},  # random bytes: a few happen to be valid
    "text_frame": {1003},
    "oversize": {1009},  # a header claiming one byte over the frame cap; no payload follows
    "client_close": {1000},  # the client closes first; the server echoes 1000
}


def flood_wire(kind: str, rng: random.Random, max_frame_bytes: int) -> bytes:
    """The bytes a flood socket of ``kind`` (see ``FLOOD_KINDS``) sends."""
    if kind == "bad_varint":
        return wire_frame(b"\x00\x02" + b"\xff" * 12)
    if kind == "unknown_type":
        return wire_frame(bytes((rng.randrange(4, 100), 0)))
    if kind == "length_past_end":
        return wire_frame(b"\x00\x02\x20" + b"\x01" * 10)
    if kind == "garbage":
        from .frames import random_frame

        return wire_frame(random_frame(rng))
    if kind == "text_frame":
        return wire_frame("not a y-websocket frame")
    if kind == "oversize":
        return struct.pack("!BBQ", 0x80 | OP_BINARY, 0x80 | 127, max_frame_bytes + 1) + _MASK
    if kind == "client_close":
        return close_frame(1000)
    raise ValueError(kind)


class _AttackProtocol(asyncio.Protocol):
    """head -> first (await the server's step 1) -> probe (await a step 2 or a close) -> closing (await the echo)."""

    def __init__(self, upgrade: bytes, wire: bytes, done: asyncio.Future) -> None:
        self.upgrade = upgrade
        self.wire = wire
        self.done = done
        self.buf = bytearray()
        self.state = "head"
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.upgrade)

    def connection_lost(self, exc) -> None:
        self._finish(DROPPED)

    def _finish(self, outcome: int | str) -> None:
        if not self.done.done():
            self.done.set_result(outcome)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._finish(REFUSED)
                self.transport.close()
                return
            del buf[: end + 4]
            self.state = "first"
        while len(buf) >= 2 and not self.done.done():
            b1 = buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            if b1 & 0x80:
                pos += 4  # servers must not mask; tolerated here, the payload is only peeked at
            if len(buf) < pos + n:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            self._frame(opcode, payload)

    def _frame(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if opcode == OP_CLOSE:
            code = close_code(payload)
            if not transport.is_closing():  # complete the closing handshake so the server lets go at once
                transport.write(close_frame(code if code not in (1005, 1006, 1015) else 1000))
            if self.state == "closing":
                self._finish(SURVIVED if code == 1000 else code)
            else:
                self._finish(code)
            transport.close()
        elif opcode == OP_PING:
            transport.write(client_frame(payload, OP_PONG))
        elif self.state == "first":
            if opcode != OP_BINARY or not payload.startswith(SYNC_STEP1):
                self._finish(BAD_HANDSHAKE)
                transport.close()
                return
            self.state = "probe"
            # The hostile frame, then the probe: the server's own step 1 echoed back.
            transport.write(self.wire + client_frame(payload))
        elif self.state == "probe" and opcode == OP_BINARY and payload.startswith(SYNC_STEP2):
            self.state = "closing"
            transport.write(close_frame(1000))


async def attack(host: str, port: int, upgrade: bytes, wire: bytes, timeout: float = 10.0) -> int | str:
    """Open a socket, send one pre-encoded frame (``wire_frame``), report how the server ended it.

    Survival probe: after the frame we echo the server's own sync step 1. Only a
    socket's own step 1 is ever answered with a step 2 (``[0, 1, ...]``; relayed
    traffic is ``[0, 2, ...]`` or awareness), and a socket's frames are handled
    in order, so a step 2 proves the frame was processed and the socket kept. (A
    query-awareness probe would be ambiguous: its answer looks like relayed
    awareness.) A survivor then closes with 1000 and must get 1000 back.
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    transport = None
    try:
        async with asyncio.timeout(timeout):
            try:
                transport, _ = await loop.create_connection(lambda: _AttackProtocol(upgrade, wire, done), host, port)
            except OSError:
                return CONNECT_FAILED
            return await done
    except TimeoutError:
        return TIMEOUT
    finally:
        if transport is not None:
            transport.close()
