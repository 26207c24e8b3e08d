"""The Hocuspocus endpoint with the real @hocuspocus/provider (tests/js/hocuspocus_client.mjs), and raw frames."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from pycrdt import Doc, Map

from canvashub.crdt import codec
from canvashub.crdt.hocuspocus import address_prefix, encode_close_document, encode_token
from canvashub.server.auth import mint_token
from canvashub.server.extensions import SessionEvent, StatelessEvent
from canvashub.server.pubsub import MemoryBroker, MemoryPubSub

from .js_client import HOCUSPOCUS_SCRIPT, JsClient
from .support import LiveServer, wait_until
from .test_persistence import stored_elements

SECRET = "hocuspocus-test-secret-" + "x" * 32
OUTAGE_SETTINGS = dict(store_timeout=2.0, db_acquire_timeout=1.0, retry_max_delay=0.3, commit_interval=0.005)


def hocuspocus_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/hocuspocus"


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Any]]:
    """Start Node clients (@hocuspocus/provider or y-websocket); all closed at teardown."""
    started: list[JsClient] = []

    async def start(port: int, documents: list[str], name: str = "hp", **options: Any) -> JsClient:
        client = await JsClient.start(
            hocuspocus_url(port), ",".join(documents), name=name, script=HOCUSPOCUS_SCRIPT, **options
        )
        started.append(client)
        return client

    async def start_ws(port: int, room: str, name: str = "yws", **options: Any) -> JsClient:
        client = await JsClient.start(f"ws://127.0.0.1:{port}/ws", room, name=name, **options)
        started.append(client)
        return client

    start.ws = start_ws  # type: ignore[attr-defined]
    yield start
    for client in started:
        await client.close()


async def read_until(client: JsClient, doc: str, check: Callable[[dict[str, Any]], Any], timeout: float = 10.0):
    """Re-read ``doc`` after each update the client applies until ``check`` holds; returns the state."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        mark = client.mark()
        state = await client.call("read", doc=doc)
        if check(state):
            return state
        remaining = deadline - loop.time()
        assert remaining > 0, f"{client.name}/{doc} never got there; last state {state!r}"
        await client.wait_event("update", remaining, since=mark, where=lambda e: e["doc"] == doc)


def saved(client: JsClient, doc: str) -> bool:
    """The provider's `unsyncedChanges` for ``doc`` last went to 0 (every change acknowledged)."""
    numbers = [e["number"] for e in client.events if e["event"] == "unsynced" and e["doc"] == doc]
    return bool(numbers) and numbers[-1] == 0


# -- convergence ------------------------------------------------------------------------------------
async def test_two_providers_converge_on_a_map_and_a_text(live_server: LiveServer, clients):
    """Two @hocuspocus/provider clients edit a Y.Map and a Y.Text of one canvas and converge."""
    a = await clients(live_server.port, ["conv"], name="a")
    b = await clients(live_server.port, ["conv"], name="b")
    for client in (a, b):
        await client.wait_event("authenticated", where=lambda e: e["scope"] == "read-write")
        await client.wait_event("synced")
    await a.call("set", key="r1", fields={"type": "rect", "x": 1})
    await a.call("insertText", index=0, text="hello")
    await b.call("set", key="e1", fields={"type": "ellipse", "x": 2})
    await b.call("insertText", index=0, text="> ")
    want = lambda s: set(s["elements"]) == {"r1", "e1"} and len(s["text"]) == 7  # noqa: E731
    sa = await read_until(a, "conv", want)
    sb = await read_until(b, "conv", want)
    assert sa["elements"] == sb["elements"] and sa["text"] == sb["text"]
    assert sorted(sa["text"]) == sorted("hello> ")


async def test_late_joiner_gets_the_state(live_server: LiveServer, clients):
    """A provider that opens the canvas after the edits gets all of them in its first sync."""
    a = await clients(live_server.port, ["late"], name="a")
    await a.wait_event("synced")
    for i in range(5):
        await a.call("set", key=f"k{i}", fields={"v": i})
    await a.call("insertText", index=0, text="abc")
    await wait_until(lambda: saved(a, "late"), 10, "edits acknowledged")
    b = await clients(live_server.port, ["late"], name="b")
    await b.wait_event("synced")
    state = await read_until(b, "late", lambda s: len(s["elements"]) == 5 and s["text"] == "abc")
    assert state["elements"]["k3"] == {"v": 3}


