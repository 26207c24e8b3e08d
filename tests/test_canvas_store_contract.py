"""The ``CanvasStore`` contract, on SQLite and PostgreSQL: update log, snapshots and versions,
migrations, and compaction races."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pycrdt

from canvashub.server.compaction import CompactionConflict, CompactionResult, compact_canvas
from canvashub.storage import migrations
from canvashub.storage.base import CanvasInfo, CanvasStore, LoadedCanvas, Store, VersionInfo

from .store_backends import WAIT, Backend, backend, store  # noqa: F401 (fixtures: every test runs on both backends)


def _uid() -> str:
    return "c-" + uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------- contract


async def test_is_a_canvas_store(store):
    """Both backends satisfy the CanvasStore protocol (and the union, Store) and report healthy when open."""
    assert isinstance(store, CanvasStore) and isinstance(store, Store)
    assert await store.health() is True


async def test_migrations_recorded_and_reopen_applies_nothing(backend, store):
    """open() records every migration once; a second open of the same namespace applies nothing new."""
    expected = [v for v, _ in (migrations.SQLITE if backend.kind == "sqlite" else migrations.POSTGRES)]
    first = await backend.migration_rows()
    assert [v for v, _ in first] == expected
    await store.close()
    again = await backend.open_store()
    assert await backend.migration_rows() == first
    assert await again.health() is True


async def test_reopen_applies_only_new_migrations(backend, monkeypatch):
    """A namespace migrated to an older schema gets exactly the missing migrations on the next open."""
    attr = "SQLITE" if backend.kind == "sqlite" else "POSTGRES"
    full = getattr(migrations, attr)
    monkeypatch.setattr(migrations, attr, full[:1])
    old = await backend.open_store()
    first = await backend.migration_rows()
    assert [v for v, _ in first] == [full[0][0]]
    await old.close()
    monkeypatch.setattr(migrations, attr, full)
    new = await backend.open_store()
    rows = await backend.migration_rows()
    assert [v for v, _ in rows] == [v for v, _ in full]
    assert rows[0] == first[0]  # the old row was not re-applied
    (seq,) = await new.append_updates([("c", b"x")])
    assert (await new.load("c")).updates == [(seq, b"x")]


async def test_load_missing_returns_none(store):
    """load() of an unknown canvas is None."""
    assert await store.load("nope") is None


async def test_append_creates_canvas_and_returns_seqs_in_order(store):
    """append_updates returns one increasing seq per row, in order, and creates canvases at version 0."""
    a, b = _uid(), _uid()
    seqs = await store.append_updates([(a, b"a1"), (b, b"b1"), (a, b"a2")])
    assert len(seqs) == 3 and seqs == sorted(seqs) and len(set(seqs)) == 3
    more = await store.append_updates([(a, b"a3")])
    assert more[0] > seqs[-1]
    loaded = await store.load(a)
    assert isinstance(loaded, LoadedCanvas)
    assert loaded.snapshot is None and loaded.version == 0
    assert loaded.updates == [(seqs[0], b"a1"), (seqs[2], b"a2"), (more[0], b"a3")]
    assert isinstance(loaded.updated_at, float)
    assert (await store.load(b)).updates == [(seqs[1], b"b1")]


async def test_append_empty_batch(store):
    """An empty batch is a no-op returning []."""
    assert await store.append_updates([]) == []
    assert await store.list_canvases(None, 10) == []


async def test_compact_replaces_snapshot_and_trims_log(store):
    """A successful compact bumps the version, stores the snapshot and drops log rows <= through_seq only."""
    cid = _uid()
    seqs = await store.append_updates([(cid, b"u1"), (cid, b"u2"), (cid, b"u3")])
    assert await store.compact(cid, 0, b"snap-1", seqs[1], keep_versions=5) == 1
    loaded = await store.load(cid)
    assert loaded.snapshot == b"snap-1" and loaded.version == 1
    assert loaded.updates == [(seqs[2], b"u3")]
    assert await store.get_version(cid, 1) == b"snap-1"


async def test_compact_with_stale_version_is_rejected(store):
    """compact with a stale expected_version returns None and changes nothing."""
    cid = _uid()
    (s1,) = await store.append_updates([(cid, b"u1")])
    assert await store.compact(cid, 0, b"snap-1", s1, keep_versions=5) == 1
    (s2,) = await store.append_updates([(cid, b"u2")])
    assert await store.compact(cid, 0, b"stale", s2, keep_versions=5) is None
    loaded = await store.load(cid)
    assert loaded.snapshot == b"snap-1" and loaded.version == 1 and loaded.updates == [(s2, b"u2")]


async def test_compact_unknown_canvas_is_none(store):
    """compact of a canvas that does not exist returns None."""
    assert await store.compact("ghost", 0, b"x", 0, keep_versions=3) is None
    assert await store.load("ghost") is None


async def test_versions_retention_and_pagination(store):
    """Only the newest keep_versions survive; list_versions pages newest-first by number."""
    cid = _uid()
    await store.append_updates([(cid, b"u")])
    for v in range(6):
        assert await store.compact(cid, v, b"s" * (v + 1), 0, keep_versions=4) == v + 1
    page1 = await store.list_versions(cid, None, 2)
    assert [v.number for v in page1] == [6, 5]
    assert all(isinstance(v, VersionInfo) and isinstance(v.created_at, float) for v in page1)
    assert [v.size for v in page1] == [6, 5]
    page2 = await store.list_versions(cid, page1[-1].number, 2)
    assert [v.number for v in page2] == [4, 3]
    assert await store.list_versions(cid, page2[-1].number, 2) == []
    assert await store.get_version(cid, 2) is None
    assert await store.get_version(cid, 3) == b"sss"


async def test_list_canvases_pagination(store):
    """list_canvases orders by id with an exclusive id cursor."""
    ids = ["a", "b", "c", "d", "e"]
    await store.append_updates([(i, b"x") for i in reversed(ids)])
    page = await store.list_canvases(None, 2)
    assert [c.canvas_id for c in page] == ["a", "b"]
    assert all(isinstance(c, CanvasInfo) and c.version == 0 and isinstance(c.updated_at, float) for c in page)
    page = await store.list_canvases("b", 2)
    assert [c.canvas_id for c in page] == ["c", "d"]
    assert [c.canvas_id for c in await store.list_canvases("d", 2)] == ["e"]


async def test_delete_canvas(store):
    """delete_canvas removes the canvas, its log and its versions; a second delete is False."""
    cid, other = _uid(), _uid()
    await store.append_updates([(cid, b"u1"), (other, b"o1")])
    assert await store.compact(cid, 0, b"snap", 0, keep_versions=3) == 1
    assert await store.delete_canvas(cid) is True
    assert await store.load(cid) is None
    assert await store.list_versions(cid, None, 10) == []
    assert await store.get_version(cid, 1) is None
    assert await store.delete_canvas(cid) is False
    assert (await store.load(other)).updates[0][1] == b"o1"
    # Re-creating starts from scratch.
    await store.append_updates([(cid, b"new")])
    loaded = await store.load(cid)
    assert loaded.version == 0 and loaded.snapshot is None and [u for _, u in loaded.updates] == [b"new"]


async def test_lock_is_stored_reported_and_goes_with_the_canvas(backend, store):
    """set_canvas_lock only on an existing canvas; load and locked_canvases report it (across a reopen, through
    appends and compactions); unlock clears it; deleting the canvas removes it."""
    cid, other = _uid(), _uid()
    assert await store.set_canvas_lock(cid, True) is False  # no such canvas: nothing stored
    (seq,) = await store.append_updates([(cid, b"u1")])
    await store.append_updates([(other, b"o1")])
    assert (await store.load(cid)).locked is False
    assert await store.set_canvas_lock(cid, True) is True
    assert await store.set_canvas_lock(cid, True) is True  # idempotent
    await store.append_updates([(cid, b"u2")])
    assert await store.compact(cid, 0, b"snap", seq, keep_versions=3) == 1
    assert (await store.load(cid)).locked is True and (await store.load(other)).locked is False
    many = [f"x{i}" for i in range(1200)]  # more ids than SQLite binds in one statement
    assert await store.locked_canvases([*many, cid, other, cid]) == {cid}
    assert await store.locked_canvases([]) == set()
    await store.close()
    store = await backend.open_store()
    assert (await store.load(cid)).locked is True
    assert await store.set_canvas_lock(cid, False) is True
    assert (await store.load(cid)).locked is False and await store.locked_canvases([cid]) == set()
    assert await store.set_canvas_lock(cid, True) is True
    assert await store.delete_canvas(cid) is True
    await store.append_updates([(cid, b"again")])
    assert (await store.load(cid)).locked is False  # a re-created canvas starts unlocked


async def test_data_survives_reopen(backend, store):
    """Appended rows and snapshots are still there after close and reopen."""
    cid = _uid()
    seqs = await store.append_updates([(cid, b"u1"), (cid, b"u2")])
    assert await store.compact(cid, 0, b"snap", seqs[0], keep_versions=3) == 1
    await store.close()
    again = await backend.open_store()
    loaded = await again.load(cid)
    assert loaded.snapshot == b"snap" and loaded.version == 1 and loaded.updates == [(seqs[1], b"u2")]
    (s3,) = await again.append_updates([(cid, b"u3")])
    assert s3 > seqs[1]


async def test_health_false_after_close(store):
    """health() is False once the store is closed."""
    await store.close()
    assert await store.health() is False


# --------------------------------------------------------------------------- races


async def test_concurrent_multi_canvas_batches(store):
    """Concurrent batches touching the same canvases in different orders neither deadlock nor lose rows."""
    ids = [f"m{i}" for i in range(5)]

    async def batch(n: int) -> list[int]:
        order = ids[n % 5 :] + ids[: n % 5]
        if n % 2:
            order.reverse()
        return await store.append_updates([(cid, f"{n}:{cid}".encode()) for cid in order])

    results = await asyncio.wait_for(asyncio.gather(*(batch(n) for n in range(30))), WAIT)
    all_seqs = [s for r in results for s in r]
    assert len(all_seqs) == len(set(all_seqs)) == 150
    for cid in ids:
        loaded = await store.load(cid)
        assert sorted(u.decode().split(":")[0] for _, u in loaded.updates) == sorted(str(n) for n in range(30))


async def test_concurrent_compacts_one_winner_per_version(store):
    """Many compacts racing on the same expected_version: exactly one wins each round, versions increase."""
    cid = _uid()
    await store.append_updates([(cid, b"u")])
    version = 0
    for _ in range(5):
        results = await asyncio.wait_for(
            asyncio.gather(*(store.compact(cid, version, f"s{version}-{i}".encode(), 0, 10) for i in range(20))),
            WAIT,
        )
        winners = [r for r in results if r is not None]
        assert winners == [version + 1], results
        version += 1
        assert (await store.load(cid)).version == version
    assert [v.number for v in await store.list_versions(cid, None, 10)] == [5, 4, 3, 2, 1]


def _state_keys(loaded: LoadedCanvas) -> dict[str, Any]:
    doc = pycrdt.Doc()
    if loaded.snapshot is not None:
        doc.apply_update(loaded.snapshot)
    for _, update in loaded.updates:
        doc.apply_update(update)
    return dict(doc.get("m", type=pycrdt.Map))


async def _compact_once(store: Store, cid: str) -> int:
    """Load, merge snapshot + log, compact; retry on conflict. Returns the new version."""
    while True:
        loaded = await store.load(cid)
        doc = pycrdt.Doc()
        if loaded.snapshot is not None:
            doc.apply_update(loaded.snapshot)
        for _, update in loaded.updates:
            doc.apply_update(update)
        through = max((s for s, _ in loaded.updates), default=0)
        new = await store.compact(cid, loaded.version, doc.get_update(), through, keep_versions=3)
        if new is not None:
            assert new == loaded.version + 1
            return new


async def test_interleaved_appends_and_compactions_lose_nothing(store):
    """Concurrent writers (real pycrdt updates, distinct keys) and compactors: every key survives."""
    cid = _uid()
    writers, per_writer = 6, 25
    await store.append_updates([(cid, pycrdt.Doc().get_update())])  # the canvas exists before compactors start
    done = asyncio.Event()
    expected: set[str] = set()

    async def writer(w: int) -> None:
        doc = pycrdt.Doc()
        m = doc.get("m", type=pycrdt.Map)
        for i in range(per_writer):
            state = doc.get_state()
            key = f"w{w}-{i}"
            m[key] = i
            await store.append_updates([(cid, doc.get_update(state))])
            expected.add(key)

    versions: list[int] = []

    async def compactor() -> None:
        while not done.is_set():
            versions.append(await _compact_once(store, cid))

    compactors = [asyncio.create_task(compactor()) for _ in range(4)]
    try:
        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(writers))), WAIT)
    finally:
        done.set()
        await asyncio.wait_for(asyncio.gather(*compactors), WAIT)
    assert versions and len(set(versions)) == len(versions)  # one winner per version
    final = await store.load(cid)
    assert final.version == max(versions)
    assert set(_state_keys(final)) == expected and len(expected) == writers * per_writer
    # One last compaction folds the tail in and still keeps everything.
    await _compact_once(store, cid)
    final = await store.load(cid)
    assert final.updates == [] and set(_state_keys(final)) == expected


async def test_server_compactor_races_appends_and_itself(store):
    """The server's compact_canvas (reload, replay, CAS, bounded retry) run by 5 racing compactors
    while 5 writers append: versions strictly increase with one winner each, nothing is lost."""
    cid = _uid()
    await store.append_updates([(cid, pycrdt.Doc().get_update())])
    expected: set[str] = set()
    done = asyncio.Event()
    results: list[CompactionResult] = []

    async def writer(w: int) -> None:
        doc = pycrdt.Doc()
        m = doc.get("m", type=pycrdt.Map)
        for i in range(20):
            state = doc.get_state()
            m[f"w{w}-{i}"] = i
            await store.append_updates([(cid, doc.get_update(state))])
            expected.add(f"w{w}-{i}")

    async def compactor() -> None:
        while not done.is_set():
            try:
                result = await compact_canvas(store, cid, keep_versions=50, timeout=WAIT, attempts=3)
            except CompactionConflict:
                continue  # lost three times in a row to the other compactors: go again
            if result is not None:
                results.append(result)
            await asyncio.sleep(0)  # yield a turn to the writers between rounds; not a wait

    compactors = [asyncio.create_task(compactor()) for _ in range(5)]
    try:
        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(5))), WAIT)
    finally:
        done.set()
        await asyncio.wait_for(asyncio.gather(*compactors), WAIT)
    await compact_canvas(store, cid, keep_versions=50, timeout=WAIT)
    versions = [r.version for r in results]
    assert versions and len(set(versions)) == len(versions)  # each version has exactly one winner
    assert any(r.attempts > 1 for r in results) or len(results) > 1
    final = await store.load(cid)
    assert final.updates == [] and set(_state_keys(final)) == expected and len(expected) == 100
    history = [v.number for v in await store.list_versions(cid, None, 100)]
    assert history == sorted(history, reverse=True) and len(set(history)) == len(history)


async def test_compact_without_recording_a_version(store):
    """record_version=False bumps the version (for the CAS) and trims the log but adds no history row."""
    cid = _uid()
    seqs = await store.append_updates([(cid, b"u1")])
    assert await store.compact(cid, 0, b"snap", seqs[0], keep_versions=5) == 1
    seqs = await store.append_updates([(cid, b"dup")])
    assert await store.compact(cid, 1, b"snap", seqs[0], keep_versions=5, record_version=False) == 2
    assert [v.number for v in await store.list_versions(cid, None, 10)] == [1]
    loaded = await store.load(cid)
    assert loaded.version == 2 and loaded.updates == []
