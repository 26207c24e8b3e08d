"""Room lifecycle: one load in flight, unload after the grace period, graceful shutdown."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from pycrdt import Doc, Map

from canvashub.crdt import codec

from .support import wait_until
from .test_smoke import make_update


async def test_concurrent_joins_share_one_load(live_server):
    """Twenty clients opening a new canvas at the same instant cause exactly one load."""
    registry = live_server.hub.registry
    original = registry._loader
    calls = 0
    release = asyncio.Event()

    async def slow_loader(canvas_id):
        nonlocal calls
        calls += 1
        await release.wait()
        return await original(canvas_id)

    registry._loader = slow_loader
    connecting = [asyncio.create_task(live_server.connect("busy")) for _ in range(20)]
    await wait_until(lambda: calls == 1 and "busy" in registry._loading, 5, "the load to start")
    release.set()
    sockets = await asyncio.gather(*connecting)
    for ws in sockets:
        assert isinstance(codec.parse_frame(await asyncio.wait_for(ws.recv(), 5)), codec.SyncStep1)
    assert calls == 1
    assert len(registry.rooms["busy"].connections) == 20
    await asyncio.gather(*(ws.close() for ws in sockets))


async def test_room_unloads_after_grace_and_keeps_state(server_factory):
    """An empty room unloads after the grace period; rejoining finds its content."""
    live = await server_factory(room_grace_seconds=0.2)
    ws = await live.connect("grace")
    await ws.recv()
    await ws.send(codec.encode_update(make_update("kept", 1)))
    await wait_until(lambda: live.hub.metrics.frames_received >= 1, 5, "the update to arrive")
    await ws.close()
    await wait_until(lambda: "grace" not in live.hub.registry.rooms, 5, "the room to unload")
    again = await live.connect("grace")
    await again.recv()
    await again.send(codec.encode_sync_step1(Doc().get_state()))
    step2 = codec.parse_frame(await asyncio.wait_for(again.recv(), 5))
    doc = Doc()
    doc.apply_update(step2.update)
    assert doc.get("elements", type=Map).to_py() == {"kept": 1.0}
    await again.close()


async def test_rejoin_during_grace_reuses_room(server_factory):
    """A client that comes back within the grace period gets the same loaded room."""
    live = await server_factory(room_grace_seconds=30)
    ws = await live.connect("back")
    await ws.recv()
    room = live.hub.registry.rooms["back"]
    await ws.close()
    await wait_until(lambda: not room.connections, 5, "the client to leave")
    again = await live.connect("back")
    await again.recv()
    assert live.hub.registry.rooms["back"] is room
    await again.close()


@pytest.mark.usefixtures("each_transport")
async def test_graceful_shutdown_flushes_then_closes_1001(server_factory):
    """On shutdown every queued frame is delivered before the close frame, which is 1001."""
    live = await server_factory()
    sender = await live.connect("bye")
    receiver = await live.connect("bye")
    await sender.recv(), await receiver.recv()
    frames = [codec.encode_update(make_update(f"k{i}", i)) for i in range(300)]
    for frame in frames:
        await sender.send(frame)
    await wait_until(lambda: live.hub.metrics.frames_received >= 300, 10, "all updates to arrive")
    stopping = asyncio.create_task(live.stop())
    received = []
    try:
        while True:
            received.append(await asyncio.wait_for(receiver.recv(), 10))
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1001
    await stopping
    assert [f for f in received if f[:2] == b"\x00\x02"] == frames
