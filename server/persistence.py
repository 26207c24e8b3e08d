"""The write path after the room: group commit into the update log, durable acks, retries, backlog cap.

An update reaches ``Persister.submit`` only after it applied to the room's
document (bytes that fail to apply are never stored) and was relayed to peers.
One writer task drains the backlog in batches: it waits ``commit_interval``
for more updates to gather (or until ``commit_max_updates`` are queued), then
appends the whole batch in one store call (one round trip, one transaction).
When it commits, every connection whose updates it held gets a ``save`` event
with status ``saved``; HTTP writers waiting on it are released.

If the store fails, the same batch is retried with exponential backoff and full
jitter until it commits; connections with pending updates get ``retrying``
events. They get one as well when an attempt has not completed after
``slow_notice`` seconds (a hanging database), without waiting for ``timeout``
to abandon it, and so does a writer whose first pending change arrives while
the writer is in that state. The backlog (queued + in flight) is capped in bytes: ``admit`` says no
past the cap, and the caller refuses the write (close 1013 / HTTP 503) instead
of dropping it. Batches commit in submission order, so a retry never reorders a
canvas's log. A retried batch whose first attempt timed out may land twice;
applying a Yjs update twice is a no-op, so duplicates are harmless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from canvashub.storage.base import CanvasStore

from .compaction import Compactor
from .errors import CanvasDeleted
from .logs import FailureLog, log
from .metrics import Metrics
from .savestatus import SaveStatus


@dataclasses.dataclass(slots=True)
class Pending:
    canvas_id: str
    update: bytes
    writer: SaveStatus | None  # the socket to acknowledge, if the update came from one
    number: int  # the writer's change number (1-based); 0 if no writer
    done: asyncio.Future[int] | None  # resolved with the log seq (HTTP writers wait on it)
    clocks: dict[int, int] | None  # state-vector entries this update advanced (opted-in writers only)
    published: int = 0  # this process's pub/sub sequence number of the update (0: not published)
    needed: Callable[[], bool] | None = None  # asked once at commit: False skips the row (see server/cluster.py)
    # The room document's state vector right after this update applied: once it commits, with every
    # earlier update of its canvas (commits follow submission order), that much is in storage.
    # At most one queued item per canvas keeps one (see ``submit``); None advances nothing.
    state: bytes | None = None
    queued_at: float = 0.0  # time.monotonic() at submit: the durable-ack latency histogram starts here


class Persister:
    def __init__(
        self,
        store: CanvasStore,
        metrics: Metrics,
        *,
        interval: float,
        max_updates: int,
        max_backlog_bytes: int,
        timeout: float,
        retry_max_delay: float,
        slow_seconds: float,
        slow_notice: float = 1.0,
        compactor: Compactor | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.interval = interval
        self.max_updates = max_updates
        self.max_batch_bytes = 8 * 1024 * 1024
        self.max_backlog_bytes = max_backlog_bytes
        self.timeout = timeout
        self.retry_max_delay = retry_max_delay
        self.slow_seconds = slow_seconds
        self.slow_notice = slow_notice
        self.compactor = compactor
        self._queue: deque[Pending] = deque()
        self._inflight: list[Pending] = []
        self.backlog_bytes = 0
        # True from a failed (or ``slow_notice``-late) attempt until the next commit: what /readyz
        # reports and what a newly pending writer is told at once (``_retry_notice``).
        self.retrying = False
        self.last_error: str | None = None
        self._retry_notice = (0, 0.0)  # (attempt, seconds until the next try) of the last retrying event
        self._failures = FailureLog("append")
        self._pending_per_canvas: dict[str, int] = {}
        self._durable_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._wake: asyncio.Future[None] | None = None
        self._gathering = False  # the writer is inside its group-commit window
        self._flush_now = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._inflight_waiters: list[asyncio.Future[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        # Told (canvas, highest published sequence number now durable) after each commit: the
        # cluster tells the other processes, which then need not store those updates themselves.
        self.on_committed: Callable[[str, int], None] | None = None
        # Told (canvas, state vector now in storage, or None if this batch recorded none) after each
        # commit that held updates of the canvas: the rooms' durable state (``save`` events' ``clock``).
        self.on_durable: Callable[[str, bytes | None], None] | None = None
        # Told each canvas with pending updates when writing them fails or stalls: sockets watching the
        # canvas's storage state (not only this batch's writers) then hear ``retrying`` too.
        self.on_retrying: Callable[[str], None] | None = None
        # Told (canvas, highest log seq now stored, how many of its updates this commit wrote) after
        # each commit: the extensions' ``saved`` hook and the ``canvas.saved`` webhook.
        self.on_saved: Callable[[str, int, int], None] | None = None
        self._state_holder: dict[str, Pending] = {}  # per canvas: the queued item holding a state

    # -- producer side (synchronous: called from room code) -------------------------------
    @property
    def backlog_updates(self) -> int:
        return len(self._queue) + len(self._inflight)

    def admit(self, size: int) -> bool:
        """May a write of ``size`` bytes be accepted now? False past the backlog cap."""
        return self.backlog_bytes + size <= self.max_backlog_bytes

    def submit(
        self,
        canvas_id: str,
        update: bytes,
        writer: SaveStatus | None = None,
        want_result: bool = False,
        clocks: dict[int, int] | None = None,
        *,
        published: int = 0,
        needed: Callable[[], bool] | None = None,
        state: bytes | None = None,
    ) -> asyncio.Future[int] | None:
        number = 0
        if writer is not None:
            number = writer.submit()
        done = asyncio.get_running_loop().create_future() if want_result else None
        item = Pending(canvas_id, update, writer, number, done, clocks, published, needed, state, time.monotonic())
        self._queue.append(item)
        if state is not None:
            # Only the newest queued state of a canvas can matter once its batch commits: drop the older
            # one, so queued states cost O(canvases), not O(backlog). If a batch ends between the two,
            # that batch advances nothing (the next one does): understated, never overstated.
            previous = self._state_holder.get(canvas_id)
            if previous is not None:
                previous.state = None
            self._state_holder[canvas_id] = item
        if self.retrying and writer is not None and number == writer.durable + 1:
            writer.retrying(*self._retry_notice, self.last_error)  # nothing of it pending before
        self.backlog_bytes += len(update)
        self._pending_per_canvas[canvas_id] = self._pending_per_canvas.get(canvas_id, 0) + 1
        self._idle.clear()
        wake = self._wake
        if wake is not None and not wake.done():
            if not self._gathering or len(self._queue) >= self.max_updates:
                wake.set_result(None)
        return done

    def is_durable(self, canvas_id: str) -> bool:
        return canvas_id not in self._pending_per_canvas

    def pending_updates(self, canvas_id: str) -> int:
        """Updates of ``canvas_id`` queued or being written (not yet committed)."""
        return self._pending_per_canvas.get(canvas_id, 0)

    async def wait_durable(self, canvas_id: str) -> None:
        """Return once every update of ``canvas_id`` submitted so far is committed (no timeout)."""
        if self.is_durable(canvas_id):
            return
        future = asyncio.get_running_loop().create_future()
        self._durable_waiters.setdefault(canvas_id, []).append(future)
        await future

    def discard(self, canvas_id: str) -> int:
        """Drop queued (not in-flight) updates of a deleted canvas; their writers are told ``failed``."""
        kept: deque[Pending] = deque()
        dropped = 0
        for item in self._queue:
            if item.canvas_id == canvas_id:
                dropped += 1
                self._settle_one(item)
                if item.done is not None and not item.done.done():
                    item.done.set_exception(CanvasDeleted("the canvas was deleted while the change was pending"))
                    item.done.exception()
                if item.writer is not None:
                    item.writer.failed("canvas deleted")
            else:
                kept.append(item)
        self._queue = kept
        self._state_holder.pop(canvas_id, None)
        self._release_waiters()
        return dropped

    async def wait_inflight(self) -> None:
        """Wait for the batch being written now (if any) to commit."""
        if self._inflight:
            future = asyncio.get_running_loop().create_future()
            self._inflight_waiters.append(future)
            await future  # resolved when the batch commits, or by stop()

    # -- writer task ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self, timeout: float) -> bool:
        """Shutdown: write everything queued now; True if the backlog emptied within ``timeout``."""
        self._flush_now = True
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            # Cancel until it is done: on Python 3.11 ``wait_for`` can swallow a cancellation
            # that arrives just as the awaited call completes.
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
        for future in self._inflight_waiters:
            if not future.done():
                future.set_exception(RuntimeError("store writer stopped"))
                future.exception()
        self._inflight_waiters = []
        if self.backlog_updates:
            log(
                logging.ERROR,
                "backlog_abandoned",
                updates=self.backlog_updates,
                bytes=self.backlog_bytes,
                note="never acknowledged; clients still hold these changes and resend them on reconnect",
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if not self._queue:
                self._idle.set()
                self._wake = loop.create_future()
                await self._wake
            if len(self._queue) < self.max_updates and not self._flush_now and self.interval > 0:
                self._gathering = True
                self._wake = loop.create_future()
                timer = loop.call_later(self.interval, _resolve, self._wake)
                await self._wake
                timer.cancel()
                self._gathering = False
            batch = self._inflight
            size = 0
            while self._queue and len(batch) < self.max_updates and (not batch or size < self.max_batch_bytes):
                item = self._queue.popleft()
                if self._state_holder.get(item.canvas_id) is item:
                    del self._state_holder[item.canvas_id]  # in flight now: keeps its state
                size += len(item.update)
                batch.append(item)
            if not batch:
                continue
            await self._commit(batch, size)
            self._inflight = []
            waiters, self._inflight_waiters = self._inflight_waiters, []
            for future in waiters:
                _resolve(future)

    async def _commit(self, batch: list[Pending], size: int) -> None:
        keep = [item.needed is None or item.needed() for item in batch]
        rows = [(item.canvas_id, item.update) for item, kept in zip(batch, keep, strict=True) if kept]
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            started = time.perf_counter()
            # A hanging database: tell the writers after ``slow_notice``, not after ``timeout``.
            slow = loop.call_later(self.slow_notice, self._attempt_slow, batch, attempt + 1)
            try:
                stored = await asyncio.wait_for(self.store.append_updates(rows), self.timeout) if rows else []
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any store failure: keep the batch, back off, retry
                error = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                slow.cancel()
            attempt += 1
            self.metrics.append_failures += 1
            delay = random.uniform(0, min(self.retry_max_delay, 0.05 * 2**attempt))
            self._set_retrying(error, attempt, delay)
            self._failures.failed(
                error,
                attempt=attempt,
                rows=len(rows),
                bytes=size,
                backlog_bytes=self.backlog_bytes,
                retry_in_ms=round(delay * 1000),
            )
            self._notify_retrying(batch)
            await asyncio.sleep(delay)
        ms = (time.perf_counter() - started) * 1000
        self.metrics.batches_committed += 1
        self.metrics.updates_committed += len(rows)
        self.metrics.bytes_committed += size
        self.metrics.commit_seconds += ms / 1000
        self.metrics.commit.observe(ms / 1000)
        committed_at = time.monotonic()
        observe = self.metrics.durable_ack.observe
        for item in batch:
            observe(committed_at - item.queued_at)
        self._failures.recovered(attempts=attempt + 1, backlog_bytes=self.backlog_bytes)
        self.retrying = False
        self.last_error = None
        canvases = len({cid for cid, _ in rows})
        was_slow = ms > self.slow_seconds * 1000
        log(
            logging.WARNING if was_slow else logging.INFO,
            "batch_committed",
            rows=len(rows),
            bytes=size,
            canvases=canvases,
            ms=round(ms, 2),
            slow=was_slow,
        )
        positions = iter(stored)
        self._acknowledge(batch, [next(positions) if kept else 0 for kept in keep])

    def _settle_one(self, item: Pending) -> None:
        self.backlog_bytes -= len(item.update)
        left = self._pending_per_canvas[item.canvas_id] - 1
        if left:
            self._pending_per_canvas[item.canvas_id] = left
        else:
            del self._pending_per_canvas[item.canvas_id]

    def _acknowledge(self, batch: list[Pending], seqs: list[int]) -> None:
        writers: dict[SaveStatus, tuple[int, int]] = {}
        per_canvas: dict[str, int] = {}
        last_seq: dict[str, int] = {}
        published: dict[str, int] = {}
        durable: dict[str, bytes | None] = {}
        for item, seq in zip(batch, seqs, strict=True):
            self._settle_one(item)
            if item.state is not None or item.canvas_id not in durable:
                durable[item.canvas_id] = item.state
            if seq:
                per_canvas[item.canvas_id] = per_canvas.get(item.canvas_id, 0) + 1
                last_seq[item.canvas_id] = max(last_seq.get(item.canvas_id, 0), seq)
            if item.published:
                published[item.canvas_id] = max(published.get(item.canvas_id, 0), item.published)
            if item.done is not None and not item.done.done():
                item.done.set_result(seq)
            writer = item.writer
            if writer is not None:
                writers[writer] = (item.number, seq)
                if item.clocks:
                    writer.merge_clock(item.clocks)
        for writer, (number, seq) in writers.items():
            writer.succeeded(number, seq)
        if self.on_committed is not None:
            for canvas_id, number in published.items():
                self.on_committed(canvas_id, number)
        if self.on_durable is not None:
            for canvas_id, state in durable.items():
                self.on_durable(canvas_id, state)
        self._release_waiters()
        if self.on_saved is not None:
            for canvas_id, count in per_canvas.items():
                self.on_saved(canvas_id, last_seq[canvas_id], count)
        if self.compactor is not None:
            for canvas_id, count in per_canvas.items():
                self.compactor.note_appended(canvas_id, count)

    def _release_waiters(self) -> None:
        for canvas_id in [c for c in self._durable_waiters if c not in self._pending_per_canvas]:
            for future in self._durable_waiters.pop(canvas_id):
                if not future.done():
                    future.set_result(None)

    def _set_retrying(self, error: str, attempt: int, delay: float) -> None:
        self.retrying = True
        self.last_error = error
        self._retry_notice = (attempt, delay)

    def _attempt_slow(self, batch: list[Pending], attempt: int) -> None:
        """Attempt ``attempt`` is still running after ``slow_notice``: it is abandoned (and retried)
        at ``timeout`` at the latest."""
        self._set_retrying(
            f"commit not complete after {float(self.slow_notice)} s", attempt, max(self.timeout - self.slow_notice, 0.0)
        )
        self._notify_retrying(batch)

    def _notify_retrying(self, batch: list[Pending]) -> None:
        writers = {item.writer for item in batch if item.writer is not None}
        writers.update(item.writer for item in self._queue if item.writer is not None)
        for writer in writers:
            writer.retrying(*self._retry_notice, self.last_error)
        if self.on_retrying is not None:
            for canvas_id in {item.canvas_id for item in batch} | {item.canvas_id for item in self._queue}:
                self.on_retrying(canvas_id)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
