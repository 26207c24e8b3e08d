"""``Peer``: what the hub, rooms and the persister may do with one client connection.

The WebSocket transport (server/connection.py) implements it; nothing below the transport imports the
connection class, so rooms and services never see a socket (y-sweet's "a connection is a callback it
sends through", pycrdt-websocket's small ``Websocket`` protocol).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from .savestatus import SaveStatus


class Peer(Protocol):
    id: int  # unique in this process; peers are hashed by it
    user_id: str | None  # who its token says it is (None: anonymous)
    may_write: bool  # its role may change the document
    may_announce: bool  # its presence is relayed
    events: bool  # it opted into canvashub event frames
    idle: bool  # nothing was sent to it since the last keepalive tick
    save: SaveStatus  # its changes' save status
    writer: asyncio.Future[None] | None  # done once the close frame is out (or the socket is gone)

    def __hash__(self) -> int: ...

    def enqueue(self, frame: bytes) -> None:
        """Queue one frame (bounded: a peer that stops reading is disconnected, never buffered forever)."""

    def send_event(self, event: dict[str, Any]) -> None:
        """Queue a canvashub event frame (a no-op for peers that did not opt in)."""

    def write_denied(self, update: bytes) -> None:
        """Its change was refused for its role (told once)."""

    def check_stall(self, now: float) -> None:
        """Periodic sweep: drop the peer if its queued frames waited too long with no write completing."""

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        """Stop taking frames; send what is queued (if ``flush``), then the close frame."""

    @property
    def queued(self) -> tuple[int, int]:
        """Frames and bytes waiting to be sent."""
