"""What the client raises: one type for HTTP API errors, typed refusals for sockets that must not retry.

The server answers every error from one table (``server/errors.py``; docs/protocol.md, "Close codes"):
a refused upgrade is an HTTP status with a JSON ``{"error": {"type", "message"}}`` body, a socket the
server ends for good is a close code. The client maps both to the classes below and stops
reconnecting on them; every other close (1001 shutdown, 1006 lost, 1011, 1013 try again later) is
transient and only delays the next attempt.
"""

from __future__ import annotations

from typing import Any


class CanvasHubError(Exception):
    """Every error this client raises on purpose."""


class HttpError(CanvasHubError):
    """A non-2xx answer of the HTTP API: ``status``, the JSON error ``type`` and ``message``
    (``errors``: the per-field problems of a 422; ``headers``: the answer's headers)."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.type = error_type
        self.message = message
        self.errors = errors or []
        self.headers = headers or {}


class ConnectionRefused(CanvasHubError):
    """The server refused this socket for good: at the upgrade (``status``, the HTTP status, with the
    JSON error ``type``) or by closing it (``code``, the close code). Reconnecting would not help."""

    def __init__(
        self, message: str, *, code: int | None = None, status: int | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.type = error_type


class AuthenticationFailed(ConnectionRefused):
    """No valid token (upgrade 401) or the token expired while connected (close 4401)."""


class AccessForbidden(ConnectionRefused):
    """The token does not cover this canvas, or the Origin or address is refused (upgrade 403)."""


class CanvasDeleted(ConnectionRefused):
    """The canvas was deleted while connected (close 4404)."""


class CanvasTooLarge(ConnectionRefused):
    """A local change would grow the canvas past the server's size cap (close 4413); the change stays
    in the local document."""


class PolicyViolation(ConnectionRefused):
    """The server closed the socket for a policy breach (1008: rates, too many awareness ids)."""


class ProtocolRejected(ConnectionRefused):
    """The server refused what this client sent (1002, 1003, 1007, 1009, or an upgrade 400):
    a bug or a misuse, which a retry would repeat."""


class EditDenied(CanvasHubError):
    """The server drops this socket's changes: its role may not edit (``denied`` event). Raised by
    ``Canvas.saved()``, since those changes will never be durable."""


# Close codes after which the client does not reconnect (docs/protocol.md, "Close codes"), and the
# class each becomes. 4400-4499 are permanent for the stock provider too; any other code is transient.
FINAL_CLOSES: dict[int, type[ConnectionRefused]] = {
    1002: ProtocolRejected,
    1003: ProtocolRejected,
    1007: ProtocolRejected,
    1008: PolicyViolation,
    1009: ProtocolRejected,
    4401: AuthenticationFailed,
    4403: AccessForbidden,
    4404: CanvasDeleted,
    4413: CanvasTooLarge,
}

# HTTP statuses of a refused upgrade after which the client does not retry (503: storage down or
# shutting down, 429 and the other 5xx are transient).
FINAL_STATUSES: dict[int, type[ConnectionRefused]] = {
    400: ProtocolRejected,
    401: AuthenticationFailed,
    403: AccessForbidden,
    404: ProtocolRejected,
}


def refusal_for_close(code: int, reason: str) -> ConnectionRefused | None:
    """The typed error for a final close code, or None if the close is transient."""
    cls = FINAL_CLOSES.get(code)
    if cls is None and 4400 <= code <= 4499:
        cls = ConnectionRefused
    if cls is None:
        return None
    return cls(f"closed by the server with {code}: {reason or 'no reason given'}", code=code)


def refusal_for_status(status: int, error_type: str | None, message: str) -> ConnectionRefused | None:
    """The typed error for a final upgrade refusal, or None if retrying may succeed."""
    cls = FINAL_STATUSES.get(status)
    if cls is None and 400 <= status < 500 and status not in (408, 429):
        cls = ConnectionRefused
    if cls is None:
        return None
    return cls(
        f"upgrade refused with {status} {error_type or ''}: {message}".strip(), status=status, error_type=error_type
    )
