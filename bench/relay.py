"""Bare relay: the floor of the benchmark.

Forwards every binary frame to the other sockets of the same room (room = URL path) and does
no CRDT work at all: no document, no decoding beyond the first two bytes.

One concession to stock y-websocket clients, which only report "synced" after receiving sync
step 2: a client's sync step 1 (frame starting 00 00) is answered with an empty step 2
(00 01 02 00 00 - an empty Yjs update is the two bytes 00 00) and is *not* forwarded, because
forwarding it would make every peer answer with its full state to the whole room. Late joiners
therefore get no history; the benchmark connects every client before any edit, so this does
not matter there.

A second one for awareness: a stock y-websocket client re-broadcasts every remote awareness
change it applies, so a blind relay turns each cursor move in a room of C clients into about
C x C frames (the receivers drop the stale copies). Real servers suppress those copies by
comparing awareness clocks; the relay instead forwards an awareness frame only when it carries
exactly one state, that of the client that owns the connection (learned from the connection's
first awareness frame, which the provider sends on open). Parsing those three varuints is all
the protocol work the relay does. --blind turns this off.

Permessage-deflate is off by default (the floor does the least work); --deflate turns it on.

    python bench/relay.py --host 127.0.0.1 --port 8765 [--deflate]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, broadcast, serve

EMPTY_STEP2 = b"\x00\x01\x02\x00\x00"
rooms: dict[str, set[ServerConnection]] = {}
BLIND = False


def varuints(buf: bytes, count: int) -> list[int]:
    """The first `count` varuints of buf (7-bit little-endian groups); [] if malformed."""
    out, pos = [], 0
    for _ in range(count):
        value = shift = 0
        while True:
            if pos >= len(buf) or shift > 63:
                return []
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out.append(value)
    return out


async def handler(ws: ServerConnection) -> None:
    room = ws.request.path if ws.request is not None else "/"
    peers = rooms.setdefault(room, set())
    peers.add(ws)
    owner = None  # the client id whose awareness this connection carries
    try:
        async for frame in ws:
            if isinstance(frame, str):
                continue  # the y-websocket protocol is binary only
            if frame[:2] == b"\x00\x00":
                await ws.send(EMPTY_STEP2)
                continue
            if frame[:1] == b"\x01" and not BLIND:
                # [1, varuint length, varuint n_states, varuint client_id, ...]
                head = varuints(frame[1:], 3)
                if len(head) < 3 or head[1] != 1:
                    continue
                if owner is None:
                    owner = head[2]
                elif head[2] != owner:
                    continue  # a re-broadcast copy of another client's state
            broadcast([p for p in peers if p is not ws], frame)
    finally:
        peers.discard(ws)
        if not peers:
            rooms.pop(room, None)


async def main(host: str, port: int, deflate: bool) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handler,
        host,
        port,
        compression="deflate" if deflate else None,
        max_size=1 << 20,
        backlog=4096,  # 2,000 clients may connect within a second
    ):
        await stop


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate")
    ap.add_argument("--blind", action="store_true", help="forward re-broadcast awareness copies too")
    args = ap.parse_args()
    BLIND = args.blind
    asyncio.run(main(args.host, args.port, args.deflate))
