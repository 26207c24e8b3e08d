"""Rooms (one per canvas) and the registry that loads and unloads them.

A room fans frames out to its connections. All room methods are synchronous:
a frame is applied and queued to every peer in one step, so a newcomer is in
the broadcast set from the moment it is sent its handshake.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from canvashub.crdt.codec import EMPTY_UPDATE, AwarenessFrame, Message, SyncStep2, SyncUpdate, encode_sync_step1
from canvashub.crdt.digest import content_etag
from canvashub.crdt.room import Effects, PartiallyApplied, RoomDocument
from canvashub.crdt.update import decode_state_vector

from .cluster import Cluster
from .errors import CanvasTooLarge, Overloaded
from .extensions import ChangeCollector
from .logs import log
from .peer import Peer
from .persistence import Persister
from .savestatus import SaveStatus


class Room:
    __slots__ = (
        "canvas_id",
        "document",
        "persister",
        "connections",
        "holders",
        "_unload_timer",
        "version",
        "updated_at",
        "_etag",
        "deleted",
        "max_bytes",
        "size_estimate",
        "_measured_at",
        "cluster",
        "unconfirmed",
        "taking_over",
        "durable_state",
        "storage_watchers",
        "changes",
        "locked",
    )

    def __init__(
        self,
        canvas_id: str,
        document: RoomDocument,
        persister: Persister,
        cluster: Cluster | None = None,
        version: int = 0,
        updated_at: float | None = None,
        *,
        max_bytes: int = 0,
        size: int = 0,
        changes: ChangeCollector | None = None,
        locked: bool = False,
    ) -> None:
        self.canvas_id = canvas_id
        self.document = document
        self.persister = persister
        self.connections: dict[Peer, None] = {}  # insertion-ordered set
        self.holders = 0  # connections between acquire() and release()
        self._unload_timer: asyncio.TimerHandle | None = None
        self.version = version  # the stored snapshot's version, as last seen by this process
        self.updated_at = updated_at
        self._etag: str | None = None
        self.deleted = False
        # Size cap: an upper bound (stored bytes + bytes applied since), re-measured
        # exactly (O(document)) at most every MEASURE_INTERVAL when it nears the cap.
        self.max_bytes = max_bytes
        self.size_estimate = size
        self._measured_at = -MEASURE_INTERVAL
        self.cluster = cluster  # other processes holding this canvas (None: no relay, e.g. in tests)
        # Changes other processes relayed that they have not yet said are durable, by (node, number),
        # with when they arrived. Before one of our clients' changes is stored (and acknowledged), these
        # are queued for storage too, each written only if still unconfirmed when its batch commits:
        # an acknowledged change never depends on one a crashed process never stored.
        self.unconfirmed: dict[tuple[str, int], tuple[bytes, float]] = {}
        self.taking_over: dict[tuple[str, int], float] = {}  # queued conditionally, by when
        # The state vector known to be in storage (``clock`` of storage-state save events): what was
        # loaded, then what the persister reports after each commit (see ``storage_state``).
        self.durable_state: bytes = document.doc.get_state()
        self.storage_watchers: set[Peer] = set()  # told each storage change until told "saved"
        # Where this process's changes are noted for the extensions' ``change`` hook (None: nobody listens).
        self.changes = changes if changes is not None and changes.wanted else None
        if self.changes is not None:
            document.track_elements()
        self.locked = locked  # an administrator locked the canvas: every socket's updates are dropped

    @property
    def exists(self) -> bool:
        """Stored, or changed since it loaded: a room opened on an unknown id is not a canvas yet."""
        return self.updated_at is not None

    @property
    def etag(self) -> str:
        """Strong ETag of the document's content (cached until the next change)."""
        if self._etag is None:
            self._etag = content_etag(self.document.doc)
        return self._etag

    def join(self, conn: Peer) -> None:
        self.connections[conn] = None
        for frame in self.document.join(conn):
            conn.enqueue(frame)

    def check_growth(self, size: int) -> None:
        """Raise ``CanvasTooLarge`` if adding ``size`` bytes could take the canvas past its cap."""
        if self.max_bytes <= 0 or self.size_estimate + size <= self.max_bytes:
            return
        now = time.monotonic()
        if now - self._measured_at >= MEASURE_INTERVAL:
            self._measured_at = now
            self.size_estimate = len(self.document.doc.get_update())
            if self.size_estimate + size <= self.max_bytes:
                return
        raise CanvasTooLarge(f"canvas size limit of {self.max_bytes} bytes reached: change refused")

    def receive(self, conn: Peer, message: Message, size: int) -> None:
        """Apply a client's parsed message (``size``: its frame's length), relay it, queue it for storage;
        raises ``ProtocolError`` to close ``conn``. Every decision here is made from the parsed message,
        never from the frame's bytes (docs/security.md, "Canonical frames")."""
        update = message.update if isinstance(message, (SyncUpdate, SyncStep2)) else None  # it may write
        writes = update is not None
        if update is not None:
            if not conn.may_write or self.locked:
                conn.write_denied(update)  # never applied, never stored
                return
            self.check_growth(size)
            if not self.persister.admit(size):
                raise Overloaded("storage backlog full: write refused, retry later")
        elif type(message) is AwarenessFrame and not conn.may_announce:
            self.document.check_awareness(message.payload)  # malformed presence closes the socket all the same
            return  # viewers' presence is not relayed unless configured
        before = None
        if writes and conn.events:
            before = self.document.doc.get_state()
            if len(before) > MAX_CLOCK_TRACKING_BYTES:
                before = None  # too many client ids to diff per frame: events carry through/pending only
        try:
            effects = self.document.handle(conn, message)
        except PartiallyApplied as exc:  # refused, but part of it is in the document now: relay and store that
            self._fan_out(conn, exc.effects, before)
            raise
        self._fan_out(conn, effects, before)

    def _fan_out(self, conn: Peer, effects: Effects, before: bytes | None) -> None:
        for reply in effects.reply:
            conn.enqueue(reply)
        self._relay(effects.broadcast, skip=conn)
        if self.cluster is not None and effects.presence:
            for out in effects.broadcast:
                self.cluster.publish_awareness(self.canvas_id, out)
        update = effects.update
        if update is not None and update != EMPTY_UPDATE:
            clocks = state = None
            if before is not None:
                state = self.document.doc.get_state()  # recorded with the update too: one call
                clocks = advanced_clocks(before, state)
            created = not self.exists
            self._store(update, conn.save, clocks, state=state)
            if self.changes is not None:
                self.changes.note(
                    self.canvas_id, self.document.take_changed_elements(), conn.user_id, "client", created
                )
        if effects.awareness_refused:
            log(
                logging.WARNING,
                "awareness_refused",
                canvas=self.canvas_id,
                conn=conn.id,
                entries=effects.awareness_refused,
            )

    def apply_local(self, effects: Effects, origin: str = "server") -> asyncio.Future[int] | None:
        """Relay and store a change made on the server (HTTP, restore, a job, an extension's seed); returns
        the commit future. ``origin`` is what the ``change`` hook reports."""
        if effects.update is None:
            return None
        self._relay(effects.broadcast)
        created = not self.exists
        done = self._store(effects.update, want_result=True)
        if self.changes is not None:
            self.changes.note(self.canvas_id, self.document.take_changed_elements(), None, origin, created)
        return done

    def _relay(self, frames: list[bytes], skip: Peer | None = None) -> None:
        for out in frames:
            for conn in self.connections:
                if conn is not skip:
                    conn.enqueue(out)

    def _store(
        self,
        update: bytes,
        writer: SaveStatus | None = None,
        clocks: dict[int, int] | None = None,
        want_result: bool = False,
        state: bytes | None = None,
    ) -> asyncio.Future[int] | None:
        """A change made on this process: published to the other processes, then queued for storage
        behind any relayed change it may depend on that its sender has not confirmed durable.

        It carries the document's state vector after it applied (``state``, computed here unless the
        caller has it): durable once it commits. One ``get_state()`` per stored update, O(client ids):
        ~1.5 us for a few ids, ~30 us at 1,000; skipped past MAX_CLOCK_TRACKING_BYTES."""
        self._changed(len(update))
        if self.unconfirmed:
            self.take_over(conditional=True)
        published = self.cluster.publish_update(self.canvas_id, update) if self.cluster is not None else 0
        if state is None and len(self.durable_state) <= MAX_CLOCK_TRACKING_BYTES:
            state = self.document.doc.get_state()
        return self.persister.submit(
            self.canvas_id, update, writer, want_result, clocks, published=published, state=state
        )

    def apply_peer_update(self, node: str, number: int, update: bytes, now: float) -> None:
        """A change another process applied (and stores): relay it to our clients; never republish it.
        What this document integrated is kept until that process confirms it durable (see ``take_over``)."""
        try:
            effects = self.document.apply_update(update)
        except PartiallyApplied as exc:  # cannot come from a canvashub sender; handled all the same
            self.apply_local(exc.effects)
            raise
        if effects.update is None:
            return
        self._relay(effects.broadcast)
        self._changed(len(effects.update))
        self.unconfirmed[(node, number)] = (effects.update, now)
        if self.changes is not None:
            self.document.take_changed_elements()  # reported by the process that made the change

    def apply_peer_awareness(self, node: str, payload: bytes, now: float) -> None:
        self._relay(self.document.remote_awareness(node, payload, now).broadcast)

    def expire_peer_presence(self, before: float) -> None:
        """Presence other processes relayed and did not renew since ``before`` is removed here."""
        self._relay(self.document.expire_remote(before))

    def peer_confirmed(self, node: str, number: int) -> None:
        """``node`` has stored its changes up to ``number``."""
        for key in [k for k in self.unconfirmed if k[0] == node and 0 < k[1] <= number]:
            del self.unconfirmed[key]
        for key in [k for k in self.taking_over if k[0] == node and 0 < k[1] <= number]:
            del self.taking_over[key]
        if self.storage_watchers:
            self.storage_advanced(None)

    # -- storage state (docs/protocol.md, "save": the event a socket gets on joining) ---------
    def storage_state(self) -> StorageState:
        """How much of this canvas is in storage. Never overstated: the document's own state vector
        only when nothing of it is pending here (queued or in flight) and no change relayed from
        another process still awaits that process's confirmation; else the last committed state."""
        backlog = self.persister.pending_updates(self.canvas_id) + len(self.unconfirmed)
        if not backlog:
            self.durable_state = self.document.doc.get_state()
            return StorageState(SAVED, decode_state_vector(self.durable_state), 0, None)
        clock = decode_state_vector(self.durable_state)
        if self.persister.retrying:
            return StorageState(RETRYING, clock, backlog, self.persister.last_error)
        return StorageState(SAVING, clock, backlog, None)

    def report_storage(self, conn: Peer, state: StorageState | None = None) -> None:
        """Tell ``conn`` the storage state; until it is ``saved``, tell it again after each change."""
        if state is None:
            state = self.storage_state()
        conn.save.canvas_state(state.status, state.clock, state.backlog, state.error)
        if state.status == SAVED:
            self.storage_watchers.discard(conn)
        else:
            self.storage_watchers.add(conn)

    def storage_advanced(self, durable: bytes | None) -> None:
        """Updates of this canvas committed (``durable``: the state recorded with the last of them),
        or a relayed change was confirmed: tell the sockets still waiting for ``saved``."""
        if durable is not None:
            self.durable_state = durable
        if self.storage_watchers:
            state = self.storage_state()
            for conn in list(self.storage_watchers):
                self.report_storage(conn, state)

    def _still_unconfirmed(self, key: tuple[str, int]) -> bool:
        return self.taking_over.pop(key, None) is not None

    def take_over(self, conditional: bool, older_than: float | None = None) -> int:
        """Queue unconfirmed peer changes for storage here. ``conditional``: each is written only if
        still unconfirmed when its batch commits (usually the other process confirms first)."""
        taken = 0
        for key, (update, arrived) in list(self.unconfirmed.items()):
            if older_than is not None and arrived >= older_than:
                continue
            del self.unconfirmed[key]
            if conditional:
                self.taking_over[key] = arrived
                # Asked once, when its batch is formed: written unless its sender confirmed it by then.
                # The key is dropped as it is asked, never by age: a long outage must not make a
                # change nobody stored look confirmed.
                needed: Callable[[], bool] | None = functools.partial(self._still_unconfirmed, key)
            else:
                needed = None
            self.persister.submit(self.canvas_id, update, None, needed=needed)
            taken += 1
        return taken

    def _changed(self, size: int) -> None:
        self._etag = None
        self.updated_at = time.time()
        self.size_estimate += size

    def set_locked(self, locked: bool) -> None:
        """An administrator locked or unlocked the canvas (here or on another process). Opted-in sockets
        get a ``lock`` event. On unlock, each socket that may write is sent sync step 1: a client answers
        with what the server lacks, i.e. the changes it made while they were being dropped."""
        if locked == self.locked:
            return
        self.locked = locked
        for conn in self.connections:
            conn.send_event({"type": "lock", "locked": locked})
        if not locked:
            step1 = encode_sync_step1(self.document.doc.get_state())
            for conn in self.connections:
                if conn.may_write:
                    conn.enqueue(step1)
        log(logging.INFO, "canvas_locked" if locked else "canvas_unlocked", canvas=self.canvas_id)

    def leave(self, conn: Peer) -> None:
        self.storage_watchers.discard(conn)
        if self.connections.pop(conn, False) is False:
            return
        frames = self.document.leave(conn)
        self._relay(frames)
        if self.cluster is not None:
            for frame in frames:
                self.cluster.publish_awareness(self.canvas_id, frame)


