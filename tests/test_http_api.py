"""The canvas HTTP API on a live server, on SQLite and on Postgres.

Export (JSON, binary, ETag/304), import (POST updates), field edits (PATCH),
listing and deletion, history (versions, restore), and the operations
endpoints. Writes made over HTTP must reach live WebSocket clients exactly like
a peer's change, so most tests keep a ``WireClient`` in the room and check what
it receives.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any

import httpx
from pycrdt import Doc, Map

from canvashub.crdt import codec
from canvashub.server.compaction import replay
from canvashub.server.errors import CloseCode

from .support import StorageBackend, wait_until
from .wire import WireClient, elements_of, key_updates

BINARY = {"Content-Type": "application/octet-stream"}


# -- helpers ---------------------------------------------------------------------------------
def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """The response is the documented error shape with this status and type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == error_type, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_iso(value: Any) -> datetime.datetime:
    """An ISO 8601 timestamp with a timezone."""
    assert isinstance(value, str), value
    parsed = datetime.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def assert_strong_etag(value: str | None) -> str:
    assert value is not None and re.fullmatch(r'"[0-9a-f]{32}"', value), value
    return value


def update_frames(client: WireClient) -> list[bytes]:
    """The Yjs updates of every ``[0, 2, update]`` frame the client received, in order."""
    updates = []
    for frame in client.frames:
        if frame[:2] == b"\x00\x02":
            message = codec.parse_frame(frame)
            assert isinstance(message, codec.SyncUpdate)
            updates.append(message.update)
    return updates


async def next_update(client: WireClient, seen: int, what: str = "update frame") -> bytes:
    """Wait for the client's update frame number ``seen`` (0-based) and return its update."""
    await client.wait(lambda: len(update_frames(client)) > seen, what=what)
    return update_frames(client)[seen]


def capture(doc: Doc, edit: Callable[[Map], None]) -> list[bytes]:
    """Run ``edit(elements)`` on ``doc`` and return the updates it produced (one per transaction)."""
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(bytes(event.update)))
    try:
        edit(doc.get("elements", type=Map))
    finally:
        doc.unobserve(subscription)
    return updates


def doc_elements(doc: Doc) -> dict[str, Any]:
    return doc.get("elements", type=Map).to_py() or {}


async def write_and_wait(client: WireClient, updates: list[bytes], through: int) -> None:
    """Send updates over the socket and wait until the server says the ``through``-th is durable."""
    for update in updates:
        await client.send_update(update)
    await client.wait_save(where=lambda e: e["through"] == through)


async def stored(backend: StorageBackend, canvas_id: str):
    """What a fresh process would load for ``canvas_id`` (None if it does not exist)."""
    store = backend.make_store()
    await store.open()
    try:
        return await store.load(canvas_id)
    finally:
        await store.close()


def big_update(chars: int) -> bytes:
    doc = Doc()
    return capture(doc, lambda elements: elements.__setitem__("big", "x" * chars))[0]


# -- GET /api/canvases/{id} -----------------------------------------------------------------
async def test_get_unknown_and_invalid_canvas_ids(server_factory, storage_backend):
    """An unknown id is 404 not_found; an id outside the id rule is 400 invalid (never a store lookup)."""
    server = await server_factory(**storage_backend.overrides)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert_error(await http.get("/api/canvases/nope"), 404, "not_found")
        assert_error(await http.get("/api/canvases/a.b"), 400, "invalid")
        assert_error(await http.get("/api/canvases/" + "x" * 65), 400, "invalid")
        assert_error(await http.get("/api/canvases/a%20b"), 400, "invalid")
        # 64 characters is still a valid id (and unknown).
        assert_error(await http.get("/api/canvases/" + "x" * 64), 404, "not_found")
        # Every route with a canvas id validates it.
        assert_error(await http.post("/api/canvases/a.b/updates", content=b"\x00\x00", headers=BINARY), 400, "invalid")
        assert_error(await http.patch("/api/canvases/a.b/elements/e1", json={"x": 1}), 400, "invalid")
        assert_error(await http.delete("/api/canvases/a.b"), 400, "invalid")
        assert_error(await http.get("/api/canvases/a.b/versions"), 400, "invalid")
    assert "a.b" not in server.hub.registry.rooms


