"""Canonical frames: every decision comes from the parsed message, never from the frame's bytes.

A differential fuzz (docs/security.md, "Canonical frames"). Valid messages of every type are re-encoded
with non-minimal varints, overlong and truncated lengths and trailing bytes. A strict reference decoder
written here, independently of ``crdt/codec.py``, says what each frame is; the server's decision (apply,
deny, ignore, answer, or close with which code) must be the one that message calls for, for a viewer
and for an editor, and a viewer never changes the document or presence by any of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import websockets
from pycrdt import Doc, Map

from canvashub.crdt import codec
from canvashub.crdt.awareness import parse_awareness
from canvashub.crdt.errors import MalformedFrame, ProtocolError
from canvashub.server.auth import mint_token

from .frames import more_valid_frames, mutate, valid_frames
from .wire import WireClient

SECRET = "canonical-secret-" + "z" * 32
UNLIMITED = {"rate_messages_per_second": 0, "rate_bytes_per_second": 0}


# -- the reference: a strict decoder written from y-protocols' and lib0's documentation -------------------


class Refused(Exception):
    """The reference decoder refuses the frame (the server must close it with 1002)."""


def ref_varuint(data: bytes, pos: int) -> tuple[int, int]:
    """lib0 varUint, minimal and at most 64 bits."""
    value = 0
    for group in range(10):
        if pos >= len(data):
            raise Refused("truncated varint")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << (7 * group)
        if byte < 0x80:
            if group and byte == 0:
                raise Refused("non-minimal varint")
            if value >= 1 << 64:
                raise Refused("varint over 64 bits")
            return value, pos
    raise Refused("varint over 10 bytes")


def ref_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = ref_varuint(data, pos)
    if pos + length > len(data):
        raise Refused("length past the end")
    return data[pos : pos + length], pos + length


def ref_awareness(payload: bytes) -> list[tuple[int, int, bytes]]:
    count, pos = ref_varuint(payload, 0)
    entries = []
    for _ in range(count):
        client, pos = ref_varuint(payload, pos)
        clock, pos = ref_varuint(payload, pos)
        state, pos = ref_bytes(payload, pos)
        entries.append((client, clock, state))
    if pos != len(payload):
        raise Refused("trailing bytes in awareness")
    return entries


SYNC_NAMES = {0: "step1", 1: "step2", 2: "update"}


def reference_decode(frame: bytes) -> tuple[str, bytes]:
    """(message name, payload) of a frame, or ``Refused``."""
    kind, pos = ref_varuint(frame, 0)
    if kind == 0:
        sub, pos = ref_varuint(frame, pos)
        if sub not in SYNC_NAMES:
            raise Refused("unknown sync type")
        name = SYNC_NAMES[sub]
        payload, pos = ref_bytes(frame, pos)
    elif kind == 1:
        name = "awareness"
        payload, pos = ref_bytes(frame, pos)
        ref_awareness(payload)
    elif kind == 2:
        sub, pos = ref_varuint(frame, pos)
        if sub != 0:
            raise Refused("unknown auth type")
        name = "auth"
        payload, pos = ref_bytes(frame, pos)
        payload.decode("utf-8")
    elif kind == 3:
        name, payload = "query", b""
    elif kind == 100:
        name = "event"
        payload, pos = ref_bytes(frame, pos)
    else:
        raise Refused("unknown message type")
    if pos != len(frame):
        raise Refused("trailing bytes")
    return name, payload


def codec_decode(frame: bytes) -> tuple[str, bytes]:
    """The same view of a frame, from ``crdt.codec`` (and ``parse_awareness`` for presence)."""
    message = codec.parse_frame(frame)
    match message:
        case codec.SyncStep1(state_vector):
            return "step1", state_vector
        case codec.SyncStep2(update):
            return "step2", update
        case codec.SyncUpdate(update):
            return "update", update
        case codec.AwarenessFrame(payload):
            parse_awareness(payload, 1 << 30)
            return "awareness", payload
        case codec.AuthDenied(reason):
            return "auth", reason.encode()
        case codec.QueryAwareness():
            return "query", b""
        case codec.EventRequest(payload):
            return "event", payload
    raise AssertionError(message)


# -- re-encodings of one message ---------------------------------------------------------------------


def var(value: int, extra_groups: int = 0) -> bytes:
    """``value`` as a varint; with ``extra_groups`` > 0, non-minimal (padded with 0x80 ... 0x00)."""
    out = bytearray()
    codec.write_var_uint(out, value)
    if extra_groups:
        out[-1] |= 0x80
        out += b"\x80" * (extra_groups - 1) + b"\x00"
    return bytes(out)


@dataclass(frozen=True)
class Shape:
    """A message as header varints plus an optional length-prefixed payload."""

    name: str
    header: tuple[int, ...]
    payload: bytes | None = None

    def encode(self, pad: int = -1, groups: int = 1, length_delta: int = 0, trailing: bytes = b"") -> bytes:
        out = b"".join(var(v, groups if i == pad else 0) for i, v in enumerate(self.header))
        if self.payload is not None:
            out += var(len(self.payload) + length_delta, groups if pad == len(self.header) else 0) + self.payload
        return out + trailing

    def variants(self) -> dict[str, bytes]:
        """The canonical frame and its non-canonical twins, by label."""
        fields = len(self.header) + (self.payload is not None)
        found = {"canonical": self.encode()}
        for i in range(fields):
            found[f"non-minimal varint #{i}"] = self.encode(pad=i)
            found[f"non-minimal varint #{i}, 9 groups"] = self.encode(pad=i, groups=8)
        if self.payload is not None:
            found["length + 1 (past the end)"] = self.encode(length_delta=1)
            if self.payload:
                found["length - 1 (a trailing byte)"] = self.encode(length_delta=-1)
        found["trailing zero byte"] = self.encode(trailing=b"\x00")
        found["trailing message"] = self.encode(trailing=codec.encode_query_awareness())
        return found


def awareness_payload(client_id: int, clock: int, state: dict[str, Any], pad: int = -1) -> bytes:
    """One awareness entry, optionally with a non-minimal varint inside the payload."""
    body = orjson.dumps(state)
    fields = [var(1, pad == 0), var(client_id, pad == 1), var(clock, pad == 2), var(len(body), pad == 3)]
    return b"".join(fields) + body


def key_update(key: str, value: Any = 1) -> bytes:
    """A Yjs update that sets ``elements[key] = value`` (from a fresh client)."""
    doc = Doc()
    doc.get("elements", type=Map)[key] = value
    return doc.get_update()


def shapes(tag: str) -> list[tuple[str, Shape]]:
    """One message of every type a client may send; updates carry a key named after ``tag`` and the variant."""
    return [
        ("update", Shape("update", (0, 2), b"")),  # payload filled per variant (a fresh key each)
        ("step2", Shape("step2", (0, 1), b"")),
        ("step1", Shape("step1", (0, 0), Doc().get_state())),
        ("awareness", Shape("awareness", (1,), b"")),  # payload filled per variant
        ("query", Shape("query", (3,))),
        ("auth", Shape("auth", (2, 0), b"nope")),
        ("event", Shape("event", (100,), orjson.dumps({"type": "get_generation", "request_id": tag, "job_id": "x"}))),
    ]


@dataclass
class Case:
    label: str
    frame: bytes
    key: str | None = None  # the element an update would add
    client_id: int | None = None  # the presence an awareness frame would announce


def cases(seed: int) -> list[Case]:
    """Every message type in every re-encoding, each change distinct so its effect can be seen."""
    rng = random.Random(seed)
    found: list[Case] = []
    for name, shape in shapes(f"s{seed}"):
        count = 0
        if name in ("update", "step2"):
            probe = Shape(name, shape.header, key_update("probe"))
            for label in probe.variants():
                key = f"{name}-{seed}-{count}"
                count += 1
                real = Shape(name, shape.header, key_update(key))
                frame = _same_variant(real, label)
                found.append(Case(f"{name}: {label}", frame, key=key))
        elif name == "awareness":
            for label in Shape(name, shape.header, awareness_payload(1, 1, {})).variants():
                client_id = rng.randrange(1 << 20, 1 << 31)
                real = Shape(name, shape.header, awareness_payload(client_id, 1, {"cursor": label}))
                found.append(Case(f"{name}: {label}", _same_variant(real, label), client_id=client_id))
            for pad in range(4):  # non-minimal varints inside the awareness payload
                client_id = rng.randrange(1 << 20, 1 << 31)
                payload = awareness_payload(client_id, 1, {"cursor": pad}, pad=pad)
                found.append(
                    Case(
                        f"awareness: non-minimal payload varint #{pad}",
                        codec.encode_awareness(payload),
                        client_id=client_id,
                    )
                )
        else:
            for label, frame in shape.variants().items():
                found.append(Case(f"{name}: {label}", frame))
    return found


def _same_variant(shape: Shape, label: str) -> bytes:
    return shape.variants()[label]


# -- pure: the codec agrees with the reference --------------------------------------------------------


def corpus(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    frames = valid_frames(rng, 150) + more_valid_frames(rng, 150) + [case.frame for case in cases(seed)]
    frames += [mutate(rng, rng.choice(frames)) for _ in range(3000)]
    return frames


def test_codec_accepts_exactly_what_the_reference_decoder_accepts():
    """On valid, re-encoded and mutated frames of every type, ``parse_frame`` accepts a frame iff the strict
    reference does, and reads the same message from it."""
    disagreements = []
    for frame in corpus(1):
        try:
            expected: tuple[str, bytes] | None = reference_decode(frame)
        except (Refused, UnicodeDecodeError):
            expected = None
        try:
            got: tuple[str, bytes] | None = codec_decode(frame)
        except ProtocolError:
            got = None
        if got != expected:
            disagreements.append((frame[:40].hex(), expected, got))
    assert not disagreements, disagreements[:5]


def test_an_accepted_frame_has_exactly_one_encoding():
    """Whatever ``parse_frame`` accepts re-encodes to the very same bytes: no two encodings of one message
    exist, so nothing that relays or inspects an accepted frame can read it differently."""
    accepted = 0
    for frame in corpus(2):
        try:
            message = codec.parse_frame(frame)
        except ProtocolError:
            continue
        accepted += 1
        assert codec.encode_message(message) == frame
    assert accepted > 300


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32 - 1, 2**53, 2**64 - 1])
def test_non_minimal_varints_are_malformed(value):
    """Every padded encoding of a varint is refused (close 1002); the minimal one reads back."""
    assert codec.Reader(var(value)).var_uint() == value
    for extra in range(1, 10 - len(var(value)) + 1):
        with pytest.raises(MalformedFrame, match="non-minimal"):
            codec.Reader(var(value, extra)).var_uint()


def test_varints_over_64_bits_are_malformed():
    """A 10-byte varint whose value needs more than 64 bits is refused."""
    with pytest.raises(MalformedFrame, match="64 bits"):
        codec.Reader(b"\xff" * 9 + b"\x02").var_uint()


# -- over real sockets: the server's decision is the parsed message's ----------------------------------


def expected_outcome(frame: bytes, role: str) -> str:
    """What the server must do with ``frame`` from a socket with ``role`` (viewer presence not relayed)."""
    try:
        name, _ = reference_decode(frame)
    except (Refused, UnicodeDecodeError):
        return "close 1002"
    if name in ("update", "step2"):
        return "apply" if role == "editor" else "deny"
    if name == "awareness":
        return "relay" if role == "editor" else "ignore"
    if name in ("step1", "query", "event"):
        return "answer"
    return "ignore"  # a client's "permission denied" is noise


def token(canvas: str, role: str, user: str) -> str:
    return mint_token(SECRET, canvas=canvas, role=role, user=user, ttl=600)


async def settle(client: WireClient) -> None:
    """Every frame sent so far is handled: the server answered a query-awareness sent after them
    (it answers in order), or closed the socket."""

    def awareness_frames() -> int:
        return sum(1 for frame in client.frames if frame[:1] == b"\x01")

    seen = awareness_frames()
    try:
        await client.ws.send(codec.encode_query_awareness())
    except websockets.ConnectionClosed:
        pass
    await client.wait(lambda: client.closed or awareness_frames() > seen, 10, "an answer or a close")


@pytest.mark.parametrize("role", ["viewer", "editor"])
async def test_server_decides_every_reencoded_message_by_what_it_parses(server_factory, role):
    """Each message type in each re-encoding, from a viewer and from an editor: the server's decision is
    the one the reference decoder's message calls for; a viewer changes neither state nor presence."""
    server = await server_factory(auth_secret=SECRET, **UNLIMITED)
    canvas = f"canon-{role}"
    watcher = await WireClient.connect(server, canvas, token=token(canvas, "editor", "watcher"), sync=True)
    await watcher.barrier()
    initial_state = watcher.doc.get_state()
    mismatches = []
    for case in cases(7):
        expected = expected_outcome(case.frame, role)
        got = await observe_case(server, canvas, role, case, watcher)
        if got != expected:
            mismatches.append((case.label, expected, got))
    assert not mismatches, mismatches
    if role == "viewer":
        assert watcher.doc.get_state() == initial_state
        assert watcher.awareness_states() == {}
    await server.hub.persister.flush(5)
    assert stored_elements(await server.hub.store.load(canvas)) == watcher.elements()
    await watcher.close()


