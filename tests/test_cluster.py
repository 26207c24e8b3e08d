"""Several hubs as one cluster, in this process: in-process pub/sub nodes on one broker, one store.

The multi-process acceptance run (real processes, Redis, Postgres, stock clients) is
tests/test_scale_out.py; these pin down the relay rules quickly on both stores.
"""

from __future__ import annotations

import time

import httpx
import orjson
from pycrdt import Map

from canvashub.crdt import codec
from canvashub.crdt.awareness import AwarenessEntry, encode_awareness_payload
from canvashub.crdt.update import decode_state_vector
from canvashub.server.compaction import replay
from canvashub.server.pubsub import MemoryBroker, MemoryPubSub

from .wire import WireClient, key_updates


async def cluster(server_factory, storage_backend, count: int = 2, **overrides):
    broker = MemoryBroker()
    return [
        await server_factory(pubsub=MemoryPubSub(broker), **storage_backend.overrides, **overrides)
        for _ in range(count)
    ]


async def test_edits_cross_processes_and_are_stored_once(server_factory, storage_backend):
    """Each change is stored once, by the process its client sent it to, once the other process's
    changes are confirmed durable (``d``) before this one's clients write. (Writes that race an
    unconfirmed relayed change store that change again, conditionally: see docs/architecture.md.)"""
    a, b = await cluster(server_factory, storage_backend)
    on_a = await WireClient.connect(a, "x", sync=True)
    on_b = await WireClient.connect(b, "x", sync=True)
    _, updates = key_updates(50, "a")
    for update in updates:
        await on_a.send_update(update)
    await on_a.wait_save(where=lambda e: e["through"] == 50)
    await on_b.wait(lambda: len(on_b.elements()) == 50, 10, "a's edits on b")
    room_b = b.hub.registry.rooms["x"]
    await on_b.wait(lambda: not room_b.unconfirmed, 5, "a's edits confirmed durable to b")
    _, more = key_updates(50, "b")
    for update in more:
        await on_b.send_update(update)
    # A client's own changes are not echoed to it: each sees the other's, and both rooms hold all.
    await on_a.wait(lambda: set(on_a.elements()) == {f"b{i}" for i in range(50)}, 10, "b's edits on a")
    await on_b.wait(lambda: set(on_b.elements()) == {f"a{i}" for i in range(50)}, 10, "a's edits on b")
    rooms = [server.hub.registry.rooms["x"].document.doc for server in (a, b)]
    assert decode_state_vector(rooms[0].get_state()) == decode_state_vector(rooms[1].get_state())
    assert len(rooms[0].get("elements", type=Map)) == 100
    await on_b.wait_save(where=lambda e: e["through"] == 50)
    await a.hub.persister.flush(5), await b.hub.persister.flush(5)
    store = storage_backend.make_store()
    await store.open()
    try:
        loaded = await store.load("x")
        assert len(loaded.updates) == 100  # each change stored once, by the process that received it
    finally:
        await store.close()
    await on_a.close(), await on_b.close()


async def test_newcomer_process_gets_changes_not_yet_durable(server_factory, storage_backend):
    """B opens the canvas while A holds updates it has relayed but not committed (a 3 s commit window):
    B's client still gets them at once, from A's answer to B's state vector."""
    broker = MemoryBroker()
    a = await server_factory(pubsub=MemoryPubSub(broker), commit_interval=3.0, **storage_backend.overrides)
    b = await server_factory(pubsub=MemoryPubSub(broker), **storage_backend.overrides)
    writer = await WireClient.connect(a, "burst", sync=True)
    _, updates = key_updates(200, "k")
    for update in updates[:100]:
        await writer.send_update(update)
    await writer.barrier()
    assert a.hub.persister.backlog_updates > 0  # not durable yet
    started = time.monotonic()
    late = await WireClient.connect(b, "burst", sync=True)
    for update in updates[100:]:  # the burst goes on while B joins
        await writer.send_update(update)
    await late.wait(lambda: len(late.elements()) == 200, 10, "newcomer has everything")
    assert time.monotonic() - started < 2.5  # before A's commit window ended
    await writer.close(), await late.close()


