"""The hub: the canvases one process holds, their rooms and connections, server-side writes, deletes,
keepalive and the drain at shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from pycrdt import Doc

from canvashub.crdt.codec import KEEPALIVE_FRAME
from canvashub.crdt.errors import ProtocolError
from canvashub.crdt.replay import stored_parts
from canvashub.crdt.room import Effects, PartiallyApplied, RoomDocument
from canvashub.storage.base import CanvasStore, LoadedCanvas, WebhookEvent

from .cluster import Cluster
from .compaction import Compactor, log_skipped
from .errors import CanvasLocked, CloseCode, Overloaded, PreconditionFailed, ShuttingDown, StoreUnavailable
from .extensions import ChangeCollector
from .jobs import JobWatcher
from .logs import FailureLog, log
from .metrics import Metrics
from .peer import Peer
from .persistence import Persister
from .replayer import Exported, Merged, Replayer
from .rooms import Room, RoomRegistry
from .settings import Settings

LOAD_SLICE_BYTES = 64 * 1024  # a cold load applies the merged state in slices of this size (~2-5 ms each)


@dataclasses.dataclass(frozen=True)
class CanvasExport:
    """A canvas rendered for an HTTP read: ``body`` is the full Yjs update (binary) or
    ``{"elements": ...}`` as JSON bytes; ``error`` says why JSON was impossible (body None)."""

    etag: str
    version: int
    updated_at: float | None
    body: bytes | None
    error: str


class Hub:
    """The canvases this process holds: rooms loaded once and unloaded when durable, server-side reads,
    writes and deletes, keepalive and the drain at shutdown. It receives the parts it uses (store,
    persister, compactor, cluster, metrics) from the composition root (server/app.py) and builds only
    its own room table."""

    def __init__(
        self,
        settings: Settings,
        store: CanvasStore,
        persister: Persister,
        compactor: Compactor,
        cluster: Cluster,
        metrics: Metrics,
        replayer: Replayer,
        rooms: dict[str, Room] | None = None,
        *,
        seed: Callable[[str], Awaitable[bytes | None]] | None = None,
        changes: ChangeCollector | None = None,
    ) -> None:
        self.settings = settings
        self.seed = seed  # the extensions' ``load`` hook: the content of a canvas that has nothing stored
        self.changes = changes  # where rooms note their changes for the ``change`` hook
        self.store = store
        self.replayer = replayer
        self.persister = persister
        self.compactor = compactor
        self.cluster = cluster
        self.metrics = metrics
        self.registry = RoomRegistry(
            self._load_room,
            self._unload_room,
            settings.room_grace_seconds,
            settled=lambda room: self.persister.is_durable(room.canvas_id),
            loaded=self._room_loaded,
            unloaded=self._room_dropped,
            rooms=rooms,
        )
        self.job_events: JobWatcher | None = None  # set by the composition root when jobs are on
        self._background: set[asyncio.Task[None]] = set()
        self.shutting_down = False
        self._keepalive: asyncio.Task[None] | None = None
        self.load_failures = FailureLog("canvas_load")  # one line per outage, not one per refused socket

    def is_loaded(self, canvas_id: str) -> bool:
        return canvas_id in self.registry.rooms

    def send_event(self, canvas_id: str, event: dict[str, Any]) -> None:
        """A canvashub event to every socket on the canvas that opted in."""
        room = self.registry.rooms.get(canvas_id)
        if room is not None:
            for conn in room.connections:
                conn.send_event(event)

    def snapshot_events(self, canvas_id: str) -> list[dict[str, Any]]:
        """Events a socket that opted in gets right after joining (the canvas's active jobs)."""
        return [] if self.job_events is None else self.job_events.snapshot_events(canvas_id)

    def start(self) -> None:
        self._keepalive = asyncio.get_running_loop().create_task(self._keepalive_loop())

    async def _keepalive_loop(self) -> None:
        """One sweep over the connections, the only timer for them all. Stock y-websocket clients
        reconnect after 30 s without an inbound message: every ``keepalive_seconds``, send a no-op frame
        to each connection that was sent nothing since the last keepalive. And every quarter of
        ``send_stall_seconds``, drop the connections whose sends stalled (``Peer.check_stall``)."""
        loop = asyncio.get_running_loop()
        every = self.settings.keepalive_seconds
        ticks_per_keepalive = math.ceil(every / (self.settings.send_stall_seconds / 4))
        for tick in itertools.count(1):
            await asyncio.sleep(every / ticks_per_keepalive)
            now = loop.time()
            keepalive = tick % ticks_per_keepalive == 0
            for conn in self.connections:
                conn.check_stall(now)
                if keepalive:
                    if conn.idle:
                        conn.enqueue(KEEPALIVE_FRAME)
                    conn.idle = True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Graceful shutdown: refuse new sockets, flush each client's queue, close with 1001."""
        if self.shutting_down:
            return
        self.shutting_down = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        conns = self.connections
        for conn in conns:
            conn.close(CloseCode.GOING_AWAY, "server shutting down", flush=True)
        writers = [c.writer for c in conns if c.writer is not None and not c.writer.done()]
        if writers:
            done, pending = await asyncio.wait(writers, timeout=self.settings.shutdown_timeout)
            for task in pending:
                task.cancel()
        log(logging.INFO, "drained", connections=len(conns))

    # -- rooms ---------------------------------------------------------------------------
    async def load_canvas(self, canvas_id: str) -> LoadedCanvas | None:
        started = time.perf_counter()
        try:
            loaded = await asyncio.wait_for(self.store.load(canvas_id), self.settings.store_timeout)
        except TimeoutError:
            self.load_failures.failed("timed out", canvas=canvas_id)
            raise StoreUnavailable(f"loading {canvas_id} timed out") from None
        except Exception as exc:
            self.load_failures.failed(f"{type(exc).__name__}: {exc}", canvas=canvas_id)
            raise StoreUnavailable(f"loading {canvas_id} failed: {type(exc).__name__}: {exc}") from exc
        self.load_failures.recovered(canvas=canvas_id)
        ms = (time.perf_counter() - started) * 1000
        if ms > self.settings.slow_query_seconds * 1000:
            log(logging.WARNING, "slow_query", op="load", canvas=canvas_id, ms=round(ms, 1))
        return loaded

    async def _load_room(self, canvas_id: str) -> Room:
        await self.cluster.before_load(canvas_id)  # subscribe before reading: no gap
        try:
            return await self._read_room(canvas_id)
        except BaseException:
            self._room_dropped(canvas_id)
            raise

    async def _read_room(self, canvas_id: str) -> Room:
        loaded = await self.load_canvas(canvas_id)
        if self.job_events is not None:
            try:
                await asyncio.wait_for(self.job_events.seed(canvas_id), self.settings.store_timeout)
            except Exception as exc:
                self.load_failures.failed(f"loading jobs: {exc!r}", canvas=canvas_id)
                raise StoreUnavailable(f"loading jobs of {canvas_id} failed: {exc!r}") from exc
        document = self.make_document()
        version, updated_at, size, rows, replay_ms, apply_ms = 0, None, 0, 0, 0.0, 0.0
        if loaded is not None:
            size = len(loaded.snapshot or b"") + sum(len(update) for _, update in loaded.updates)
            started = time.perf_counter()
            merged = await self.replay(canvas_id, loaded)  # in the worker process: off the loop
            replay_ms = round((time.perf_counter() - started) * 1000, 1)
            started = time.perf_counter()
            document.doc = await self._apply_merged(canvas_id, merged)
            document.seed_full_state(merged.update, merged.state, exact=True)  # joiners reuse it
            apply_ms = round((time.perf_counter() - started) * 1000, 1)
            version, updated_at, rows = loaded.version, loaded.updated_at, len(loaded.updates)
            if len(loaded.updates) >= self.settings.compact_every_updates:
                self.compactor.schedule(canvas_id)
        log(
            logging.INFO,
            "room_loaded",
            canvas=canvas_id,
            version=version,
            log_rows=rows,
            replay_ms=replay_ms,
            apply_ms=apply_ms,
            slices=len(merged.slices) if loaded is not None else 0,
        )
        room = Room(
            canvas_id,
            document,
            self.persister,
            self.cluster,
            version,
            updated_at,
            max_bytes=self.settings.max_document_bytes,
            size=size,
            changes=self.changes,
            locked=loaded is not None and loaded.locked,
        )
        seeded = await self._seed(canvas_id, document) if loaded is None and self.seed is not None else None
        if seeded is not None:
            room.apply_local(seeded, origin="extension")  # stored like any change (and relayed to nobody yet)
        return room

    async def _seed(self, canvas_id: str, document: RoomDocument) -> Effects | None:
        """A canvas with nothing stored gets the ``load`` hook's update, if any; a bad one is logged and
        the canvas starts empty. Processes that seed the same canvas at once must return the same bytes
        (then the second apply changes nothing), as docs/integrating.md says."""
        assert self.seed is not None
        update = await self.seed(canvas_id)
        if not update:
            return None
        try:
            effects = document.apply_update(update)
        except PartiallyApplied as exc:  # what did apply is in the document: it is stored all the same
            log(logging.ERROR, "seed_refused", canvas=canvas_id, reason=exc.reason, partly_applied=True)
            return exc.effects
        except ProtocolError as exc:
            log(logging.ERROR, "seed_refused", canvas=canvas_id, reason=exc.reason)
            return None
        log(logging.INFO, "canvas_seeded", canvas=canvas_id, bytes=len(update))
        return effects if effects.update is not None else None

    async def _apply_merged(self, canvas_id: str, merged: Merged) -> Doc:
        """The merged state applied to a fresh Doc on the loop (the document lives here): slice by slice
        with a yield between them (the worker cut it: ~64 KB, a few ms each), so the loop never stalls
        for the whole canvas (~0.14 s at 3.4 MB). The room is not registered yet: joiners and writes
        wait for the load, and nothing else sees the half-built document."""
        doc: Doc = Doc()
        if merged.split_refused:
            log(logging.WARNING, "load_not_sliced", canvas=canvas_id, reason=merged.split_refused)
        if not merged.slices:
            doc.apply_update(merged.update)
            return doc
        for index, piece in enumerate(merged.slices):
            if index:
                await asyncio.sleep(0)  # let the loop run between slices
            doc.apply_update(piece)
        return doc

    def _room_loaded(self, room: Room) -> None:
        self.cluster.loaded(room)

    def _room_dropped(self, canvas_id: str) -> None:
        self._spawn(self.cluster.released(canvas_id))

    async def _unload_room(self, room: Room) -> None:
        # Never unload what is not durable yet: wait (however long the store is down). Relayed
        # changes still unconfirmed by their senders are stored here unless confirmed meanwhile.
        if room.unconfirmed:
            room.take_over(conditional=True)
        await self.persister.wait_durable(room.canvas_id)
        if self.job_events is not None and room.holders == 0:
            self.job_events.forget(room.canvas_id)
        if self.compactor.logged_since.get(room.canvas_id):
            self.compactor.schedule(room.canvas_id)  # loads faster next time

    def stored(self, canvas_id: str, durable: bytes | None) -> None:
        """The persister committed updates of the canvas (``durable``: the state they reach), or writing
        them failed (None): the room tells the sockets watching its storage state."""
        room = self.registry.rooms.get(canvas_id)
        if room is not None:
            room.storage_advanced(durable)

    async def replay(self, canvas_id: str, loaded: LoadedCanvas) -> Merged:
        """A stored canvas merged into one update by the replay worker (corrupt rows logged, skipped)."""
        try:
            merged = await self.replayer.load(stored_parts(loaded.snapshot, loaded.updates), LOAD_SLICE_BYTES)
        except Exception as exc:
            self.load_failures.failed(f"replay: {exc!r}", canvas=canvas_id)
            raise StoreUnavailable(f"replaying {canvas_id} failed: {exc!r}") from exc
        log_skipped(canvas_id, merged.skipped)
        return merged

    def compacted(self, canvas_id: str, version: int, merged: Merged) -> None:
        """A compaction wrote ``merged``: a fresh base for the room's joiners if the live document has
        every struct of it (a snapshot holding stored rows this process never saw is not used; with it
        joiners would only get those stored rows early)."""
        room = self.registry.rooms.get(canvas_id)
        if room is not None:
            room.version = version
            if room.document.contains_state(merged.state):
                room.document.seed_full_state(merged.update, merged.state, exact=False)

    def make_document(self) -> RoomDocument:
        return RoomDocument(
            max_awareness_state_bytes=self.settings.max_awareness_state_bytes,
            max_awareness_ids_per_peer=self.settings.max_awareness_ids_per_connection,
        )

    def live_etag(self, canvas_id: str) -> str | None:
        """The content ETag of a loaded canvas (None if not loaded or not a canvas yet): cheap."""
        room = self.registry.rooms.get(canvas_id)
        return room.etag if room is not None and room.exists else None

    async def canvas_exists(self, canvas_id: str) -> bool:
        room = self.registry.rooms.get(canvas_id)
        return (room is not None and room.exists) or await self.load_canvas(canvas_id) is not None

    async def export_canvas(self, canvas_id: str, binary: bool) -> CanvasExport | None:
        """The canvas rendered for an HTTP read, by the replay worker: the live room's full state (its
        join cache, so no full encode on the loop) if loaded, else what storage holds."""
        room = self.registry.rooms.get(canvas_id)
        if room is not None and room.exists:
            etag, version, updated_at = room.etag, room.version, room.updated_at
            parts = [("live", part) for part in room.document.full_state_parts()]
        else:
            loaded = await self.load_canvas(canvas_id)
            if loaded is None:
                return None
            version, updated_at = loaded.version, loaded.updated_at
            parts = stored_parts(loaded.snapshot, loaded.updates)
        try:
            exported: Exported = await self.replayer.export(parts, binary)
        except Exception as exc:
            raise StoreUnavailable(f"rendering {canvas_id} failed: {exc!r}") from exc
        log_skipped(canvas_id, exported.skipped)
        if room is None or not room.exists:
            etag = exported.etag
        return CanvasExport(etag, version, updated_at, exported.body, exported.error)

    async def write(
        self, canvas_id: str, change: Callable[[RoomDocument], Effects], if_match: str | None = None, size: int = 0
    ) -> tuple[str, asyncio.Future[int] | None]:
        """Apply a server-side change (HTTP import/edit, restore, a job's result) to the canvas's room,
        loading it if needed.

        Raises ``Overloaded`` if the storage backlog cannot take ``size`` more bytes, ``ShuttingDown``
        while draining, ``PreconditionFailed`` if ``if_match`` is not the current ETag, ``CanvasLocked``
        if an administrator locked the canvas and
        ``ProtocolError`` if the change is invalid (``CanvasTooLarge`` if ``size`` more bytes could
        take the canvas past its cap). Returns the new ETag and the commit future (None if the change
        was a no-op).
        """
        if not self.persister.admit(size):
            raise Overloaded("storage backlog full: write refused, retry later")
        if self.shutting_down:
            raise ShuttingDown("server is shutting down")
        room = await self.registry.acquire(canvas_id)
        try:
            # If-Match (even "*") never matches a canvas that does not exist yet (RFC 9110 13.1.1).
            if if_match is not None and not (
                room.exists and (etag_matches(if_match, room.etag) or etag_matches(if_match, binary_etag(room.etag)))
            ):
                raise PreconditionFailed(room.etag)
            if room.locked:
                raise CanvasLocked(f"canvas {canvas_id!r} is locked read-only by an administrator")
            room.check_growth(size)
            try:
                effects = change(room.document)
            except PartiallyApplied as exc:  # refused after yrs integrated part of it: keep the live
                room.apply_local(exc.effects)  # document and storage identical, then report the error
                raise
            done = room.apply_local(effects)
            return room.etag, done
        finally:
            self.registry.release(room)

    async def delete_canvas(self, canvas_id: str, events: Sequence[WebhookEvent] = ()) -> bool:
        """Disconnect the canvas's clients (close 4404), drop unwritten updates, delete it from the store
        (with ``events``, webhook outbox rows, in the same transaction).

        New loads of the canvas wait until the store delete is done (and a load
        that was already running is discarded), so nothing resurrects it."""
        room = self._drop_room(canvas_id)
        try:
            timeout = self.settings.store_timeout
            # A batch holding its rows commits first, then the delete removes them.
            await asyncio.wait_for(self.persister.wait_inflight(), timeout)
            existed = await asyncio.wait_for(self.store.delete_canvas(canvas_id, events), timeout)
        finally:
            self.registry.end_delete(canvas_id)
        self.cluster.publish_deleted(canvas_id)
        log(logging.INFO, "canvas_deleted", canvas=canvas_id, existed=existed or room is not None)
        return existed or (room is not None and room.exists)

    def drop_deleted(self, canvas_id: str) -> None:
        """Another process deleted the canvas: close our sockets on it (4404) and forget unwritten changes."""
        room = self._drop_room(canvas_id)
        self.registry.end_delete(canvas_id)
        log(logging.INFO, "canvas_deleted_elsewhere", canvas=canvas_id, was_loaded=room is not None)

    def _drop_room(self, canvas_id: str) -> Room | None:
        """Start a delete: hold new loads (until ``registry.end_delete``), close the canvas's sockets
        with 4404 and forget its unwritten changes. Synchronous: nothing can interleave."""
        room = self.registry.begin_delete(canvas_id)
        if room is not None:
            for conn in list(room.connections):
                conn.close(CloseCode.CANVAS_DELETED, "canvas deleted", flush=False)
                room.leave(conn)
        self.compactor.forget(canvas_id)
        self.persister.discard(canvas_id)
        return room

    @property
    def connections(self) -> list[Peer]:
        """Connections currently in a room (a dropped slow client is no longer counted)."""
        return list(self.registry.connections())

    def stats(self) -> dict[str, int]:
        queued = [conn.queued for conn in self.connections]
        return {
            "rooms": len(self.registry.rooms),
            "connections": len(queued),
            "queued_frames": sum(q[0] for q in queued),
            "queued_bytes": sum(q[1] for q in queued),
            "storage_backlog_updates": self.persister.backlog_updates,
            "storage_backlog_bytes": self.persister.backlog_bytes,
        }


def binary_etag(etag: str) -> str:
    """The strong ETag of a canvas's binary export, given its (JSON) content ETag."""
    return etag[:-1] + '.bin"'


def etag_matches(header: str, etag: str) -> bool:
    """RFC 9110 If-Match / If-None-Match list comparison (``*`` matches anything; weak prefixes ignored)."""
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False
