"""Nothing acknowledged is lost: restarts (graceful and kill -9) and database outages, with real clients."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from canvashub.server.errors import CloseCode

from .js_client import JsClient
from .support import wait_until
from .test_persistence import stored_elements
from .wire import WireClient, key_updates


def durable_clock(client: JsClient) -> int:
    """The highest own-clock any save event has reported durable to this client."""
    best = 0
    for event in client.events:
        if (
            event["event"] == "canvashub"
            and event["payload"].get("type") == "save"
            and event["payload"]["status"] == "saved"
        ):
            best = max(best, event["payload"]["clock"].get(str(client.client_id), 0))
    return best


async def edit(client: JsClient, key: str, value: int) -> int:
    """One edit (one update on the wire); returns this client's clock right after it."""
    await client.call("set", key=key, fields={"v": value})
    return await client.call("clock")


async def has_elements(client: JsClient, keys: set[str], timeout: float = 10.0) -> None:
    """Wait until ``client``'s document has every key in ``keys`` (re-read after each applied update)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        mark = client.mark()
        if keys <= set((await client.read())["elements"]):
            return
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"{client.name} never got {sorted(keys)}"
        await client.wait_event("update", remaining, since=mark)


@pytest.mark.parametrize("stop", ["graceful", "kill"])
async def test_acknowledged_edits_survive_a_restart(process_server_factory, storage_backend, stop, tmp_path):
    """Edit with the stock y-websocket client, stop the server (SIGTERM or SIGKILL) mid-stream,
    start it again: every edit a save event acknowledged is there."""
    env = {**storage_backend.env, "CANVASHUB_COMMIT_INTERVAL": "0.005"}
    server = await process_server_factory(env)
    base = f"ws://127.0.0.1:{server.port}/ws"
    writer = await JsClient.start(base, "restart", name="writer", events=True)
    try:
        await writer.wait_event("synced")
        clocks: dict[str, int] = {}
        for i in range(30):
            clocks[f"a{i}"] = await edit(writer, f"a{i}", i)
        await wait_until(lambda: durable_clock(writer) >= clocks["a29"], 10, "first 30 edits acknowledged")
        # More edits, then stop the server while they are still being written.
        for i in range(30):
            clocks[f"b{i}"] = await edit(writer, f"b{i}", i)
        await server.stop(signal.SIGTERM if stop == "graceful" else signal.SIGKILL)
    finally:
        writer.kill()  # the old client must not push its copy back after the restart
        await writer.close()
    acked_clock = durable_clock(writer)
    acked = {key for key, clock in clocks.items() if clock <= acked_clock}
    assert {f"a{i}" for i in range(30)} <= acked

    again = await process_server_factory(env)
    reader = await JsClient.start(f"ws://127.0.0.1:{again.port}/ws", "restart", name="reader")
    try:
        await reader.wait_event("synced")
        present = set((await reader.read())["elements"])
    finally:
        await reader.close()
    assert acked <= present, f"acknowledged but lost: {sorted(acked - present)}"
    if stop == "graceful":
        # A graceful stop flushes the backlog: what the server had received is durable too.
        assert len(present) >= len(acked)


OUTAGE_SETTINGS = dict(store_timeout=2.0, db_acquire_timeout=1.0, retry_max_delay=0.3, commit_interval=0.005)


async def test_postgres_outage_edits_continue_and_flush(server_factory, pg_proxy):
    """Postgres goes away while stock clients edit: relaying goes on, writers get `retrying`;
    when it returns the backlog flushes, writers get `saved`, and nothing is lost."""
    proxy, dsn, backend = pg_proxy
    server = await server_factory(database_url=dsn, **OUTAGE_SETTINGS)
    base = f"ws://127.0.0.1:{server.port}/ws"
    writer = await JsClient.start(base, "outage", name="writer", events=True)
    watcher = await JsClient.start(base, "outage", name="watcher")
    try:
        await writer.wait_event("synced")
        await watcher.wait_event("synced")
        last = 0
        for i in range(5):
            last = await edit(writer, f"before{i}", i)
        await wait_until(lambda: durable_clock(writer) >= last, 10, "edits before the outage acknowledged")

        proxy.cut()
        mark = writer.mark()
        for i in range(10):
            last = await edit(writer, f"during{i}", i)
        retrying = await writer.wait_event(
            "canvashub",
            15,
            since=mark,
            where=lambda e: e["payload"].get("type") == "save" and e["payload"]["status"] == "retrying",
        )
        assert retrying["payload"]["pending"] > 0
        # Relaying does not wait for the database.
        await has_elements(watcher, {f"during{i}" for i in range(10)})
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text  # an outage alone keeps the node serving
        storage = ready.json()["storage"]
        assert storage["healthy"] is False and storage["backlog_updates"] > 0 and storage["retrying"] is True
        assert durable_clock(writer) < last

        proxy.restore()
        await wait_until(lambda: durable_clock(writer) >= last, 20, "backlog flushed and acknowledged")
        assert server.hub.persister.backlog_bytes == 0
        assert not watcher.errors() and not [e for e in watcher.events if e["event"] == "unknown-message"]
    finally:
        await writer.close()
        await watcher.close()
    elements, _ = await stored_elements(backend, "outage")
    assert {f"before{i}" for i in range(5)} | {f"during{i}" for i in range(10)} <= set(elements)


async def test_room_with_unwritten_updates_is_not_unloaded(server_factory, pg_proxy):
    """The last client leaves during an outage: the room stays loaded until its updates are durable."""
    proxy, dsn, backend = pg_proxy
    server = await server_factory(database_url=dsn, room_grace_seconds=0.05, **OUTAGE_SETTINGS)
    client = await WireClient.connect(server, "pinned")
    _, updates = key_updates(6)
    await client.send_update(updates[0])
    await client.wait_save(where=lambda e: e["through"] == 1)
    proxy.cut()
    for update in updates[1:]:
        await client.send_update(update)
    await client.wait_save("retrying")
    await client.close()
    registry = server.hub.registry
    await wait_until(lambda: registry._unloading, 5, "unload to start")
    assert "pinned" in registry.rooms and server.hub.persister.backlog_updates == 5
    proxy.restore()
    await wait_until(lambda: "pinned" not in registry.rooms, 20, "unload once durable")
    elements, _ = await stored_elements(backend, "pinned")
    assert elements == {f"k{i}": float(i) for i in range(6)}


async def test_backlog_cap_refuses_writes_with_1013(server_factory, pg_proxy):
    """Past the backlog cap a write is refused (failed event, close 1013), never silently dropped;
    everything accepted before the cap is written once the database returns."""
    proxy, dsn, backend = pg_proxy
    server = await server_factory(database_url=dsn, backlog_max_bytes=2000, **OUTAGE_SETTINGS)
    other = await WireClient.connect(server, "elsewhere")
    client = await WireClient.connect(server, "capped")
    proxy.cut()
    _, updates = key_updates(400)
    sent = 0
    for update in updates:
        if client.close_code is not None:
            break
        try:
            await client.send_update(update)
        except Exception:
            break
        sent += 1
    assert await client.wait_closed() == CloseCode.TRY_AGAIN_LATER
    failed = [e for e in client.events if e.get("type") == "save" and e["status"] == "failed"]
    assert failed and failed[0]["pending"] > 0
    accepted = server.hub.persister.backlog_updates
    assert 0 < accepted < sent <= 400 and server.hub.persister.backlog_bytes <= 2000
    # Other rooms' sockets are untouched.
    assert other.close_code is None
    proxy.restore()
    await wait_until(lambda: server.hub.persister.backlog_updates == 0, 20, "backlog flushed")
    elements, _ = await stored_elements(backend, "capped")
    assert elements == {f"k{i}": float(i) for i in range(accepted)}
    await other.close()
