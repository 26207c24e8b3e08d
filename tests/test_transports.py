"""canvashub serve's own /ws transport (server/wsnative.py): chosen by default, the ASGI endpoint on
request; framing details the ASGI path leaves to websockets (fragments, pings, hand-over of other paths)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct

import pytest
import websockets

from canvashub.crdt import codec
from canvashub.server.app import create_app
from canvashub.server.cli import uvicorn_config
from canvashub.server.settings import Settings

from . import raw_ws
from .support import wait_until


@pytest.mark.parametrize(
    ("overrides", "native"),
    [({}, True), ({"ws_transport": "asgi"}, False), ({"per_message_deflate": True}, False)],
    ids=["default", "asgi", "deflate"],
)
def test_serve_uses_its_own_transport_unless_asked_otherwise(tmp_path, overrides, native):
    """The native transport by default; uvicorn's websockets-sansio (ASGI) when asked, or with deflate on."""
    settings = dataclasses.replace(Settings(), data_dir=str(tmp_path), **overrides)
    app = create_app(settings)
    ws = uvicorn_config(app, settings).ws
    assert (ws is app.state.ws_protocol) == native
    assert (ws == "websockets-sansio") == (not native)


async def raw_socket(port: int, canvas_id: str, path: str | None = None) -> socket.socket:
    """A raw upgraded socket (the 101 read off it), or the server's answer left unread for ``path``."""
    raw = socket.socket()
    raw.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(raw, ("127.0.0.1", port))
    request = raw_ws.upgrade_request(port, canvas_id)
    if path is not None:
        request = request.replace(f"/ws/{canvas_id}".encode(), path.encode(), 1)
    await loop.sock_sendall(raw, request)
    return raw


async def read_until(raw: socket.socket, *markers: bytes, data: bytes = b"", timeout: float = 5.0) -> bytes:
    """Read from ``raw`` (after ``data``) until every one of ``markers`` has arrived (or the peer closed)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while not all(marker in data for marker in markers):
            chunk = await loop.sock_recv(raw, 65536)
            if not chunk:
                break
            data += chunk
    return data


async def test_fragmented_message_with_a_ping_between_is_one_message(live_server):
    """A sync step 1 sent in three fragments, a ping between them, is answered with a pong and a step 2."""
    raw = await raw_socket(live_server.port, "frag")
    head = await read_until(raw, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    message = codec.encode_sync_step1(b"\x00")
    first = raw_ws.client_frame(message[:1], raw_ws.OP_BINARY)
    first = bytes((first[0] & 0x7F,)) + first[1:]  # not final
    middle = raw_ws.client_frame(message[1:2], 0)
    middle = bytes((middle[0] & 0x7F,)) + middle[1:]
    last = raw_ws.client_frame(message[2:], 0)
    ping = raw_ws.client_frame(b"hi", raw_ws.OP_PING)
    await asyncio.get_running_loop().sock_sendall(raw, first + ping + middle + last)
    loop = asyncio.get_running_loop()
    data = head.partition(b"\r\n\r\n")[2]
    frames: list[tuple[int, bytes]] = []
    async with asyncio.timeout(5):
        while not any(op == 2 and payload[:2] == b"\x00\x01" for op, payload in frames):
            while len(data) >= 2 and len(data) >= 2 + (data[1] & 0x7F):  # unmasked, short server frames
                n = data[1] & 0x7F
                frames.append((data[0] & 0x0F, data[2 : 2 + n]))
                data = data[2 + n :]
            if not any(op == 2 and payload[:2] == b"\x00\x01" for op, payload in frames):
                data += await loop.sock_recv(raw, 65536)
    assert (raw_ws.OP_PONG, b"hi") in frames
    raw.close()


async def test_other_paths_go_through_the_asgi_app(live_server):
    """An upgrade to a path that is not /ws/{canvas} is answered by the ASGI app as before (no 101)."""
    raw = await raw_socket(live_server.port, "x", path="/nowhere")
    answer = await read_until(raw, b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 ") and not answer.startswith(b"HTTP/1.1 101")
    raw.close()


async def test_unanswered_pings_drop_the_socket_answered_ones_keep_it(server_factory):
    """With pings every 0.2 s and a 0.3 s timeout, a socket that never answers is dropped; a client that
    answers (the websockets library does) stays and still syncs."""
    server = await server_factory(ws_ping_interval=0.2, ws_ping_timeout=0.3)
    keeper = await server.connect("ping")
    await keeper.recv()
    silent = await raw_socket(server.port, "ping")
    await wait_until(lambda: len(server.hub.connections) == 2, 5, "both joined")
    await wait_until(lambda: len(server.hub.connections) == 1, 5, "the silent socket dropped")
    await keeper.send(codec.encode_sync_step1(b"\x00"))
    while (await asyncio.wait_for(keeper.recv(), 5))[:2] != b"\x00\x01":
        pass
    await keeper.close()
    silent.close()


async def test_oversize_header_is_refused_before_the_payload_arrives(server_factory):
    """A frame header over the cap is answered 1009 at once, while its payload is still unsent."""
    server = await server_factory(max_frame_bytes=4096)
    ws = await server.connect("cap")
    await ws.recv()
    transport = ws.transport
    transport.write(struct.pack("!BBH", 0x82, 0x80 | 126, 5000) + b"\x00\x00\x00\x00" + b"x" * 100)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