async def test_get_exports_json_binary_and_conditional(server_factory, storage_backend):
    """GET gives the elements as JSON with id/version/updated_at and a strong ETag; If-None-Match
    with that ETag is 304; Accept: application/octet-stream gives a Yjs update of the same content."""
    server = await server_factory(**storage_backend.overrides)
    client = await WireClient.connect(server, "export")
    _, updates = key_updates(3)
    await write_and_wait(client, updates, 3)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get("/api/canvases/export")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["id"] == "export"
        assert body["elements"] == {"k0": 0, "k1": 1, "k2": 2}
        assert isinstance(body["version"], int) and body["version"] >= 0
        assert_iso(body["updated_at"])
        etag = assert_strong_etag(response.headers.get("etag"))

        not_modified = await http.get("/api/canvases/export", headers={"If-None-Match": etag})
        assert not_modified.status_code == 304
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == etag
        # Weak comparison and lists work too; a different tag gets the full body.
        assert (
            await http.get("/api/canvases/export", headers={"If-None-Match": f'"other", W/{etag}'})
        ).status_code == 304
        other = await http.get("/api/canvases/export", headers={"If-None-Match": '"0123456789abcdef0123456789abcdef"'})
        assert other.status_code == 200 and other.json()["elements"] == body["elements"]

        binary = await http.get("/api/canvases/export", headers={"Accept": "application/octet-stream"})
        assert binary.status_code == 200
        assert binary.headers["content-type"] == "application/octet-stream"
        assert binary.headers["etag"] != etag  # another representation, another ETag (tests/test_http_answers.py)
        assert elements_of(binary.content) == {"k0": 0, "k1": 1, "k2": 2}

        head = await http.head("/api/canvases/export")
        assert head.status_code == 200 and head.headers["etag"] == etag and head.content == b""


async def test_etag_changes_on_insert_and_on_delete_only_change(server_factory, storage_backend):
    """The ETag covers content, not just the state vector: it changes after a new update and also after
    a change that only deletes (state vector unchanged), and an old ETag no longer gets a 304."""
    server = await server_factory(**storage_backend.overrides)
    client = await WireClient.connect(server, "tags")
    doc, updates = key_updates(2)
    await write_and_wait(client, updates, 2)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        first = (await http.get("/api/canvases/tags")).headers["etag"]

        inserted = capture(doc, lambda elements: elements.__setitem__("k2", 2))
        await write_and_wait(client, inserted, 3)
        second_response = await http.get("/api/canvases/tags")
        second = second_response.headers["etag"]
        assert second != first
        assert second_response.json()["elements"] == {"k0": 0, "k1": 1, "k2": 2}
        assert (await http.get("/api/canvases/tags", headers={"If-None-Match": first})).status_code == 200

        state_before = doc.get_state()
        deleted = capture(doc, lambda elements: elements.__delitem__("k0"))
        assert doc.get_state() == state_before  # the change is delete-only: no new structs
        await write_and_wait(client, deleted, 4)
        third_response = await http.get("/api/canvases/tags")
        third = third_response.headers["etag"]
        assert third not in (first, second)
        assert third_response.json()["elements"] == {"k1": 1, "k2": 2}
        stale = await http.get("/api/canvases/tags", headers={"If-None-Match": second})
        assert stale.status_code == 200 and stale.json()["elements"] == {"k1": 1, "k2": 2}
        assert (await http.get("/api/canvases/tags", headers={"If-None-Match": third})).status_code == 304


async def test_get_same_from_live_room_and_from_storage(server_factory, storage_backend):
    """GET answers from the loaded room and, once it unloads, from storage: same elements, same ETag,
    and a 304 for the ETag seen while the room was loaded."""
    server = await server_factory(**storage_backend.overrides, room_grace_seconds=0.05)
    client = await WireClient.connect(server, "both")
    doc, updates = key_updates(4)
    updates += capture(doc, lambda elements: elements.__delitem__("k1"))  # a delete set too
    await write_and_wait(client, updates, 5)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert "both" in server.hub.registry.rooms
        live = await http.get("/api/canvases/both")
        assert live.status_code == 200
        live_binary = await http.get("/api/canvases/both", headers={"Accept": "application/octet-stream"})
        await client.close()
        await wait_until(lambda: "both" not in server.hub.registry.rooms, 10, "room unload")

        cold = await http.get("/api/canvases/both")
        assert "both" not in server.hub.registry.rooms  # a read does not load the room
        assert cold.status_code == 200
        assert cold.json()["elements"] == live.json()["elements"] == {"k0": 0, "k2": 2, "k3": 3}
        assert cold.headers["etag"] == live.headers["etag"]
        assert_iso(cold.json()["updated_at"])
        cold_binary = await http.get("/api/canvases/both", headers={"Accept": "application/octet-stream"})
        assert elements_of(cold_binary.content) == elements_of(live_binary.content) == {"k0": 0, "k2": 2, "k3": 3}
        assert (
            await http.get("/api/canvases/both", headers={"If-None-Match": live.headers["etag"]})
        ).status_code == 304


