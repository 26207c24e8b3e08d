"""Extension hooks on a live server: custom auth, seeding, change/saved/session events, and hooks that
fail or hang never breaking a room, a socket or a save."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets
from pycrdt import Doc, Map

from canvashub.server.auth import Principal
from canvashub.server.errors import Forbidden
from canvashub.server.extensions import (
    AuthRequest,
    ChangeEvent,
    DeletedEvent,
    LoadRequest,
    SavedEvent,
    SessionEvent,
)

from .support import wait_until
from .wire import WireClient, key_updates

SECRET = "hooks-secret-" + "x" * 32
QUICK = {"webhook_change_debounce": 0.1, "webhook_change_max_wait": 0.5, "hook_timeout": 0.5}


def seed_update() -> bytes:
    """A template canvas: one element ``welcome``, written by a fixed client id (idempotent seeds)."""
    doc = Doc(client_id=424242)
    doc.get("elements", type=Map)["welcome"] = Map({"type": "text", "text": "hello"})
    return doc.get_update()


class Recorder:
    """An application's extension: cookie/ticket auth, a seed for new canvases, and a log of events."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[object] = []
        self.changed = asyncio.Event()

    async def authenticate(self, request: AuthRequest) -> Principal | None:
        if request.token == "ticket-alice" or request.cookies.get("session") == "alice":
            return Principal(role="editor", canvas="*", user_id="alice", name="Alice", authenticated=True)
        if request.token == "ticket-banned":
            raise Forbidden("banned by the application")
        return None  # the built-in token check decides

    async def load(self, request: LoadRequest) -> bytes | None:
        return seed_update() if request.canvas_id.startswith("seeded") else None

    async def change(self, event: ChangeEvent) -> None:
        self.events.append(event)
        self.changed.set()

    async def saved(self, event: SavedEvent) -> None:
        self.events.append(event)

    async def connect(self, event: SessionEvent) -> None:
        self.events.append(("connect", event))

    async def disconnect(self, event: SessionEvent) -> None:
        self.events.append(("disconnect", event))

    async def deleted(self, event: DeletedEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class Broken:
    """Every hook raises."""

    async def change(self, event: object) -> None:
        raise RuntimeError("change hook bug")

    async def saved(self, event: object) -> None:
        raise RuntimeError("saved hook bug")

    async def connect(self, event: object) -> None:
        raise RuntimeError("connect hook bug")

    async def disconnect(self, event: object) -> None:
        raise RuntimeError("disconnect hook bug")

    async def load(self, event: object) -> bytes | None:
        raise RuntimeError("load hook bug")


class Hanging:
    """Every notification hook hangs forever."""

    async def change(self, event: object) -> None:
        await asyncio.Event().wait()

    async def saved(self, event: object) -> None:
        await asyncio.Event().wait()

    async def connect(self, event: object) -> None:
        await asyncio.Event().wait()

    async def disconnect(self, event: object) -> None:
        await asyncio.Event().wait()

    async def load(self, event: object) -> bytes | None:
        await asyncio.Event().wait()
        return None


async def test_authenticate_hook_vouches_refuses_or_defers(server_factory) -> None:
    """A ticket or a cookie the extension knows lets a socket and an HTTP call in; the extension's refusal
    is final; anything else falls through to the built-in token check (401)."""
    recorder = Recorder()
    server = await server_factory(extensions=[recorder], auth_secret=SECRET, **QUICK)
    client = await WireClient.connect(server, "c1", token="ticket-alice")
    access = await client.wait(lambda: client.events_of("access"), 5, "access event")
    assert access[0]["user"] == {"id": "alice", "name": "Alice"} and access[0]["role"] == "editor"
    await client.close()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await WireClient.connect(server, "c1", token="ticket-banned")
    assert refused.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as unknown:
        await WireClient.connect(server, "c1", token="who-knows")
    assert unknown.value.response.status_code == 401
    async with httpx.AsyncClient(base_url=server.http_url, cookies={"session": "alice"}) as http:
        assert (await http.get("/api/canvases/c1")).status_code in (200, 404)  # let in: exists or not
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/api/canvases/c1")).status_code == 401


async def test_load_seeds_change_saved_and_sessions_are_reported(server_factory) -> None:
    """A new canvas is seeded by the load hook (and stored); edits produce one debounced change event with
    element ids, user and origin; commits produce saved events; sockets produce connect/disconnect."""
    recorder = Recorder()
    server = await server_factory(extensions=[recorder], **QUICK)
    client = await WireClient.connect(server, "seeded-1", sync=True)
    await client.wait(lambda: "welcome" in client.elements(), 5, "the seed reaches the joiner")
    doc, updates = key_updates(2, prefix="el")
    for update in updates:
        await client.send_update(update)
    await client.wait_save(where=lambda e: e["through"] == 2)
    await asyncio.wait_for(recorder.changed.wait(), 5)
    await client.close()
    await wait_until(lambda: any(isinstance(e, tuple) and e[0] == "disconnect" for e in recorder.events), 5)
    changes = recorder.of(ChangeEvent)
    seeded = next(c for c in changes if "extension" in c.origins)
    assert seeded.created and "welcome" in seeded.elements
    by_client = [c for c in changes if "client" in c.origins]
    assert {"el0", "el1"} <= set().union(*(c.elements for c in by_client))
    assert all(c.canvas_id == "seeded-1" for c in changes)
    saved = recorder.of(SavedEvent)
    assert saved and max(s.seq for s in saved) >= 3  # the seed and the two edits are stored
    sessions = [e for e in recorder.events if isinstance(e, tuple)]
    assert [kind for kind, _ in sessions] == ["connect", "disconnect"]
    assert sessions[1][1].protocol == "y-websocket" and sessions[1][1].seconds is not None
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        exported = (await http.get("/api/canvases/seeded-1")).json()
        assert "welcome" in exported["elements"] and "el0" in exported["elements"]
        assert (await http.delete("/api/canvases/seeded-1")).status_code == 204
    await wait_until(lambda: recorder.of(DeletedEvent), 5, "deleted hook")


async def test_failing_and_hanging_hooks_never_break_a_room(server_factory) -> None:
    """With one extension raising in every hook and one hanging in every hook, two clients still edit,
    converge and get durable acknowledgements, the failures are counted, and shutdown is prompt."""
    server = await server_factory(extensions=[Broken(), Hanging()], **QUICK)
    a = await WireClient.connect(server, "rough", sync=True)
    b = await WireClient.connect(server, "rough", sync=True)
    _, updates = key_updates(20, prefix="k")
    for update in updates:
        await a.send_update(update)
    await a.wait_save(where=lambda e: e["through"] == 20)
    await b.wait(lambda: len(b.elements()) == 20, 10, "b converges")
    await a.close()
    await b.close()
    hooks = server.app.state.extensions
    await wait_until(lambda: hooks.outcomes[("connect", "timeout")] >= 1, 5, "a connect hook timed out")
    assert hooks.outcomes[("connect", "error")] == 2
    assert hooks.outcomes[("load", "error")] == 1 and hooks.outcomes[("load", "timeout")] == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.stop()
    assert loop.time() - started < 10  # hanging hooks get one hook timeout at shutdown, not forever
