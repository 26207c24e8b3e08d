"""canvashub.client, the Python peer and REST client, against live servers (in-process and `canvashub serve`)."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

from canvashub.client import (
    AccessForbidden,
    AuthenticationFailed,
    Backoff,
    Canvas,
    CanvasDeleted,
    HttpClient,
    HttpError,
    connect,
)
from canvashub.client.durability import SaveTracker
from canvashub.crdt.update import decode_state_vector
from canvashub.server.auth import mint_token

from .js_client import JsClient
from .support import wait_until
from .test_durability import OUTAGE_SETTINGS
from .test_persistence import stored_elements

SECRET = "client-secret-" + "z" * 32
FAST = {"backoff": Backoff(base=0.05, cap=0.5)}


def elements(canvas: Canvas) -> Map:
    return canvas.doc.get("elements", type=Map)


def state_vector(canvas: Canvas) -> dict[int, int]:
    return decode_state_vector(canvas.doc.get_state())


def element_ids(canvas: Canvas) -> set[str]:
    return set(elements(canvas).keys())


def add(canvas: Canvas, key: str, **fields: Any) -> None:
    """One local transaction: elements[key] = Map(fields)."""
    with canvas.doc.transaction():
        elements(canvas)[key] = Map({"type": "rect", **fields})


# -- sans-I/O parts -------------------------------------------------------------------------------


def test_backoff_is_exponential_capped_and_fully_jittered():
    """Each delay is uniform in [0, min(cap, base * 2^n)]; the ceiling stops at the cap; reset starts over."""
    backoff = Backoff(base=0.1, cap=2.0, rng=random.Random(7))
    ceilings, delays = [], []
    for _ in range(12):
        ceilings.append(backoff.ceiling())
        delays.append(backoff.next_delay())
    assert ceilings[:6] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0] and set(ceilings[5:]) == {2.0}
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.ceiling() == 0.1


def test_save_tracker_trusts_only_save_event_clocks():
    """A change is durable once a save event's clock covers it; a delete-only change once `through` reaches it."""
    tracker = SaveTracker()
    tracker.connected(0.0)
    tracker.local_change({7: 3}, on_socket=True, now=0.0)
    tracker.local_change({}, on_socket=True, now=0.0)  # a deletion: change #2 on this socket
    target = tracker.target()
    tracker.save_event({"type": "save", "status": "saved", "through": 1, "pending": 1, "clock": {"7": 3}}, 0.1)
    assert not tracker.covers(target)  # the clock is covered, the deletion is not yet
    tracker.save_event({"type": "save", "status": "saved", "through": 2, "pending": 0, "clock": {"7": 3}}, 0.2)
    assert tracker.covers(target)
    tracker.local_change({7: 4}, on_socket=False, now=0.3)
    later = tracker.target()
    tracker.save_event({"type": "save", "scope": "canvas", "status": "retrying", "clock": {"7": 3}}, 0.4)
    assert not tracker.covers(later) and tracker.covers(target)


# -- realtime -------------------------------------------------------------------------------------


async def test_two_python_clients_converge(live_server):
    """Two Python peers edit the same canvas, in turn and concurrently on one key: both end identical."""
    async with connect(live_server.http_url, "pair", **FAST) as a, connect(live_server.http_url, "pair", **FAST) as b:
        add(a, "from-a", x=1)
        add(b, "from-b", x=2)
        await wait_until(lambda: element_ids(a) == element_ids(b) == {"from-a", "from-b"}, 5, "both edits on both")
        elements(a)["from-b"]["fill"] = "red"  # concurrent writes to one field: Yjs picks one winner
        elements(b)["from-b"]["fill"] = "blue"
        await wait_until(lambda: state_vector(a) == state_vector(b), 5, "same state vectors")
        assert elements(a).to_py() == elements(b).to_py()
        await a.saved(timeout=10)
        await b.saved(timeout=10)