async def test_awareness_arrives_and_goes_away_on_abrupt_disconnect(live_server: LiveServer, clients):
    """Presence set through one provider reaches the other, and disappears when that process is killed."""
    a = await clients(live_server.port, ["aw"], name="a")
    b = await clients(live_server.port, ["aw"], name="b")
    await a.wait_event("synced")
    await b.wait_event("synced")
    a_id = (await a.call("read", doc="aw"))["clientID"]
    await a.call("awareness", doc="aw", state={"user": {"name": "ann"}, "cursor": {"x": 3}})
    await b.wait_event("awareness", where=lambda e: e["states"].get(str(a_id), {}).get("user", {}).get("name") == "ann")
    mark = b.mark()
    a.kill()
    await b.wait_event("awareness", since=mark, where=lambda e: str(a_id) not in e["states"])


async def test_three_documents_over_one_socket(live_server: LiveServer, clients):
    """One provider socket carries three canvases; each stays separate and syncs with its own peers."""
    docs = ["one", "two", "three"]
    multi = await clients(live_server.port, docs, name="multi")
    for doc in docs:
        await multi.wait_event("synced", where=lambda e, d=doc: e["doc"] == d)
    single = await clients(live_server.port, ["two"], name="single")
    await single.wait_event("synced")
    for doc in docs:
        await multi.call("set", doc=doc, key=f"in-{doc}", fields={"v": 1})
    state = await read_until(single, "two", lambda s: "in-two" in s["elements"])
    assert set(state["elements"]) == {"in-two"}
    await single.call("set", doc="two", key="from-single", fields={"v": 2})
    await read_until(multi, "two", lambda s: "from-single" in s["elements"])
    assert set((await multi.call("read", doc="one"))["elements"]) == {"in-one"}
    assert set((await multi.call("read", doc="three"))["elements"]) == {"in-three"}
    assert len(live_server.hub.registry.rooms["two"].connections) == 2


async def test_mixed_room_y_websocket_and_hocuspocus(live_server: LiveServer, clients):
    """A y-websocket provider and a Hocuspocus provider on one canvas converge, with presence both ways."""
    hp = await clients(live_server.port, ["mixed"], name="hp")
    yws = await clients.ws(live_server.port, "mixed", name="yws")
    await hp.wait_event("synced")
    await yws.wait_event("synced")
    await hp.call("set", doc="mixed", key="from-hp", fields={"v": 1})
    await yws.call("set", key="from-yws", fields={"v": 2})
    await yws.call("insertText", index=0, text="yws")
    await read_until(hp, "mixed", lambda s: {"from-hp", "from-yws"} <= set(s["elements"]) and s["text"] == "yws")
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        mark = yws.mark()
        if {"from-hp", "from-yws"} <= set((await yws.read())["elements"]):
            break
        assert asyncio.get_running_loop().time() < deadline, "y-websocket client never got the Hocuspocus edit"
        await yws.wait_event("update", 5, since=mark)
    hp_id = (await hp.call("read", doc="mixed"))["clientID"]
    await hp.call("awareness", doc="mixed", state={"user": {"name": "hocus"}})
    await yws.call("awareness", state={"user": {"name": "ywebsocket"}})
    await yws.wait_event(
        "awareness", where=lambda e: e["states"].get(str(hp_id), {}).get("user", {}).get("name") == "hocus"
    )
    await hp.wait_event(
        "awareness", where=lambda e: e["states"].get(str(yws.client_id), {}).get("user", {}).get("name") == "ywebsocket"
    )
    assert not [e for e in yws.events if e["event"] == "unknown-message"]


