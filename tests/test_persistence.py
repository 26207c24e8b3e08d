"""The write path on a live server, on SQLite and on Postgres: durable acks, group commit, compaction, events."""

from __future__ import annotations

from typing import Any

import httpx
from pycrdt import Doc

from canvashub.crdt import codec
from canvashub.server.compaction import replay
from canvashub.server.errors import CloseCode

from .support import StorageBackend, wait_until
from .wire import WireClient, elements_of, key_updates


async def stored_elements(backend: StorageBackend, canvas_id: str) -> tuple[dict[str, Any], Any]:
    """What a fresh process would load: snapshot + log, replayed."""
    store = backend.make_store()
    await store.open()
    try:
        loaded = await store.load(canvas_id)
    finally:
        await store.close()
    if loaded is None:
        return {}, None
    return elements_of(replay(loaded, canvas_id, strict=True).get_update()), loaded


async def test_updates_are_acknowledged_once_durable(server_factory, storage_backend):
    """Every update is relayed, committed, and acknowledged with a save event carrying through/pending/clock."""
    server = await server_factory(**storage_backend.overrides)
    writer = await WireClient.connect(server, "acks")
    peer = await WireClient.connect(server, "acks", events=False)
    doc, updates = key_updates(20)
    for update in updates:
        await writer.send_update(update)
    event = await writer.wait_save(where=lambda e: e["through"] == 20)
    assert event["pending"] == 0
    assert event["clock"] == {str(doc.client_id): 20}
    assert isinstance(event["seq"], int)
    # The peer got every update relayed, and (not opted in) no event frame.
    await peer.wait(lambda: sum(f[:2] == b"\x00\x02" for f in peer.frames) == 20, what="relayed updates")
    assert not peer.events
    elements, loaded = await stored_elements(storage_backend, "acks")
    assert elements == {f"k{i}": float(i) for i in range(20)}
    # Group commit: 20 updates sent back to back do not take 20 round trips.
    assert server.hub.metrics.batches_committed < 20


async def test_events_go_only_to_opted_in_sockets(server_factory):
    """A socket without ?events=1 never receives a type-100 frame, even for its own durable writes."""
    server = await server_factory()
    stock = await WireClient.connect(server, "quiet", events=False)
    _, updates = key_updates(5)
    for update in updates:
        await stock.send_update(update)
    await wait_until(lambda: server.hub.metrics.updates_committed >= 5, 10, "commit")
    # Frames are ordered: once the reply to a query-awareness arrives, any event sent before it has too.
    await stock.ws.send(codec.encode_query_awareness())
    await stock.wait(lambda: any(f[0] == codec.MSG_AWARENESS for f in stock.frames), what="awareness reply")
    assert not [f for f in stock.frames if f[0] == codec.MSG_EVENT]


async def test_invalid_update_is_never_stored(server_factory, storage_backend):
    """Bytes that fail to apply close the socket with 1007 and never reach the log."""
    server = await server_factory(**storage_backend.overrides)
    client = await WireClient.connect(server, "junk")
    await client.send_update(b"\x01\x01\xff\xff\xff\x0f\x00\x07\x00")
    assert await client.wait_closed() == CloseCode.INVALID_PAYLOAD
    good = await WireClient.connect(server, "junk")
    _, updates = key_updates(1)
    await good.send_update(updates[0])
    await good.wait_save(where=lambda e: e["through"] == 1)
    elements, loaded = await stored_elements(storage_backend, "junk")
    assert elements == {"k0": 0.0}
    assert len(loaded.updates) + (1 if loaded.snapshot else 0) >= 1
    for _, row in loaded.updates:
        Doc().apply_update(row)  # every stored row applies


async def test_compaction_folds_the_log_into_versions(server_factory, storage_backend):
    """Every N updates the log is merged into a new snapshot version; loads stay complete."""
    server = await server_factory(**storage_backend.overrides, compact_every_updates=10)
    client = await WireClient.connect(server, "compact")
    _, updates = key_updates(35)
    for i, update in enumerate(updates, 1):
        await client.send_update(update)
        if i % 10 == 0:  # let each batch cross the threshold on its own
            await client.wait_save(where=lambda e, i=i: e["through"] == i)
    await client.wait_save(where=lambda e: e["through"] == 35)
    await wait_until(lambda: server.hub.metrics.compactions >= 3, 20, "three compactions")
    elements, loaded = await stored_elements(storage_backend, "compact")
    assert elements == {f"k{i}": float(i) for i in range(35)}
    assert loaded.version >= 3
    assert len(loaded.updates) < 10
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        versions = (await http.get("/api/canvases/compact/versions")).json()["versions"]
    numbers = [v["number"] for v in versions]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) >= 3


async def test_room_reload_after_unload_reads_the_store(server_factory, storage_backend):
    """A room unloaded after its grace period comes back from storage with every update."""
    server = await server_factory(**storage_backend.overrides, room_grace_seconds=0.05)
    client = await WireClient.connect(server, "reload")
    _, updates = key_updates(7)
    for update in updates:
        await client.send_update(update)
    await client.wait_save(where=lambda e: e["through"] == 7)
    await client.close()
    await wait_until(lambda: "reload" not in server.hub.registry.rooms, 10, "room unload")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        body = (await http.get("/api/canvases/reload")).json()
    assert body["elements"] == {f"k{i}": float(i) for i in range(7)}