async def test_a_python_client_and_the_stock_yjs_client_converge(live_server):
    """The Python peer and y-websocket's WebsocketProvider (Node) see each other's edits and agree."""
    js = await JsClient.start(f"ws://127.0.0.1:{live_server.port}/ws", "mixed", name="js")
    try:
        await js.wait_event("synced")
        async with connect(live_server.http_url, "mixed", **FAST) as py:
            add(py, "py1", x=10, text="héllo ☃")
            await js.call("set", key="js1", fields={"type": "ellipse", "x": 20})
            await wait_until(lambda: "js1" in element_ids(py), 5, "the JS edit in Python")
            await wait_until_async(lambda: _js_has(js, {"py1", "js1"}), 5, "the Python edit in JS")
            await js.call("update", key="py1", field="x", value=11)
            elements(py)["js1"]["x"] = 21
            state = await _converged(js, py)
            assert state["py1"] == {"type": "rect", "x": 11, "text": "héllo ☃"}
            assert state["js1"] == {"type": "ellipse", "x": 21}
    finally:
        await js.close()


async def test_presence_crosses_between_python_and_js(live_server):
    """Presence set in Python reaches another Python peer and the stock client (non-ASCII intact), theirs
    reaches Python, and a Python peer that leaves is removed at once (not after a 30 s timeout)."""
    js = await JsClient.start(f"ws://127.0.0.1:{live_server.port}/ws", "cursors", name="js")
    try:
        await js.wait_event("synced")
        async with connect(live_server.http_url, "cursors", **FAST) as watcher:
            changes = watcher.presence.changes()
            async with connect(live_server.http_url, "cursors", **FAST) as a:
                a.presence.set({"user": {"name": "Zoë ☃"}, "cursor": {"x": 1, "y": 2}})
                change = await asyncio.wait_for(anext(changes), 5)
                assert change.added == (a.doc.client_id,)
                assert watcher.presence.states[a.doc.client_id]["user"]["name"] == "Zoë ☃"
                await js.wait_event(
                    "awareness",
                    where=lambda e: any(s.get("user", {}).get("name") == "Zoë ☃" for s in e["states"].values()),
                )
                await js.call("awareness", state={"user": {"name": "Node"}, "cursor": None})
                await wait_until(lambda: _names(a) == {"Node"}, 5, "the JS presence in Python")
                a.presence.update(cursor={"x": 5, "y": 6})
                await wait_until(
                    lambda: watcher.presence.states.get(a.doc.client_id, {}).get("cursor") == {"x": 5, "y": 6},
                    5,
                    "moved cursor",
                )
            await wait_until(lambda: a.doc.client_id not in watcher.presence.states, 5, "removal on close")
            changes.close()
    finally:
        await js.close()


async def test_saved_waits_for_the_database_commit(server_factory, pg_proxy):
    """`saved()` resolves after the commit; while Postgres is cut it does not (the events say retrying),
    and once Postgres is back it does, with everything in the database."""
    proxy, dsn, backend = pg_proxy
    server = await server_factory(database_url=dsn, **OUTAGE_SETTINGS)
    seen: list[dict[str, Any]] = []
    async with connect(server.http_url, "durable", **FAST) as canvas:
        canvas.on_event(seen.append)
        add(canvas, "before")
        await canvas.saved(timeout=10)
        assert (await stored_elements(backend, "durable"))[0].keys() == {"before"}
        proxy.cut()
        for i in range(5):
            add(canvas, f"during{i}", x=i)
        await wait_until(lambda: any(e.get("status") == "retrying" for e in seen), 15, "a retrying save event")
        with pytest.raises(TimeoutError):
            await canvas.saved(timeout=1.0)
        assert canvas.save_status == "retrying"
        proxy.restore()
        await canvas.saved(timeout=30)
        assert canvas.save_status == "saved"
    stored, _ = await stored_elements(backend, "durable")
    assert stored.keys() == {"before"} | {f"during{i}" for i in range(5)}


