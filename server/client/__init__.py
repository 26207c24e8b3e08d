"""canvashub's Python client: edit a canvas as a peer, and call the REST API.

    async with canvashub.client.connect("http://127.0.0.1:8000", "demo", token=token) as canvas:
        with canvas.doc.transaction():
            canvas.doc.get("elements", type=Map)["n1"] = Map({"type": "sticky", "text": "hi"})
        await canvas.saved(timeout=10)

``connect`` keeps a pycrdt ``Doc`` in sync over the y-websocket protocol (with the sans-I/O codec of
``canvashub.crdt``), relays presence, tells when local changes are durable (the server's ``save``
events) and reconnects with capped, fully jittered exponential backoff. ``HttpClient`` wraps the HTTP
API. See docs/integrating.md, "Python client".

The source lives in the repository's ``server/client/`` folder but is installed only as
``canvashub.client`` (pyproject ``package-dir``); it imports nothing of ``canvashub.server``.
"""

from __future__ import annotations

if __name__ != "canvashub.client":  # the folder sits under server/; only one name may load it
    raise ImportError(f"the Python client is canvashub.client, not {__name__}")

from .backoff import Backoff
from .errors import (
    AccessForbidden,
    AuthenticationFailed,
    CanvasDeleted,
    CanvasHubError,
    CanvasTooLarge,
    ConnectionRefused,
    EditDenied,
    HttpError,
    PolicyViolation,
    ProtocolRejected,
)
from .http import HttpClient
from .presence import Presence, PresenceChange
from .realtime import REMOTE, Canvas, connect

__all__ = [
    "REMOTE",
    "AccessForbidden",
    "AuthenticationFailed",
    "Backoff",
    "Canvas",
    "CanvasDeleted",
    "CanvasHubError",
    "CanvasTooLarge",
    "ConnectionRefused",
    "EditDenied",
    "HttpClient",
    "HttpError",
    "PolicyViolation",
    "Presence",
    "PresenceChange",
    "ProtocolRejected",
    "connect",
]
