"""Building documents from storage, and compaction: snapshot + log merged into a new versioned snapshot.

Compaction never trusts the in-memory room: it reloads snapshot and log from
the store (another process may have appended rows this one has not seen),
replays them into a fresh ``Doc`` in the replay worker process (server/replayer.py:
the replay is proportional to the canvas's history and must not stall the loop),
and writes the result with a compare-and-swap on the canvas version. A conflict
means another compactor won: reload, merge again (CRDT merges commute), retry a
bounded number of times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from pycrdt import Doc

from canvashub.crdt.replay import CorruptRow, replay_parts, stored_parts
from canvashub.storage.base import CanvasStore, LoadedCanvas

from .logs import FailureLog, log
from .metrics import Metrics
from .replayer import Merged, Replayer, merge_job


@dataclasses.dataclass(frozen=True)
class CompactionResult:
    version: int
    rows: int
    bytes: int
    recorded: bool
    attempts: int
    merged: Merged  # the snapshot written, with its state vector


class CompactionConflict(Exception):
    """Every attempt lost the version race (other compactors kept winning)."""


def replay(loaded: LoadedCanvas, canvas_id: str, *, strict: bool) -> Doc:
    """Snapshot + log rows into a fresh Doc, on the calling thread (small documents and tests; a
    canvas's history is replayed by the ``Replayer``).

    Rows were validated before they were stored, so a failure means corruption
    on disk. ``strict`` (compaction) raises, so the rows are kept for an
    operator; non-strict (loading a room) logs and skips the row so the rest of
    the canvas stays editable.
    """
    try:
        doc, skipped = replay_parts(stored_parts(loaded.snapshot, loaded.updates), strict=strict)
    except CorruptRow as exc:
        raise ValueError(f"canvas {canvas_id}: {exc}") from None
    log_skipped(canvas_id, skipped)
    return doc


def log_skipped(canvas_id: str, skipped: list[tuple[str, str]]) -> None:
    for row, error in skipped:
        log(logging.ERROR, "stored_update_corrupt", canvas=canvas_id, row=row, error=error)


async def compact_canvas(
    store: CanvasStore,
    canvas_id: str,
    keep_versions: int,
    timeout: float,
    attempts: int = 5,
    *,
    replayer: Replayer | None = None,
) -> CompactionResult | None:
    """Fold the log into a new snapshot; None if there is nothing to fold (or no such canvas).
    ``replayer``: where the replay runs (None: inline, on the calling thread)."""
    for attempt in range(1, attempts + 1):
        loaded = await asyncio.wait_for(store.load(canvas_id), timeout)
        if loaded is None or not loaded.updates:
            return None
        try:
            parts = stored_parts(loaded.snapshot, loaded.updates)
            merged = merge_job(parts, True) if replayer is None else await replayer.merge(parts, strict=True)
        except CorruptRow as exc:
            raise ValueError(f"canvas {canvas_id}: {exc}") from None
        snapshot = merged.update
        changed = snapshot != loaded.snapshot
        version = await asyncio.wait_for(
            store.compact(
                canvas_id, loaded.version, snapshot, loaded.updates[-1][0], keep_versions, record_version=changed
            ),
            timeout,
        )
        if version is not None:
            return CompactionResult(version, len(loaded.updates), len(snapshot), changed, attempt, merged)
    raise CompactionConflict(f"canvas {canvas_id}: lost the version race {attempts} times")


class Compactor:
    """Schedules compactions: after ``every_updates`` logged rows of a canvas, and every ``interval`` seconds.

    At most one compaction per canvas runs at a time, and at most ``concurrency``
    overall (replaying a canvas is CPU work, done by the replay worker).
    """

    def __init__(
        self,
        store: CanvasStore,
        replayer: Replayer,
        metrics: Metrics,
        *,
        every_updates: int,
        interval: float,
        keep_versions: int,
        timeout: float,
        slow_seconds: float,
        on_compacted: Callable[[str, int, Merged], None] | None = None,
        concurrency: int = 1,
    ) -> None:
        self.store = store
        self.replayer = replayer
        self.metrics = metrics
        self.every_updates = every_updates
        self.interval = interval
        self.keep_versions = keep_versions
        self.timeout = timeout
        self.slow_seconds = slow_seconds
        self.on_compacted = on_compacted
        self.logged_since: dict[str, int] = {}  # canvas -> rows appended since its last compaction
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._limit = asyncio.Semaphore(concurrency)
        self._ticker: asyncio.Task[None] | None = None
        self._stopped = False
        self._failures = FailureLog("compaction")

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        self._stopped = True
        tasks = ([self._ticker] if self._ticker else []) + list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def note_appended(self, canvas_id: str, rows: int) -> None:
        """Called per committed batch; schedules a compaction once the threshold is crossed."""
        count = self.logged_since.get(canvas_id, 0) + rows
        self.logged_since[canvas_id] = count
        if count >= self.every_updates:
            self.schedule(canvas_id)

    def forget(self, canvas_id: str) -> None:
        self.logged_since.pop(canvas_id, None)
        self._again.discard(canvas_id)
        task = self._running.pop(canvas_id, None)
        if task is not None:
            task.cancel()

    def schedule(self, canvas_id: str) -> None:
        if self._stopped:
            return
        if canvas_id in self._running:
            self._again.add(canvas_id)  # rows arrived while it ran: one more pass afterwards
            return
        task = asyncio.get_running_loop().create_task(self._compact(canvas_id))
        self._running[canvas_id] = task

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for canvas_id, count in list(self.logged_since.items()):
                if count > 0:
                    self.schedule(canvas_id)

    async def _compact(self, canvas_id: str) -> None:
        try:
            async with self._limit:
                self.logged_since[canvas_id] = 0
                started = time.perf_counter()
                try:
                    result = await compact_canvas(
                        self.store, canvas_id, self.keep_versions, self.timeout, replayer=self.replayer
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.metrics.compaction_failures += 1
                    # The rows stay in the log; try again at the next threshold or tick.
                    self.logged_since[canvas_id] = self.logged_since.get(canvas_id, 0) + 1
                    self._failures.failed(repr(exc), canvas=canvas_id)
                    return
                self._failures.recovered(canvas=canvas_id)
                ms = round((time.perf_counter() - started) * 1000, 1)
                if result is None:
                    return
                self.metrics.compactions += 1
                self.metrics.compaction_conflicts += result.attempts - 1
                level = logging.WARNING if ms > self.slow_seconds * 1000 else logging.INFO
                log(
                    level,
                    "compaction",
                    canvas=canvas_id,
                    version=result.version,
                    rows=result.rows,
                    bytes=result.bytes,
                    recorded=result.recorded,
                    attempts=result.attempts,
                    ms=ms,
                    slow=ms > self.slow_seconds * 1000,
                )
                if self.on_compacted is not None:
                    self.on_compacted(canvas_id, result.version, result.merged)
        finally:
            if self._running.get(canvas_id) is asyncio.current_task():
                del self._running[canvas_id]
            if self.logged_since.get(canvas_id) == 0 and canvas_id not in self._again:
                del self.logged_since[canvas_id]  # nothing left to fold: keep the map small
            if canvas_id in self._again:
                self._again.discard(canvas_id)
                if self.logged_since.get(canvas_id, 0) >= self.every_updates:
                    self.schedule(canvas_id)