async def test_a_server_killed_mid_edits_loses_nothing(process_server_factory, tmp_path):
    """kill -9 the server while a Python peer edits, keep editing offline, restart it on the same port:
    the client reconnects (step 1/2 resync), everything it made becomes durable, a fresh reader has it all."""
    env = {"CANVASHUB_DATA_DIR": str(tmp_path / "data"), "CANVASHUB_COMMIT_INTERVAL": "0.005"}
    server = await process_server_factory(env)
    port = server.port
    async with connect(server.http_url, "restart", **FAST) as canvas:
        for i in range(20):
            add(canvas, f"a{i}", x=i)
        await canvas.saved(timeout=10)
        for i in range(20):
            add(canvas, f"b{i}", x=i)
            await asyncio.sleep(0)  # let the writer task put some of them on the wire before the kill
        await server.stop(signal.SIGKILL)
        await wait_until(lambda: not canvas.connected, 10, "the client to notice")
        for i in range(10):
            add(canvas, f"offline{i}", x=i)
        again = await process_server_factory(env, port=port)
        await canvas.saved(timeout=30)
        assert canvas.connections >= 2
        expected = {f"a{i}" for i in range(20)} | {f"b{i}" for i in range(20)} | {f"offline{i}" for i in range(10)}
        assert element_ids(canvas) == expected
    async with HttpClient(again.http_url) as api:
        assert set((await api.export_json("restart"))["elements"]) == expected


async def test_bad_token_is_a_typed_error_without_a_reconnect_loop(server_factory):
    """A refused token raises AuthenticationFailed (401) after one attempt; a token for another canvas
    AccessForbidden (403); neither retries."""
    server = await server_factory(auth_secret=SECRET)
    canvas = Canvas(server.http_url, "locked", token="not-a-token", **FAST)
    with pytest.raises(AuthenticationFailed) as refused:
        await canvas.start(timeout=10)
    assert refused.value.status == 401 and refused.value.type == "unauthorized"
    assert canvas.attempts == 1 and canvas.connections == 0
    other = mint_token(SECRET, canvas="elsewhere", role="editor", user="ann")
    canvas = Canvas(server.http_url, "locked", token=other, **FAST)
    with pytest.raises(AccessForbidden) as forbidden:
        await canvas.start(timeout=10)
    assert forbidden.value.status == 403 and canvas.attempts == 1


async def test_token_expiry_closes_4401_unless_a_token_function_renews_it(server_factory):
    """A fixed token that expires while connected ends the connection with AuthenticationFailed (4401),
    once; with a token function the client reconnects with a fresh token instead."""
    server = await server_factory(auth_secret=SECRET)
    short = mint_token(SECRET, canvas="expiring", role="editor", user="ann", ttl=1)
    async with connect(server.http_url, "expiring", token=short, **FAST) as canvas:
        with pytest.raises(AuthenticationFailed) as expired:
            await canvas.wait_closed(timeout=10)
        assert expired.value.code == 4401 and canvas.attempts == 1
    minted: list[str] = []

    def fresh() -> str:
        minted.append(mint_token(SECRET, canvas="expiring", role="editor", user="ann", ttl=1 if not minted else 300))
        return minted[-1]

    async with connect(server.http_url, "expiring", token=fresh, **FAST) as canvas:
        await wait_until(lambda: canvas.connections == 2 and canvas.is_synced, 10, "a reconnect with a fresh token")
        add(canvas, "still-editing")
        await canvas.saved(timeout=10)
        assert canvas.access is not None and canvas.access["user"]["id"] == "ann"


async def test_deleting_the_canvas_ends_the_connection_with_canvas_deleted(live_server):
    """DELETE over HTTP closes the peer with 4404: CanvasDeleted, and no reconnect."""
    async with HttpClient(live_server.http_url) as api:
        canvas = Canvas(live_server.http_url, "doomed", **FAST)
        await canvas.start()
        add(canvas, "x")
        await canvas.saved(timeout=10)
        await api.delete_canvas("doomed")
        with pytest.raises(CanvasDeleted):
            await canvas.wait_closed(timeout=10)
        assert canvas.attempts == 1
        await canvas.close()