MEASURE_INTERVAL = 5.0  # seconds between exact size measurements of one room near its cap

# Diffing two state vectors costs O(client ids in the document), and clients can
# add ids at will: beyond ~500 ids, save events omit the clocks they advanced.
MAX_CLOCK_TRACKING_BYTES = 8 * 1024


def advanced_clocks(before: bytes, after: bytes) -> dict[int, int]:
    """State-vector entries that moved between two encodings of the room's state vector.

    This is how an opted-in writer learns the Yjs clocks its durable changes
    cover (``clock`` in save events). pycrdt's doc-free ``get_state(update)``
    cannot say it: it only counts a client's structs from clock 0.
    """
    if before == after:
        return {}
    old = decode_state_vector(before)
    return {client: clock for client, clock in decode_state_vector(after).items() if old.get(client, 0) < clock}


# Storage states of a canvas (``status`` of the save event a socket gets on joining).
SAVED = "saved"  # nothing of the canvas is pending: everything in the document is in storage
SAVING = "saving"  # some of it is queued or being written (or awaits another process); the store is not failing
RETRYING = "retrying"  # some of it is queued and the store is failing: retried with backoff


class StorageState(NamedTuple):
    status: str
    clock: dict[int, int]  # the durable state vector: client id -> clock in storage
    backlog: int  # updates of the canvas not yet durable (queued here or awaiting another process)
    error: str | None  # the store's last error while retrying


