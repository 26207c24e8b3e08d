"""The admin API (issue 15, item 3): live canvases and sessions across processes, disconnects, locks.

Clusters here are two servers in this process on one ``MemoryBroker`` (or on the real Redis) and one
store (SQLite and Postgres), with real sockets and tokens.
"""

from __future__ import annotations

import os
import uuid

import httpx
import pytest
from pycrdt import Map

from canvashub.client import AccessForbidden, Backoff, Canvas, HttpClient, HttpError
from canvashub.crdt import codec
from canvashub.crdt.codec import Reader
from canvashub.server.auth import mint_token
from canvashub.server.directory import ADMIN_CHANNEL, HEARTBEAT
from canvashub.server.pubsub import MemoryBroker, MemoryPubSub, RedisPubSub

from .js_client import JsClient
from .support import skip_or_fail, wait_until
from .wire import WireClient, key_updates

SECRET = "admin-test-secret-" + "x" * 32
AUTH = {"auth_secret": SECRET}
REDIS_URL = os.environ.get("CANVASHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def token(role: str = "editor", user: str = "alice", canvas: str = "*", name: str | None = None) -> str:
    return mint_token(SECRET, canvas=canvas, role=role, user=user, name=name)


ADMIN = {"Authorization": f"Bearer {token('admin', 'root')}"}


async def cluster(server_factory, overrides: dict, count: int = 2, pubsubs=None):
    """``count`` servers on one broker (or the given pub/sub nodes) and one store, each knowing the others."""
    broker = MemoryBroker()
    pubsubs = pubsubs or [MemoryPubSub(broker) for _ in range(count)]
    servers = [await server_factory(pubsub=pubsub, **AUTH, **overrides) for pubsub in pubsubs]
    for server in servers:
        directory = server.app.state.directory
        others = {s.app.state.directory.node_id for s in servers if s is not server}
        await wait_until(lambda d=directory, o=others: o <= d.live_nodes(), 5, "processes know each other")
    return servers


def node_of(server) -> str:
    return server.app.state.directory.node_id


async def test_rooms_and_sessions_across_processes(server_factory, storage_backend):
    """GET /api/rooms merges every process's live canvases (connections, users, backlog, nodes), paged by id;
    GET /api/canvases/{id}/sessions lists every socket on a canvas, on every process, paged by session id."""
    a, b = await cluster(server_factory, storage_backend.overrides)
    alice = await WireClient.connect(a, "c1", sync=True, token=token("editor", "alice", name="Alice"))
    bob = await WireClient.connect(b, "c1", sync=True, token=token("viewer", "bob"))
    carol = await WireClient.connect(b, "c2", sync=True, token=token("editor", "carol"))
    for client in (alice, bob, carol):
        await client.barrier()
    async with httpx.AsyncClient(base_url=a.http_url, headers=ADMIN, timeout=10) as http:
        listed = (await http.get("/api/rooms")).json()
        assert sorted(listed["nodes"]) == sorted([node_of(a), node_of(b)]) and listed["missing_nodes"] == []
        assert [room["id"] for room in listed["rooms"]] == ["c1", "c2"] and listed["next_cursor"] is None
        c1, c2 = listed["rooms"]
        assert c1["connections"] == 2 and c2["connections"] == 1
        assert sorted((u["id"], u["name"]) for u in c1["users"]) == [("alice", "Alice"), ("bob", "bob")]
        assert sorted((n["node"], n["connections"]) for n in c1["nodes"]) == sorted([(node_of(a), 1), (node_of(b), 1)])
        assert c2["nodes"] == [{"node": node_of(b), "connections": 1, "backlog": 0}] and not c1["locked"]
        first = (await http.get("/api/rooms", params={"limit": 1})).json()
        assert [room["id"] for room in first["rooms"]] == ["c1"] and first["next_cursor"] == "c1"
        second = (await http.get("/api/rooms", params={"limit": 1, "cursor": "c1"})).json()
        assert [room["id"] for room in second["rooms"]] == ["c2"] and second["next_cursor"] is None
        assert (await http.get("/api/rooms", params={"cursor": "bad id!"})).status_code == 400

        sessions = (await http.get("/api/canvases/c1/sessions")).json()["sessions"]
        by_user = {s["user_id"]: s for s in sessions}
        assert set(by_user) == {"alice", "bob"}
        assert by_user["alice"]["node"] == node_of(a) and by_user["bob"]["node"] == node_of(b)
        assert by_user["alice"]["role"] == "editor" and by_user["bob"]["role"] == "viewer"
        assert by_user["bob"]["may_write"] is False and by_user["alice"]["name"] == "Alice"
        assert all(s["ip"] == "127.0.0.1" and s["protocol"] == "y-websocket" and s["connected_at"] for s in sessions)
        assert [s["id"] for s in sessions] == sorted(s["id"] for s in sessions)
        page = (await http.get("/api/canvases/c1/sessions", params={"limit": 1})).json()
        assert page["sessions"] == sessions[:1] and page["next_cursor"] == sessions[0]["id"]
        rest = (await http.get("/api/canvases/c1/sessions", params={"cursor": page["next_cursor"]})).json()
        assert rest["sessions"] == sessions[1:] and rest["next_cursor"] is None
        assert (await http.get("/api/canvases/nobody/sessions")).json()["sessions"] == []
    for client in (alice, bob, carol):
        await client.close()


async def test_disconnect_one_user_then_everyone_on_every_process(server_factory, storage_backend):
    """POST /disconnect with a user id closes that user's sockets on every process with 4403 and no one else's;
    without a body it closes everyone's."""
    a, b = await cluster(server_factory, storage_backend.overrides)
    alice_a = await WireClient.connect(a, "room", sync=True, token=token("editor", "alice"))
    alice_b = await WireClient.connect(b, "room", sync=True, token=token("editor", "alice"))
    bob_b = await WireClient.connect(b, "room", sync=True, token=token("editor", "bob"))
    elsewhere = await WireClient.connect(b, "other", sync=True, token=token("editor", "alice"))
    for client in (alice_a, alice_b, bob_b, elsewhere):
        await client.barrier()
    async with httpx.AsyncClient(base_url=a.http_url, headers=ADMIN, timeout=10) as http:
        answer = await http.post("/api/canvases/room/disconnect", json={"user_id": "alice"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["disconnected"] == 2 and answer.json()["missing_nodes"] == []
        assert await alice_a.wait_closed() == 4403 and await alice_b.wait_closed() == 4403
        await bob_b.barrier()  # still served
        await elsewhere.barrier()  # the same user on another canvas stays
        assert not bob_b.closed and not elsewhere.closed
        assert (await http.post("/api/canvases/room/disconnect", json={"user_id": ""})).status_code == 422
        assert (await http.post("/api/canvases/room/disconnect", content=b"{")).status_code == 400
        everyone = await http.post("/api/canvases/room/disconnect")
        assert everyone.status_code == 200 and everyone.json()["disconnected"] == 1
        assert await bob_b.wait_closed() == 4403
        listed = (await http.get("/api/canvases/room/sessions")).json()
        assert listed["sessions"] == []
    await elsewhere.close()


async def test_lock_refuses_writes_on_every_process_and_unlock_restores(server_factory, storage_backend):
    """A lock reaches the canvas's rooms on every process: sockets' updates are dropped (``denied``), HTTP
    writes get 423 ``locked``; unlocking lets writes through again, everywhere."""
    a, b = await cluster(server_factory, storage_backend.overrides)
    on_a = await WireClient.connect(a, "frozen", sync=True, token=token("editor", "alice"))
    on_b = await WireClient.connect(b, "frozen", sync=True, token=token("editor", "bob"))
    doc, updates = key_updates(2, "k")
    await on_a.send_update(updates[0])
    await on_a.wait_save(where=lambda e: e.get("through") == 1)  # stored: the canvas exists
    async with (
        httpx.AsyncClient(base_url=a.http_url, headers=ADMIN, timeout=10) as admin_a,
        httpx.AsyncClient(base_url=b.http_url, headers=ADMIN, timeout=10) as admin_b,
    ):
        assert (await admin_a.put("/api/canvases/never-made/lock")).status_code == 404
        locked = await admin_a.put("/api/canvases/frozen/lock")
        assert locked.status_code == 200 and locked.json() == {"id": "frozen", "locked": True}
        for client in (on_a, on_b):
            await client.wait(lambda c=client: {"type": "lock", "locked": True} in c.events, 5, "lock event")
        await on_b.send_update(updates[1])
        denied = await on_b.wait(lambda: on_b.events_of("denied"), 5, "denied event")
        assert "locked" in denied[0]["reason"]
        refused = await admin_b.patch("/api/canvases/frozen/elements/e1", json={"x": 1})
        assert refused.status_code == 423 and refused.json()["error"]["type"] == "locked"
        rooms = (await admin_b.get("/api/rooms")).json()["rooms"]
        assert [room["locked"] for room in rooms if room["id"] == "frozen"] == [True]
        for server in (a, b):
            elements = server.hub.registry.rooms["frozen"].document.doc.get("elements", type=Map)
            assert set(elements.keys()) == {"k0"}  # nothing of the refused writes

        seen = len(on_b.frames)
        unlocked = await admin_b.delete("/api/canvases/frozen/lock")
        assert unlocked.status_code == 200 and unlocked.json() == {"id": "frozen", "locked": False}
        await on_a.wait(lambda: {"type": "lock", "locked": False} in on_a.events, 5, "unlock event")
        patched = await admin_a.patch("/api/canvases/frozen/elements/e1", json={"x": 1})
        assert patched.status_code == 200, patched.text
        await on_b.wait(lambda: "e1" in on_b.elements(), 5, "the write after unlock, relayed")
        # Unlocking asks each socket for what the server lacks (sync step 1), as a stock provider answers it:
        # the change refused while locked arrives now.
        step1 = await on_b.wait(
            lambda: next((f for f in on_b.frames[seen:] if f[:2] == b"\x00\x00"), None), 5, "sync step 1"
        )
        reader = Reader(step1)
        reader.var_uint()  # message type: sync
        reader.var_uint()  # sync step 1
        await on_b.ws.send(codec.encode_sync_step2(doc.get_update(reader.var_bytes())))
        await on_a.wait(lambda: "k1" in on_a.elements(), 5, "the change refused while locked, after unlock")
        _, later = key_updates(1, "after")
        await on_b.send_update(later[0])
        await on_a.wait(lambda: "after0" in on_a.elements(), 5, "a socket's write after unlock, relayed")
    await on_a.close(), await on_b.close()


async def test_lock_survives_a_restart_and_a_room_loading_a_locked_canvas_starts_locked(
    server_factory, storage_backend
):
    """The lock is stored: after every process restarts, the canvas loads locked (sockets' writes dropped,
    HTTP writes 423) until it is unlocked."""
    first = await server_factory(**AUTH, **storage_backend.overrides)
    async with httpx.AsyncClient(base_url=first.http_url, headers=ADMIN, timeout=10) as http:
        assert (await http.patch("/api/canvases/kept/elements/e1", json={"x": 1})).status_code == 200
        assert (await http.put("/api/canvases/kept/lock")).status_code == 200
    await first.stop()
    second = await server_factory(**AUTH, **storage_backend.overrides)
    async with httpx.AsyncClient(base_url=second.http_url, headers=ADMIN, timeout=10) as http:
        refused = await http.patch("/api/canvases/kept/elements/e2", json={"x": 2})
        assert refused.status_code == 423
        writer = await WireClient.connect(second, "kept", sync=True, token=token("editor", "alice"))
        await writer.wait(lambda: {"type": "lock", "locked": True} in writer.events, 5, "lock event on join")
        _, updates = key_updates(1, "w")
        await writer.send_update(updates[0])
        await writer.wait(lambda: writer.events_of("denied"), 5, "denied event")
        assert (await http.delete("/api/canvases/kept/lock")).status_code == 200
        assert (await http.patch("/api/canvases/kept/elements/e2", json={"x": 2})).status_code == 200
        assert set(writer.elements()) >= {"e1"}
        await writer.wait(lambda: "e2" in writer.elements(), 5, "the write after unlock")
        await writer.close()


async def test_a_silent_process_is_named_and_does_not_hold_the_answer(server_factory, tmp_path):
    """A process that was heard from but does not answer is listed in ``missing_nodes`` after the query
    timeout; the answer holds everyone else's part."""
    broker = MemoryBroker()
    a = await server_factory(pubsub=MemoryPubSub(broker), **AUTH, data_dir=str(tmp_path))
    silent = MemoryPubSub(broker)
    await silent.start()
    try:
        silent.publish(ADMIN_CHANNEL, HEARTBEAT + b"{}")  # heard once, then never answers
        directory = a.app.state.directory
        await wait_until(lambda: silent.node_id in directory.live_nodes(), 5, "the silent process heard")
        client = await WireClient.connect(a, "here", sync=True, token=token())
        await client.barrier()
        async with httpx.AsyncClient(base_url=a.http_url, headers=ADMIN, timeout=10) as http:
            listed = (await http.get("/api/rooms")).json()
        assert listed["missing_nodes"] == [silent.node_id] and listed["nodes"] == [node_of(a)]
        assert [room["id"] for room in listed["rooms"]] == ["here"]
        await client.close()
    finally:
        await silent.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/rooms"),
        ("GET", "/api/canvases/c/sessions"),
        ("POST", "/api/canvases/c/disconnect"),
        ("PUT", "/api/canvases/c/lock"),
        ("DELETE", "/api/canvases/c/lock"),
    ],
)
async def test_admin_endpoints_need_the_admin_role(server_factory, tmp_path, method, path):
    """No token: 401; an owner's or editor's token for every canvas, or an admin token for another canvas: 403."""
    server = await server_factory(**AUTH, data_dir=str(tmp_path))
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        assert (await http.request(method, path)).status_code == 401
        for bearer in (token("owner", "o"), token("editor", "e"), token("admin", "a", canvas="elsewhere")):
            answer = await http.request(method, path, headers={"Authorization": f"Bearer {bearer}"})
            assert answer.status_code == 403, (bearer, answer.text)
            assert answer.json()["error"]["type"] == "forbidden"
        allowed = await http.request(method, path, headers=ADMIN)
        assert allowed.status_code in (200, 404), allowed.text  # 404: locking a canvas that does not exist


async def test_over_real_redis_rooms_disconnect_and_lock(server_factory, tmp_path):
    """The same over Redis pub/sub: rooms from both processes, a disconnect and a lock reach the other one."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    probe = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        await probe.ping()
    except (OSError, RedisError) as exc:
        skip_or_fail(f"Redis unreachable at {REDIS_URL}: {exc!r}")
    finally:
        await probe.aclose()
    prefix = f"test-admin-{uuid.uuid4().hex[:12]}:"
    a, b = await cluster(
        server_factory,
        {"data_dir": str(tmp_path)},
        pubsubs=[RedisPubSub(REDIS_URL, prefix=prefix), RedisPubSub(REDIS_URL, prefix=prefix)],
    )
    on_b = await WireClient.connect(b, "shared", sync=True, token=token("editor", "bob"))
    on_a = await WireClient.connect(a, "mine", sync=True, token=token("editor", "alice"))
    await on_b.barrier(), await on_a.barrier()
    async with httpx.AsyncClient(base_url=a.http_url, headers=ADMIN, timeout=10) as http:
        listed = (await http.get("/api/rooms")).json()
        assert [(room["id"], room["connections"]) for room in listed["rooms"]] == [("mine", 1), ("shared", 1)]
        assert (await http.patch("/api/canvases/shared/elements/e1", json={"x": 1})).status_code == 200
        assert (await http.put("/api/canvases/shared/lock")).status_code == 200
        await on_b.wait(lambda: {"type": "lock", "locked": True} in on_b.events, 5, "lock event over Redis")
        assert b.hub.registry.rooms["shared"].locked
        answer = (await http.post("/api/canvases/shared/disconnect", json={"user_id": "bob"})).json()
        assert answer["disconnected"] == 1 and answer["missing_nodes"] == []
        assert await on_b.wait_closed() == 4403
    await on_a.close()


async def test_locks_are_read_again_after_a_pubsub_outage(server_factory, storage_backend):
    """A lock whose message a process missed (written while its pub/sub was cut off) takes effect when the
    process re-reads the locks of its canvases, as it does after every pub/sub reconnect."""
    server = await server_factory(**AUTH, room_grace_seconds=60, **storage_backend.overrides)  # stays loaded
    async with httpx.AsyncClient(base_url=server.http_url, headers=ADMIN, timeout=10) as http:
        assert (await http.patch("/api/canvases/missed/elements/e1", json={"x": 1})).status_code == 200
        store = storage_backend.make_store()
        await store.open()
        try:
            assert await store.set_canvas_lock("missed", True)  # as another process would, unheard here
        finally:
            await store.close()
        room = server.hub.registry.rooms["missed"]
        assert not room.locked
        await server.app.state.directory.refresh_locks()
        assert room.locked
        assert (await http.patch("/api/canvases/missed/elements/e2", json={"x": 2})).status_code == 423


async def test_python_client_admin_methods_and_a_disconnected_peer_stays_out(live_server):
    """HttpClient's admin methods (open mode: anyone is an admin); a Python peer an administrator disconnects
    ends with AccessForbidden (4403) and does not reconnect."""
    async with HttpClient(live_server.http_url) as api:
        canvas = Canvas(live_server.http_url, "kick", backoff=Backoff(base=0.05, cap=0.5))
        await canvas.start()
        with canvas.doc.transaction():
            canvas.doc.get("elements", type=Map)["x"] = Map({"type": "rect"})
        await canvas.saved(timeout=10)
        rooms = await api.list_rooms()
        assert [(room["id"], room["connections"]) for room in rooms["rooms"]] == [("kick", 1)]
        (session,) = (await api.list_sessions("kick"))["sessions"]
        assert session["user_id"] is None and session["role"] == "editor"
        assert await api.lock("kick") == {"id": "kick", "locked": True}
        with pytest.raises(HttpError) as refused:
            await api.patch_element("kick", "y", {"x": 1})
        assert refused.value.status == 423 and refused.value.type == "locked"
        assert (await api.unlock("kick"))["locked"] is False
        assert (await api.disconnect("kick"))["disconnected"] == 1
        with pytest.raises(AccessForbidden):
            await canvas.wait_closed(timeout=10)
        assert canvas.attempts == 1
        await canvas.close()


async def test_the_stock_provider_sees_4403_and_stays_disconnected(server_factory, tmp_path):
    """The stock y-websocket provider disconnected by an administrator gets 4403 and gives up (no reconnect)."""
    server = await server_factory(**AUTH, data_dir=str(tmp_path))
    client = await JsClient.start(f"ws://127.0.0.1:{server.port}/ws", "stock", token=token("editor", "ann"))
    try:
        await client.wait_event("synced")
        async with httpx.AsyncClient(base_url=server.http_url, headers=ADMIN, timeout=10) as http:
            answer = await http.post("/api/canvases/stock/disconnect", json={"user_id": "ann"})
        assert answer.json()["disconnected"] == 1
        closed = await client.wait_event("closed", timeout=6, where=lambda e: e.get("terminal"))
        assert closed["code"] == 4403 and client.errors() == []
    finally:
        await client.close()
