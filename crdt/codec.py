"""The y-websocket wire format, parsed by hand before any byte reaches pycrdt.

Frame layouts (y-protocols PROTOCOL.md, sync.js, awareness.js, auth.js):

    [0, 0, varBytes(stateVector)]   sync step 1
    [0, 1, varBytes(update)]        sync step 2
    [0, 2, varBytes(update)]        update
    [1, varBytes(awarenessUpdate)]  awareness
    [2, 0, varString(reason)]       auth: permission denied
    [3]                             query awareness
    [100, varString(json)]          canvashub event (server to opted-in clients only)

Exactly one message per frame: the stock 3.x provider only reads the first one,
so a frame with trailing bytes is malformed. Varints are capped at 10 bytes and
every length prefix must end inside the frame, so the work done on a frame is
linear in its size and bounded (pycrdt's own pure-Python reader is quadratic on
runs of 0xFF).

Canonical encoding: a varint must be minimal (lib0 only ever writes minimal
varints, so no stock client sends ``0x80 0x00`` for 0) and fit in 64 bits.
Together with "one message per frame" this makes the encoding of an accepted
frame unique: ``encode_message(parse_frame(frame)) == frame``. The server still
decides everything from the parsed message, never by peeking at bytes; the
uniqueness guarantees that what it relays, re-encoded from the message, is what
the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidPayload, MalformedFrame

MAX_VARINT_BYTES = 10
MAX_VARINT_VALUE = (1 << 64) - 1

MSG_SYNC = 0
MSG_AWARENESS = 1
MSG_AUTH = 2
MSG_QUERY_AWARENESS = 3
# canvashub's own message type: JSON events (e.g. save status), sent only to
# connections that opted in. A y-websocket provider handles it with
# ``provider.messageHandlers[100] = ...``; without a handler it would log
# "Unable to compute message", which is why stock clients never receive it.
MSG_EVENT = 100

SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

AUTH_PERMISSION_DENIED = 0


class Reader:
    """A bounds-checked cursor over one frame."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def var_uint(self) -> int:
        data, pos = self.data, self.pos
        result = 0
        shift = 0
        end = min(len(data), pos + MAX_VARINT_BYTES)
        while pos < end:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0 and shift:
                    raise MalformedFrame("non-minimal varint (a trailing zero group)")
                if result > MAX_VARINT_VALUE:
                    raise MalformedFrame("varint larger than 64 bits")
                self.pos = pos
                return result
            shift += 7
        if end - self.pos >= MAX_VARINT_BYTES:
            raise MalformedFrame("varint longer than 10 bytes")
        raise MalformedFrame("varint runs past the end of the frame")

    def var_bytes(self) -> bytes:
        length = self.var_uint()
        start = self.pos
        if length > len(self.data) - start:
            raise MalformedFrame("length prefix past the end of the frame")
        self.pos = start + length
        return self.data[start : self.pos]

    def var_string(self) -> str:
        raw = self.var_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPayload("string is not valid UTF-8") from None

    def expect_end(self) -> None:
        if self.pos != len(self.data):
            raise MalformedFrame("trailing bytes after the message (one message per frame)")


def write_var_uint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("varuint must be non-negative")
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def write_var_bytes(out: bytearray, payload: bytes) -> None:
    """Length in *bytes*, then the bytes (pycrdt's write_var_string counts characters)."""
    write_var_uint(out, len(payload))
    out += payload


@dataclass(frozen=True, slots=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessFrame:
    """Raw awareness payload; ``crdt.awareness.parse_awareness`` validates it."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


@dataclass(frozen=True, slots=True)
class AuthDenied:
    reason: str


@dataclass(frozen=True, slots=True)
class EventRequest:
    """A canvashub events-channel request (``[100, varString(json)]``); JSON is not checked here."""

    payload: bytes


Message = SyncStep1 | SyncStep2 | SyncUpdate | AwarenessFrame | QueryAwareness | AuthDenied | EventRequest


def parse_frame(frame: bytes) -> Message:
    """Decode one binary frame into a typed message or raise a ``ProtocolError``."""
    if not frame:
        raise MalformedFrame("empty frame")
    reader = Reader(frame)
    kind = reader.var_uint()
    message: Message
    if kind == MSG_SYNC:
        sub = reader.var_uint()
        payload = reader.var_bytes()
        if sub == SYNC_UPDATE:
            message = SyncUpdate(payload)
        elif sub == SYNC_STEP1:
            message = SyncStep1(payload)
        elif sub == SYNC_STEP2:
            message = SyncStep2(payload)
        else:
            raise MalformedFrame(f"unknown sync message type {sub}")
    elif kind == MSG_AWARENESS:
        message = AwarenessFrame(reader.var_bytes())
    elif kind == MSG_QUERY_AWARENESS:
        message = QueryAwareness()
    elif kind == MSG_AUTH:
        sub = reader.var_uint()
        if sub != AUTH_PERMISSION_DENIED:
            raise MalformedFrame(f"unknown auth message type {sub}")
        message = AuthDenied(reader.var_string())
    elif kind == MSG_EVENT:
        message = EventRequest(reader.var_bytes())
    else:
        raise MalformedFrame(f"unknown message type {kind}")
    reader.expect_end()
    return message


def _sync_frame(sub: int, payload: bytes) -> bytes:
    out = bytearray((MSG_SYNC, sub))
    write_var_bytes(out, payload)
    return bytes(out)


def encode_sync_step1(state_vector: bytes) -> bytes:
    return _sync_frame(SYNC_STEP1, state_vector)


def encode_sync_step2(update: bytes) -> bytes:
    return _sync_frame(SYNC_STEP2, update)


def encode_update(update: bytes) -> bytes:
    return _sync_frame(SYNC_UPDATE, update)


def encode_awareness(payload: bytes) -> bytes:
    out = bytearray((MSG_AWARENESS,))
    write_var_bytes(out, payload)
    return bytes(out)


def encode_query_awareness() -> bytes:
    return bytes((MSG_QUERY_AWARENESS,))


def encode_auth_denied(reason: str) -> bytes:
    out = bytearray((MSG_AUTH, AUTH_PERMISSION_DENIED))
    write_var_bytes(out, reason.encode("utf-8"))
    return bytes(out)


def encode_event(payload_json: bytes) -> bytes:
    """A canvashub event frame: ``[100, varString(json)]``."""
    out = bytearray((MSG_EVENT,))
    write_var_bytes(out, payload_json)
    return bytes(out)


def encode_message(message: Message) -> bytes:
    """The canonical (and, for a parsed frame, the only) encoding of ``message``."""
    match message:
        case SyncUpdate(update):
            return encode_update(update)
        case AwarenessFrame(payload):
            return encode_awareness(payload)
        case SyncStep1(state_vector):
            return encode_sync_step1(state_vector)
        case SyncStep2(update):
            return encode_sync_step2(update)
        case QueryAwareness():
            return encode_query_awareness()
        case AuthDenied(reason):
            return encode_auth_denied(reason)
        case EventRequest(payload):
            return encode_event(payload)
    raise TypeError(f"not a message: {message!r}")


# A Yjs v1 update with no structs and an empty delete set (e.g. a step 2 with nothing new).
EMPTY_UPDATE = b"\x00\x00"


# An awareness message with zero entries: a stock provider applies it as a no-op
# and answers nothing, but it counts as an inbound message for the provider's
# 30 s "no message received" reconnect timer.
KEEPALIVE_FRAME = encode_awareness(b"\x00")