# -- access -----------------------------------------------------------------------------------------
async def test_readonly_token_cannot_change_state(server_factory, clients):
    """A viewer's token opens the canvas with scope readonly; its edits never reach the canvas or peers."""
    server = await server_factory(auth_secret=SECRET)
    editor = mint_token(SECRET, canvas="ro", role="editor", user="ed")
    viewer = mint_token(SECRET, canvas="ro", role="viewer", user="vi")
    e = await clients(server.port, ["ro"], name="editor", token=editor)
    v = await clients(server.port, ["ro"], name="viewer", token=viewer)
    await e.wait_event("authenticated", where=lambda ev: ev["scope"] == "read-write")
    await v.wait_event("authenticated", where=lambda ev: ev["scope"] == "readonly")
    await v.wait_event("synced")
    await e.call("set", doc="ro", key="real", fields={"v": 1})
    await read_until(v, "ro", lambda s: "real" in s["elements"])
    await v.call("set", doc="ro", key="forged", fields={"v": 666})
    await e.call("set", doc="ro", key="after", fields={"v": 2})
    await read_until(v, "ro", lambda s: "after" in s["elements"])
    await read_until(e, "ro", lambda s: "after" in s["elements"])
    assert "forged" not in (await e.call("read", doc="ro"))["elements"]
    room = server.hub.registry.rooms["ro"]
    assert "forged" not in room.document.doc.get("elements", type=Map).to_py()
    assert await v.call("unsynced", doc="ro") > 0  # its change was refused, never "saved"


async def test_bad_token_is_refused_with_a_reason_other_documents_open(server_factory, clients):
    """A forged token on one document gets `permission denied` with a reason; the socket's other
    document (good token) opens and syncs."""
    server = await server_factory(auth_secret=SECRET)
    good = mint_token(SECRET, canvas="good", role="editor", user="u")
    client = await clients(server.port, ["good", "bad"], name="c", tokens={"good": good, "bad": "not-a-token"})
    failed = await client.wait_event("authenticationFailed", where=lambda e: e["doc"] == "bad")
    assert "invalid access token" in failed["reason"]
    await client.wait_event("authenticated", where=lambda e: e["doc"] == "good")
    await client.wait_event("synced", where=lambda e: e["doc"] == "good")
    await client.call("set", doc="good", key="k", fields={"v": 1})
    await wait_until(lambda: saved(client, "good"), 10, "the edit acknowledged")
    assert "bad" not in server.hub.registry.rooms
    wrong_canvas = mint_token(SECRET, canvas="elsewhere", role="editor", user="u")
    other = await clients(server.port, ["good"], name="other", token=wrong_canvas)
    denied = await other.wait_event("authenticationFailed")
    assert "not valid for canvas" in denied["reason"]


# -- durable SyncStatus -----------------------------------------------------------------------------
async def test_unsynced_changes_reach_zero_only_after_the_commit(server_factory, pg_proxy, clients):
    """`unsyncedChanges` stays above 0 while the database is down (a reconnect included), and reaches 0
    once the change is committed: when it does, the change is in the database."""
    proxy, dsn, backend = pg_proxy
    server = await server_factory(database_url=dsn, **OUTAGE_SETTINGS)
    client = await clients(server.port, ["durable"], name="writer")
    await client.wait_event("synced")
    await client.call("set", doc="durable", key="before", fields={"v": 0})
    await wait_until(lambda: saved(client, "durable"), 10, "the first edit acknowledged")

    proxy.cut()
    mark = client.mark()
    await client.call("set", doc="durable", key="during", fields={"v": 1})
    await client.wait_event("unsynced", since=mark, where=lambda e: e["number"] > 0)
    await wait_until(lambda: server.hub.persister.retrying, 15, "the persister retrying")
    assert await client.call("unsynced", doc="durable") > 0
    # Reconnecting to the same process: its step 2 brings nothing new, and is not "saved" either.
    synced = client.mark()
    await client.call("disconnect")
    await client.wait_event("disconnect", since=synced)
    await client.call("connect")
    await client.wait_event("synced", 10, since=synced)
    await wait_until(lambda: server.hub.persister.retrying, 5, "the persister still retrying")
    assert await client.call("unsynced", doc="durable") > 0
    assert not any(e["event"] == "unsynced" and e["number"] == 0 for e in client.events[mark:])

    proxy.restore()
    await client.wait_event("unsynced", 20, since=mark, where=lambda e: e["number"] == 0)
    elements, _ = await stored_elements(backend, "durable")
    assert {"before", "during"} <= set(elements)