async def observe_case(server, canvas: str, role: str, case: Case, watcher: WireClient) -> str:
    """Send ``case.frame`` from a fresh socket with ``role``; report what the server did with it.
    (An events-channel request is answered by a task: its response may come after ``settle``.)"""
    sender = await WireClient.connect(server, canvas, token=token(canvas, role, f"{role}-{case.label}"))
    await sender.wait(lambda: sender.events_of("access"), 5, "access event")
    before = len(sender.frames)
    await sender.ws.send(case.frame)
    await settle(sender)
    if case.label.startswith("event") and not sender.closed:
        try:
            await sender.wait(lambda: sender.closed or sender.events_of("response"), 5, "a response")
        except AssertionError:
            pass  # reported as "ignore" below
    await watcher.barrier()
    if sender.closed:
        return f"close {sender.close_code}"
    after = [frame for frame in sender.frames[before:] if frame[:1] != bytes((codec.MSG_EVENT,))]
    await sender.close()
    if case.key is not None and case.key in watcher.elements():
        return "apply"
    if case.client_id is not None and case.client_id in watcher.awareness_states():
        return "relay"
    if sender.events_of("denied"):
        return "deny"
    if len(after) > 1 or sender.events_of("response"):  # more than the answer to ``settle``
        return "answer"
    return "ignore"


