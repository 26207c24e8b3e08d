"""Interop with the stock Yjs client: y-websocket 3.1.0 WebsocketProvider (yjs 13.6.33) in Node.

Each client is a real ``node tests/js/client.mjs`` process (see tests/js_client.py)
talking to a live server. Tests wait on client events or on conditions with
deadlines, never on bare sleeps. Without node or tests/js/node_modules these
tests skip, except with CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pycrdt import Map, Text

from canvashub.server.errors import CloseCode

from .js_client import JsClient, decode_state_vector, require_node
from .support import LiveServer, wait_until


@pytest.fixture
async def js(server_factory) -> AsyncIterator:
    """Start stock y-websocket clients: ``await js(server, room, name)``; all stopped at teardown.

    Depends on ``server_factory`` so the clients go away before the servers stop.
    """
    require_node()
    started: list[JsClient] = []

    async def start(
        server: LiveServer, room: str, name: str = "client", *, connect: bool = True, synced: bool = True
    ) -> JsClient:
        client = await JsClient.start(f"ws://127.0.0.1:{server.port}/ws", room, name=name, connect=connect)
        started.append(client)
        if connect and synced:
            await client.wait_event("synced", timeout=10)
        return client

    yield start
    await asyncio.gather(*(client.close() for client in started), return_exceptions=True)
    errors = {c.name: c.errors() for c in started if c.errors()}
    assert not errors, f"uncaught errors in the JS clients: {errors}"
    # A stock provider would log "Unable to compute message" for these: canvashub never sends them.
    unknown = {c.name: [e for e in c.events if e["event"] in ("unknown-message", "canvashub")] for c in started}
    assert not any(unknown.values()), f"stock clients got messages they cannot handle: {unknown}"


# -- helpers -----------------------------------------------------------------


def same_doc(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("sv", "elements", "text", "textLength", "textSha256"))


async def converged(*clients: JsClient, timeout: float = 5.0, digest: bool = False) -> list[dict[str, Any]]:
    """Wait until every client has the same state vector, elements and text; return their reads."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        states = [await c.read(digest=digest) for c in clients]
        if all(same_doc(states[0], s) for s in states[1:]):
            return states
        if loop.time() > deadline:
            raise AssertionError(f"clients did not converge within {timeout}s: {states!r}")
        await asyncio.sleep(0.02)  # poll interval of a wait bounded by its deadline


