"""Several canvashub processes as one: relay each canvas's changes and presence through pub/sub.

Every process that holds a canvas subscribes to its channel (``canvas:{id}``)
*before* loading it from storage. Messages are one kind byte plus a body:

- ``u`` + Yjs update: a change applied on the sender (from a client, HTTP, a job).
  Receivers apply it and relay it to their own clients; they never store it
  (the sender does) and never publish it again (origin: peer node).
- ``a`` + awareness frame: presence of the sender's clients (or their departure).
- ``s`` + state vector: "here is what I have". Each receiver answers with a
  ``u`` holding what the sender lacks (if anything), an ``a`` with its own
  clients' presence, and a ``t`` + its own state vector, to which the sender
  answers with a ``u`` of what the receiver lacks (so both sides converge,
  whichever process reconnected last; ``t`` is never answered with ``t``). Sent when a process opens a canvas (so updates that another
  process relayed but has not made durable yet still reach it, and anything
  published between its load and its subscription) and for every canvas after
  a pub/sub outage (state vector exchange, then everyone converges).
- ``x``: the canvas was deleted: receivers close their sockets on it (4404).
- ``d`` + varUint(n): the sender has stored its updates numbered up to n.
- ``l`` + ``1`` or ``0``: an administrator locked (unlocked) the canvas; the lock is already in
  storage, so a process that loads the canvas later reads it there.

Updates carry the sender's number (``u`` + varUint(n) + update; 0 for sync
answers). A receiver keeps each relayed update until the sender confirms it with
``d``. If one of the receiver's own clients writes first, the unconfirmed updates
are queued for storage ahead of that write and written only if still unconfirmed
when the batch commits; if nothing is confirmed within PEER_COMMIT_TIMEOUT (the
sender crashed or is cut off) the receiver stores them. So an acknowledged
change never depends on one that no process stored, and in the usual case each
update is stored once, by the process that received it from a client.

The pub/sub layer drops a process's own messages, so nothing is echoed back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from canvashub.crdt.codec import EMPTY_UPDATE, AwarenessFrame, Reader, encode_awareness, parse_frame, write_var_uint
from canvashub.crdt.room import RoomDocument
from canvashub.crdt.update import check_state_vector

from .logs import FailureLog, log
from .peer import Peer
from .pubsub import PubSub


class ClusterRoom(Protocol):
    """What the cluster needs of a loaded canvas (server/rooms.py's ``Room``)."""

    canvas_id: str
    document: RoomDocument

    @property
    def connections(self) -> Mapping[Peer, None]: ...

    @property
    def unconfirmed(self) -> Mapping[tuple[str, int], tuple[bytes, float]]: ...

    def apply_peer_update(self, node: str, number: int, update: bytes, now: float) -> None: ...

    def apply_peer_awareness(self, node: str, payload: bytes, now: float) -> None: ...

    def peer_confirmed(self, node: str, number: int) -> None: ...

    def take_over(self, conditional: bool, older_than: float | None = None) -> int: ...

    def expire_peer_presence(self, before: float) -> None: ...

    def set_locked(self, locked: bool) -> None: ...


UPDATE, AWARENESS, SYNC, SYNC_REPLY, DELETED, DURABLE, LOCK = b"u", b"a", b"s", b"t", b"x", b"d", b"l"
STATELESS = b"m"  # an application's stateless message for the canvas's clients (server/hocuspocus.py)
PEER_COMMIT_TIMEOUT = 3.0  # a relayed change its sender has not confirmed durable by then is stored here
EARLY_BUFFER = 1024  # messages kept for a canvas that is still loading (the sync answer covers the rest)
PRESENCE_TIMEOUT = 35.0  # clients renew presence every 15 s; another process's silent clients expire after this


def varuint(value: int) -> bytes:
    out = bytearray()
    write_var_uint(out, value)
    return bytes(out)


class Cluster:
    """``rooms``: the loaded canvases by id (a live mapping); ``is_loading``: is a load of this id under way.
    ``on_deleted`` is told when another process deleted a canvas (the hub closes its sockets)."""

    def __init__(
        self,
        pubsub: PubSub,
        rooms: Mapping[str, ClusterRoom],
        is_loading: Callable[[str], bool],
        on_deleted: Callable[[str], None],
    ) -> None:
        self.pubsub = pubsub
        self.rooms = rooms
        self.is_loading = is_loading
        self.on_deleted = on_deleted
        # Told (canvas, payload) of a stateless broadcast another process made (None: nobody delivers them).
        self.on_stateless: Callable[[str, str], object] | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._failures = FailureLog("cluster_maintenance", level=logging.ERROR)
        self._early: dict[str, list[tuple[str, bytes]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.received = 0
        self.rejected = 0
        self.sequence = 0  # numbers this process's relayed updates
        self._anonymous = 0  # keys for relayed sync answers, which no ``d`` ever confirms
        self.taken_over = 0
        pubsub.on_reconnect(self.resync)

    def start(self) -> None:
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)

    async def _maintain(self) -> None:
        """Once a second: store relayed changes their sender never confirmed; expire silent presence."""
        while True:
            await asyncio.sleep(1.0)
            try:
                self.take_over_stale()
                self.expire_presence()
                self._failures.recovered()
            except Exception as exc:  # pragma: no cover - defensive: the loop must survive
                self._failures.failed(repr(exc))

    @staticmethod
    def channel(canvas_id: str) -> str:
        return "canvas:" + canvas_id

    def _lock(self, canvas_id: str) -> asyncio.Lock:
        lock = self._locks.get(canvas_id)
        if lock is None:
            lock = self._locks[canvas_id] = asyncio.Lock()
        return lock

    # -- a canvas's lifetime on this process ------------------------------------------------
    async def before_load(self, canvas_id: str) -> None:
        """Subscribe first, so nothing published while we load is missed (it waits in a buffer)."""
        async with self._lock(canvas_id):
            self._early.setdefault(canvas_id, [])
            await self.pubsub.subscribe(
                self.channel(canvas_id), lambda sender, payload: self._on_message(canvas_id, sender, payload)
            )

    def loaded(self, room: ClusterRoom) -> None:
        """The room is registered: apply what arrived during the load, then ask the others what we lack."""
        for sender, payload in self._early.pop(room.canvas_id, ()):
            self._on_message(room.canvas_id, sender, payload)
        self._announce(room)

    async def released(self, canvas_id: str) -> None:
        """The room was unloaded or deleted here: stop listening unless it is back (or loading) meanwhile."""
        async with self._lock(canvas_id):
            if canvas_id in self.rooms or self.is_loading(canvas_id):
                return
            self._early.pop(canvas_id, None)
            await self.pubsub.unsubscribe(self.channel(canvas_id))

    # -- outbound ---------------------------------------------------------------------------
    def publish_update(self, canvas_id: str, update: bytes) -> int:
        """Relay a change made here; returns its number (for the ``d`` notice once it is stored)."""
        self.sequence += 1
        self.pubsub.publish(self.channel(canvas_id), UPDATE + varuint(self.sequence) + update)
        return self.sequence

    def committed(self, canvas_id: str, number: int) -> None:
        """Our updates of ``canvas_id`` up to ``number`` are durable: the others need not store them."""
        self.pubsub.publish(self.channel(canvas_id), DURABLE + varuint(number))

    def publish_awareness(self, canvas_id: str, frame: bytes) -> None:
        self.pubsub.publish(self.channel(canvas_id), AWARENESS + frame)

    def publish_deleted(self, canvas_id: str) -> None:
        self.pubsub.publish(self.channel(canvas_id), DELETED)

    def publish_stateless(self, canvas_id: str, payload: str) -> None:
        """A stateless message broadcast here: the other processes deliver it to their own clients."""
        self.pubsub.publish(self.channel(canvas_id), STATELESS + payload.encode())

    def lock_changed(self, canvas_id: str, locked: bool) -> None:
        """The canvas's lock was just stored (or removed): apply it here and tell the other processes.

        A room loading here right now may have read storage before the change: the message waits in
        the load's early buffer like one from another process, and applies once the room is registered."""
        payload = LOCK + (b"1" if locked else b"0")
        room = self.rooms.get(canvas_id)
        if room is not None:
            room.set_locked(locked)
        else:
            early = self._early.get(canvas_id)
            if early is not None:
                early.append((self.pubsub.node_id, payload))
        self.pubsub.publish(self.channel(canvas_id), payload)

    def resync(self) -> None:
        """After a pub/sub outage: state vector exchange for every canvas this process holds."""
        rooms = list(self.rooms.values())
        for room in rooms:
            self._announce(room)
        log(logging.INFO, "cluster_resync", canvases=len(rooms))

    def _announce(self, room: ClusterRoom) -> None:
        """Our state vector (the others answer with what we lack and their own vectors) and our presence."""
        self.pubsub.publish(self.channel(room.canvas_id), SYNC + room.document.doc.get_state())
        self._publish_presence(room)

    def _publish_presence(self, room: ClusterRoom) -> None:
        presence = room.document.local_presence(room.connections)
        if presence is not None:
            self.pubsub.publish(self.channel(room.canvas_id), AWARENESS + encode_awareness(presence))

    # -- inbound ----------------------------------------------------------------------------
    def _on_message(self, canvas_id: str, sender: str, payload: bytes) -> None:
        room = self.rooms.get(canvas_id)
        if room is None:
            early = self._early.get(canvas_id)
            if early is not None and len(early) < EARLY_BUFFER:
                early.append((sender, payload))
            return
        self.received += 1
        kind, body = payload[:1], payload[1:]
        try:
            if kind == UPDATE:
                reader = Reader(body)
                number = reader.var_uint()
                room.apply_peer_update(sender, number or -self._next_anonymous(), body[reader.pos :], time.monotonic())
            elif kind == DURABLE:
                reader = Reader(body)
                room.peer_confirmed(sender, reader.var_uint())
            elif kind == AWARENESS:
                message = parse_frame(body)
                if type(message) is AwarenessFrame:
                    room.apply_peer_awareness(sender, message.payload, time.monotonic())
            elif kind == SYNC or kind == SYNC_REPLY:
                check_state_vector(body)
                channel = self.channel(canvas_id)
                diff = room.document.doc.get_update(body)
                if diff != EMPTY_UPDATE:
                    self.pubsub.publish(channel, UPDATE + varuint(0) + diff)
                if kind == SYNC:
                    self.pubsub.publish(channel, SYNC_REPLY + room.document.doc.get_state())
                    self._publish_presence(room)
            elif kind == DELETED:
                self.on_deleted(canvas_id)
            elif kind == LOCK:
                room.set_locked(body == b"1")
            elif kind == STATELESS:
                if self.on_stateless is not None:
                    self.on_stateless(canvas_id, body.decode())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a bad message must not stop the reader (yrs panics too)
            self.rejected += 1
            log(
                logging.WARNING,
                "cluster_message_rejected",
                canvas=canvas_id,
                sender=sender,
                kind=kind.decode("latin-1"),
                error=repr(exc)[:200],
            )

    def _next_anonymous(self) -> int:
        self._anonymous += 1
        return self._anonymous

    def take_over_stale(self) -> None:
        """Store relayed changes whose senders never confirmed them (crashed, or cut off from us)."""
        before = time.monotonic() - PEER_COMMIT_TIMEOUT
        for room in list(self.rooms.values()):
            if room.unconfirmed:
                taken = room.take_over(conditional=False, older_than=before)
                if taken:
                    self.taken_over += taken
                    log(logging.WARNING, "cluster_takeover", canvas=room.canvas_id, updates=taken)

    def expire_presence(self) -> None:
        """Presence relayed from processes that went silent (crashed, cut off) is removed."""
        before = time.monotonic() - PRESENCE_TIMEOUT
        for room in list(self.rooms.values()):
            room.expire_peer_presence(before)

    def status(self) -> dict[str, object]:
        return {
            **self.pubsub.status(),
            "messages_received": self.received,
            "messages_rejected": self.rejected,
            "updates_taken_over": self.taken_over,
        }