async def test_writes_not_yet_durable_answer_202_and_are_readable(server_factory, storage_backend):
    """A write not durable within http_durable_timeout answers 202 (durable false) but is already live:
    relayed to clients and visible in GET (which reads the loaded room, not only storage); it is still
    written later (here: by the shutdown flush)."""
    server = await server_factory(**storage_backend.overrides, commit_interval=30.0, http_durable_timeout=0.05)
    client = await WireClient.connect(server, "slow")
    _, updates = key_updates(1, prefix="s")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post("/api/canvases/slow/updates", content=updates[0], headers=BINARY)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["durable"] is False and body["changed"] is True and "seq" not in body
        assert body["etag"] == response.headers["etag"]
        assert await next_update(client, 0) == updates[0]
        got = await http.get("/api/canvases/slow")
        assert got.status_code == 200
        assert got.json()["elements"] == {"s0": 0}
        assert got.headers["etag"] == body["etag"]
    assert not server.hub.persister.is_durable("slow")  # so GET answered from memory
    assert await stored(storage_backend, "slow") is None
    await client.close()
    await server.stop()  # graceful shutdown flushes the backlog
    loaded = await stored(storage_backend, "slow")
    assert loaded is not None and [u for _, u in loaded.updates] == [updates[0]]


# -- POST /api/canvases/{id}/updates --------------------------------------------------------
async def test_post_update_is_durable_and_relayed(server_factory, storage_backend):
    """A posted update answers 200 once durable (seq, etag), reaches a live client as an update frame
    carrying those exact bytes, and is in storage."""
    server = await server_factory(**storage_backend.overrides)
    client = await WireClient.connect(server, "import")
    _, updates = key_updates(2, prefix="p")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post("/api/canvases/import/updates", content=updates[0], headers=BINARY)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["durable"] is True and body["changed"] is True and body["id"] == "import"
        assert isinstance(body["seq"], int)
        assert body["etag"] == response.headers["etag"]
        assert_strong_etag(body["etag"])
        assert await next_update(client, 0) == updates[0]

        second = await http.post("/api/canvases/import/updates", content=updates[1], headers=BINARY)
        assert second.status_code == 200
        assert second.json()["seq"] > body["seq"]
        assert second.json()["etag"] != body["etag"]
        assert await next_update(client, 1) == updates[1]

        got = await http.get("/api/canvases/import")
        assert got.json()["elements"] == {"p0": 0, "p1": 1}
        assert got.headers["etag"] == second.json()["etag"]
    loaded = await stored(storage_backend, "import")
    assert loaded is not None
    assert [seq for seq, _ in loaded.updates][-2:] == [body["seq"], second.json()["seq"]]


async def test_post_update_creates_a_new_canvas(server_factory, storage_backend):
    """Posting to an id that does not exist creates the canvas: it is stored, listed and readable."""
    server = await server_factory(**storage_backend.overrides)
    _, updates = key_updates(1, prefix="n")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert_error(await http.get("/api/canvases/brand-new"), 404, "not_found")
        response = await http.post("/api/canvases/brand-new/updates", content=updates[0], headers=BINARY)
        assert response.status_code == 200 and response.json()["durable"] is True
        got = await http.get("/api/canvases/brand-new")
        assert got.status_code == 200 and got.json()["elements"] == {"n0": 0}
        listed = (await http.get("/api/canvases")).json()["canvases"]
        assert [c["id"] for c in listed] == ["brand-new"]
    loaded = await stored(storage_backend, "brand-new")
    assert loaded is not None and len(loaded.updates) == 1


