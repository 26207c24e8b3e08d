"""The Hocuspocus wire format (``@hocuspocus/provider`` 4.x), parsed by hand like crdt/codec.py.

One WebSocket carries many documents. Every frame but one starts with the document's address:

    varString(address) + varUint(type) + body

The address is the document name, or ``name + "\\0" + sessionId`` when the provider runs with
``sessionAwareness``; replies go back to the address as it was sent. Types and bodies
(@hocuspocus/provider ``types.ts``, ``MessageReceiver.ts``; @hocuspocus/common ``auth.ts``):

    0  Sync            [sub, varBytes]: the y-protocols sync message (step 1 / step 2 / update)
    1  Awareness       varBytes(awarenessUpdate)
    2  Auth            client: [0 Token, varString(token), varString(providerVersion)?]
                       server: [1 PermissionDenied, varString(reason)] / [2 Authenticated, varString(scope)]
    3  QueryAwareness  (no body)
    5  Stateless       varString(payload)
    7  CLOSE           client: (no body), "close this document"; server: varString(reason)
    8  SyncStatus      server: varUint(1 = the update was saved, 0 = refused)
    9  Ping, 10 Pong   the only frames without an address: the bare type byte

Types 0, 1 and 3 have exactly the y-websocket layout after the address, so their bodies go
through ``codec.parse_frame`` with all its strictness (minimal varints, lengths inside the
frame, one message per frame). Server-only types (4 SyncReply, 6 BroadcastStateless, 8, 9) and
anything else from a client are malformed. Note the clash with y-protocols: auth sub-type 0 is
"permission denied" there and "token" here, so a y-websocket auth frame must never be relayed
to a Hocuspocus client (``is_relayable``).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import codec
from .codec import Reader, write_var_bytes, write_var_uint
from .errors import InvalidPayload, MalformedFrame

MSG_SYNC = 0
MSG_AWARENESS = 1
MSG_AUTH = 2
MSG_QUERY_AWARENESS = 3
MSG_STATELESS = 5
MSG_CLOSE = 7
MSG_SYNC_STATUS = 8
MSG_PING = 9
MSG_PONG = 10

AUTH_TOKEN = 0
AUTH_PERMISSION_DENIED = 1
AUTH_AUTHENTICATED = 2

SCOPE_READ_WRITE = "read-write"
SCOPE_READONLY = "readonly"

SESSION_SEPARATOR = "\0"  # @hocuspocus/common routingKey.ts
MAX_ADDRESS_BYTES = 256  # a canvas id is at most 64 characters; the provider's session ids are ~11

PING_FRAME = bytes((MSG_PING,))
PONG_FRAME = bytes((MSG_PONG,))


@dataclass(frozen=True, slots=True)
class Token:
    """Auth, sub-type Token: the provider authenticates one document (it then waits for the answer)."""

    token: str
    provider_version: str | None


@dataclass(frozen=True, slots=True)
class Stateless:
    payload: str


@dataclass(frozen=True, slots=True)
class CloseDocument:
    """The provider detached from this document (the socket stays open for the others)."""


@dataclass(frozen=True, slots=True)
class Pong:
    """The provider's answer to ``PING_FRAME`` (no address)."""


# Sync and awareness messages reuse the y-websocket message classes.
Body = codec.SyncStep1 | codec.SyncStep2 | codec.SyncUpdate | codec.AwarenessFrame | codec.QueryAwareness
HocuspocusMessage = Body | Token | Stateless | CloseDocument


@dataclass(frozen=True, slots=True)
class Addressed:
    """One message for one document: ``address`` as sent (replies use it), ``document`` the name."""

    address: str
    document: str
    message: HocuspocusMessage


def document_of(address: str) -> str:
    """The document name in an address (``name`` or ``name\\0sessionId``)."""
    return address.split(SESSION_SEPARATOR, 1)[0]


