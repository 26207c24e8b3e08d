"""Which local changes are durable, decided only from the server's ``save`` events (sans-I/O).

docs/protocol.md, "When a client may call a change saved": a change is durable once the ``clock`` of a
``save`` event (either kind, on any connection: durability does not expire) covers every Yjs clock it
reached. The sync step 1 the server sends on connect says what its *memory* holds, nothing about
storage, so it is never used here. Delete-only changes advance no clock: one sent on a socket is durable
once that socket's ``through`` reaches its number; one made while disconnected travels in the next sync
step 2, which the server may count as that socket's change #1 (so the socket's own frames are numbered
from 2 then: never too low), and is settled by ``through >= 1`` or, if the server already held it and
counted nothing, once the canvas is ``saved`` with nothing of ours pending after a quiet period (as
``client-demo/src/savestatus.js`` does).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DELETE_GRACE_SECONDS = 1.5


@dataclass(frozen=True)
class Target:
    """What "every local change made so far" means at one moment: clocks to cover, deletions to settle."""

    clocks: dict[int, int]
    deletes: frozenset[int]


class SaveTracker:
    """Local changes and the server's ``save`` events; ``covers(target)`` says whether they are durable."""

    def __init__(self, delete_grace: float = DELETE_GRACE_SECONDS) -> None:
        self.delete_grace = delete_grace
        self._required: dict[int, int] = {}  # client id -> clock that must become durable
        self._durable: dict[int, int] = {}  # client id -> highest clock a save event reported durable
        self._deletes: dict[int, int | None] = {}  # delete-only change -> its number on the socket (None: offline)
        self._ids = itertools.count(1)
        self._frames = 0  # changes sent on the current socket (its own numbering, from 1)
        self.through = 0
        self.pending = 0
        self.socket_status = "saved"  # this socket's changes: saved | retrying | failed
        self.canvas_status: str | None = None  # the canvas's storage state; None until told on this socket
        self.last_error = ""
        self.denied: str | None = None  # the server refused this socket's edits (role)
        self.online = False
        self._quiet_since = 0.0

    # -- local side -------------------------------------------------------------------------------

    def unsaved(self) -> bool:
        return bool(self._required or self._deletes)

    def connected(self, now: float) -> None:
        """A socket just sent its sync step 2 (everything the server lacks, our unsaved changes included)."""
        self._frames = 1 if self.unsaved() else 0
        self._deletes = dict.fromkeys(self._deletes, 1)
        self.through = self.pending = 0
        self.socket_status = "saved"
        self.canvas_status = None
        self.denied = None
        self.online = True
        self._quiet_since = now

    def disconnected(self) -> None:
        self.online = False
        self.canvas_status = None

    def local_change(self, clocks: Mapping[int, int], on_socket: bool, now: float) -> None:
        """A local transaction committed; ``clocks``: the state-vector entries it advanced (client -> new
        clock); ``on_socket``: it is being sent as an update on the open socket (else a later step 2 carries it)."""
        if on_socket:
            self._frames += 1
        if not clocks:
            self._deletes[next(self._ids)] = self._frames if on_socket else None
        for client, clock in clocks.items():
            if not self._covered(client, clock) and self._required.get(client, -1) < clock:
                self._required[client] = clock
        self._quiet_since = now

    def target(self) -> Target:
        """Everything made so far, to pass to ``covers`` later."""
        return Target(dict(self._required), frozenset(self._deletes))

    def covers(self, target: Target) -> bool:
        if any(not self._covered(client, clock) for client, clock in target.clocks.items()):
            return False
        return not (target.deletes & self._deletes.keys())

    def _covered(self, client: int, clock: int) -> bool:
        return self._durable.get(client, -1) >= clock

    # -- server side ------------------------------------------------------------------------------

    def save_event(self, event: Mapping[str, Any], now: float) -> None:
        self.through = _int(event.get("through"))
        self.pending = _int(event.get("pending"))
        clock = event.get("clock")
        if isinstance(clock, dict):
            for key, value in clock.items():
                client, durable = _int(key), _int(value)
                if durable > self._durable.get(client, -1):
                    self._durable[client] = durable
        self._required = {c: v for c, v in self._required.items() if not self._covered(c, v)}
        self._deletes = {k: n for k, n in self._deletes.items() if n is None or n > self.through}
        status = str(event.get("status", ""))
        if event.get("scope") == "canvas":
            self.canvas_status = status if status in ("saved", "retrying") else "saving"
            if status == "retrying":
                self.last_error = str(event.get("error") or "")
        elif status in ("saved", "retrying", "failed"):
            self.socket_status = status
            if status != "saved":
                self.last_error = str(event.get("error") or event.get("reason") or "")
        self._quiet_since = now

    def settle_quiet_deletes(self, now: float) -> bool:
        """Deletions the server held already (its step 2 counted nothing): settled once the canvas is
        saved, nothing of ours is pending, and nothing happened for ``delete_grace`` seconds."""
        if not self._deletes or now - self._quiet_since < self.delete_grace:
            return False
        if self.online and self.pending == 0 and self.socket_status == "saved" and self.canvas_status == "saved":
            self._deletes.clear()
            return True
        return False

    def quiet_deadline(self) -> float | None:
        """When ``settle_quiet_deletes`` may next succeed (None: no deletion outstanding)."""
        return self._quiet_since + self.delete_grace if self._deletes else None

    @property
    def status(self) -> str:
        """offline | connecting | saving | retrying | failed | saved (of this client's own changes)."""
        if not self.online:
            return "offline"
        if self.canvas_status is None:
            return "connecting"
        mine = self.unsaved() or self.pending > 0
        if mine and "retrying" in (self.socket_status, self.canvas_status):
            return "retrying"
        if mine and self.socket_status == "failed":
            return "failed"
        return "saving" if mine else "saved"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
