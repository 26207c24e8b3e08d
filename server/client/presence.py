"""Presence (y-protocols awareness) for one client, over the hardened parser in ``canvashub.crdt``.

pycrdt's own ``Awareness`` writes string lengths in characters, not UTF-8 bytes (non-ASCII states
corrupt the frame) and decodes with a reader that has no length caps (shared/NOTES.md), so this
module encodes and parses with ``canvashub.crdt.awareness`` instead.

Rules (y-protocols awareness.js): a state is applied only if its clock is newer, or equal and it is a
removal; ``null`` means the client left; clients renew every 15 s and states expire 30 s after their
last renewal. If someone else's frame removes *our* state, we answer with a newer clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from canvashub.crdt import codec
from canvashub.crdt.awareness import AwarenessEntry, encode_awareness_payload, parse_awareness
from canvashub.crdt.errors import ProtocolError

from .feed import Feed

log = logging.getLogger("canvashub.client")

RENEW_SECONDS = 15.0
OUTDATED_SECONDS = 30.0
CHANGE_QUEUE_LIMIT = 1024  # changes buffered per ``changes()`` iterator; the oldest are dropped beyond


@dataclass(frozen=True)
class PresenceChange:
    """Client ids whose presence appeared, changed or went away (never this client's own)."""

    added: tuple[int, ...] = ()
    updated: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()


class Presence:
    """This client's presence state and everyone else's on the canvas."""

    def __init__(self, client_id: int, send: Callable[[bytes], None], *, max_state_bytes: int = 8192) -> None:
        self.client_id = client_id
        self.max_state_bytes = max_state_bytes
        self._send = send  # sends a frame if a socket is open; a no-op otherwise
        self._clock = 0
        self._local: dict[str, Any] | None = None
        self._others: dict[int, tuple[int, Any, float]] = {}  # client id -> (clock, state, last renewed)
        self._clocks: dict[int, int] = {}  # client id -> last clock seen, removals included
        self._last_sent = 0.0
        self._listeners: list[Callable[[PresenceChange], None]] = []
        self._feeds: set[Feed[PresenceChange]] = set()

    # -- this client ------------------------------------------------------------------------------

    @property
    def local(self) -> dict[str, Any] | None:
        return self._local

    def set(self, state: dict[str, Any] | None) -> None:
        """Replace this client's state (``None``: leave) and send it."""
        if state is not None and len(orjson.dumps(state)) > self.max_state_bytes:
            raise ValueError(f"presence state over {self.max_state_bytes} bytes of JSON")
        self._local = state
        self._clock += 1
        self._send(self.frame())

    def update(self, **fields: Any) -> None:
        """Set some fields of this client's state, keeping the others."""
        self.set({**(self._local or {}), **fields})

    def frame(self) -> bytes:
        """This client's current entry as an awareness frame."""
        state = b"null" if self._local is None else orjson.dumps(self._local)
        self._last_sent = time.monotonic()
        return codec.encode_awareness(encode_awareness_payload([AwarenessEntry(self.client_id, self._clock, state)]))

    def announce(self) -> bytes | None:
        """The frame a new connection starts with: our state under a newer clock (the server keeps a
        tombstone of our previous socket's removal, which only a newer clock overrides)."""
        if self._local is None:
            return None
        self._clock += 1
        return self.frame()

    # -- everyone else ----------------------------------------------------------------------------

    @property
    def states(self) -> dict[int, Any]:
        """The states of the other clients present, by Yjs client id."""
        return {client: state for client, (_, state, _) in self._others.items()}

    def on_change(self, callback: Callable[[PresenceChange], None]) -> Callable[[], None]:
        """Call ``callback`` on every change of others' presence; returns the function that unsubscribes."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def changes(self) -> Feed[PresenceChange]:
        """Every change of others' presence from now on: ``with presence.changes() as feed: async for
        change in feed`` (at most 1,024 buffered; the oldest are dropped first)."""
        return Feed(self._feeds, CHANGE_QUEUE_LIMIT)

    def receive(self, payload: bytes) -> None:
        """Apply an awareness payload from the server; a malformed one is ignored."""
        try:
            entries = parse_awareness(payload, max(self.max_state_bytes, 1 << 20))
        except ProtocolError:
            return
        now = time.monotonic()
        added: list[int] = []
        updated: list[int] = []
        removed: list[int] = []
        for entry in entries:
            if entry.client_id == self.client_id:
                self._own_echo(entry)
                continue
            known = self._clocks.get(entry.client_id, -1)
            present = entry.client_id in self._others
            if not (entry.clock > known or (entry.clock == known and entry.removed and present)):
                continue
            self._clocks[entry.client_id] = entry.clock
            if entry.removed:
                if present:
                    del self._others[entry.client_id]
                    removed.append(entry.client_id)
                continue
            try:
                state = orjson.loads(entry.state)
            except orjson.JSONDecodeError:
                continue
            previous = self._others.get(entry.client_id)
            self._others[entry.client_id] = (entry.clock, state, now)
            if previous is None:
                added.append(entry.client_id)
            elif previous[1] != state:
                updated.append(entry.client_id)
        self._emit(added, updated, removed)

    def _own_echo(self, entry: AwarenessEntry) -> None:
        if entry.clock < self._clock or self._local is None:
            return
        if entry.clock > self._clock or entry.removed:  # someone else spoke for us: say we are here
            self._clock = entry.clock + 1
            self._send(self.frame())

    def tick(self) -> None:
        """Renew our state every 15 s; forget others not renewed for 30 s."""
        now = time.monotonic()
        if self._local is not None and now - self._last_sent >= RENEW_SECONDS:
            self._clock += 1
            self._send(self.frame())
        gone = [client for client, (_, _, seen) in self._others.items() if now - seen >= OUTDATED_SECONDS]
        for client in gone:
            del self._others[client]
        self._emit([], [], gone)

    def forget_others(self) -> None:
        """The connection is gone: others' states are unknown until the next one sends them again."""
        gone = list(self._others)
        self._others.clear()
        self._emit([], [], gone)

    def leave_frame(self) -> bytes:
        """Our removal (sent on a clean close, so cursors disappear at once)."""
        self._clock += 1
        self._local = None
        return self.frame()

    def _emit(self, added: list[int], updated: list[int], removed: list[int]) -> None:
        if not (added or updated or removed):
            return
        change = PresenceChange(tuple(added), tuple(updated), tuple(removed))
        for callback in list(self._listeners):
            try:
                callback(change)
            except Exception:
                log.exception("canvashub_client_presence_callback_failed")
        for feed in list(self._feeds):
            feed.put(change)
