"""Slow readers are disconnected by bytes queued and by time without write progress, never by frame
count; the server's memory stays flat."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from pycrdt import Doc, Text

from canvashub.crdt import codec
from canvashub.crdt.awareness import AwarenessEntry, encode_awareness_payload
from canvashub.server.auth import Principal
from canvashub.server.connection import SLOW_LINK_BYTES_PER_SECOND, Connection
from canvashub.server.metrics import Metrics

from . import raw_ws
from .support import metric_value, wait_until

UNLIMITED = {"CANVASHUB_RATE_MESSAGES_PER_SECOND": "0", "CANVASHUB_RATE_BYTES_PER_SECOND": "0"}  # floods on purpose


def typing_frames(count: int) -> list[bytes]:
    """``count`` update frames of one writer typing a character each (about 30 bytes a frame)."""
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text = doc.get("text", type=Text)
    for i in range(count):
        text.insert(i, "x")
    return [codec.encode_update(update) for update in updates]


async def silent_client(port: int, canvas_id: str) -> socket.socket:
    """A WebSocket upgrade on a raw socket with a small receive buffer that is never read again."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    raw.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(raw, ("127.0.0.1", port))
    await loop.sock_sendall(raw, raw_ws.upgrade_request(port, canvas_id))
    return raw


def slow_client_lines(log_path: Path) -> list[dict]:
    """The server's ``slow_client_disconnected`` log lines."""
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    return [
        entry
        for entry in map(orjson.loads, filter(lambda line: line.startswith("{"), lines))
        if entry.get("event") == "slow_client_disconnected"
    ]


class RoomStub:
    """What a ``Connection`` needs of its room when no room is involved."""

    canvas_id = "unit"

    def leave(self, conn: object) -> None:
        pass


class StalledClient:
    """A connection (stall period 1 s) whose client took its first frame and then stopped: the next send
    waits, as uvicorn's send waits for the transport to drain, until ``release`` lets one more through."""

    def __init__(self, first: bytes) -> None:
        self.permits = asyncio.Semaphore(0)
        self.sent: list[dict] = []
        self.conn = Connection(
            RoomStub(),  # type: ignore[arg-type]
            self.send,
            max_messages=1024,
            max_bytes=64 << 20,
            stall_seconds=1.0,
            metrics=Metrics(),
            principal=Principal("editor", "*"),
            ip="127.0.0.1",
            rates=None,
        )
        self.conn.writer = asyncio.get_running_loop().create_task(self.conn.run_writer())
        self.conn.enqueue(first)
        self.conn.enqueue(b"next")

    async def send(self, message: dict) -> None:
        if self.sent:
            await self.permits.acquire()
        self.sent.append(message)

    async def waiting(self, sent: int) -> None:
        """Until ``sent`` sends completed and the writer is inside the next one."""
        await wait_until(lambda: len(self.sent) == sent and self.conn.queued == (0, 0), 5, "a send waiting")

    def dropped_at(self, deadline: float) -> None:
        """Sweeps just before ``deadline`` keep the client; the sweep at ``deadline`` drops it."""
        self.conn.check_stall(deadline - 0.01)
        assert not self.conn.closing
        self.conn.check_stall(deadline)
        assert self.conn.closing

    async def finish(self) -> None:
        for _ in range(4):
            self.permits.release()
        assert self.conn.writer is not None
        await asyncio.wait_for(self.conn.writer, 5)


@pytest.mark.parametrize("first", [b"small", b"x" * (1 << 20)], ids=["small frame", "1 MiB frame"])
async def test_stall_rule_drops_after_the_period_and_not_before(first):
    """A send waiting: the client is kept for send_stall_seconds plus the last frame's drain time at the
    slow-link floor rate (next to nothing for a small frame), then closed 1013 with its queue released."""
    client = StalledClient(first)
    await client.waiting(1)
    client.conn.check_stall(100.0)  # the first sweep that sees the wait starts the period
    client.dropped_at(100.0 + 1.0 + len(first) / SLOW_LINK_BYTES_PER_SECOND)
    assert client.conn.close_code == 1013 and client.conn.queued == (0, 0)
    await client.finish()


async def test_write_progress_restarts_the_stall_period():
    """A send completing between two sweeps restarts the period: only a full period without one drops."""
    client = StalledClient(b"small")
    await client.waiting(1)
    client.conn.check_stall(100.0)
    client.conn.enqueue(b"more")
    client.permits.release()  # "next" completes; "more" waits in its turn
    await client.waiting(2)
    client.conn.check_stall(100.9)  # progress since the last sweep: the period starts again here
    client.dropped_at(100.9 + 1.0 + len(b"next") / SLOW_LINK_BYTES_PER_SECOND)
    await client.finish()


