"""Protocol errors carry the WebSocket close code that ends the offending connection.

The server converts a ``ProtocolError`` into a close in exactly one place
(``server/connection.py``); nothing else in the room is affected.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes canvashub uses (RFC 6455 §7.4.1 plus 4xxx app codes)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4401  # the access token expired while connected (4400-4499: the stock provider does not reconnect)
    CANVAS_DELETED = 4404
    CANVAS_TOO_LARGE = 4413  # a write would grow the canvas past its size cap


class ProtocolError(Exception):
    """A frame the server refuses; ``code`` is the close code for its socket."""

    code: CloseCode = CloseCode.PROTOCOL_ERROR

    def __init__(self, reason: str, code: CloseCode | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class MalformedFrame(ProtocolError):
    """Framing is broken: bad varint, length past the end, trailing bytes, unknown type."""

    code = CloseCode.PROTOCOL_ERROR


class InvalidPayload(ProtocolError):
    """Framing is fine but the payload is not a valid Yjs update / state vector / awareness JSON."""

    code = CloseCode.INVALID_PAYLOAD


class PolicyViolation(ProtocolError):
    """The payload is well formed but not allowed (e.g. an oversized awareness state)."""

    code = CloseCode.POLICY_VIOLATION


class FrameTooBig(ProtocolError):
    """The frame exceeds the configured size cap."""

    code = CloseCode.MESSAGE_TOO_BIG


class Overloaded(ProtocolError):
    """The server cannot take this write now (e.g. the storage backlog is full); retry later."""

    code = CloseCode.TRY_AGAIN_LATER


class CanvasTooLarge(ProtocolError):
    """The write would grow the canvas beyond its configured size cap."""

    code = CloseCode.CANVAS_TOO_LARGE
