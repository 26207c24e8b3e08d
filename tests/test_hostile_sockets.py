"""Hostile frames over real sockets: each bad frame closes only its own socket."""

from __future__ import annotations

import asyncio
import random

import pytest
import websockets
from pycrdt import Doc, Map

from canvashub.crdt import codec

from .frames import mutate, random_frame, valid_frames
from .support import wait_until

ALLOWED_CLOSE_CODES = {1002, 1003, 1007, 1008, 1009}


pytestmark = pytest.mark.usefixtures("each_transport")  # both /ws transports


class LoopLagMonitor:
    """Measures how late a 5 ms timer fires: the longest the event loop was blocked."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.005)  # the measurement: how late this 5 ms sleep wakes is the loop's lag
            self.worst = max(self.worst, loop.time() - start - 0.005)

    def __enter__(self) -> LoopLagMonitor:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()


async def probe_outcome(live_server, canvas: str, frame: bytes | str) -> int | None:
    """Send ``frame`` then a query-awareness probe: None if the socket survived, else its close code."""
    ws = await live_server.connect(canvas)
    await asyncio.wait_for(ws.recv(), 5)  # server step 1
    await ws.send(frame)
    await ws.send(codec.encode_query_awareness())
    try:
        while True:
            reply = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(reply, bytes) and reply[:1] == b"\x01":  # awareness answer to the probe
                await ws.close()
                return None
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None, "server dropped the socket without a close frame"
        return closed.rcvd.code


async def healthy_traffic(live_server, canvas: str, stop: asyncio.Event) -> int:
    """Two well-behaved clients exchange updates until ``stop``; returns how many arrived intact."""
    a = await live_server.connect(canvas)
    b = await live_server.connect(canvas)
    await a.recv(), await b.recv()
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    elements = doc.get("elements", type=Map)
    delivered = 0
    while not stop.is_set():
        elements[f"k{delivered}"] = delivered
        frame = codec.encode_update(updates[-1])
        await a.send(frame)
        assert await asyncio.wait_for(b.recv(), 5) == frame
        delivered += 1
    await a.close(), await b.close()
    return delivered


async def test_bad_frames_close_only_their_socket(server_factory):
    """2,000 random/mutated/crafted frames on real sockets: offenders closed with 1002-1009, the rest unharmed.
    The other room carries on, and the event loop is never blocked for 50 ms."""
    live = await server_factory(max_frame_bytes=256 * 1024, upgrade_rate_per_ip=0)  # pacing: tests/test_flood.py
    rng = random.Random(99)
    seeds = valid_frames(rng, 200)
    crafted: list[bytes | str] = [
        b"\xff" * 200_000,  # 0xFF varint run
        codec.encode_update(b"\xff\xff\xff\xff\x0f\x00"),  # 2**32 clients claimed
        codec.encode_sync_step1(b"\xff\xff\xff\x7f"),  # huge state-vector count
        b"\x00\x02" + b"\x20" + b"\x01" * 10,  # truncated update
        b"\x07\x00",  # unknown type
        "a text frame",
        b"\x00\x02" + b"\x00" * (300 * 1024),  # over the frame cap
    ]
    frames = crafted + [random_frame(rng) if i % 2 else mutate(rng, rng.choice(seeds)) for i in range(2_000)]
    stop = asyncio.Event()
    codes: dict[int | None, int] = {}
    with LoopLagMonitor() as lag:  # whole-process lag: server *and* these clients
        traffic = asyncio.create_task(healthy_traffic(live, "healthy", stop))
        sem = asyncio.Semaphore(16)

        async def one(i: int, frame) -> None:
            async with sem:
                code = await probe_outcome(live, f"hostile{i % 8}", frame)
                codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(one(i, f) for i, f in enumerate(frames)))
        stop.set()
        delivered = await traffic
    assert set(codes) - {None} <= ALLOWED_CLOSE_CODES, codes
    assert sum(v for k, v in codes.items() if k is not None) > 1_000, codes
    assert delivered > 50
    worst_frame = live.hub.metrics.frame_handling_max_seconds
    assert worst_frame < 0.05, f"one frame held the server's loop {worst_frame * 1000:.1f} ms"
    # The test's own clients share this loop, so whole-loop lag gets a looser bound.
    assert lag.worst < 0.25, f"event loop blocked {lag.worst * 1000:.1f} ms"
    await wait_until(lambda: live.hub.stats()["connections"] == 0, 5, "all sockets closed")


async def test_text_frame_closes_1003(live_server):
    """A text frame is refused with 1003 (unsupported data)."""
    assert await probe_outcome(live_server, "t", "hello") == 1003


async def test_oversize_frame_closes_1009(server_factory):
    """A frame over the configured cap is refused with 1009 from its header."""
    live = await server_factory(max_frame_bytes=64 * 1024, upgrade_rate_per_ip=0)
    assert await probe_outcome(live, "big", b"\x00\x02" + b"\x00" * 100_000) == 1009
