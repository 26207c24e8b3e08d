"""Seeded generators of valid, random and mutated y-websocket frames for fuzzing."""

from __future__ import annotations

import random

import orjson
from pycrdt import Doc, Map, Text

from canvashub.crdt import codec
from canvashub.crdt.awareness import AwarenessEntry, encode_awareness_payload


def valid_frames(rng: random.Random, count: int) -> list[bytes]:
    """Real sync, update, awareness and auth frames produced by pycrdt edits."""
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    elements = doc.get("elements", type=Map)
    text = doc.get("text", type=Text)
    frames: list[bytes] = []
    for i in range(count):
        kind = rng.randrange(6)
        if kind == 0:
            elements[f"e{rng.randrange(50)}"] = Map({"x": rng.random() * 100, "fill": f"#{rng.randrange(1 << 24):06x}"})
            frames.append(codec.encode_update(updates[-1]))
        elif kind == 1:
            text.insert(rng.randrange(len(text) + 1), "héllo"[: rng.randrange(1, 6)])
            frames.append(codec.encode_update(updates[-1]))
        elif kind == 2:
            frames.append(codec.encode_sync_step1(doc.get_state()))
        elif kind == 3:
            frames.append(codec.encode_sync_step2(doc.get_update()))
        elif kind == 4:
            state = orjson.dumps({"user": {"name": "Zoë ✏️", "color": "#fa0"}, "cursor": {"x": i, "y": -i}})
            entry = AwarenessEntry(rng.randrange(1, 1 << 32), i + 1, state)
            frames.append(codec.encode_awareness(encode_awareness_payload([entry])))
        else:
            frames.append(rng.choice([codec.encode_query_awareness(), codec.encode_auth_denied("nope")]))
    return frames


def random_frame(rng: random.Random) -> bytes:
    """Random bytes, biased to start with a real message type so parsing goes deep."""
    size = rng.choice([1, 2, 3, 5, 8, 16, 64, 300, 2000])
    body = bytearray(rng.randbytes(size))
    if rng.random() < 0.7:
        body[0] = rng.randrange(4)
    if len(body) > 1 and body[0] == 0 and rng.random() < 0.7:
        body[1] = rng.randrange(3)
    return bytes(body)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """One structural mutation of a valid frame: flips, truncation, splices, varint bombs."""
    data = bytearray(frame)
    choice = rng.randrange(8)
    if choice == 0 and data:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1 and len(data) > 1:
        del data[rng.randrange(1, len(data)) :]
    elif choice == 2:
        pos = rng.randrange(len(data) + 1)
        data[pos:pos] = rng.randbytes(rng.randrange(1, 8))
    elif choice == 3 and data:
        pos = rng.randrange(len(data))
        data[pos : pos + rng.randrange(1, 6)] = b""
    elif choice == 4:
        pos = rng.randrange(len(data) + 1)
        data[pos:pos] = b"\xff" * rng.randrange(1, 40)
    elif choice == 5 and len(data) > 3:
        data[rng.randrange(len(data))] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
    elif choice == 6:
        data += rng.randbytes(rng.randrange(1, 4))
    else:
        # Claim a huge count right after the framing header (client count / entry count).
        header = 3 if data[:1] == b"\x00" else 2
        data[header:header] = b"\xff\xff\xff\xff\x0f"
    return bytes(data)


# -- additions for the hostile-input run (tests/test_hostile_run.py) -------------------------------

from pycrdt import Array  # noqa: E402 - kept with the additions below

FRAME_KINDS = ("sync1", "sync2", "update", "awareness", "auth", "query")


def frame_kind(frame: bytes) -> str:
    """The message type of a frame from its first bytes: one of ``FRAME_KINDS``, else ``"other"``."""
    if frame[:2] == b"\x00\x00":
        return "sync1"
    if frame[:2] == b"\x00\x01":
        return "sync2"
    if frame[:2] == b"\x00\x02":
        return "update"
    if frame[:1] == b"\x01":
        return "awareness"
    if frame[:2] == b"\x02\x00":
        return "auth"
    if frame == b"\x03":
        return "query"
    return "other"


def more_valid_frames(rng: random.Random, count: int) -> list[bytes]:
    """Valid frames ``valid_frames`` does not make: deletes, arrays, nested edits, state vectors
    of several clients, multi-entry and removal (null) awareness updates, non-ASCII auth reasons."""
    peers = [Doc(client_id=rng.randrange(1, 1 << 32)) for _ in range(3)]
    shared = Doc()
    updates: list[bytes] = []
    shared.observe(lambda event: updates.append(event.update))
    for peer in peers:
        peer.get("elements", type=Map)
        peer.get("order", type=Array)
        peer.get("text", type=Text)
    frames: list[bytes] = []
    for i in range(count):
        kind = rng.randrange(7)
        peer = rng.choice(peers)
        if kind <= 2:  # an edit by one of several clients, relayed through ``shared``
            elements = peer.get("elements", type=Map)
            order, text = peer.get("order", type=Array), peer.get("text", type=Text)
            with peer.transaction():
                if kind == 0:
                    key = f"e{rng.randrange(20)}"
                    if key in elements and rng.random() < 0.5:
                        del elements[key]
                    else:
                        x = rng.randrange(-1000, 1000)  # drawn before the tags: the seeded sequence stays as it was
                        elements[key] = Map({"x": x, "tags": Array(["a", "ß"][: rng.randrange(3)])})
                elif kind == 1:
                    if len(order) and rng.random() < 0.4:
                        del order[rng.randrange(len(order))]
                    else:
                        order.insert(rng.randrange(len(order) + 1), f"id{i}")
                else:
                    if len(text) and rng.random() < 0.4:
                        start = rng.randrange(len(text))
                        del text[start : min(len(text), start + rng.randrange(1, 4))]
                    else:
                        # ASCII: deletes index by UTF-8 here
                        text.insert(rng.randrange(len(text) + 1), rng.choice(["ab", "\n", "xyz"]))
            before = shared.get_state()
            shared.apply_update(peer.get_update(before))
            if len(updates) and shared.get_state() != before:
                frames.append(
                    codec.encode_update(updates[-1])
                    if rng.random() < 0.7
                    else codec.encode_sync_step2(peer.get_update(before))
                )
        elif kind == 3:
            frames.append(codec.encode_sync_step1(shared.get_state()))
        elif kind == 4:
            frames.append(codec.encode_sync_step2(shared.get_update(rng.choice(peers).get_state())))
        elif kind == 5:
            entries = []
            for _ in range(rng.randrange(1, 4)):
                state = (
                    b"null"
                    if rng.random() < 0.3
                    else orjson.dumps(
                        {"user": {"name": rng.choice(["Ana", "Zoë", "李"]), "color": "#0af"}, "selection": [i, None]}
                    )
                )
                entries.append(AwarenessEntry(rng.randrange(1, 1 << 53), rng.randrange(0, 1 << 20), state))
            frames.append(codec.encode_awareness(encode_awareness_payload(entries)))
        else:
            frames.append(codec.encode_auth_denied(rng.choice(["", "nope", "accès refusé ✋"])))
    for peer in peers:  # cross-sync so later updates depend on others' structs
        peer.apply_update(shared.get_update(peer.get_state()))
    return frames