async def test_concurrent_writes_store_every_change_and_a_dead_senders_changes(server_factory, storage_backend):
    """Both processes write at once: every change is stored (some twice, never none). Changes B relayed
    but never confirmed (B's store is unreachable, as if B had died) are stored by A after the timeout."""
    a, b = await cluster(server_factory, storage_backend)
    on_a = await WireClient.connect(a, "y", sync=True)
    on_b = await WireClient.connect(b, "y", sync=True)
    _, ups_a = key_updates(40, "a")
    _, ups_b = key_updates(40, "b")
    for ua, ub in zip(ups_a, ups_b, strict=True):
        await on_a.send_update(ua)
        await on_b.send_update(ub)
    await on_a.wait_save(where=lambda e: e["through"] == 40)
    await on_b.wait_save(where=lambda e: e["through"] == 40)
    b.hub.persister.on_committed = None  # B stops confirming: to A, B's next changes are never confirmed
    _, late = key_updates(5, "late")
    for update in late:
        await on_b.send_update(update)
    room_a = a.hub.registry.rooms["y"]
    await on_a.wait(lambda: len(on_a.elements()) == 45, 10, "late edits relayed")
    await on_a.wait(lambda: not room_a.unconfirmed, 10, "A takes over after the timeout")
    await a.hub.persister.flush(5), await b.hub.persister.flush(5)
    store = storage_backend.make_store()
    await store.open()
    try:
        loaded = await store.load("y")
        doc = replay(loaded, "y", strict=True)
        assert len(doc.get("elements", type=Map)) == 85
        assert 85 <= len(loaded.updates) <= 2 * 85
    finally:
        await store.close()
    assert a.hub.cluster.taken_over >= 5
    await on_a.close(), await on_b.close()


async def test_presence_crosses_and_leaves_and_echoes_are_ignored(server_factory, storage_backend):
    """Presence crosses processes, reaches newcomers and leaves with its owner; an echo does not make it another's."""
    a, b = await cluster(server_factory, storage_backend)
    alice = await WireClient.connect(a, "p")
    bob = await WireClient.connect(b, "p")
    await alice.ws.send(
        codec.encode_awareness(
            encode_awareness_payload([AwarenessEntry(11, 1, orjson.dumps({"user": {"name": "Alice"}}))])
        )
    )
    await bob.wait(lambda: bob.awareness_states().get(11) == {"user": {"name": "Alice"}}, 5, "alice's presence on b")
    # Bob's stock client would echo Alice's state back: it must not become Bob's on B.
    await bob.ws.send(
        codec.encode_awareness(
            encode_awareness_payload([AwarenessEntry(11, 1, orjson.dumps({"user": {"name": "Alice"}}))])
        )
    )
    late = await WireClient.connect(b, "p")  # newcomers on B see Alice too
    await late.wait(lambda: 11 in late.awareness_states(), 5, "presence for newcomers")
    await bob.close()
    await late.barrier()
    assert late.awareness_states()[11] == {"user": {"name": "Alice"}}  # bob's departure did not remove alice
    await alice.close()
    await late.wait(lambda: late.awareness_states().get(11, 0) is None, 5, "alice's departure crosses")
    await late.close()


async def test_http_writes_and_deletes_reach_every_process(server_factory, storage_backend):
    """An HTTP edit on one process reaches sockets on the other, and a delete there closes them with 4404."""
    a, b = await cluster(server_factory, storage_backend)
    on_b = await WireClient.connect(b, "h", sync=True)
    async with httpx.AsyncClient(base_url=a.http_url) as http:
        assert (await http.patch("/api/canvases/h/elements/e1", json={"fill": "red"})).status_code == 200
        await on_b.wait(lambda: on_b.elements().get("e1") == {"fill": "red"}, 5, "http edit on b")
        assert (await http.delete("/api/canvases/h")).status_code == 204
    assert await on_b.wait_closed(5) == 4404


async def test_a_change_taken_over_conditionally_is_written_however_late_its_batch(server_factory, monkeypatch):
    """A relayed change queued for storage here "unless its sender confirms it" is still written when its
    batch forms long after (a long outage), as long as the sender never confirmed it: no age limit."""
    from canvashub.server import cluster as cluster_module

    server = await server_factory(commit_interval=30.0)  # queued changes wait: the "outage"
    client = await WireClient.connect(server, "late")
    await client.barrier()
    room = server.hub.registry.rooms["late"]
    _, updates = key_updates(1, "peer")
    room.document.apply_update(updates[0])
    room.unconfirmed[("other-node", 1)] = (updates[0], time.monotonic())
    room.take_over(conditional=True)
    monkeypatch.setattr(cluster_module, "PEER_COMMIT_TIMEOUT", -3600.0)  # as if an hour had passed
    server.hub.cluster.take_over_stale()
    assert await server.hub.persister.flush(10)
    stored = await server.hub.store.load("late")
    doc = replay(stored, "late", strict=True)
    assert doc.get("elements", type=Map).to_py() == {"peer0": 0}
    await client.close()