async def test_offline_edits_during_a_restart_arrive(process_server_factory, storage_backend, clients, tmp_path):
    """The server restarts while a provider edits: its offline edits arrive after it reconnects."""
    env = {**storage_backend.env, "CANVASHUB_COMMIT_INTERVAL": "0.005"}
    server = await process_server_factory(env)
    port = server.port
    writer = await clients(port, ["restart"], name="writer")
    await writer.wait_event("synced")
    await writer.call("set", doc="restart", key="before", fields={"v": 0})
    await wait_until(lambda: saved(writer, "restart"), 10, "the first edit acknowledged")
    mark = writer.mark()
    await server.stop(signal.SIGTERM)
    await writer.wait_event("disconnect", since=mark)
    for i in range(3):
        await writer.call("set", doc="restart", key=f"offline{i}", fields={"v": i})
    assert await writer.call("unsynced", doc="restart") > 0
    await process_server_factory(env, port=port)
    await writer.wait_event("synced", 30, since=mark)
    await writer.wait_event("unsynced", 20, since=mark, where=lambda e: e["number"] == 0)
    reader = await clients(port, ["restart"], name="reader")
    await read_until(reader, "restart", lambda s: {"before", "offline0", "offline1", "offline2"} <= set(s["elements"]))


# -- stateless --------------------------------------------------------------------------------------
async def test_stateless_messages_reach_the_hook_and_the_helper_broadcasts(server_factory, clients):
    """A provider's stateless message reaches the `stateless` hook; the server helper broadcasts one to
    every Hocuspocus client of the canvas."""
    seen: list[StatelessEvent] = []
    sessions: list[SessionEvent] = []

    class Hooks:
        async def stateless(self, event: StatelessEvent) -> None:
            seen.append(event)

        async def connect(self, event: SessionEvent) -> None:
            sessions.append(event)

    server = await server_factory(extensions=[Hooks()])
    a = await clients(server.port, ["sl"], name="a")
    b = await clients(server.port, ["sl", "other"], name="b")
    await a.wait_event("synced")
    await b.wait_event("synced", where=lambda e: e["doc"] == "sl")
    await a.call("stateless", doc="sl", payload='{"ping":1}')
    await wait_until(lambda: seen, 5, "the stateless hook")
    assert seen[0].canvas_id == "sl" and seen[0].payload == '{"ping":1}'
    await wait_until(lambda: len(sessions) >= 3, 5, "connect hooks")
    assert {s.protocol for s in sessions} == {"hocuspocus"}
    sent = server.app.state.hocuspocus.broadcast_stateless("sl", "hello all")
    assert sent == 2
    for client in (a, b):
        await client.wait_event("stateless", where=lambda e: e["doc"] == "sl" and e["payload"] == "hello all")
    assert not [e for e in b.events if e["event"] == "stateless" and e["doc"] == "other"]


async def test_stateless_broadcast_reaches_clients_of_every_process(server_factory, clients, tmp_path):
    """A broadcast made on one process reaches the canvas's Hocuspocus clients on another process too."""
    broker = MemoryBroker()
    a = await server_factory(pubsub=MemoryPubSub(broker), data_dir=str(tmp_path))
    b = await server_factory(pubsub=MemoryPubSub(broker), data_dir=str(tmp_path))
    on_a = await clients(a.port, ["shared"], name="on-a")
    on_b = await clients(b.port, ["shared"], name="on-b")
    await on_a.wait_event("synced")
    await on_b.wait_event("synced")
    assert a.app.state.hocuspocus.broadcast_stateless("shared", "from a") == 1  # its own client, counted
    for client in (on_a, on_b):
        await client.wait_event("stateless", where=lambda e: e["doc"] == "shared" and e["payload"] == "from a")


# -- raw frames -------------------------------------------------------------------------------------
class RawSocket:
    """A raw Hocuspocus client over ``websockets``: frames in, parsed frames out."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Any] = []

    @classmethod
    async def open(cls, server: LiveServer) -> RawSocket:
        return cls(await websockets.connect(hocuspocus_url(server.port), max_size=None))

    async def authenticate(self, doc: str, token: str = "") -> None:
        prefix = address_prefix(doc)
        await self.ws.send(encode_token(prefix, token, "4.7.0"))
        await self.ws.send(prefix + codec.encode_sync_step1(b"\x00"))
        await self.expect(doc, lambda m: isinstance(m, codec.SyncStep2))

    async def expect(self, doc: str, match: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        """The next server frame for ``doc`` that ``match`` accepts (server frames: parsed loosely)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.recv()
                assert isinstance(frame, bytes)
                address, kind, body = split_server_frame(frame)
                message = (address, kind, body)
                if address == doc:
                    if kind in (0, 1, 3):
                        parsed = codec.parse_frame(bytes([kind]) + body)
                        if match(parsed):
                            return parsed
                    elif match(message):
                        return message


