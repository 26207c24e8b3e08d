"""Work proportional to a canvas's size or history stays off the event loop (issue 14, item 5).

The 20 ms target is measured end to end by bench/large_canvas.py; these tests assert a looser bound
(50 ms) to leave headroom for a shared CI machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from pycrdt import Doc, Map

from canvashub.crdt.codec import SyncStep1, parse_frame
from canvashub.crdt.room import SMALL_DOCUMENT_BYTES, RoomDocument
from canvashub.server.app import create_app
from canvashub.server.settings import Settings

from .support import wait_until

MAX_LAG = 0.050  # seconds


def element_doc(count: int, fields: int = 8) -> Doc:
    """A canvas of ``count`` element maps, built 500 per transaction (bulk inserts are quadratic)."""
    doc: Doc[Any] = Doc()
    elements = doc.get("elements", type=Map)
    for start in range(0, count, 500):
        with doc.transaction():
            for i in range(start, min(count, start + 500)):
                elements[f"e{i}"] = Map({f"f{k}": float(i + k) for k in range(fields)})
    return doc


class LagProbe:
    """Measures how late the loop runs a callback it scheduled PERIOD ahead: the longest stall seen."""

    PERIOD = 0.005

    def __init__(self) -> None:
        self.worst = 0.0
        self.samples = 0
        self._due = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.PERIOD
            await asyncio.sleep(self.PERIOD)  # the probe itself, not a synchronization
            self.worst = max(self.worst, loop.time() - self._due)
            self.samples += 1

    def __enter__(self) -> LagProbe:
        self._due = asyncio.get_running_loop().time() + self.PERIOD
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        # A stall right before the block ends (the last step of a load) delays the wakeup still pending.
        self.worst = max(self.worst, asyncio.get_running_loop().time() - self._due)


async def start_hub(tmp_path: Any, **overrides: Any) -> tuple[Any, Any]:
    settings = dataclasses.replace(
        Settings(), data_dir=str(tmp_path), room_grace_seconds=0.0, commit_interval=0.0, **overrides
    )
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    return app.state.hub, lambda: lifespan.__aexit__(None, None, None)


async def test_compacting_a_large_canvas_keeps_the_loop_responsive(tmp_path):
    """Compaction of a 20,000-element canvas (one ~4 MB snapshot + log) replays in the worker process:
    the loop never stalls over 50 ms meanwhile."""
    hub, stop = await start_hub(tmp_path, compact_every_updates=10**9, compact_interval=3600.0)
    try:
        doc = element_doc(20_000)
        store = hub.store
        await store.append_updates([("big", doc.get_update())])
        edits = []
        for i in range(50):
            before = doc.get_state()
            doc.get("elements", type=Map)[f"e{i}"]["f0"] = -1.0
            edits.append(("big", doc.get_update(before)))
        await store.append_updates(edits)
        with LagProbe() as probe:
            hub.compactor.schedule("big")
            await wait_until(lambda: hub.metrics.compactions >= 1, 30, "the compaction")
        assert hub.replayer.jobs >= 1, "the replay ran on the loop"
        assert probe.samples > 10
        assert probe.worst < MAX_LAG, f"the loop stalled {probe.worst * 1000:.0f} ms"
        loaded = await store.load("big")
        assert loaded is not None and not loaded.updates and loaded.snapshot is not None
    finally:
        await stop()


async def test_cold_load_of_a_long_history_replays_in_the_worker_process(tmp_path):
    """Loading a canvas whose log holds 20,000 rows does not replay them on the loop."""
    hub, stop = await start_hub(tmp_path, compact_every_updates=10**9, compact_interval=3600.0)
    try:
        doc = element_doc(200, fields=2)
        rows = [("history", doc.get_update())]
        elements = doc.get("elements", type=Map)
        for i in range(20_000):
            before = doc.get_state()
            elements[f"e{i % 200}"]["f0"] = float(i)
            rows.append(("history", doc.get_update(before)))
        for start in range(0, len(rows), 2000):
            await hub.store.append_updates(rows[start : start + 2000])
        with LagProbe() as probe:
            room = await hub.registry.acquire("history")
        try:
            assert hub.replayer.jobs >= 1, "the replay ran on the loop"
            assert probe.worst < MAX_LAG, f"the loop stalled {probe.worst * 1000:.0f} ms"
            assert room.document.doc.get("elements", type=Map).to_py() == elements.to_py()
        finally:
            hub.registry.release(room)
    finally:
        await stop()


async def test_cold_load_of_a_large_canvas_applies_it_in_slices(tmp_path):
    """A cold load of a 40,000-element canvas (one ~7 MB update: ~0.25 s to apply in one call) applies
    it in slices cut by the worker, yielding between them: the loop never stalls over 100 ms (a bound
    loose enough for a shared machine, far under one apply), and the room holds the whole canvas."""
    hub, stop = await start_hub(tmp_path, compact_every_updates=10**9, compact_interval=3600.0)
    try:
        doc = element_doc(40_000, fields=6)
        update = doc.get_update()
        assert len(update) > 5_000_000
        await hub.store.append_updates([("large", update)])
        with LagProbe() as probe:
            room = await hub.registry.acquire("large")
        try:
            assert hub.replayer.jobs >= 1, "the replay ran on the loop"
            assert probe.worst < 0.100, f"the loop stalled {probe.worst * 1000:.0f} ms"
            assert room.document.doc.get_state() == doc.get_state()
            assert room.document.doc.get("elements", type=Map).to_py() == doc.get("elements", type=Map).to_py()
        finally:
            hub.registry.release(room)
    finally:
        await stop()


def test_ten_joiners_share_one_full_encode():
    """Ten clients joining a big canvas (empty state vectors) cost one full encode, even with a change
    between their joins, and each ends with the whole document."""
    doc = element_doc(3000)
    document = RoomDocument(doc)
    assert len(doc.get_update()) > SMALL_DOCUMENT_BYTES
    replies = []
    for i in range(10):
        replies.append(document.handle(("joiner", i), SyncStep1(b"\x00")).reply)
        if i == 4:
            edit = Doc()
            edit.apply_update(doc.get_update())
            before = edit.get_state()
            del edit.get("elements", type=Map)["e7"]  # a delete: no state vector moves
            edit.get("elements", type=Map)["e8"]["f0"] = 99.0
            document.apply_update(edit.get_update(before))
    assert document.full_encodes == 1
    for i, frames in enumerate(replies):
        joiner: Doc[Any] = Doc()
        for frame in frames:
            joiner.apply_update(parse_frame(frame).update)  # type: ignore[union-attr]
        elements = joiner.get("elements", type=Map)
        assert ("e7" in elements) == (i < 5)
        assert len(frames) == (1 if i < 5 else 2)


def test_small_documents_are_sent_whole():
    """A joiner of a small canvas gets one sync step 2 frame, re-encoded after each change."""
    doc = element_doc(10)
    document = RoomDocument(doc)
    first = document.handle("a", SyncStep1(b"\x00")).reply
    doc.get("elements", type=Map)["e1"]["f0"] = 5.0
    second = document.handle("b", SyncStep1(b"\x00")).reply
    assert len(first) == len(second) == 1 and first != second