def parse_hocuspocus(frame: bytes) -> Addressed | Pong:
    """Decode one binary frame from a Hocuspocus provider, or raise a ``ProtocolError``
    (``MalformedFrame`` 1002, ``InvalidPayload`` 1007 for an address that is not UTF-8)."""
    if frame == PONG_FRAME:
        return Pong()
    if not frame:
        raise MalformedFrame("empty frame")
    reader = Reader(frame)
    raw = reader.var_bytes()
    if len(raw) > MAX_ADDRESS_BYTES:
        raise MalformedFrame(f"document address longer than {MAX_ADDRESS_BYTES} bytes")
    address = _utf8(raw)
    body_start = reader.pos
    kind = reader.var_uint()
    message: HocuspocusMessage
    if kind in (MSG_SYNC, MSG_AWARENESS, MSG_QUERY_AWARENESS):
        parsed = codec.parse_frame(frame[body_start:])  # the y-websocket layout, parsed strictly
        assert isinstance(parsed, Body)  # kinds 0, 1, 3 parse to these
        return Addressed(address, document_of(address), parsed)
    if kind == MSG_AUTH:
        sub = reader.var_uint()
        if sub != AUTH_TOKEN:
            raise MalformedFrame(f"a client may only send auth sub-type {AUTH_TOKEN} (token), not {sub}")
        token = reader.var_string()
        version = reader.var_string() if reader.remaining else None
        message = Token(token, version)
    elif kind == MSG_STATELESS:
        message = Stateless(reader.var_string())
    elif kind == MSG_CLOSE:
        message = CloseDocument()
    else:
        raise MalformedFrame(f"unknown or server-only message type {kind}")
    reader.expect_end()
    return Addressed(address, document_of(address), message)


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPayload("document name is not valid UTF-8") from None


# -- server -> client ------------------------------------------------------------------------------
def address_prefix(address: str) -> bytes:
    """``varString(address)``: prepended to every frame for that document."""
    out = bytearray()
    write_var_bytes(out, address.encode("utf-8"))
    return bytes(out)


def is_relayable(frame: bytes) -> bool:
    """A y-websocket frame the room made that means the same after an address prefix: sync, awareness
    and query-awareness (types 0, 1, 3). Auth (2: "token" in Hocuspocus) and events (100) are not."""
    return bool(frame) and frame[0] in (MSG_SYNC, MSG_AWARENESS, MSG_QUERY_AWARENESS)


def _frame(prefix: bytes, kind: int) -> bytearray:
    out = bytearray(prefix)
    write_var_uint(out, kind)
    return out


def encode_authenticated(prefix: bytes, scope: str) -> bytes:
    out = _frame(prefix, MSG_AUTH)
    write_var_uint(out, AUTH_AUTHENTICATED)
    write_var_bytes(out, scope.encode("utf-8"))
    return bytes(out)


def encode_permission_denied(prefix: bytes, reason: str) -> bytes:
    out = _frame(prefix, MSG_AUTH)
    write_var_uint(out, AUTH_PERMISSION_DENIED)
    write_var_bytes(out, reason.encode("utf-8"))
    return bytes(out)


def encode_sync_status(prefix: bytes, saved: bool) -> bytes:
    out = _frame(prefix, MSG_SYNC_STATUS)
    write_var_uint(out, 1 if saved else 0)
    return bytes(out)


def encode_stateless(prefix: bytes, payload: str) -> bytes:
    out = _frame(prefix, MSG_STATELESS)
    write_var_bytes(out, payload.encode("utf-8"))
    return bytes(out)


def encode_close(prefix: bytes, reason: str) -> bytes:
    out = _frame(prefix, MSG_CLOSE)
    write_var_bytes(out, reason.encode("utf-8")[:120].decode("utf-8", "ignore").encode("utf-8"))
    return bytes(out)


# -- client -> server (tests, the bench and Python peers) --------------------------------------
def encode_token(prefix: bytes, token: str, provider_version: str | None = None) -> bytes:
    out = _frame(prefix, MSG_AUTH)
    write_var_uint(out, AUTH_TOKEN)
    write_var_bytes(out, token.encode("utf-8"))
    if provider_version is not None:
        write_var_bytes(out, provider_version.encode("utf-8"))
    return bytes(out)


def encode_close_document(prefix: bytes) -> bytes:
    return bytes(_frame(prefix, MSG_CLOSE))


def update_has_structs(update: bytes) -> bool:
    """A v1 update carries structs (new content) unless its client-block count is 0: what decides a
    read-only writer's SyncStatus (its step 2 with nothing of its own is acknowledged as saved)."""
    try:
        return Reader(update).var_uint() != 0
    except MalformedFrame:
        return True
