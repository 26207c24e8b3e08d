"""Basic behaviour over real sockets with a raw websockets client."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets
from pycrdt import Doc, Map

from canvashub.crdt import codec


def make_update(key: str, value) -> bytes:
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    doc.get("elements", type=Map)[key] = value
    return updates[0]


async def test_server_sends_step1_on_connect(live_server):
    """The first frame a client receives is the server's sync step 1."""
    ws = await live_server.connect("c1")
    frame = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(codec.parse_frame(frame), codec.SyncStep1)
    await ws.close()


@pytest.mark.usefixtures("each_transport")
async def test_update_relayed_and_exported(live_server):
    """An update from one client reaches the other and shows in the JSON export."""
    a = await live_server.connect("c2")
    b = await live_server.connect("c2")
    await a.recv(), await b.recv()
    frame = codec.encode_update(make_update("k", "v"))
    await a.send(frame)
    assert await asyncio.wait_for(b.recv(), 5) == frame
    async with httpx.AsyncClient(base_url=live_server.http_url) as http:
        body = (await http.get("/api/canvases/c2")).json()
    assert body["elements"] == {"k": "v"}
    await a.close(), await b.close()


@pytest.mark.usefixtures("each_transport")
async def test_invalid_canvas_id_rejected_at_upgrade(live_server):
    """A canvas id with forbidden characters is refused with HTTP 400 before the upgrade."""
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(f"ws://127.0.0.1:{live_server.port}/ws/" + "x" * 65)
    assert info.value.response.status_code == 400


async def test_health_and_readiness(live_server):
    """Liveness and readiness endpoints answer JSON."""
    async with httpx.AsyncClient(base_url=live_server.http_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = (await http.get("/readyz")).json()
    assert ready["status"] == "ready"
