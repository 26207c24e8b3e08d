"""The extension that turns hook events into webhook events.

Built in, added by the composition root when webhook endpoints are configured. It runs in its
own hook lane like any extension (bounded queue, timeout per call), and each webhook it
publishes is written to the outbox (server/webhooks.py) before anything is sent:

- ``change`` (already debounced per canvas, server/extensions.py) -> ``canvas.changed``, and
  ``canvas.created`` first when the change is a canvas's first;
- ``saved`` (one per commit) -> ``canvas.saved``, debounced per canvas like ``canvas.changed``;
- ``connect`` / ``disconnect`` -> ``session.started`` / ``session.ended``.

``canvas.deleted`` and ``generation.*`` are not here: they are written in the same storage
transaction as what they report.
"""

from __future__ import annotations

from typing import Any

from .errors import CloseCode
from .extensions import ChangeEvent, SavedEvent, SessionEvent
from .isotime import iso
from .webhooks import Debouncer, WebhookPublisher, session_data


class WebhookBridge:
    name = "webhooks"

    def __init__(self, webhooks: WebhookPublisher, *, wait: float, max_wait: float) -> None:
        self.webhooks = webhooks
        self.saves = Debouncer("canvas.saved", webhooks.publish, wait=wait, max_wait=max_wait)

    async def change(self, event: ChangeEvent) -> None:
        if event.created:
            await self.webhooks.publish("canvas.created", {"canvas_id": event.canvas_id})
        await self.webhooks.publish("canvas.changed", changed_data(event))

    async def saved(self, event: SavedEvent) -> None:
        self.saves.note(event.canvas_id, seq=event.seq)

    async def connect(self, event: SessionEvent) -> None:
        await self.webhooks.publish("session.started", _session(event))

    async def disconnect(self, event: SessionEvent) -> None:
        await self.webhooks.publish("session.ended", _session(event, ended=True))

    async def flush(self) -> None:
        await self.saves.flush()


def changed_data(event: ChangeEvent) -> dict[str, Any]:
    return {
        "canvas_id": event.canvas_id,
        "elements": list(event.elements),
        "elements_truncated": event.elements_truncated,
        "users": sorted(user for user in event.users if user is not None),
        "origins": list(event.origins),
        "updates": event.updates,
        "first_change_at": iso(event.first_at),
        "last_change_at": iso(event.last_at),
    }


def _session(event: SessionEvent, ended: bool = False) -> dict[str, Any]:
    reason = None
    if ended:
        try:
            reason = CloseCode(event.code).name.lower() if event.code is not None else "closed"
        except ValueError:
            reason = str(event.code)
    return session_data(event.canvas_id, event.session_id, event.user_id, event.role, event.protocol, reason)