# -- REST -----------------------------------------------------------------------------------------


async def test_rest_client_on_both_stores(server_factory, storage_backend):
    """HttpClient: write (PATCH, binary update), export (JSON, binary, ETag), If-Match, generations
    (start, wait), delete, and errors as HttpError with the JSON type."""
    server = await server_factory(**storage_backend.overrides)
    async with HttpClient(server.http_url) as api:
        with pytest.raises(HttpError) as missing:
            await api.export_json("rest")
        assert (missing.value.status, missing.value.type) == (404, "not_found")
        answer = await api.patch_element("rest", "e1", {"type": "rect", "x": 1, "w": 10})
        assert answer["durable"] is True
        doc: Doc = Doc()
        doc.get("elements", type=Map)["e2"] = Map({"type": "text", "text": "from pycrdt"})
        assert (await api.post_update("rest", doc.get_update()))["durable"] is True
        exported = await api.export_json("rest")
        assert exported["elements"] == {
            "e1": {"type": "rect", "x": 1, "w": 10},
            "e2": {"type": "text", "text": "from pycrdt"},
        }
        copy = await api.export_doc("rest")
        assert copy.get("elements", type=Map).to_py()["e2"] == {"type": "text", "text": "from pycrdt"}
        etag = await api.etag("rest")
        await api.patch_element("rest", "e1", {"x": 2}, if_match=etag)
        with pytest.raises(HttpError) as stale:
            await api.patch_element("rest", "e1", {"x": 3}, if_match=etag)
        assert (stale.value.status, stale.value.type) == (412, "conflict")
        with pytest.raises(HttpError) as invalid:
            await api.start_generation("rest", "pattern", "waves", {"x": "left"})
        assert invalid.value.status == 422 and invalid.value.errors
        started = await api.start_generation("rest", "pattern", "waves", {"x": 0, "y": 0, "duration": 0})
        job = await api.wait_generation(started["job"]["id"], timeout=30)
        assert job["status"] == "succeeded"
        assert f"gen-{job['id']}" in (await api.export_json("rest"))["elements"]
        await api.delete_canvas("rest")
        with pytest.raises(HttpError) as gone:
            await api.export_update("rest")
        assert gone.value.type == "not_found"


# -- helpers --------------------------------------------------------------------------------------


def _names(canvas: Canvas) -> set[str]:
    return {state.get("user", {}).get("name") for state in canvas.presence.states.values() if state}


async def _js_has(js: JsClient, keys: set[str]) -> bool:
    return keys <= set((await js.read())["elements"])


async def wait_until_async(predicate, timeout: float, what: str) -> None:
    """``wait_until`` for an async predicate (each check is a round trip to the Node process)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)  # poll interval of a wait bounded by its deadline


async def _converged(js: JsClient, py: Canvas, timeout: float = 5.0) -> dict[str, Any]:
    """Wait until the JS and Python documents have the same state vector; return the elements."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await js.read()
        if state["sv"] == state_vector(py):
            assert state["elements"] == elements(py).to_py() or _same_numbers(state["elements"], elements(py).to_py())
            return state["elements"]
        assert asyncio.get_running_loop().time() < deadline, "JS and Python never converged"
        await asyncio.sleep(0.02)  # poll interval of a wait bounded by its deadline


def _same_numbers(a: Any, b: Any) -> bool:
    """JSON from Yjs (ints) equals pycrdt's reading (floats) number for number."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k]) for k in a)
    return a == b


def readme_example() -> str:
    """The Python block of the README's "script or agent as a peer" section."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## A script or an agent as a peer", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_readme_example_runs(live_server, tmp_path):
    """The README's "script or agent as a peer" example runs as written against a live server."""
    code = readme_example()
    assert 'URL = "http://127.0.0.1:8000"' in code
    script = tmp_path / "agent.py"
    script.write_text(code.replace("http://127.0.0.1:8000", live_server.http_url))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert out.decode().splitlines() == ["1 elements; 0 other people here", "Hello from Python"]
