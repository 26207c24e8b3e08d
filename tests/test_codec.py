"""Sans-I/O codec and room-document tests: framing, limits, awareness ownership, fuzzing."""

from __future__ import annotations

import random
import time

import orjson
import pytest
from pycrdt import Doc, Map

from canvashub.crdt import codec
from canvashub.crdt.awareness import AwarenessEntry, encode_awareness_payload
from canvashub.crdt.errors import CloseCode, FrameTooBig, InvalidPayload, MalformedFrame, PolicyViolation, ProtocolError
from canvashub.crdt.room import RoomDocument

from .frames import mutate, random_frame, valid_frames


def awareness_frame(client_id: int, clock: int, state: bytes) -> bytes:
    return codec.encode_awareness(encode_awareness_payload([AwarenessEntry(client_id, clock, state)]))


def test_varint_roundtrip():
    """Varints written by the encoder read back identically, up to 2**53."""
    for value in [0, 1, 127, 128, 300, 2**32 - 1, 2**53]:
        out = bytearray()
        codec.write_var_uint(out, value)
        assert codec.Reader(bytes(out)).var_uint() == value
    assert _enc(300) == b"\xac\x02"


def _enc(value: int) -> bytes:
    out = bytearray()
    codec.write_var_uint(out, value)
    return bytes(out)


@pytest.mark.parametrize(
    "frame, error",
    [
        (b"", MalformedFrame),
        (b"\xff" * 11, MalformedFrame),  # varint longer than 10 bytes
        (b"\x00\x02\xff\xff", MalformedFrame),  # varint runs past the end
        (b"\x00\x02\x05ab", MalformedFrame),  # length prefix past the end
        (b"\x00\x09\x00", MalformedFrame),  # unknown sync type
        (b"\x09", MalformedFrame),  # unknown message type
        (b"\x03\x00", MalformedFrame),  # trailing bytes
        (b"\x00\x02\x02\x00\x00\x00", MalformedFrame),  # two messages in one frame
        (b"\x02\x00\x02\xc3\x28", InvalidPayload),  # auth reason not UTF-8
    ],
)
def test_malformed_frames_rejected(frame, error):
    """Framing errors raise the right ProtocolError before pycrdt sees the bytes."""
    with pytest.raises(error):
        codec.parse_frame(frame)


def test_close_codes_of_error_classes():
    """Each error class maps to its WebSocket close code."""
    assert MalformedFrame("x").code == CloseCode.PROTOCOL_ERROR == 1002
    assert InvalidPayload("x").code == 1007
    assert PolicyViolation("x").code == 1008
    assert FrameTooBig("x").code == 1009


def test_huge_client_count_rejected_cheaply():
    """An update claiming 2**28 clients is rejected without reaching yrs (which would allocate ~500 MB)."""
    room = RoomDocument()
    bomb = codec.encode_update(_enc(1 << 28) + b"\x00")
    start = time.perf_counter()
    with pytest.raises(InvalidPayload):
        room.receive("p", bomb)
    assert time.perf_counter() - start < 0.01


def test_huge_state_vector_count_rejected_cheaply():
    """A state vector claiming 2**28 entries is rejected without reaching yrs."""
    room = RoomDocument()
    with pytest.raises(InvalidPayload):
        room.receive("p", codec.encode_sync_step1(_enc(1 << 28)))


def test_ff_run_is_linear():
    """An 800 KB run of 0xFF (50 s in pycrdt's own reader) is refused in well under 50 ms."""
    room = RoomDocument()
    frame = b"\x00\x02" + b"\xff" * 800_000
    start = time.perf_counter()
    with pytest.raises(ProtocolError):
        room.receive("p", frame)
    assert time.perf_counter() - start < 0.05


def test_awareness_non_ascii_lengths_are_bytes():
    """Awareness JSON with non-ASCII names is length-prefixed in UTF-8 bytes and relayed intact."""
    room = RoomDocument()
    state = orjson.dumps({"user": {"name": "Zoë 日本 ✏️"}})
    frame = awareness_frame(7, 1, state)
    effects = room.receive("a", frame)
    assert effects.broadcast == [frame]
    joined = room.join("b")
    assert codec.parse_frame(joined[1]) == codec.AwarenessFrame(encode_awareness_payload([AwarenessEntry(7, 1, state)]))