async def test_post_update_if_match(server_factory, storage_backend):
    """If-Match with a stale ETag is 412 conflict carrying the current ETag, and changes nothing;
    with the current ETag (or ``*``) the write goes through."""
    server = await server_factory(**storage_backend.overrides)
    client = await WireClient.connect(server, "guarded")
    doc, updates = key_updates(1)
    await write_and_wait(client, updates, 1)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        stale = (await http.get("/api/canvases/guarded")).headers["etag"]
        more = capture(doc, lambda elements: elements.__setitem__("k1", 1))
        await write_and_wait(client, more, 2)
        current = (await http.get("/api/canvases/guarded")).headers["etag"]
        assert current != stale

        _, mine = key_updates(2, prefix="h")
        refused = await http.post(
            "/api/canvases/guarded/updates", content=mine[0], headers={**BINARY, "If-Match": stale}
        )
        assert_error(refused, 412, "conflict")
        assert refused.headers["etag"] == current
        after = await http.get("/api/canvases/guarded")
        assert after.headers["etag"] == current
        assert after.json()["elements"] == {"k0": 0, "k1": 1}

        accepted = await http.post(
            "/api/canvases/guarded/updates", content=mine[0], headers={**BINARY, "If-Match": current}
        )
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["etag"] != current
        assert await next_update(client, 0) == mine[0]  # the refused write was never relayed

        wildcard = await http.post(
            "/api/canvases/guarded/updates", content=mine[1], headers={**BINARY, "If-Match": "*"}
        )
        assert wildcard.status_code == 200
        assert (await http.get("/api/canvases/guarded")).json()["elements"] == {"k0": 0, "k1": 1, "h0": 0, "h1": 1}
    loaded = await stored(storage_backend, "guarded")
    assert len(loaded.updates) == 4  # two from the socket, two accepted posts; the refused one is absent


async def test_post_update_rejects_garbage_and_empty_bodies(server_factory, storage_backend):
    """A body that is not a Yjs update is 400 invalid and an empty body is 400: nothing is applied,
    relayed or stored, on an existing canvas and on a new id."""
    server = await server_factory(**storage_backend.overrides)
    client = await WireClient.connect(server, "strict")
    _, updates = key_updates(2)
    await write_and_wait(client, updates, 2)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        before = await http.get("/api/canvases/strict")
        for garbage in (b"\x01\x01\xff\xff\xff\x0f\x00\x07\x00", b"not an update at all", b"\x00"):
            assert_error(
                await http.post("/api/canvases/strict/updates", content=garbage, headers=BINARY), 400, "invalid"
            )
        assert_error(await http.post("/api/canvases/strict/updates", content=b"", headers=BINARY), 400, "invalid")
        after = await http.get("/api/canvases/strict")
        assert after.headers["etag"] == before.headers["etag"]
        assert after.json()["elements"] == {"k0": 0, "k1": 1}

        assert_error(await http.post("/api/canvases/never/updates", content=b"junk", headers=BINARY), 400, "invalid")
        assert_error(await http.post("/api/canvases/never2/updates", content=b"", headers=BINARY), 400, "invalid")
        assert [c["id"] for c in (await http.get("/api/canvases")).json()["canvases"]] == ["strict"]
        # The socket is still open and saw no update frame from the refused posts: prove ordering with a
        # real write, which must be the first update frame it receives.
        _, good = key_updates(1, prefix="g")
        assert (await http.post("/api/canvases/strict/updates", content=good[0], headers=BINARY)).status_code == 200
        assert await next_update(client, 0) == good[0]
    loaded = await stored(storage_backend, "strict")
    assert len(loaded.updates) == 3
    for _, row in loaded.updates:
        Doc().apply_update(row)
    assert await stored(storage_backend, "never") is None
    assert await stored(storage_backend, "never2") is None


async def test_post_update_too_large(server_factory):
    """A body over max_frame_bytes is 413 too_large, whether its length is declared or it is chunked;
    a body under the cap is accepted. (Backend-independent: refused before storage is touched.)"""
    server = await server_factory(max_frame_bytes=4096)
    big = big_update(5000)
    small = big_update(3000)
    assert len(big) > 4096 >= len(small)
    Doc().apply_update(big)  # a valid update: only its size is wrong

    async def chunks():
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert_error(await http.post("/api/canvases/huge/updates", content=big, headers=BINARY), 413, "too_large")
        assert_error(await http.post("/api/canvases/huge/updates", content=chunks(), headers=BINARY), 413, "too_large")
        assert_error(await http.get("/api/canvases/huge"), 404, "not_found")
        ok = await http.post("/api/canvases/huge/updates", content=small, headers=BINARY)
        assert ok.status_code == 200, ok.text
        assert (await http.get("/api/canvases/huge")).json()["elements"] == {"big": "x" * 3000}


