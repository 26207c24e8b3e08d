"""Seeded generators of valid, random and mutated y-websocket frames for fuzzing."""

from __future__ import annotations

import random

import orjson
from pycrdt import Doc, Map, Text

from crdt import codec
from crdt.awareness import AwarenessEntry, encode_awareness_payload


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
            elements[f"e{rng.randrange(50)}"] = Map({"x": rng.random() * 100, "fill": "#" + "%06x" % rng.randrange(1 << 24)})
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
