"""Slow readers are disconnected; the server's memory stays flat."""

from __future__ import annotations

import asyncio
import socket

import httpx
import orjson
import websockets

from canvashub.crdt import codec
from canvashub.crdt.awareness import AwarenessEntry, encode_awareness_payload

from .support import wait_until


async def test_client_that_never_reads_is_disconnected(process_server_factory):
    """A client that stops reading is dropped (1013) while 40 MB flows through its room; RSS stays flat."""
    server = await process_server_factory(
        {
            "CANVASHUB_SEND_QUEUE_MESSAGES": "256",
            "CANVASHUB_SEND_QUEUE_BYTES": str(1024 * 1024),
            "CANVASHUB_RATE_MESSAGES_PER_SECOND": "0",  # this test floods on purpose
            "CANVASHUB_RATE_BYTES_PER_SECOND": "0",
        }
    )
    # A small receive buffer (which also turns off Linux's autotuning up to 32 MB) and
    # max_queue=1, so the client library stops reading once one frame is buffered.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", server.port))
    slow = await server.connect("flood", max_queue=1, sock=raw)
    sender = await server.connect("flood")
    reader = await server.connect("flood")
    await sender.recv(), await reader.recv()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/readyz")).json()["connections"] == 3
        baseline = server.rss_bytes()
        state = orjson.dumps({"blob": "x" * 4000})
        count = 10_000  # ~40 MB relayed

        received = 0

        async def read_all() -> None:  # the well-behaved reader gets every frame
            nonlocal received
            while received < count:
                frame = await asyncio.wait_for(reader.recv(), 10)
                if frame[:1] == b"\x01" and frame != codec.KEEPALIVE_FRAME:
                    received += 1

        reading = asyncio.create_task(read_all())
        for clock in range(1, count + 1):
            payload = encode_awareness_payload([AwarenessEntry(4242, clock, state)])
            await sender.send(codec.encode_awareness(payload))
            if clock % 50 == 0:  # this process is both sender and reader: keep the reader within 50 frames
                await wait_until(lambda clock=clock: received >= clock - 50 or reading.done(), 10, "reader progress")
        await reading
        growth = server.rss_bytes() - baseline
        ready = (await http.get("/readyz")).json()
        metrics = (await http.get("/metrics")).text
    assert ready["connections"] == 2, ready
    assert "canvashub_slow_client_disconnects_total 1" in metrics
    assert growth < 30 * 1024 * 1024, f"server RSS grew {growth / 2**20:.1f} MB"
    # Once it reads again, the slow client finds the close frame behind what was already sent.
    try:
        while True:
            await asyncio.wait_for(slow.recv(), 10)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1013
    await sender.close(), await reader.close()