# -- PATCH /api/canvases/{id}/elements/{element_id} ------------------------------------------
async def test_patch_element_sets_and_deletes_fields(server_factory, storage_backend):
    """PATCH creates/updates an element's fields and ``null`` deletes one; each change is durable,
    visible in GET, and reaches a live client as an update that its own copy of the doc applies."""
    server = await server_factory(**storage_backend.overrides)
    client = await WireClient.connect(server, "patched")
    mirror, updates = key_updates(1)
    await write_and_wait(client, updates, 1)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        created = await http.patch("/api/canvases/patched/elements/e1", json={"x": 10, "fill": "#f00"})
        assert created.status_code == 200, created.text
        assert created.json()["durable"] is True and created.json()["changed"] is True
        assert isinstance(created.json()["seq"], int)
        got = await http.get("/api/canvases/patched")
        assert got.json()["elements"] == {"k0": 0, "e1": {"x": 10, "fill": "#f00"}}
        assert got.headers["etag"] == created.headers["etag"] == created.json()["etag"]
        mirror.apply_update(await next_update(client, 0))
        assert doc_elements(mirror) == {"k0": 0, "e1": {"x": 10, "fill": "#f00"}}

        moved = await http.patch("/api/canvases/patched/elements/e1", json={"x": 25.5, "y": -3, "tags": ["a", 1]})
        assert moved.status_code == 200
        mirror.apply_update(await next_update(client, 1))
        expected = {"x": 25.5, "y": -3, "fill": "#f00", "tags": ["a", 1]}
        assert doc_elements(mirror)["e1"] == expected

        removed = await http.patch("/api/canvases/patched/elements/e1", json={"fill": None})
        assert removed.status_code == 200
        del expected["fill"]
        mirror.apply_update(await next_update(client, 2))
        assert doc_elements(mirror)["e1"] == expected
        got = await http.get("/api/canvases/patched")
        assert got.json()["elements"] == {"k0": 0, "e1": expected}
        assert got.headers["etag"] == removed.headers["etag"]
    state = await stored(storage_backend, "patched")
    assert doc_elements(replay(state, "patched", strict=True)) == {"k0": 0, "e1": expected}


async def test_patch_element_rejects_bad_input_and_stale_etags(server_factory, storage_backend):
    """Invalid JSON and bad element ids are 400, non-object JSON and out-of-range values 422 (with
    the problems listed), and change nothing; If-Match works as for POST (412 with the current ETag,
    then 200 when current)."""
    server = await server_factory(**storage_backend.overrides)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        first = await http.patch("/api/canvases/shapes/elements/e1", json={"x": 1})
        assert first.status_code == 200
        etag = first.headers["etag"]
        url = "/api/canvases/shapes/elements/e1"
        for body in (b"{", b"", b"{'x': 1}"):  # not JSON: 400
            assert_error(
                await http.patch(url, content=body, headers={"Content-Type": "application/json"}), 400, "invalid"
            )
        for body in (b"[1, 2]", b'"text"', b"42", b"null", b'{"x": 9007199254740993}'):  # wrong shape: 422
            response = await http.patch(url, content=body, headers={"Content-Type": "application/json"})
            assert_error(response, 422, "invalid")
            assert response.json()["error"]["errors"], body
        for element_id in ("a.b", "x" * 65, "a%20b"):
            assert_error(await http.patch(f"/api/canvases/shapes/elements/{element_id}", json={"x": 1}), 400, "invalid")
        got = await http.get("/api/canvases/shapes")
        assert got.headers["etag"] == etag
        assert got.json()["elements"] == {"e1": {"x": 1}}

        second = await http.patch(url, json={"x": 2}, headers={"If-Match": etag})
        assert second.status_code == 200, second.text
        current = second.headers["etag"]
        refused = await http.patch(url, json={"x": 3}, headers={"If-Match": etag})
        assert_error(refused, 412, "conflict")
        assert refused.headers["etag"] == current
        got = await http.get("/api/canvases/shapes")
        assert got.json()["elements"] == {"e1": {"x": 2}} and got.headers["etag"] == current
        third = await http.patch(url, json={"x": 3}, headers={"If-Match": current})
        assert third.status_code == 200
        assert (await http.get("/api/canvases/shapes")).json()["elements"] == {"e1": {"x": 3}}
    loaded = await stored(storage_backend, "shapes")
    assert len(loaded.updates) == 3  # the three accepted patches, nothing from the refused ones