def test_awareness_invalid_json_and_oversize_rejected():
    """Invalid JSON closes with 1007, an oversize state with 1009."""
    room = RoomDocument(max_awareness_state_bytes=100)
    with pytest.raises(InvalidPayload):
        room.receive("a", awareness_frame(1, 1, b"{not json"))
    with pytest.raises(FrameTooBig):
        room.receive("a", awareness_frame(1, 1, orjson.dumps({"x": "y" * 200})))


def test_awareness_foreign_client_id_refused():
    """A connection cannot overwrite or remove awareness state owned by another connection."""
    room = RoomDocument()
    room.receive("a", awareness_frame(1, 1, b'{"n":"a"}'))
    effects = room.receive("b", awareness_frame(1, 5, b"null"))
    assert effects.broadcast == [] and effects.awareness_refused == 1
    assert [e.state for e in room.awareness.live_entries()] == [b'{"n":"a"}']


def test_awareness_stale_clock_ignored_and_leave_removes():
    """Older clocks are ignored; leaving broadcasts removal with a newer clock."""
    room = RoomDocument()
    room.receive("a", awareness_frame(1, 3, b'{"v":3}'))
    assert room.receive("a", awareness_frame(1, 2, b'{"v":2}')).broadcast == []
    frames = room.leave("a")
    payload = codec.parse_frame(frames[0]).payload
    assert payload == encode_awareness_payload([AwarenessEntry(1, 4, b"null")])
    assert room.awareness.live_entries() == []


def test_awareness_id_cap_per_connection():
    """One connection may not announce more awareness ids than the cap."""
    room = RoomDocument(max_awareness_ids_per_peer=2)
    room.receive("a", awareness_frame(1, 1, b"{}"))
    room.receive("a", awareness_frame(2, 1, b"{}"))
    with pytest.raises(PolicyViolation):
        room.receive("a", awareness_frame(3, 1, b"{}"))


def test_step1_answered_with_missing_update():
    """A client's step 1 gets a step 2 that brings it up to date."""
    room = RoomDocument()
    source = Doc()
    updates: list[bytes] = []
    source.observe(lambda e: updates.append(e.update))
    source.get("elements", type=Map)["a"] = 1
    room.receive("a", codec.encode_update(updates[0]))
    reply = room.receive("b", codec.encode_sync_step1(Doc().get_state())).reply
    target = Doc()
    target.apply_update(codec.parse_frame(reply[0]).update)
    assert target.get("elements", type=Map).to_py() == {"a": 1.0}


def test_fuzz_random_and_mutated_frames():
    """20,000 random and mutated frames: only ProtocolErrors, the doc stays usable, no frame takes 50 ms."""
    rng = random.Random(1234)
    seeds = valid_frames(rng, 400)
    room = RoomDocument()
    for i, frame in enumerate(seeds):
        room.receive(f"seed{i}", frame)  # a non-empty doc: yrs panics show up only there
    worst = 0.0
    outcomes = {"ok": 0, "refused": 0}
    for i in range(20_000):
        frame = random_frame(rng) if i % 2 else mutate(rng, rng.choice(seeds))
        start = time.perf_counter()
        try:
            room.receive(f"peer{i % 50}", frame)
            outcomes["ok"] += 1
        except ProtocolError as exc:
            assert exc.code in (1002, 1003, 1007, 1008, 1009)
            outcomes["refused"] += 1
        worst = max(worst, time.perf_counter() - start)
    assert worst < 0.05, f"one frame took {worst * 1000:.1f} ms"
    assert outcomes["refused"] > 5_000 and outcomes["ok"] > 100
    probe = Doc()
    probe.apply_update(room.doc.get_update())  # still a valid, exportable document


def test_echoed_departure_does_not_transfer_ownership():
    """Echoes of a departed client's removal or last state do not make the echoer its owner."""
    room = RoomDocument(max_awareness_ids_per_peer=1)
    room.receive("b", awareness_frame(2, 1, b'{"n":"b"}'))
    room.receive("a", awareness_frame(1, 5, b'{"n":"a"}'))
    room.leave("a")  # removal of id 1 with clock 6 goes out to b
    assert room.receive("b", awareness_frame(1, 6, b"null")).broadcast == []  # echoed removal
    assert room.receive("b", awareness_frame(1, 5, b'{"n":"a"}')).broadcast == []  # late echo
    assert room.awareness.owned_by("b") == {2}
    # The original client reconnects and reclaims its id with its next clock.
    assert room.receive("a2", awareness_frame(1, 6, b'{"n":"a"}')).broadcast
    assert room.awareness.owned_by("a2") == {1}
