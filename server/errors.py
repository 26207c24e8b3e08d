"""The server's errors and the one table that says how each one is answered.

Every error the server raises on purpose is a ``ServerError`` subclass below (or a protocol error from
``crdt/``, whose close code it carries). ``TABLE`` maps each class to its HTTP status, its JSON error
``type`` and, where a socket can meet it, its WebSocket close code. The HTTP API and the WebSocket
endpoint both answer through ``answer_for``; nothing else decides a status or a close code for an error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from canvashub.crdt.errors import ProtocolError


class CloseCode(IntEnum):
    """Every WebSocket close code the server sends (RFC 6455 §7.4.1, plus 4xxx codes that mirror HTTP;
    the stock y-websocket provider does not reconnect after 4400-4499)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # what is left open when the server stops after its drain
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4401  # the access token expired while connected
    DISCONNECTED_BY_ADMIN = 4403  # POST /api/canvases/{id}/disconnect: final on purpose (docs/protocol.md)
    CANVAS_DELETED = 4404
    CANVAS_TOO_LARGE = 4413  # a write would grow the canvas past its size cap


class ServerError(Exception):
    """An error with a row in ``TABLE``. ``message`` is safe to show to the client."""

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers  # extra HTTP headers (e.g. ETag on a failed precondition)
        self.errors = errors  # per-field problems of an invalid body (422)

    @property
    def reason(self) -> str:  # the name protocol errors use: either kind can close a socket
        return self.message


class InvalidRequest(ServerError):
    """Bad input: not JSON, a bad id, a NUL character, a bad query parameter."""


class UnprocessableBody(ServerError):
    """JSON of the wrong shape (``errors`` lists each problem)."""


class AccessDenied(ServerError):
    """Refused for who the caller is: ``Unauthorized`` or ``Forbidden`` (only those two are raised)."""


class Unauthorized(AccessDenied):
    """No valid access token."""


class Forbidden(AccessDenied):
    """A valid token that may not do this (or an Origin, address or canvas limit that refuses it)."""


class NotFound(ServerError):
    """No such canvas, version, generation, asset or route."""


class MethodNotAllowed(ServerError):
    """The path exists, the method does not (``headers`` carries ``Allow``)."""


class NotAcceptable(ServerError):
    """Nothing the ``Accept`` header allows can be produced."""


class Conflict(ServerError):
    """The request contradicts the state: e.g. an idempotency key reused with another body."""


class CanvasDeleted(Conflict):
    """The canvas was deleted while the change waited to be written (a socket on it closes with 4404)."""


class CanvasLocked(ServerError):
    """An administrator locked the canvas read-only (``PUT /api/canvases/{id}/lock``): writes are refused.
    A socket never meets it: a locked canvas drops a socket's updates like a viewer's (``write_denied``)."""


class PreconditionFailed(ServerError):
    """``If-Match`` does not match the current ETag."""

    def __init__(self, current_etag: str) -> None:
        super().__init__("If-Match does not match the current ETag", headers={"ETag": current_etag})
        self.current_etag = current_etag


class TooLarge(ServerError):
    """A request body over its cap."""


class CanvasTooLarge(TooLarge):
    """The write would grow the canvas beyond its size cap."""


class Overloaded(ServerError):
    """The server cannot take this write now (the storage backlog is full); retry later."""


class StoreUnavailable(ServerError):
    """The store could not answer (or not in time) for a read or a load."""


class ShuttingDown(ServerError):
    """The server is draining: no new work."""


class StorageTimeout(ServerError):
    """A storage call did not answer in time."""


class ExtensionUnavailable(ServerError):
    """An extension's hook that must answer (``authenticate``) failed or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Answer:
    """How one kind of error is answered."""

    status: int  # HTTP status
    error_type: str  # the JSON ``error.type``
    close_code: int  # WebSocket close code where a socket meets it
    retry_after: bool = False  # send ``Retry-After: 1`` over HTTP


TABLE: dict[type[BaseException], Answer] = {
    InvalidRequest: Answer(400, "invalid", CloseCode.PROTOCOL_ERROR),
    UnprocessableBody: Answer(422, "invalid", CloseCode.INVALID_PAYLOAD),
    AccessDenied: Answer(403, "forbidden", CloseCode.POLICY_VIOLATION),
    Unauthorized: Answer(401, "unauthorized", CloseCode.UNAUTHORIZED),
    Forbidden: Answer(403, "forbidden", CloseCode.POLICY_VIOLATION),
    NotFound: Answer(404, "not_found", CloseCode.POLICY_VIOLATION),
    MethodNotAllowed: Answer(405, "method_not_allowed", CloseCode.POLICY_VIOLATION),
    NotAcceptable: Answer(406, "not_acceptable", CloseCode.POLICY_VIOLATION),
    Conflict: Answer(409, "conflict", CloseCode.POLICY_VIOLATION),
    CanvasDeleted: Answer(409, "conflict", CloseCode.CANVAS_DELETED),
    PreconditionFailed: Answer(412, "conflict", CloseCode.POLICY_VIOLATION),
    CanvasLocked: Answer(423, "locked", CloseCode.POLICY_VIOLATION),
    TooLarge: Answer(413, "too_large", CloseCode.MESSAGE_TOO_BIG),
    CanvasTooLarge: Answer(413, "too_large", CloseCode.CANVAS_TOO_LARGE),
    Overloaded: Answer(503, "unavailable", CloseCode.TRY_AGAIN_LATER, retry_after=True),
    StoreUnavailable: Answer(503, "unavailable", CloseCode.TRY_AGAIN_LATER, retry_after=True),
    ShuttingDown: Answer(503, "unavailable", CloseCode.GOING_AWAY, retry_after=True),
    StorageTimeout: Answer(504, "timeout", CloseCode.TRY_AGAIN_LATER),
    ExtensionUnavailable: Answer(503, "unavailable", CloseCode.TRY_AGAIN_LATER, retry_after=True),
    asyncio.TimeoutError: Answer(504, "timeout", CloseCode.TRY_AGAIN_LATER),
    # A frame or payload the protocol refuses: 400 over HTTP; on a socket, the error's own close code.
    ProtocolError: Answer(400, "invalid", CloseCode.PROTOCOL_ERROR),
}


def answer_for(exc: BaseException) -> Answer | None:
    """The table's row for ``exc`` (its most specific class listed), or None if it has none."""
    for cls in type(exc).__mro__:
        answer = TABLE.get(cls)
        if answer is not None:
            if isinstance(exc, ProtocolError):
                return Answer(answer.status, answer.error_type, int(exc.code), answer.retry_after)
            return answer
    return None


def answer(exc: ServerError | ProtocolError) -> Answer:
    """The row of an error raised on purpose (every server and protocol error has one)."""
    found = answer_for(exc)
    assert found is not None, f"{type(exc).__name__} has no row in the error table"
    return found


def error_body(exc: BaseException, answer: Answer) -> dict[str, Any]:
    """The JSON error object for ``exc``: ``{"type", "message"}`` (+ ``errors`` for an invalid body)."""
    message = getattr(exc, "message", None) or getattr(exc, "reason", None) or str(exc) or answer.error_type
    error: dict[str, Any] = {"type": answer.error_type, "message": message}
    errors = getattr(exc, "errors", None)
    if errors:
        error["errors"] = errors
    return error