# -- GET /api/canvases ----------------------------------------------------------------------
async def test_list_canvases_pages_in_id_order(server_factory, storage_backend):
    """Following next_cursor with limit=2 visits every canvas once, in id order, and ends with null."""
    server = await server_factory(**storage_backend.overrides)
    ids = ["delta", "alpha", "echo", "charlie", "bravo"]
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        for canvas_id in ids:
            _, updates = key_updates(1, prefix=canvas_id)
            response = await http.post(f"/api/canvases/{canvas_id}/updates", content=updates[0], headers=BINARY)
            assert response.status_code == 200
        seen: list[str] = []
        sizes: list[int] = []
        cursor = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            response = await http.get("/api/canvases", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            for row in page["canvases"]:
                assert isinstance(row["version"], int)
                assert_iso(row["updated_at"])
            seen += [row["id"] for row in page["canvases"]]
            sizes.append(len(page["canvases"]))
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(ids)
        assert sizes == [2, 2, 1]

        whole = (await http.get("/api/canvases", params={"limit": 5})).json()
        assert [r["id"] for r in whole["canvases"]] == sorted(ids) and whole["next_cursor"] is None
        rest = (await http.get("/api/canvases", params={"cursor": "bravo"})).json()
        assert [r["id"] for r in rest["canvases"]] == ["charlie", "delta", "echo"] and rest["next_cursor"] is None


async def test_list_canvases_validates_limit(server_factory):
    """limit must be an integer in 1..100 (400 invalid otherwise). Backend-independent."""
    server = await server_factory()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        for limit in ("0", "101", "-1", "two"):
            assert_error(await http.get("/api/canvases", params={"limit": limit}), 400, "invalid")
        for limit in ("1", "100"):
            response = await http.get("/api/canvases", params={"limit": limit})
            assert response.status_code == 200
            assert response.json() == {"canvases": [], "next_cursor": None}


# -- DELETE /api/canvases/{id} --------------------------------------------------------------
async def test_delete_canvas(server_factory, storage_backend):
    """DELETE closes the room's sockets with 4404 and removes the canvas everywhere (GET, list, store,
    versions); deleting again or deleting an unknown id is 404; a new client starts from empty."""
    server = await server_factory(**storage_backend.overrides, compact_every_updates=3)
    a = await WireClient.connect(server, "doomed")
    b = await WireClient.connect(server, "doomed", events=False)
    _, updates = key_updates(4)
    await write_and_wait(a, updates, 4)
    await wait_until(lambda: server.hub.metrics.compactions >= 1, 20, "a compaction (so there is a version)")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        _, keep = key_updates(1, prefix="keep")
        assert (await http.post("/api/canvases/kept/updates", content=keep[0], headers=BINARY)).status_code == 200
        assert (await http.get("/api/canvases/doomed/versions")).json()["versions"]

        response = await http.delete("/api/canvases/doomed")
        assert response.status_code == 204
        assert await a.wait_closed() == CloseCode.CANVAS_DELETED
        assert await b.wait_closed() == CloseCode.CANVAS_DELETED

        assert_error(await http.get("/api/canvases/doomed"), 404, "not_found")
        assert_error(await http.get("/api/canvases/doomed/versions"), 404, "not_found")
        assert [c["id"] for c in (await http.get("/api/canvases")).json()["canvases"]] == ["kept"]
        assert_error(await http.delete("/api/canvases/doomed"), 404, "not_found")
        assert_error(await http.delete("/api/canvases/never-existed"), 404, "not_found")
        assert (await http.get("/api/canvases/kept")).json()["elements"] == {"keep0": 0}
    assert await stored(storage_backend, "doomed") is None

    fresh = await WireClient.connect(server, "doomed")
    await fresh.wait(lambda: fresh.frames, what="sync step 1")
    step1 = codec.parse_frame(fresh.frames[0])
    assert isinstance(step1, codec.SyncStep1) and step1.state_vector == b"\x00"  # the server has nothing
    await fresh.ws.send(codec.encode_sync_step1(b"\x00"))

    def step2():
        for frame in fresh.frames:
            if frame[:2] == b"\x00\x01":
                return codec.parse_frame(frame)
        return None

    reply = await fresh.wait(step2, what="sync step 2")
    assert elements_of(reply.update) == {}
    await fresh.close()


# -- history ---------------------------------------------------------------------------------
async def test_versions_list_get_and_restore(server_factory, storage_backend):
    """Compactions record versions: listed newest first (number, created_at, size), pageable with
    limit/cursor, each readable; restoring an old one makes the live document equal to it (relayed to
    a live client) without rewriting history."""
    server = await server_factory(**storage_backend.overrides, compact_every_updates=5)
    client = await WireClient.connect(server, "hist")
    doc, first = key_updates(5)  # v1: k0..k4
    _, second = key_updates(5, prefix="m", doc=doc)  # v2: k0..k4, m0..m4
    third = capture(doc, lambda elements: [elements.__delitem__(f"k{i}") for i in range(5)])  # v3: m0..m4
    assert len(third) == 5
    expected = [
        {f"k{i}": i for i in range(5)},
        {**{f"k{i}": i for i in range(5)}, **{f"m{i}": i for i in range(5)}},
        {f"m{i}": i for i in range(5)},
    ]
    for step, batch in enumerate((first, second, third), 1):
        await write_and_wait(client, batch, 5 * step)
        await wait_until(lambda step=step: server.hub.metrics.compactions >= step, 20, f"compaction {step}")

    async with httpx.AsyncClient(base_url=server.http_url) as http:
        listing = await http.get("/api/canvases/hist/versions")
        assert listing.status_code == 200, listing.text
        versions = listing.json()["versions"]
        assert listing.json()["next_cursor"] is None
        numbers = [v["number"] for v in versions]
        assert len(numbers) == 3 and numbers == sorted(numbers, reverse=True) and len(set(numbers)) == 3
        for v in versions:
            assert isinstance(v["size"], int) and v["size"] > 0
            assert_iso(v["created_at"])
        assert (await http.get("/api/canvases/hist")).json()["version"] == numbers[0]

        paged: list[int] = []
        cursor = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 1}
            if cursor is not None:
                params["cursor"] = cursor
            page = (await http.get("/api/canvases/hist/versions", params=params)).json()
            assert len(page["versions"]) == 1
            paged.append(page["versions"][0]["number"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert paged == numbers
        assert_error(await http.get("/api/canvases/hist/versions", params={"cursor": "x"}), 400, "invalid")
        assert_error(await http.get("/api/canvases/hist/versions", params={"limit": 0}), 400, "invalid")

        oldest_first = list(reversed(numbers))
        for number, want in zip(oldest_first, expected, strict=True):
            got = await http.get(f"/api/canvases/hist/versions/{number}")
            assert got.status_code == 200, got.text
            body = got.json()
            assert body["id"] == "hist" and body["number"] == number
            assert body["elements"] == want
            assert_iso(body["created_at"])
            assert body["size"] == next(v["size"] for v in versions if v["number"] == number)
            raw = await http.get(
                f"/api/canvases/hist/versions/{number}", headers={"Accept": "application/octet-stream"}
            )
            assert raw.headers["content-type"] == "application/octet-stream"
            assert elements_of(raw.content) == want
        assert_error(await http.get(f"/api/canvases/hist/versions/{numbers[0] + 100}"), 404, "not_found")
        assert_error(await http.get("/api/canvases/hist/versions/0"), 404, "not_found")
        assert_error(await http.post(f"/api/canvases/hist/versions/{numbers[0] + 100}/restore"), 404, "not_found")

        current = await http.get("/api/canvases/hist")
        assert current.json()["elements"] == expected[2]
        restored = await http.post(f"/api/canvases/hist/versions/{oldest_first[0]}/restore")
        assert restored.status_code == 200, restored.text
        assert restored.json()["durable"] is True and restored.json()["changed"] is True
        assert restored.json()["etag"] != current.headers["etag"]
        doc.apply_update(await next_update(client, 0))  # the live client gets the restore as one update
        assert doc_elements(doc) == expected[0]
        after = await http.get("/api/canvases/hist")
        assert after.json()["elements"] == expected[0]
        assert after.headers["etag"] == restored.headers["etag"]

        # Restoring the version the document already equals is a no-op.
        again = await http.post(f"/api/canvases/hist/versions/{oldest_first[0]}/restore")
        assert again.status_code == 200 and again.json()["changed"] is False
        assert again.headers["etag"] == restored.headers["etag"]

        # History is not rewritten: every later version is still there and unchanged.
        still = [v["number"] for v in (await http.get("/api/canvases/hist/versions")).json()["versions"]]
        assert set(numbers) <= set(still)
        assert (await http.get(f"/api/canvases/hist/versions/{numbers[0]}")).json()["elements"] == expected[2]

        # If-Match applies to restores too.
        refused = await http.post(
            f"/api/canvases/hist/versions/{numbers[0]}/restore", headers={"If-Match": current.headers["etag"]}
        )
        assert_error(refused, 412, "conflict")
        assert refused.headers["etag"] == restored.headers["etag"]
        assert (await http.get("/api/canvases/hist")).json()["elements"] == expected[0]


async def test_versions_of_unknown_canvas(server_factory, storage_backend):
    """Versions of a canvas that does not exist: listing, reading and restoring are all 404."""
    server = await server_factory(**storage_backend.overrides)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert_error(await http.get("/api/canvases/ghost/versions"), 404, "not_found")
        assert_error(await http.get("/api/canvases/ghost/versions/1"), 404, "not_found")
        assert_error(await http.post("/api/canvases/ghost/versions/1/restore"), 404, "not_found")
        # A canvas that exists but was never compacted has an empty history, not a 404.
        _, updates = key_updates(1)
        assert (await http.post("/api/canvases/young/updates", content=updates[0], headers=BINARY)).status_code == 200
        young = await http.get("/api/canvases/young/versions")
        assert young.status_code == 200 and young.json() == {"versions": [], "next_cursor": None}
    assert await stored(storage_backend, "ghost") is None


# -- operations ------------------------------------------------------------------------------
async def test_readyz_and_metrics(server_factory, storage_backend):
    """/readyz reports the storage backend and its health; /metrics counts committed batches."""
    server = await server_factory(**storage_backend.overrides)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        _, updates = key_updates(1)
        assert (await http.post("/api/canvases/ops/updates", content=updates[0], headers=BINARY)).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready"
        storage = body["storage"]
        assert storage["backend"] == storage_backend.kind
        assert storage["healthy"] is True
        assert isinstance(storage["backlog_bytes"], int) and storage["backlog_bytes"] >= 0
        assert isinstance(storage["backlog_updates"], int)

        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        match = re.search(r"^canvashub_batches_committed_total (\S+)$", metrics.text, re.MULTILINE)
        assert match is not None, metrics.text
        assert float(match.group(1)) >= 1
        assert "# TYPE canvashub_batches_committed_total counter" in metrics.text


# -- regressions --------------------------------------------------------------------------------
async def test_refused_write_does_not_make_a_canvas_appear(server_factory):
    """A write refused as invalid on an unknown id stores nothing, so the canvas must stay 404 for GET,
    versions and DELETE (it used to read as an empty canvas until the room's grace period ended)."""
    server = await server_factory()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert_error(await http.post("/api/canvases/phantom/updates", content=b"junk", headers=BINARY), 400, "invalid")
        assert_error(await http.patch("/api/canvases/phantom2/elements/a.b", json={"x": 1}), 400, "invalid")
        # If-Match, even "*", never matches a canvas that does not exist (RFC 9110 13.1.1).
        _, updates = key_updates(1)
        for tag in ("*", '"abc"'):
            assert_error(
                await http.post(
                    "/api/canvases/phantom3/updates", content=updates[0], headers={**BINARY, "If-Match": tag}
                ),
                412,
                "conflict",
            )
        for canvas_id in ("phantom", "phantom2", "phantom3"):
            assert_error(await http.get(f"/api/canvases/{canvas_id}"), 404, "not_found")
            assert_error(await http.get(f"/api/canvases/{canvas_id}/versions"), 404, "not_found")
            assert_error(await http.delete(f"/api/canvases/{canvas_id}"), 404, "not_found")


async def test_out_of_range_version_numbers_are_client_errors(server_factory, storage_backend):
    """A version number or cursor too large for storage is a classified JSON 4xx, never a 500: the
    version cannot exist (404), and a cursor the server never issued is invalid (400)."""
    server = await server_factory(**storage_backend.overrides)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        _, updates = key_updates(1)
        assert (await http.post("/api/canvases/big/updates", content=updates[0], headers=BINARY)).status_code == 200
        for number in (2**31 - 1, 2**31, 10**20):
            assert_error(await http.get(f"/api/canvases/big/versions/{number}"), 404, "not_found")
            assert_error(await http.post(f"/api/canvases/big/versions/{number}/restore"), 404, "not_found")
        assert_error(await http.get("/api/canvases/big/versions", params={"cursor": str(10**20)}), 400, "invalid")
