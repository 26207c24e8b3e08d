"""A raw WebSocket test client that speaks y-websocket frames and records canvashub events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import orjson
import websockets
from pycrdt import Doc, Map

from canvashub.crdt import codec
from canvashub.crdt.awareness import parse_awareness
from canvashub.crdt.codec import MSG_EVENT, Reader


class WireClient:
    """Records every frame; decodes ``[100, json]`` event frames; remembers the close code."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.doc = Doc()  # the server's document as this client sees it (step 2 and updates applied)
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(
        cls, server, canvas_id: str, *, events: bool = True, sync: bool = False, token: str | None = None, **kwargs: Any
    ) -> WireClient:
        """Connect; with ``sync`` also send sync step 1, so ``doc`` receives the current state."""
        query = urlencode({**({"events": "1"} if events else {}), **({"token": token} if token else {})})
        url = server.ws_url(canvas_id) + ("?" + query if query else "")
        client = cls(await websockets.connect(url, max_size=None, **kwargs))
        if sync:
            await client.ws.send(codec.encode_sync_step1(client.doc.get_state()))
        return client

    def elements(self) -> dict[str, Any]:
        return self.doc.get("elements", type=Map).to_py() or {}

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                assert isinstance(frame, bytes)
                self.frames.append(frame)
                if frame[0] == MSG_EVENT:
                    reader = Reader(frame)
                    reader.var_uint()
                    self.events.append(orjson.loads(reader.var_bytes()))
                elif frame[:2] in (b"\x00\x01", b"\x00\x02"):
                    reader = Reader(frame)
                    reader.var_uint()
                    reader.var_uint()
                    self.doc.apply_update(reader.var_bytes())
                self._notify()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; events {self.events[-5:]}")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_save(
        self, status: str = "saved", where: Callable[[dict], bool] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        def found():
            for event in self.events:
                if event.get("type") == "save" and event["status"] == status and (where is None or where(event)):
                    return event
            return None

        return await self.wait(found, timeout, f"save event {status}")

    @property
    def closed(self) -> bool:
        """The socket is closed (``close_code`` says how)."""
        return self._task.done()

    async def wait_closed(self, timeout: float = 10.0) -> int:
        await self.wait(lambda: self._task.done(), timeout, "close")
        return self.close_code  # type: ignore[return-value]

    async def barrier(self) -> None:
        """Every frame sent before this has been handled: the server answers a query-awareness in order."""
        seen = sum(1 for f in self.frames if f[:1] == b"\x01")
        await self.ws.send(codec.encode_query_awareness())
        await self.wait(lambda: sum(1 for f in self.frames if f[:1] == b"\x01") > seen, 10, "awareness answer")

    def awareness_states(self) -> dict[int, Any]:
        """The latest awareness state per client id, as relayed to this client (None: removed)."""
        states: dict[int, Any] = {}
        for frame in self.frames:
            if frame[:1] == b"\x01":
                reader = Reader(frame)
                reader.var_uint()
                for entry in parse_awareness(reader.var_bytes(), 1 << 20):
                    states[entry.client_id] = orjson.loads(entry.state)
        return states

    async def send_update(self, update: bytes) -> None:
        await self.ws.send(codec.encode_update(update))

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self._task, 10)


def key_updates(count: int, prefix: str = "k", doc: Doc | None = None) -> tuple[Doc, list[bytes]]:
    """``count`` updates, each setting ``elements[f"{prefix}{i}"] = i`` in its own transaction."""
    doc = doc or Doc()
    elements = doc.get("elements", type=Map)
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(bytes(event.update)))
    for i in range(count):
        elements[f"{prefix}{i}"] = i
    doc.unobserve(subscription)
    return doc, updates


def elements_of(state: bytes | None) -> dict[str, Any]:
    doc = Doc()
    if state:
        doc.apply_update(state)
    return doc.get("elements", type=Map).to_py() or {}