def split_server_frame(frame: bytes) -> tuple[str, int, bytes]:
    reader = codec.Reader(frame)
    address = reader.var_string()
    kind = reader.var_uint()
    return address, kind, frame[reader.pos :]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x02\xff\xfe\x00\x00\x00", 1007),  # the document name is not UTF-8
        (address_prefix("doc") + b"\x06\x00", 1002),  # BroadcastStateless: server-only
        (address_prefix("doc") + b"\x2a", 1002),  # unknown type
        (address_prefix("doc") + b"\x00\x00\x01\x00\x99", 1002),  # trailing bytes after a sync step 1
        (b"\x80\x00", 1002),  # non-minimal varint for the name's length
        (b"\x05doc", 1002),  # the name's length runs past the frame
    ],
)
async def test_malformed_frames_close_the_socket(live_server: LiveServer, frame: bytes, code: int):
    """A frame whose framing is broken closes the whole socket with the codec's close code."""
    raw = await RawSocket.open(live_server)
    await raw.authenticate("doc")
    await raw.ws.send(frame)
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(5):
            while True:
                await raw.ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == code


async def test_oversize_frame_closes_the_socket(server_factory):
    """A frame over max_frame_bytes closes the socket with 1009."""
    server = await server_factory(max_frame_bytes=64 * 1024)
    raw = await RawSocket.open(server)
    await raw.authenticate("big")
    await raw.ws.send(address_prefix("big") + codec.encode_update(b"\x00" * (70 * 1024)))
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(5):
            while True:
                await raw.ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_bad_payload_closes_only_its_document(live_server: LiveServer):
    """An update yrs refuses closes that document (Hocuspocus CLOSE message); the socket's other
    document keeps working."""
    raw = await RawSocket.open(live_server)
    await raw.authenticate("left")
    await raw.authenticate("right")
    await raw.ws.send(address_prefix("left") + codec.encode_update(b"\x01\x01\xff\xff\xff\x01\x00"))
    closed = await raw.expect("left", lambda m: isinstance(m, tuple) and m[1] == 7)
    assert closed[2]  # a reason
    # The other document still answers on the same socket.
    await raw.ws.send(address_prefix("right") + codec.encode_sync_step1(b"\x00"))
    await raw.expect("right", lambda m: isinstance(m, codec.SyncStep2))
    rooms = live_server.hub.registry.rooms
    await wait_until(lambda: "left" not in rooms or not rooms["left"].connections, 5, "left document closed")
    assert len(live_server.hub.registry.rooms["right"].connections) == 1
    await raw.ws.close()


async def test_sync_status_acknowledges_each_update_once_durable(live_server: LiveServer):
    """Each update a raw client sends is answered with one SyncStatus(1), after it was committed."""
    raw = await RawSocket.open(live_server)
    await raw.authenticate("acks")
    doc: Doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    elements = doc.get("elements", type=Map)
    for i in range(3):
        elements[f"k{i}"] = i
    for update in updates:
        await raw.ws.send(address_prefix("acks") + codec.encode_update(update))
    for _ in updates:
        status = await raw.expect("acks", lambda m: isinstance(m, tuple) and m[1] == 8)
        assert status[2] == b"\x01"
    assert live_server.hub.persister.is_durable("acks")
    await raw.ws.send(encode_close_document(address_prefix("acks")))
    rooms = live_server.hub.registry.rooms
    await wait_until(lambda: "acks" not in rooms or not rooms["acks"].connections, 5, "document closed by the client")
    await raw.ws.close()


async def test_expired_token_closes_only_its_document(server_factory):
    """A document whose token expires gets a CLOSE message; the socket's other document stays open."""
    server = await server_factory(auth_secret=SECRET)
    raw = await RawSocket.open(server)
    short = mint_token(SECRET, canvas="short", role="editor", user="u", ttl=1)
    long = mint_token(SECRET, canvas="long", role="editor", user="u", ttl=600)
    await raw.authenticate("short", short)
    await raw.authenticate("long", long)
    closed = await raw.expect("short", lambda m: isinstance(m, tuple) and m[1] == 7, timeout=10)
    assert b"expired" in closed[2]
    await raw.ws.send(address_prefix("long") + codec.encode_sync_step1(b"\x00"))
    await raw.expect("long", lambda m: isinstance(m, codec.SyncStep2))
    await raw.ws.close()
