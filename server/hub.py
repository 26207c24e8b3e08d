"""The hub: rooms, live connections, keepalive and graceful shutdown, for one process."""

from __future__ import annotations

import asyncio
import logging

from crdt.errors import CloseCode
from crdt.codec import KEEPALIVE_FRAME
from crdt.room import RoomDocument
from pycrdt import Doc
from storage.memory import MemoryStore

from .logs import log
from .metrics import Metrics
from .rooms import Room, RoomRegistry
from .settings import Settings


class Hub:
    def __init__(self, settings: Settings, store: MemoryStore) -> None:
        self.settings = settings
        self.store = store
        self.registry = RoomRegistry(self._load_room, self._unload_room, settings.room_grace_seconds)
        self.shutting_down = False
        self.metrics = Metrics()
        self._keepalive: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._keepalive = asyncio.get_running_loop().create_task(self._keepalive_loop())

    async def _keepalive_loop(self) -> None:
        """Stock y-websocket clients reconnect after 30 s without an inbound message:
        every tick, send a no-op frame to each connection that was sent nothing since the last."""
        while True:
            await asyncio.sleep(self.settings.keepalive_seconds)
            for conn in self.connections:
                if conn.idle:
                    conn.enqueue(KEEPALIVE_FRAME)
                conn.idle = True

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

    async def _load_room(self, canvas_id: str) -> RoomDocument:
        return make_document(self.settings, await self.store.load(canvas_id))

    async def _unload_room(self, room: Room) -> None:
        await self.store.save_snapshot(room.canvas_id, room.document.doc.get_update())

    async def load_detached(self, canvas_id: str) -> Doc | None:
        """A canvas's document without loading a room (for HTTP reads); None if it doesn't exist."""
        state = await self.store.load(canvas_id)
        return None if state is None else make_document(self.settings, state).doc

    @property
    def connections(self) -> list:
        """Connections currently in a room (a dropped slow client is no longer counted)."""
        return list(self.registry.connections())

    def stats(self) -> dict[str, int]:
        queued = [conn.queued for conn in self.connections]
        return {
            "rooms": len(self.registry.rooms),
            "connections": len(queued),
            "queued_frames": sum(q[0] for q in queued),
            "queued_bytes": sum(q[1] for q in queued),
        }


def make_document(settings: Settings, state: bytes | None) -> RoomDocument:
    document = RoomDocument(
        max_awareness_state_bytes=settings.max_awareness_state_bytes,
        max_awareness_ids_per_peer=settings.max_awareness_ids_per_connection,
    )
    if state:
        document.doc.apply_update(state)  # our own bytes, written by save_snapshot
    return document
