"""Rooms (one per canvas) and the registry that loads and unloads them.

A room fans frames out to its connections. All room methods are synchronous:
a frame is applied and queued to every peer in one step, so a newcomer is in
the broadcast set from the moment it is sent its handshake.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Awaitable, Callable

from crdt.room import RoomDocument

from .logs import log

if TYPE_CHECKING:
    from .connection import Connection


class Room:
    __slots__ = ("canvas_id", "document", "connections", "holders", "_unload_timer")

    def __init__(self, canvas_id: str, document: RoomDocument) -> None:
        self.canvas_id = canvas_id
        self.document = document
        self.connections: dict["Connection", None] = {}  # insertion-ordered set
        self.holders = 0  # connections between acquire() and release()
        self._unload_timer: asyncio.TimerHandle | None = None

    def join(self, conn: "Connection") -> None:
        self.connections[conn] = None
        for frame in self.document.join(conn):
            conn.enqueue(frame)

    def receive(self, conn: "Connection", frame: bytes) -> None:
        """Apply a client frame; raises ``ProtocolError`` for the caller to close ``conn``."""
        effects = self.document.receive(conn, frame)
        for reply in effects.reply:
            conn.enqueue(reply)
        for out in effects.broadcast:
            for other in self.connections:
                if other is not conn:
                    other.enqueue(out)
        if effects.awareness_refused:
            log(logging.WARNING, "awareness_refused", canvas=self.canvas_id, conn=conn.id,
                entries=effects.awareness_refused)

    def leave(self, conn: "Connection") -> None:
        if self.connections.pop(conn, False) is False:
            return
        for frame in self.document.leave(conn):
            for other in self.connections:
                other.enqueue(frame)


Loader = Callable[[str], Awaitable[RoomDocument]]
Unloader = Callable[[Room], Awaitable[None]]


class RoomRegistry:
    """Loaded rooms by canvas id; one load in flight per id; unload after a grace period."""

    def __init__(self, loader: Loader, unloader: Unloader, grace_seconds: float) -> None:
        self._loader = loader
        self._unloader = unloader
        self._unloading: set[asyncio.Task[None]] = set()
        self._grace = grace_seconds
        self.rooms: dict[str, Room] = {}
        self._loading: dict[str, asyncio.Future[Room]] = {}

    async def acquire(self, canvas_id: str) -> Room:
        """Return the loaded room, loading it once however many callers race."""
        room = self.rooms.get(canvas_id)
        if room is None:
            pending = self._loading.get(canvas_id)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._loading[canvas_id] = pending
                try:
                    document = await self._loader(canvas_id)
                except BaseException as exc:
                    del self._loading[canvas_id]
                    pending.set_exception(exc)
                    pending.exception()  # mark retrieved: waiters (if any) re-raise it themselves
                    raise
                room = Room(canvas_id, document)
                self.rooms[canvas_id] = room
                del self._loading[canvas_id]
                pending.set_result(room)
                log(logging.INFO, "room_loaded", canvas=canvas_id)
            else:
                room = await asyncio.shield(pending)
        room.holders += 1
        if room._unload_timer is not None:
            room._unload_timer.cancel()
            room._unload_timer = None
        return room

    def release(self, room: Room) -> None:
        room.holders -= 1
        if room.holders == 0 and room._unload_timer is None:
            loop = asyncio.get_running_loop()
            room._unload_timer = loop.call_later(self._grace, self._unload, room)

    def _unload(self, room: Room) -> None:
        room._unload_timer = None
        if room.holders == 0 and self.rooms.get(room.canvas_id) is room:
            task = asyncio.get_running_loop().create_task(self._finish_unload(room))
            self._unloading.add(task)
            task.add_done_callback(self._unloading.discard)

    async def _finish_unload(self, room: Room) -> None:
        # The room stays registered (and re-acquirable) until its state is saved,
        # so a client that joins meanwhile gets this same room, not a stale reload.
        await self._unloader(room)
        if room.holders == 0 and self.rooms.get(room.canvas_id) is room:
            del self.rooms[room.canvas_id]
            log(logging.INFO, "room_unloaded", canvas=room.canvas_id)

    async def unload_all(self) -> None:
        """Shutdown: save every room (idle or not) before the process exits."""
        for room in list(self.rooms.values()):
            if room._unload_timer is not None:
                room._unload_timer.cancel()
                room._unload_timer = None
            await self._unloader(room)

    def connections(self):
        for room in self.rooms.values():
            yield from room.connections
