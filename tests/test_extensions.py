"""The extension runner: every hook call bounded, ordered per extension, failures contained."""

from __future__ import annotations

import asyncio
import sys
import types

import pytest

from canvashub.server.auth import Principal
from canvashub.server.errors import ExtensionUnavailable, Forbidden
from canvashub.server.extensions import (
    AuthRequest,
    DeletedEvent,
    ExtensionConfigError,
    Extensions,
    load_extensions,
)

REQUEST = AuthRequest("y-websocket", "c1", "tok", {}, {}, "127.0.0.1")


class Recorder:
    """Records the canvases of ``deleted`` events; ``gate`` holds each call until set."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.arrived = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def deleted(self, event: DeletedEvent) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.seen.append(event.canvas_id)
        self.arrived.set()


class Raiser:
    async def deleted(self, event: DeletedEvent) -> None:
        raise RuntimeError("boom")


class Hanger:
    async def deleted(self, event: DeletedEvent) -> None:
        await asyncio.Event().wait()

    async def authenticate(self, request: AuthRequest) -> Principal | None:
        await asyncio.Event().wait()
        return None

    async def load(self, request: object) -> bytes | None:
        await asyncio.Event().wait()
        return None


async def wait_until_seen(recorder: Recorder, count: int) -> None:
    async with asyncio.timeout(5):
        while len(recorder.seen) < count:
            recorder.arrived.clear()
            await recorder.arrived.wait()


async def test_notifications_arrive_in_order() -> None:
    """Events reach an extension in the order they were notified."""
    recorder = Recorder()
    hooks = Extensions([recorder], timeout=1, max_queue=100)
    for i in range(20):
        hooks.notify("deleted", DeletedEvent(f"c{i}"))
    await wait_until_seen(recorder, 20)
    assert recorder.seen == [f"c{i}" for i in range(20)]
    await hooks.stop(1)
    assert hooks.outcomes[("deleted", "ok")] == 20


async def test_a_raising_extension_does_not_stop_others() -> None:
    """An extension that raises is counted; the next extension and later events still run."""
    recorder = Recorder()
    hooks = Extensions([Raiser(), recorder], timeout=1, max_queue=100)
    hooks.notify("deleted", DeletedEvent("a"))
    hooks.notify("deleted", DeletedEvent("b"))
    await wait_until_seen(recorder, 2)
    assert recorder.seen == ["a", "b"]
    await hooks.stop(1)
    assert hooks.outcomes[("deleted", "error")] == 2


async def test_a_hanging_extension_times_out_and_its_next_event_runs() -> None:
    """A hanging call ends at the timeout; the hanging extension's lane then moves on."""
    hanger, recorder = Hanger(), Recorder()
    timeouts: list[str] = []
    two_timeouts = asyncio.Event()

    def outcome(hook: str, outcome: str) -> None:
        if outcome == "timeout":
            timeouts.append(hook)
            if len(timeouts) == 2:
                two_timeouts.set()

    hooks = Extensions([hanger, recorder], timeout=0.05, max_queue=100, on_outcome=outcome)
    hooks.notify("deleted", DeletedEvent("a"))
    hooks.notify("deleted", DeletedEvent("b"))
    await wait_until_seen(recorder, 2)
    await asyncio.wait_for(two_timeouts.wait(), 5)
    await hooks.stop(0)


async def test_a_full_queue_drops_and_counts() -> None:
    """Past ``max_queue`` queued events, further events are dropped and counted, never blocking."""
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    hooks = Extensions([recorder], timeout=5, max_queue=3)
    for i in range(10):
        hooks.notify("deleted", DeletedEvent(f"c{i}"))
    assert hooks.outcomes[("deleted", "dropped")] >= 6
    recorder.gate.set()
    await hooks.stop(2)
    assert 3 <= len(recorder.seen) <= 4


async def test_authenticate_fails_closed_on_a_hang() -> None:
    """An authenticate hook that hangs refuses the caller as unavailable instead of letting it in."""
    hooks = Extensions([Hanger()], timeout=0.05, max_queue=10)
    with pytest.raises(ExtensionUnavailable):
        await hooks.authenticate(REQUEST)


async def test_authenticate_first_principal_wins_and_refusals_pass_through() -> None:
    """The first extension returning a principal decides; Forbidden from an extension refuses."""

    class Nobody:
        async def authenticate(self, request: AuthRequest) -> Principal | None:
            return None

    class Admin:
        async def authenticate(self, request: AuthRequest) -> Principal | None:
            return Principal(role="owner", canvas="*", user_id="u1", authenticated=True)

    class Refuser:
        async def authenticate(self, request: AuthRequest) -> Principal | None:
            raise Forbidden("not on my watch")

    principal = await Extensions([Nobody(), Admin()], timeout=1, max_queue=1).authenticate(REQUEST)
    assert principal is not None and principal.user_id == "u1"
    assert await Extensions([Nobody()], timeout=1, max_queue=1).authenticate(REQUEST) is None
    with pytest.raises(Forbidden):
        await Extensions([Refuser(), Admin()], timeout=1, max_queue=1).authenticate(REQUEST)


async def test_load_skips_failing_extensions() -> None:
    """``load`` answers with the first non-empty seed; a hanging or raising one is skipped."""

    class Seeder:
        async def load(self, request: object) -> bytes | None:
            return b"\x00\x00"

    hooks = Extensions([Hanger(), Seeder()], timeout=0.05, max_queue=1)
    assert await hooks.load("c1") == b"\x00\x00"
    assert hooks.outcomes[("load", "timeout")] == 1


def test_load_extensions_from_a_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """``package.module:factory`` specs are imported and called; bad specs are clear errors."""
    module = types.ModuleType("canvashub_test_ext")
    module.make = Recorder  # type: ignore[attr-defined]
    module.not_async = lambda: types.SimpleNamespace(deleted=lambda e: None)  # type: ignore[attr-defined]
    module.nothing = lambda: object()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "canvashub_test_ext", module)
    assert [type(e) for e in load_extensions("canvashub_test_ext:make, canvashub_test_ext:make")] == [Recorder] * 2
    assert load_extensions("") == []
    for spec, problem in [
        ("canvashub_test_ext", "package.module:factory"),
        ("no_such_module_xyz:make", "cannot import"),
        ("canvashub_test_ext:missing", "no callable"),
        ("canvashub_test_ext:not_async", "must be an async method"),
        ("canvashub_test_ext:nothing", "none of the hooks"),
    ]:
        with pytest.raises(ExtensionConfigError, match=problem):
            load_extensions(spec)
