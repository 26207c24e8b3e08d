"""Races around room unload and canvas delete: durable-before-unload, no resurrection after delete."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pycrdt import Doc, Map

from canvashub.server.app import create_app
from canvashub.server.hub import Hub
from canvashub.server.settings import Settings


def key_update(key: str, value: float, client_id: int) -> bytes:
    doc = Doc(client_id=client_id)
    doc.get("elements", type=Map)[key] = value
    return doc.get_update()


async def make_hub(tmp_path, **overrides) -> tuple[Hub, Any, Callable[[], Awaitable[Any]]]:
    """A hub built and started by the composition root, with no HTTP server: (hub, store, stop)."""
    settings = Settings(
        data_dir=str(tmp_path),
        room_grace_seconds=0.0,
        commit_interval=0.0,
        compact_every_updates=10**9,
        compact_interval=3600.0,
        **overrides,
    )
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    hub = app.state.hub
    return hub, hub.store, lambda: lifespan.__aexit__(None, None, None)


async def elements(hub: Hub, canvas_id: str) -> dict | None:
    found = await hub.export_canvas(canvas_id, binary=False)
    if found is None:
        return None
    return orjson.loads(found.body)["elements"]


async def test_room_is_not_unloaded_while_a_write_made_after_the_durable_wait_is_pending(tmp_path):
    """rooms.py _finish_unload: after wait_durable() resolves, the unloading task resumes one loop
    turn later. A write that runs in between (e.g. an HTTP request task that was already ready)
    acquires the still-registered room, submits, releases; the room is then deleted from the
    registry with that write not durable, and the next acquire/read reloads a document without it
    (docs/architecture.md: a room "stays registered until every update it received is durable")."""
    hub, store, stop = await make_hub(tmp_path)
    gate = asyncio.Event()
    real_append = store.append_updates
    calls = 0

    async def append(rows):
        nonlocal calls
        calls += 1
        if calls > 1:
            await gate.wait()  # the second commit is slow (any store latency)
        return await real_append(rows)

    store.append_updates = append  # type: ignore[method-assign]

    # An "HTTP request" task that becomes ready in the loop turn in which update 1 is acknowledged.
    ready = asyncio.get_running_loop().create_future()
    second: list = []

    async def http_write() -> None:
        await ready
        _, done = await hub.write("c", lambda document: document.apply_update(key_update("b", 2.0, 2)))
        second.append(done)

    writer = asyncio.create_task(http_write())
    real_ack = hub.persister._acknowledge

    def acknowledge(batch, seqs):
        if not ready.done():
            ready.set_result(None)  # wakes before the unloading task, which set_result below wakes
        real_ack(batch, seqs)

    hub.persister._acknowledge = acknowledge  # type: ignore[method-assign]
    try:
        room = await hub.registry.acquire("c")
        room.apply_local(room.document.apply_update(key_update("a", 1.0, 1)))
        hub.registry.release(room)  # grace 0: unload starts, waits for update 1 to be durable
        await writer
        # Kept on purpose: this checks that something does NOT happen (the unload finishing early), so
        # there is no event to wait for; 20 short sleeps give a wrong unload many loop turns to show itself.
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not hub.persister.is_durable("c"), "precondition: update 2 is still pending"
        # Invariant: a room with updates not yet durable stays registered ...
        assert "c" in hub.registry.rooms, "room unloaded while one of its updates was not durable"
        # ... so readers and joiners see update 2, which was already relayed and will be stored.
        assert await elements(hub, "c") == {"a": 1.0, "b": 2.0}
    finally:
        gate.set()
        for done in second:
            if done is not None:
                await asyncio.wait_for(asyncio.shield(done), 5)
        await stop()


async def test_delete_during_a_room_load_does_not_resurrect_the_canvas(tmp_path):
    """hub.delete_canvas vs RoomRegistry.acquire: a load already in flight when the delete runs
    registers a room holding the deleted content after forget() ran. The deleted canvas is then
    served (GET), joined, and any edit to it recreates the canvas in the store."""
    hub, store, stop = await make_hub(tmp_path)
    # The first load reads the canvas, then holds its answer until the delete has run.
    loaded, release = asyncio.Event(), asyncio.Event()
    real_load = store.load

    async def load(canvas_id):
        found = await real_load(canvas_id)
        if not loaded.is_set():
            loaded.set()
            await release.wait()
        return found

    store.load = load  # type: ignore[method-assign]
    try:
        await store.append_updates([("c", key_update("a", 1.0, 1))])
        acquiring = asyncio.create_task(hub.registry.acquire("c"))
        await asyncio.wait_for(loaded.wait(), 5)  # the load is in flight, holding the content
        assert await hub.delete_canvas("c")
        release.set()
        room = await asyncio.wait_for(acquiring, 5)  # e.g. a WebSocket client that connected just before the DELETE
        try:
            assert await store.load("c") is None, "precondition: the canvas is deleted in the store"
            assert await elements(hub, "c") is None, "deleted canvas still served from a resurrected room"
        finally:
            hub.registry.release(room)
    finally:
        await stop()
