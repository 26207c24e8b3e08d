"""A small honest room whose update latency is measured while something hostile runs.

Shared by the hostile-input run (tests/test_hostile_run.py), the flood test
(tests/test_flood.py) and the flood benchmark (bench/flood.py).
"""

from __future__ import annotations

import asyncio
import time

import websockets
from pycrdt import Doc, Map

from canvashub.crdt import codec

HEALTHY_INTERVAL = 0.005  # one update per 5 ms (~200/s)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


class HealthyRoom:
    """``clients`` well-behaved ``websockets`` clients taking turns: one writes a real
    pycrdt update every ``interval``; its latency is from the send until every other
    client has received it."""

    def __init__(self, server, canvas_id: str, clients: int = 2, interval: float = HEALTHY_INTERVAL) -> None:
        self.server = server  # anything with ``connect(canvas_id)`` (tests.support.ServerAddress)
        self.canvas_id = canvas_id
        self.size = clients
        self.interval = interval
        self.doc = Doc()
        self._updates: list[bytes] = []
        self.doc.observe(lambda event: self._updates.append(event.update))
        self.elements = self.doc.get("elements", type=Map)
        self.sent = 0
        self.clients: list[websockets.ClientConnection] = []

    async def open(self) -> None:
        for _ in range(self.size):
            ws = await self.server.connect(self.canvas_id)
            first = await asyncio.wait_for(ws.recv(), 5)
            assert first[:2] == b"\x00\x00", first[:8]  # the server's sync step 1
            self.clients.append(ws)

    async def close(self) -> None:
        for ws in self.clients:
            await ws.close()

    async def one(self) -> float:
        self.elements[f"k{self.sent}"] = self.sent
        frame = codec.encode_update(self._updates[-1])
        writer = self.sent % self.size
        self.sent += 1
        clock = time.perf_counter
        started = clock()
        await self.clients[writer].send(frame)
        for i, reader in enumerate(self.clients):
            if i == writer:
                continue
            while True:
                got = await asyncio.wait_for(reader.recv(), 5)
                if got == frame:
                    break
                assert isinstance(got, bytes) and got[:1] == b"\x01", (
                    f"unexpected frame in the healthy room: {got[:16]!r}"
                )
        return clock() - started

    async def run(self, samples: list[float], *, count: int | None = None, stop: asyncio.Event | None = None) -> None:
        """Paced writer: one update per ``interval`` (never bursts to catch up)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while (count is None or len(samples) < count) and not (stop is not None and stop.is_set()):
            samples.append(await self.one())
            next_at = max(next_at + self.interval, loop.time())
            await asyncio.sleep(next_at - loop.time())  # pacing a writer, not waiting on a condition