Loader = Callable[[str], Awaitable[Room]]
Unloader = Callable[[Room], Awaitable[None]]


class RoomRegistry:
    """Loaded rooms by canvas id; one load in flight per id; unload after a grace period once durable."""

    def __init__(
        self,
        loader: Loader,
        unloader: Unloader,
        grace_seconds: float,
        settled: Callable[[Room], bool] = lambda room: True,
        loaded: Callable[[Room], None] = lambda room: None,
        unloaded: Callable[[str], None] = lambda canvas_id: None,
        rooms: dict[str, Room] | None = None,
    ) -> None:
        self._loader = loader
        self._loaded = loaded  # called right after a room is registered (same step)
        self._unloaded = unloaded  # called right after a room is dropped (unloaded or deleted)
        self._unloader = unloader
        self._settled = settled  # synchronous "is everything of this room durable?"
        self._unloading: set[asyncio.Task[None]] = set()
        self._grace = grace_seconds
        self.rooms: dict[str, Room] = rooms if rooms is not None else {}  # shared with the cluster
        self._loading: dict[str, asyncio.Future[Room]] = {}
        self._deleting: dict[str, asyncio.Future[None]] = {}
        self._epoch: dict[str, int] = {}  # bumped by each delete: a load that straddles one is discarded

    async def acquire(self, canvas_id: str) -> Room:
        """Return the loaded room, loading it once however many callers race."""
        while True:
            deleting = self._deleting.get(canvas_id)
            if deleting is None:
                break
            await asyncio.shield(deleting)  # the delete finishes first; then load afresh
        room = self.rooms.get(canvas_id)
        if room is None:
            pending = self._loading.get(canvas_id)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._loading[canvas_id] = pending
                try:
                    while True:
                        epoch = self._epoch.get(canvas_id, 0)
                        room = await self._loader(canvas_id)
                        deleting = self._deleting.get(canvas_id)
                        if deleting is None and self._epoch.get(canvas_id, 0) == epoch:
                            break
                        if deleting is not None:  # deleted while loading: what we read is gone
                            await asyncio.shield(deleting)
                except BaseException as exc:
                    del self._loading[canvas_id]
                    pending.set_exception(exc)
                    pending.exception()  # mark retrieved: waiters (if any) re-raise it themselves
                    raise
                self.rooms[canvas_id] = room
                del self._loading[canvas_id]
                self._loaded(room)
                pending.set_result(room)
            else:
                room = await asyncio.shield(pending)
        room.holders += 1
        if room._unload_timer is not None:
            room._unload_timer.cancel()
            room._unload_timer = None
        return room

    def release(self, room: Room) -> None:
        room.holders -= 1
        if room.holders == 0 and room._unload_timer is None and not room.deleted:
            loop = asyncio.get_running_loop()
            room._unload_timer = loop.call_later(self._grace, self._unload, room)

    def _unload(self, room: Room) -> None:
        room._unload_timer = None
        if room.holders == 0 and self.rooms.get(room.canvas_id) is room:
            task = asyncio.get_running_loop().create_task(self._finish_unload(room))
            self._unloading.add(task)
            task.add_done_callback(self._unloading.discard)

    async def _finish_unload(self, room: Room) -> None:
        # The room stays registered (and re-acquirable) until all its updates are
        # durable, however long the database is down: a client that joins meanwhile
        # gets this same room, not a reload that lacks the pending updates. The
        # final check and the removal happen in one step, with no await between.
        while True:
            await self._unloader(room)
            if room.holders != 0 or self.rooms.get(room.canvas_id) is not room:
                return
            if self._settled(room):
                del self.rooms[room.canvas_id]
                log(logging.INFO, "room_unloaded", canvas=room.canvas_id)
                self._unloaded(room.canvas_id)
                return

    def begin_delete(self, canvas_id: str) -> Room | None:
        """Drop the canvas's room at once and hold new loads of it until ``end_delete``."""
        self._epoch[canvas_id] = self._epoch.get(canvas_id, 0) + 1
        if canvas_id not in self._deleting:
            self._deleting[canvas_id] = asyncio.get_running_loop().create_future()
        room = self.rooms.pop(canvas_id, None)
        if room is not None:
            room.deleted = True
            if room._unload_timer is not None:
                room._unload_timer.cancel()
                room._unload_timer = None
        return room

    def end_delete(self, canvas_id: str) -> None:
        future = self._deleting.pop(canvas_id, None)
        if future is not None and not future.done():
            future.set_result(None)
        self._unloaded(canvas_id)

    def is_loading(self, canvas_id: str) -> bool:
        return canvas_id in self._loading or canvas_id in self._deleting

    def connections(self):
        for room in self.rooms.values():
            yield from room.connections
