"""Protocol errors carry the WebSocket close code that ends the offending connection.

Only the protocol's own refusals live here (malformed frames, invalid payloads, policy, size);
server policy (backlog, canvas size cap, auth, deletion) and its close codes are the server's
(``server/errors.py``, which also maps these to HTTP answers).
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """The RFC 6455 §7.4.1 close codes a refused frame ends its connection with."""

    PROTOCOL_ERROR = 1002
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009


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
