"""The storage-state `save` event a socket gets on joining: its clock is what storage holds, never more.

A reconnecting client learns from it (and the events after it) which of its
changes are durable; the sync step 1 state vector says only what the server's
memory holds (docs/protocol.md, "save").
"""

from __future__ import annotations

from typing import Any

from pycrdt import Doc

from canvashub.crdt.update import decode_state_vector
from canvashub.server.compaction import replay
from canvashub.server.pubsub import MemoryBroker, MemoryPubSub

from .support import wait_until
from .test_durability import OUTAGE_SETTINGS
from .test_persistence import stored_elements
from .wire import WireClient, key_updates


def storage_events(client: WireClient, status: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in client.events_of("save") if e.get("scope") == "canvas" and (status is None or e["status"] == status)
    ]


async def first_storage_event(client: WireClient) -> dict[str, Any]:
    """The first storage-state event; it comes right after `access` (no generation jobs here)."""
    await client.wait(lambda: storage_events(client), 10, "storage-state event")
    assert [e["type"] for e in client.events[:2]] == ["access", "save"], client.events[:3]
    return storage_events(client)[0]


async def test_socket_joining_during_outage_is_not_told_memory_is_saved(server_factory, pg_proxy):
    """A socket that joins while the database is down and the canvas holds unwritten changes is told
    `retrying` at once, with a clock that stops at the last commit; once the database is back a
    `saved` event covers the rest."""
    proxy, dsn, backend = pg_proxy
    server = await server_factory(database_url=dsn, **OUTAGE_SETTINGS)
    writer = await WireClient.connect(server, "outage-join")
    doc, updates = key_updates(20)
    client_id = str(doc.client_id)
    for update in updates[:5]:
        await writer.send_update(update)
    await writer.wait_save(where=lambda e: e["through"] == 5)
    proxy.cut()
    for update in updates[5:]:
        await writer.send_update(update)
    await writer.wait_save("retrying")
    persister = server.hub.persister
    await wait_until(lambda: persister.pending_updates("outage-join") == 15, 10, "15 updates queued")

    joiner = await WireClient.connect(server, "outage-join", sync=True)
    first = await first_storage_event(joiner)
    assert first["status"] == "retrying", first
    assert first["backlog"] == 15 and first["error"]
    assert first["clock"] == {client_id: 5}  # the 15 in memory only are not claimed
    assert first["through"] == 0 and first["pending"] == 0  # nothing of this socket's own
    # The sync handshake (what the server holds in memory) has all 20 all the same.
    await joiner.wait(lambda: len(joiner.elements()) == 20, 10, "all 20 in the sync step 2")
    assert not storage_events(joiner, "saved")

    proxy.restore()
    saved = (await joiner.wait(lambda: storage_events(joiner, "saved"), 20, "storage saved"))[0]
    assert saved["clock"] == {client_id: 20} and saved["backlog"] == 0
    elements, _ = await stored_elements(backend, "outage-join")
    assert elements == {f"k{i}": float(i) for i in range(20)}
    # Told `saved`, the joiner is told no more storage changes: its own writes get the usual events.
    count = len(storage_events(joiner))
    _, more = key_updates(3, "m", doc)
    for update in more:
        await writer.send_update(update)
    await writer.wait_save(where=lambda e: e["through"] == 23)
    await joiner.barrier()
    assert len(storage_events(joiner)) == count
    await writer.close()
    await joiner.close()


async def test_initial_event_with_nothing_pending_is_the_stored_state(server_factory, storage_backend):
    """With nothing pending, the initial event says `saved` with the stored state vector as its clock,
    whether the room is live or freshly loaded from storage."""
    server = await server_factory(**storage_backend.overrides, room_grace_seconds=0.05)
    fresh = await WireClient.connect(server, "stored")
    empty = await first_storage_event(fresh)
    assert empty["status"] == "saved" and empty["clock"] == {} and empty["backlog"] == 0
    _, updates = key_updates(7)
    other = Doc()
    _, others = key_updates(3, "o", other)
    for update in updates + others:
        await fresh.send_update(update)
    await fresh.wait_save(where=lambda e: e["through"] == 10)
    _, loaded = await stored_elements(storage_backend, "stored")
    stored = {str(k): v for k, v in decode_state_vector(replay(loaded, "stored", strict=True).get_state()).items()}
    assert sorted(stored.values()) == [3, 7]

    live = await WireClient.connect(server, "stored")
    assert (await first_storage_event(live))["clock"] == stored
    await live.close()
    await fresh.close()
    await wait_until(lambda: "stored" not in server.hub.registry.rooms, 10, "room unload")
    reloaded = await WireClient.connect(server, "stored")
    event = await first_storage_event(reloaded)
    assert event["status"] == "saved" and event["clock"] == stored
    await reloaded.close()


async def test_changes_relayed_from_another_process_are_not_claimed(server_factory, pg_proxy):
    """Process A cannot write (its database link is cut); its client's changes reach process B through
    pub/sub. A socket joining on B is told `saving` with a clock without them until B has stored them
    itself (takeover after 3 s without A's confirmation), then `saved`."""
    proxy, dsn, backend = pg_proxy
    broker = MemoryBroker()
    a = await server_factory(pubsub=MemoryPubSub(broker), database_url=dsn, **OUTAGE_SETTINGS)
    b = await server_factory(pubsub=MemoryPubSub(broker), database_url=backend.database_url, commit_interval=0.005)
    on_a = await WireClient.connect(a, "relayed")
    watcher = await WireClient.connect(b, "relayed", sync=True)  # B holds the canvas
    assert (await first_storage_event(watcher))["status"] == "saved"
    proxy.cut()
    doc, updates = key_updates(4)
    for update in updates:
        await on_a.send_update(update)
    room_b = b.hub.registry.rooms["relayed"]
    await wait_until(lambda: len(room_b.unconfirmed) == 4, 5, "A's changes relayed to B, unconfirmed")

    joiner = await WireClient.connect(b, "relayed")
    first = await first_storage_event(joiner)
    assert first["status"] == "saving" and first["backlog"] == 4, first
    assert str(doc.client_id) not in first["clock"]
    saved = (await joiner.wait(lambda: storage_events(joiner, "saved"), 15, "B takes over and stores"))[0]
    assert saved["clock"] == {str(doc.client_id): 4}
    elements, _ = await stored_elements(backend, "relayed")
    assert elements == {f"k{i}": float(i) for i in range(4)}
    proxy.restore()
    for client in (on_a, watcher, joiner):
        await client.close()