def stored_elements(loaded) -> dict[str, Any]:
    """The elements a canvas's stored snapshot and log replay to (``{}`` if nothing was stored)."""
    doc = Doc()
    if loaded is None:
        return {}
    if loaded.snapshot:
        doc.apply_update(loaded.snapshot)
    for _, update in loaded.updates:
        doc.apply_update(update)
    return doc.get("elements", type=Map).to_py() or {}


@pytest.mark.parametrize("cap", ["document", "backlog"])
async def test_size_and_backlog_caps_hold_for_every_encoding(server_factory, cap):
    """A write over the canvas size cap (4413) or the storage backlog cap (1013) is refused when canonical,
    and closed as malformed (1002) in any other encoding: never applied, never stored."""
    limits = {"max_document_bytes": 20_000} if cap == "document" else {"backlog_max_bytes": 20_000}
    server = await server_factory(auth_secret=SECRET, **UNLIMITED, **limits)
    canvas = f"caps-{cap}"
    watcher = await WireClient.connect(server, canvas, token=token(canvas, "editor", "watcher"), sync=True)
    await watcher.barrier()
    expected_code = 4413 if cap == "document" else 1013
    for label in Shape("update", (0, 2), key_update("probe")).variants():
        key = f"big-{len(label)}-{label}"
        frame = Shape("update", (0, 2), key_update(key, "x" * 30_000)).variants()[label]
        for role in ("editor", "viewer"):
            sender = await WireClient.connect(server, canvas, token=token(canvas, role, f"{role}-{label}"))
            await sender.wait(lambda sender=sender: sender.events_of("access"), 5, "access event")
            await sender.ws.send(frame)
            await settle(sender)
            want = (expected_code if role == "editor" else None) if label == "canonical" else 1002
            assert sender.close_code == want, (label, role, sender.close_code)
            await sender.close()
        await watcher.barrier()
        assert key not in watcher.elements(), label
    await server.hub.persister.flush(5)
    assert stored_elements(await server.hub.store.load(canvas)) == {}
    await watcher.close()
