"""One socket's save status: which of its changes are durable, and the ``save`` events that say so.

docs/protocol.md, "save": every change a socket sends is numbered; ``through`` is the highest number
known durable, ``pending`` how many are not yet, ``clock`` the Yjs clocks (per client id) its durable
changes reach. The persister reports commits, retries and refusals here; the socket only ever sends
what this object composes. Sockets that did not opt into events (``?events=1``) count all the same and
send nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SendEvent = Callable[[dict[str, Any]], None]


class SaveStatus:
    __slots__ = ("_send", "submitted", "durable", "clock")

    def __init__(self, send: SendEvent) -> None:
        self._send = send
        self.submitted = 0  # changes this socket sent that were queued for storage
        self.durable = 0  # the highest of them known durable
        self.clock: dict[int, int] = {}  # Yjs clocks its durable changes reach, by client id

    def submit(self) -> int:
        """A change of this socket was queued for storage: its number (1-based)."""
        self.submitted += 1
        return self.submitted

    def merge_clock(self, clocks: dict[int, int]) -> None:
        durable = self.clock
        for client, clock in clocks.items():
            if clock > durable.get(client, 0):
                durable[client] = clock

    def succeeded(self, number: int, seq: int) -> None:
        """Changes up to ``number`` are durable (``seq``: the log position of the last)."""
        self.durable = number
        self._send(self._event("saved", seq=seq))

    def retrying(self, attempt: int, delay: float, error: str | None) -> None:
        self._send(self._event("retrying", attempt=attempt, retry_in_ms=round(delay * 1000), error=error))

    def failed(self, reason: str) -> None:
        self._send(self._event("failed", reason=reason))

    def canvas_state(self, status: str, clock: dict[int, int], backlog: int, error: str | None) -> None:
        """The canvas's storage state (``scope: canvas``): sent on joining and, until ``saved``, on changes."""
        extra: dict[str, Any] = {"error": error} if error is not None else {}
        self._send(
            self._event(status, scope="canvas", clock={str(k): v for k, v in clock.items()}, backlog=backlog, **extra)
        )

    def _event(self, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": "save",
            "status": status,
            "through": self.durable,
            "pending": self.submitted - self.durable,
            "clock": {str(k): v for k, v in self.clock.items()},
            **extra,
        }