@pytest.mark.usefixtures("each_transport")
async def test_fast_reader_with_thousands_of_frames_in_flight_stays(process_server_factory):
    """A follower reading normally gets all of 10,000 updates sent back to back, and is never closed (1013)."""
    server = await process_server_factory(UNLIMITED)
    frames = typing_frames(10_000)
    writer = await server.connect("trace")
    follower = await server.connect("trace")
    await writer.recv(), await follower.recv()
    received = 0

    async def follow() -> None:
        nonlocal received
        while received < len(frames):
            if (await asyncio.wait_for(follower.recv(), 10))[:2] == b"\x00\x02":  # an update
                received += 1

    following = asyncio.create_task(follow())
    for frame in frames:  # back to back: the server reads them in large batches
        await writer.send(frame)
    await following  # raises ConnectionClosed if the follower was cut off
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        metrics = (await http.get("/metrics")).text
        assert (await http.get("/readyz")).json()["connections"] == 2
    assert metric_value(metrics, "canvashub_slow_client_disconnects_total") == 0
    await writer.close(), await follower.close()


@pytest.mark.usefixtures("each_transport")
async def test_client_that_stops_reading_is_cut_off_after_the_stall_period(process_server_factory, tmp_path):
    """A client that never reads is dropped about send_stall_seconds after its writes stop progressing, with
    its queue small and released; the room goes on."""
    log_path = tmp_path / "server.log"
    server = await process_server_factory(
        {**UNLIMITED, "CANVASHUB_SEND_STALL_SECONDS": "1", "CANVASHUB_LOG_LEVEL": "info"}, log_path=str(log_path)
    )
    silent = await silent_client(server.port, "stall")
    sender = await server.connect("stall")
    reader = await server.connect("stall")
    await sender.recv(), await reader.recv()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/readyz")).json()["connections"] == 3
        state = orjson.dumps({"blob": "x" * 8000})  # under max_awareness_state_bytes
        received = 0
        clock = 0
        peak = 0
        # Send until the silent client's buffers (its socket, the kernel's, uvicorn's 64 KiB) are full
        # and frames wait in its queue: the reader keeps up, so whatever is queued is the silent client's.
        while True:
            clock += 1
            await sender.send(codec.encode_awareness(encode_awareness_payload([AwarenessEntry(7, clock, state)])))
            while received < clock:
                if (await asyncio.wait_for(reader.recv(), 10))[:1] == b"\x01":
                    received += 1
            ready = (await http.get("/readyz")).json()
            peak = max(peak, ready["queued_bytes"])
            if ready["queued_bytes"] > 0:
                break
            assert clock < 2000, "the silent client's buffers never filled"
        started = asyncio.get_running_loop().time()

        async def dropped() -> bool:
            nonlocal peak
            ready = (await http.get("/readyz")).json()
            peak = max(peak, ready["queued_bytes"])
            return ready["connections"] == 2

        while not await dropped():
            assert asyncio.get_running_loop().time() - started < 5, "the silent client was not cut off"
        waited = asyncio.get_running_loop().time() - started
        assert waited < 1 + 1.5, f"cut off {waited:.2f} s after frames started waiting (stall period 1 s)"
        ready = (await http.get("/readyz")).json()
        metrics = (await http.get("/metrics")).text
        assert ready["queued_bytes"] == 0, ready  # released at once
        assert peak <= 2 * len(state) + 1024, f"queued bytes peaked at {peak}"
        assert metric_value(metrics, "canvashub_slow_client_disconnects_total") == 1
        # The room is unaffected: the next change still reaches the reader.
        await sender.send(codec.encode_awareness(encode_awareness_payload([AwarenessEntry(7, clock + 1, b"{}")])))
        while (await asyncio.wait_for(reader.recv(), 10))[:1] != b"\x01":
            pass
    lines = await wait_until(lambda: slow_client_lines(log_path), 5, "the slow_client_disconnected line")
    assert [line["reason"] for line in lines] == ["stalled"], lines
    silent.close()
    await sender.close(), await reader.close()


@pytest.mark.usefixtures("each_transport")
async def test_client_over_the_byte_cap_is_disconnected_at_once(process_server_factory, tmp_path):
    """A client that stops reading is dropped (1013) the moment its queue passes send_queue_bytes, long before
    the stall period, while 40 MB flows through its room; RSS stays flat."""
    log_path = tmp_path / "server.log"
    server = await process_server_factory(
        {
            **UNLIMITED,
            "CANVASHUB_SEND_QUEUE_BYTES": str(1024 * 1024),
            "CANVASHUB_SEND_STALL_SECONDS": "3600",  # only the byte cap can act within this test
        },
        log_path=str(log_path),
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
    assert metric_value(metrics, "canvashub_slow_client_disconnects_total") == 1
    assert growth < 30 * 1024 * 1024, f"server RSS grew {growth / 2**20:.1f} MB"
    # Once it reads again, the slow client finds the close frame behind what was already sent.
    try:
        while True:
            await asyncio.wait_for(slow.recv(), 10)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1013
    assert [line["reason"] for line in slow_client_lines(log_path)] == ["bytes"]
    await sender.close(), await reader.close()