async def http_elements(server: LiveServer, canvas: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get(f"/api/canvases/{canvas}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == canvas
    return body["elements"]


def server_doc(server: LiveServer, canvas: str):
    return server.hub.registry.rooms[canvas].document.doc


async def disconnected(client: JsClient) -> None:
    mark = client.mark()
    await client.call("disconnect")
    await client.wait_event("status", since=mark, where=lambda e: e["status"] == "disconnected")


async def reconnected(client: JsClient) -> None:
    mark = client.mark()
    await client.call("connect")
    await client.wait_event("synced", since=mark, timeout=10)


def nested(key: str, **fields: Any) -> dict[str, Any]:
    return {"op": "set", "key": key, "fields": fields}


def field(key: str, name: str, value: Any) -> dict[str, Any]:
    return {"op": "update", "key": key, "field": name, "value": value}


async def assert_server_matches(server: LiveServer, canvas: str, state: dict[str, Any]) -> None:
    """The server's JSON export, state vector and text equal a converged client's."""
    assert await http_elements(server, canvas) == state["elements"]
    doc = server_doc(server, canvas)
    assert decode_state_vector(doc.get_state()) == state["sv"]
    assert str(doc.get("text", type=Text)) == state["text"]


# -- tests -------------------------------------------------------------------


@pytest.mark.usefixtures("each_transport")
async def test_concurrent_offline_edits_converge(live_server, js):
    """Edits made while one client is offline (same and different fields, same text position) converge everywhere."""
    canvas = "interop-converge"
    a, b = await asyncio.gather(js(live_server, canvas, "A"), js(live_server, canvas, "B"))
    await a.call(
        "batch",
        ops=[
            nested("e1", x=1, y=1, color="red", label="one"),
            nested("e2", x=5, label="two"),
            {"op": "insertText", "index": 0, "text": "hello world"},
        ],
    )
    await converged(a, b)

    await disconnected(a)
    await a.call(
        "batch",
        ops=[
            field("e1", "x", 10),  # only A touches x
            field("e1", "color", "blue"),  # both set color
            field("e2", "label", "edited by A"),  # B deletes e2
            nested("e3", kind="A-only"),
            nested("e4", owner="A"),  # both create e4
            {"op": "insertText", "index": 5, "text": " A"},  # both insert at 5
        ],
    )
    await b.call(
        "batch",
        ops=[
            field("e1", "y", 20),
            field("e1", "color", "green"),
            {"op": "delete", "key": "e2"},
            nested("e4", owner="B"),
            {"op": "insertText", "index": 5, "text": " B"},
            {"op": "deleteText", "index": 0, "length": 1},
        ],
    )
    await reconnected(a)
    sa, sb = await converged(a, b)

    assert sa["stateVector"] == sb["stateVector"]
    assert sa["clientID"] in sa["sv"] and sb["clientID"] in sa["sv"]
    elements = sa["elements"]
    assert set(elements) == {"e1", "e3", "e4"}
    assert elements["e1"]["x"] == 10 and elements["e1"]["y"] == 20 and elements["e1"]["label"] == "one"
    assert elements["e1"]["color"] in ("blue", "green")
    assert elements["e3"] == {"kind": "A-only"}
    assert elements["e4"]["owner"] in ("A", "B")
    assert sa["text"] in ("ello A B world", "ello B A world")
    await assert_server_matches(live_server, canvas, sa)


async def test_edits_made_before_first_sync_converge(live_server, js):
    """Two clients that edit before ever connecting both reach the server and each other on connect."""
    canvas = "interop-presync"
    a, b = await asyncio.gather(
        js(live_server, canvas, "A", connect=False), js(live_server, canvas, "B", connect=False)
    )
    await asyncio.gather(
        a.call(
            "batch",
            ops=[nested("shared", by="A", a=1), nested("onlyA", n=1), {"op": "insertText", "index": 0, "text": "AAA"}],
        ),
        b.call(
            "batch",
            ops=[nested("shared", by="B", b=2), nested("onlyB", n=2), {"op": "insertText", "index": 0, "text": "BBB"}],
        ),
    )
    marks = a.mark(), b.mark()
    await asyncio.gather(a.call("connect"), b.call("connect"))
    await a.wait_event("synced", since=marks[0], timeout=10)
    await b.wait_event("synced", since=marks[1], timeout=10)
    sa, _ = await converged(a, b)

    assert set(sa["elements"]) == {"shared", "onlyA", "onlyB"}
    assert sa["elements"]["shared"] in ({"by": "A", "a": 1}, {"by": "B", "b": 2})
    assert sa["text"] in ("AAABBB", "BBBAAA")
    await assert_server_matches(live_server, canvas, sa)


@pytest.mark.parametrize("room_state", ["loaded", "reloaded"])
async def test_late_joiner_gets_full_state(server_factory, js, room_state):
    """A client joining later (room still loaded, or unloaded and reloaded from the store) gets the whole document."""
    live = await server_factory(room_grace_seconds=0.0)
    canvas = f"interop-late-{room_state}"
    a = await js(live, canvas, "A")
    ops = [nested(f"el{i}", x=i, y=2 * i, label=f"element {i}", tags=["a", i]) for i in range(300)]
    ops += [{"op": "delete", "key": f"el{i}"} for i in range(0, 300, 7)]
    ops += [{"op": "insertText", "index": 0, "text": "late joiner ✓ ünïcödé 🎨"}]
    await a.call("batch", ops=ops)
    await a.call("update", key="el1", field="x", value=-1)  # a second update from the same client
    expected = await a.read()
    await wait_until(
        lambda: decode_state_vector(server_doc(live, canvas).get_state()) == expected["sv"],
        5,
        "the server to have all of A's edits",
    )

    if room_state == "reloaded":
        await a.close()
        await wait_until(lambda: canvas not in live.hub.registry.rooms, 5, "the empty room to unload")

    c = await js(live, canvas, "C")
    sc = await c.read()
    assert sc["elements"] == expected["elements"]
    assert sc["text"] == expected["text"]
    assert sc["sv"] == expected["sv"]
    assert len(sc["elements"]) == 300 - len(range(0, 300, 7))
    assert sc["elements"]["el1"] == {"x": -1, "y": 2, "label": "element 1", "tags": ["a", 1]}
    await assert_server_matches(live, canvas, sc)


async def test_rooms_are_isolated(live_server, js):
    """Edits and awareness in one room never reach a room whose id shares its prefix."""
    a1, a2, b1, b2 = await asyncio.gather(
        js(live_server, "iso", "A1"),
        js(live_server, "iso", "A2"),
        js(live_server, "iso-b", "B1"),
        js(live_server, "iso-b", "B2"),
    )

    await a1.call("awareness", state={"user": "a1-only"})
    await a1.call("batch", ops=[nested("secret", room="iso"), {"op": "insertText", "index": 0, "text": "in iso"}])
    await a2.wait_event("awareness", where=lambda e: str(a1.client_id) in e["states"])
    await converged(a1, a2)  # the server has applied and relayed A1's frames

    # Sync point in room iso-b: B1's edit is sent after A1's frames went through the
    # server. Had the server routed A1's frames to iso-b, B2 (a FIFO per connection)
    # would have received them before this marker.
    mark = b2.mark()
    await b1.call("set", key="marker", fields={"room": "iso-b"})
    await b2.wait_event("update", since=mark, where=lambda e: e["origin"] == "remote")
    sb1, sb2 = await converged(b1, b2)

    assert sb2["elements"] == {"marker": {"room": "iso-b"}}
    assert sb2["text"] == ""
    assert a1.client_id not in sb2["sv"] and a1.client_id not in sb1["sv"]
    remote = [e for e in b2.events if e["event"] == "update" and e["origin"] == "remote"]
    assert len(remote) == 1, remote
    for client in (b1, b2):
        states = await client.call("awarenessStates")
        assert str(a1.client_id) not in states, states
    assert await http_elements(live_server, "iso-b") == {"marker": {"room": "iso-b"}}
    assert "marker" not in await http_elements(live_server, "iso")


@pytest.mark.parametrize("how", ["killed", "destroyed"])
async def test_awareness_reaches_peer_and_goes_away(live_server, js, how):
    """A's presence reaches B (also when B joins later) and vanishes at B within 3 s after A goes away."""
    canvas = f"interop-aw-{how}"
    a = await js(live_server, canvas, "A")
    state_a = {"user": {"name": "Zoë 🎨", "color": "#f80"}, "cursor": {"x": 12.5, "y": -3}}
    await a.call("awareness", state=state_a)
    room = live_server.hub.registry.rooms[canvas]
    await wait_until(
        lambda: any(e.client_id == a.client_id for e in room.document.awareness.live_entries()),
        5,
        "the server to hold A's awareness",
    )

    # B joins after A's state was sent: it can only learn it from the server's join frames.
    b = await js(live_server, canvas, "B", synced=False)
    await b.wait_event("awareness", where=lambda e: e["states"].get(str(a.client_id)) == state_a)
    await b.wait_event("synced")

    await b.call("awareness", state={"user": {"name": "Bob"}})
    await a.wait_event("awareness", where=lambda e: e["states"].get(str(b.client_id)) == {"user": {"name": "Bob"}})

    mark = b.mark()
    loop = asyncio.get_running_loop()
    started = loop.time()
    if how == "killed":
        a.kill()  # no goodbye from the client: only the server can tell B
    else:
        await a.call("destroy")
    await b.wait_event("awareness", since=mark, timeout=3.0, where=lambda e: str(a.client_id) not in e["states"])
    elapsed = loop.time() - started
    assert elapsed < 3.0
    states = await b.call("awarenessStates")
    assert set(states) == {str(b.client_id)}
    await wait_until(
        lambda: not any(e.client_id == a.client_id for e in room.document.awareness.live_entries()),
        3,
        "the server to forget A's awareness",
    )


@pytest.mark.usefixtures("each_transport")
async def test_one_megabyte_text_insert_arrives_intact(server_factory, js):
    """A 1 MB text insert (one update frame, under max_frame_bytes) reaches the other client byte for byte."""
    live = await server_factory(max_frame_bytes=2_000_000)
    canvas = "interop-big"
    a, b = await asyncio.gather(js(live, canvas, "A"), js(live, canvas, "B"))
    pattern = "The quick brown fox jumps over the lazy dog 0123456789~!\n"  # ASCII: JS length == len()
    count = 1_000_000 // len(pattern) + 1
    expected = (pattern * count)[:1_000_000]
    assert len(pattern * count) >= 1_000_000
    mark = b.mark()
    await a.call("insertRepeat", index=0, pattern=pattern, count=count)
    await a.call("deleteText", index=1_000_000, length=len(pattern) * count - 1_000_000)
    await b.wait_event(
        "update", since=mark, timeout=10, where=lambda e: e["origin"] == "remote" and e["bytes"] >= 1_000_000
    )

    sa, sb = await converged(a, b, digest=True, timeout=10)
    digest = hashlib.sha256(expected.encode()).hexdigest()
    assert sb["textLength"] == sa["textLength"] == 1_000_000
    assert sb["textSha256"] == sa["textSha256"] == digest
    assert not [e for e in a.events + b.events if e["event"] == "closed"]
    assert str(server_doc(live, canvas).get("text", type=Text)) == expected


KEEPALIVE_SECONDS = 1.0


@pytest.mark.usefixtures("each_transport")
async def test_idle_client_receives_keepalives(server_factory, js):
    """An idle stock client keeps receiving frames, so its 30 s "no message received" watchdog never fires."""
    live = await server_factory(keepalive_seconds=KEEPALIVE_SECONDS)
    canvas = "interop-idle"
    a = await js(live, canvas, "A")
    await wait_until(lambda: len(live.hub.connections) == 1, 5, "one server connection")
    (conn,) = live.hub.connections
    mark = a.mark()

    # Nobody edits; the client's awareness renewal is 15 s away. Watch the provider's own
    # wsLastMessageReceived (the watchdog's input) advance three times while idle.
    probes = [await a.call("probe")]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8.0
    advances = 0
    while advances < 3:
        assert loop.time() < deadline, f"wsLastMessageReceived advanced only {advances} times: {probes}"
        await asyncio.sleep(0.1)  # poll interval: probes spaced while idle; bounded by the deadline
        probe = await a.call("probe")
        if probe["wsLastMessageReceived"] > probes[-1]["wsLastMessageReceived"]:
            advances += 1
        probes.append(probe)

    assert all(p["wsconnected"] and p["synced"] for p in probes), probes
    idle_ms = probes[-1]["now"] - probes[0]["now"]
    assert idle_ms >= 2000, idle_ms
    longest_silence = max(p["now"] - p["wsLastMessageReceived"] for p in probes)
    # An idle connection gets a frame every tick; one that was just sent something, within two.
    assert longest_silence < 2 * KEEPALIVE_SECONDS * 1000 + 1000, (longest_silence, probes)  # << 30 s
    # Idle for real: no document or presence traffic, and the same socket all along.
    assert a.events[mark:] == [], a.events[mark:]
    assert set(live.hub.connections) == {conn} and not conn.closing


# -- awareness echoes ------------------------------------------------------------------
#
# A stock y-websocket provider re-broadcasts every awareness change it *receives*,
# removals included (its awareness "update" handler ignores the origin). When a peer
# leaves, the server broadcasts its removal and every remaining stock client echoes it
# back. These tests failed before crdt/awareness.py kept tombstones: the echoing
# connection became the owner of the departed id.


async def test_departed_peers_do_not_use_up_a_clients_awareness_ids(server_factory, js):
    """A long-lived client is not disconnected because other clients came and went."""
    live = await server_factory(max_awareness_ids_per_connection=2)
    canvas = "interop-aw-departures"
    a = await js(live, canvas, "A")
    await a.call("awareness", state={"user": "long-lived"})
    room = live.hub.registry.rooms[canvas]
    await wait_until(lambda: room.document.awareness.live_entries(), 3, "the server to hold A's awareness")
    (conn,) = room.connections
    peers = await asyncio.gather(*(js(live, canvas, f"P{i}") for i in range(3)))
    await asyncio.gather(*(p.call("awareness", state={"user": p.name}) for p in peers))
    ids = {str(p.client_id) for p in peers}
    await a.wait_event("awareness", where=lambda e: ids <= set(e["states"]))
    mark = a.mark()
    for peer in peers:
        peer.kill()
    await a.wait_event("awareness", since=mark, where=lambda e: not ids & set(e["states"]))
    # A echoed each removal as it applied it. An edit sent after that is a sync point: once the
    # server has applied it, it has handled the echoes (frames of one socket are handled in order).
    await a.call("set", key="after-departures", fields={})
    await wait_until(
        lambda: conn.closing or "after-departures" in server_doc(live, canvas).get("elements", type=Map),
        3,
        "the server to apply A's edit (or close A)",
    )
    assert not conn.closing and conn in room.connections, f"the server closed A: {conn.close_code}"
    assert room.document.awareness.owned_by(conn) == {a.client_id}, "A owns departed peers' awareness ids"
    assert not [e for e in a.events if e["event"] == "closed"], a.events


@pytest.mark.usefixtures("each_transport")
async def test_client_dropped_by_server_regains_its_presence(live_server, js):
    """After the server drops a client (e.g. send queue full, 1013) and it reconnects, peers see its new presence."""
    canvas = "interop-aw-rejoin"
    a, b = await asyncio.gather(js(live_server, canvas, "A"), js(live_server, canvas, "B"))
    await a.call("awareness", state={"v": 1})
    await b.wait_event("awareness", where=lambda e: e["states"].get(str(a.client_id)) == {"v": 1})
    room = live_server.hub.registry.rooms[canvas]
    (conn_a,) = [c for c in room.connections if a.client_id in room.document.awareness.owned_by(c)]
    mark_a, mark_b = a.mark(), b.mark()
    # What the server itself does to a client whose send queue is full; the provider reconnects
    # with the same clientID. B echoes A's removal (and possibly, late, A's last state) after the
    # server released A's id; today that makes B the owner and A's own updates are refused.
    conn_a.close(CloseCode.TRY_AGAIN_LATER, "send queue full: client is not reading", flush=False)
    await b.wait_event("awareness", since=mark_b, where=lambda e: str(a.client_id) not in e["states"])
    await a.wait_event("synced", since=mark_a, timeout=10)
    # The server's removal used clock+1, so A's next clock is not newer at B: change twice.
    await a.call("awareness", state={"v": 2})
    await a.call("awareness", state={"v": 3})
    await b.wait_event(
        "awareness", since=mark_b, timeout=3, where=lambda e: e["states"].get(str(a.client_id)) == {"v": 3}
    )
