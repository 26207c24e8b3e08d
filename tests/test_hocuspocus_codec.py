"""crdt/hocuspocus.py without a network: what the provider sends parses, everything else is refused."""

from __future__ import annotations

import pytest

from canvashub.crdt import codec
from canvashub.crdt.errors import InvalidPayload, MalformedFrame
from canvashub.crdt.hocuspocus import (
    MAX_ADDRESS_BYTES,
    Addressed,
    CloseDocument,
    Pong,
    Stateless,
    Token,
    address_prefix,
    encode_authenticated,
    encode_close,
    encode_close_document,
    encode_permission_denied,
    encode_stateless,
    encode_sync_status,
    encode_token,
    is_relayable,
    parse_hocuspocus,
    update_has_structs,
)

DOC = address_prefix("canvas-1")


def parsed(frame: bytes) -> Addressed:
    result = parse_hocuspocus(frame)
    assert isinstance(result, Addressed)
    return result


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (DOC + codec.encode_sync_step1(b"\x00"), codec.SyncStep1(b"\x00")),
        (DOC + codec.encode_sync_step2(b"\x00\x00"), codec.SyncStep2(b"\x00\x00")),
        (DOC + codec.encode_update(b"\x00\x00"), codec.SyncUpdate(b"\x00\x00")),
        (DOC + codec.encode_awareness(b"\x00"), codec.AwarenessFrame(b"\x00")),
        (DOC + codec.encode_query_awareness(), codec.QueryAwareness()),
        (encode_token(DOC, "t0k", "4.7.0"), Token("t0k", "4.7.0")),
        (encode_token(DOC, ""), Token("", None)),
        (encode_stateless(DOC, '{"a":1}'), Stateless('{"a":1}')),
        (encode_close_document(DOC), CloseDocument()),
    ],
)
def test_provider_messages_parse(frame: bytes, message: object):
    """Every message @hocuspocus/provider 4.x sends parses to its typed message and address."""
    result = parsed(frame)
    assert result.address == "canvas-1" and result.document == "canvas-1"
    assert result.message == message


def test_session_address_and_pong():
    """A session-aware address keeps its session for replies; the bare Pong byte has no address."""
    result = parsed(address_prefix("doc\0abc123") + codec.encode_query_awareness())
    assert result.address == "doc\0abc123" and result.document == "doc"
    assert isinstance(parse_hocuspocus(b"\x0a"), Pong)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", MalformedFrame),
        (b"\x09", MalformedFrame),  # Ping from a client: the name's length runs past the frame
        (b"\x02\xc3\x28\x00\x00\x00", InvalidPayload),  # the name is not UTF-8
        (address_prefix("x" * (MAX_ADDRESS_BYTES + 1)) + b"\x03", MalformedFrame),
        (DOC, MalformedFrame),  # no type
        (DOC + b"\x04\x00\x00\x00", MalformedFrame),  # SyncReply: server-only
        (DOC + b"\x06\x00", MalformedFrame),  # BroadcastStateless: server-only
        (DOC + b"\x08\x01", MalformedFrame),  # SyncStatus: server-only
        (DOC + b"\x64\x00", MalformedFrame),  # canvashub's events type does not exist here
        (DOC + b"\x80\x00", MalformedFrame),  # non-minimal type varint
        (encode_permission_denied(DOC, "no"), MalformedFrame),  # auth sub-types 1 and 2 are the server's
        (encode_authenticated(DOC, "read-write"), MalformedFrame),
        (encode_token(DOC, "t", "v") + b"\x00", MalformedFrame),  # trailing bytes
        (encode_stateless(DOC, "p") + b"\x00", MalformedFrame),
        (encode_close_document(DOC) + b"\x00", MalformedFrame),
        (DOC + codec.encode_update(b"\x00\x00") + b"\x00", MalformedFrame),
        (DOC + b"\x00\x07\x00", MalformedFrame),  # unknown sync sub-type
        (DOC + b"\x01\x05\x00", MalformedFrame),  # awareness length past the end
    ],
)
def test_malformed_frames_are_refused(frame: bytes, error: type[Exception]):
    """Broken framing, server-only types and trailing bytes raise the codec's protocol errors."""
    with pytest.raises(error):
        parse_hocuspocus(frame)


def test_server_messages_layout():
    """The server's messages: address, type, body, as @hocuspocus/provider's MessageReceiver reads them."""
    assert encode_sync_status(DOC, True) == DOC + b"\x08\x01"
    assert encode_sync_status(DOC, False) == DOC + b"\x08\x00"
    assert encode_authenticated(DOC, "readonly") == DOC + b"\x02\x02\x08readonly"
    assert encode_permission_denied(DOC, "nope") == DOC + b"\x02\x01\x04nope"
    assert encode_close(DOC, "bye") == DOC + b"\x07\x03bye"
    assert encode_stateless(DOC, "hi") == DOC + b"\x05\x02hi"
    long_reason = encode_close(DOC, "é" * 100)  # capped at 120 bytes without splitting a character
    assert long_reason[len(DOC) + 2 :].decode("utf-8") == "é" * 60


def test_relayable_frames_and_struct_check():
    """Only sync, awareness and query frames may be re-addressed; an update without client blocks
    carries no structs."""
    assert is_relayable(codec.encode_update(b"\x00\x00")) and is_relayable(codec.encode_awareness(b"\x00"))
    assert not is_relayable(codec.encode_auth_denied("x")) and not is_relayable(codec.encode_event(b"{}"))
    assert not update_has_structs(b"\x00\x00") and not update_has_structs(b"\x00\x01\x05\x01\x00\x01")
    assert update_has_structs(b"\x01\x01\x05\x00\x28\x00")
