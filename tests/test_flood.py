"""Connection floods: correctness only (speed is measured by bench/flood.py, not here).

Many short-lived hostile sockets from one address come and go while honest
clients from the *same* address keep joining and an honest room keeps
working; hostile-connection events are logged once and then summarised.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random

import pytest

from canvashub.server.limits import OffenceLog

from . import raw_ws
from .healthy_room import HealthyRoom

FLOOD_SOCKETS = 210  # 30 of each kind
FLOOD_CONCURRENCY = 20
FRAME_CAP = 64 * 1024


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_offence_log_writes_the_first_line_per_key_then_one_summary():
    """Repeats of one (event, address, detail) within a period are counted and summarised once."""
    now = [0.0]
    offences = OffenceLog(period=10.0, max_keys=3, clock=lambda: now[0])
    lines = Lines()
    logger = logging.getLogger("canvashub")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for _ in range(5):
            offences.record(logging.WARNING, "ws_protocol_error", "10.0.0.1", 1002, code=1002)
        offences.record(logging.WARNING, "ws_protocol_error", "10.0.0.1", 1009, code=1009)
        offences.record(logging.WARNING, "ws_protocol_error", "10.0.0.2", 1002, code=1002)
        offences.record(logging.WARNING, "limit_exceeded", "10.0.0.3", "origin", limit="origin")  # past max_keys
        offences.flush_due()  # not due yet
        assert [(r.getMessage(), r.fields["ip"]) for r in lines.records] == [
            ("ws_protocol_error", "10.0.0.1"),
            ("ws_protocol_error", "10.0.0.1"),
            ("ws_protocol_error", "10.0.0.2"),
        ]
        now[0] = 10.0
        offences.flush_due()
        summary = lines.records[-1]
        assert summary.getMessage() == "offences_suppressed" and summary.fields["total"] == 5
        assert summary.fields["counts"] == [
            {"event": "ws_protocol_error", "ip": "10.0.0.1", "detail": "1002", "count": 4},
            {"event": "limit_exceeded", "ip": "10.0.0.3", "detail": "origin", "count": 1},
        ]
        offences.record(logging.WARNING, "ws_protocol_error", "10.0.0.1", 1002, code=1002)  # a new period
        assert lines.records[-1].getMessage() == "ws_protocol_error"
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


async def flood(port: int, canvas_id: str, sockets: int = FLOOD_SOCKETS) -> collections.Counter:
    """``sockets`` hostile sockets, ``FLOOD_CONCURRENCY`` at a time: outcome counts by (kind, outcome)."""
    rng = random.Random(12)
    kinds = list(raw_ws.FLOOD_KINDS)
    upgrade = raw_ws.upgrade_request(port, canvas_id)
    wires = [(kinds[i % len(kinds)], raw_ws.flood_wire(kinds[i % len(kinds)], rng, FRAME_CAP)) for i in range(sockets)]
    outcomes: collections.Counter = collections.Counter()
    pending = iter(wires)

    async def worker() -> None:
        for kind, wire in pending:
            outcomes[(kind, await raw_ws.attack("127.0.0.1", port, upgrade, wire))] += 1

    await asyncio.gather(*(worker() for _ in range(FLOOD_CONCURRENCY)))
    return outcomes


@pytest.mark.parametrize("per_ip_limit", [0, 1000])
async def test_honest_clients_behind_the_same_address_keep_joining_during_a_flood(server_factory, per_ip_limit):
    """With the per-IP limit off (the default) or high, a flood from 127.0.0.1 closes every hostile socket
    with the right code while honest clients from 127.0.0.1 keep joining and the honest room keeps working."""
    server = await server_factory(max_connections_per_ip=per_ip_limit, max_frame_bytes=FRAME_CAP)
    room = HealthyRoom(server, "honest", clients=3)
    await room.open()
    joins: list[int | str] = []
    done = asyncio.Event()

    async def joiner() -> None:
        while not done.is_set():
            try:
                ws = await server.connect("honest", open_timeout=10)
                first = await asyncio.wait_for(ws.recv(), 10)
                joins.append("synced" if first[:2] == b"\x00\x00" else "bad first frame")
                await ws.close()
            except Exception as exc:  # noqa: BLE001 - every failure is reported by the assertion below
                joins.append(repr(exc))

    samples: list[float] = []
    traffic = asyncio.create_task(room.run(samples, stop=done))
    join_task = asyncio.create_task(joiner())
    try:
        outcomes = await flood(server.port, "hostile")
    finally:
        done.set()
        await asyncio.wait_for(asyncio.gather(traffic, join_task), 30)
    wrong = {key: n for key, n in outcomes.items() if key[1] not in raw_ws.FLOOD_KINDS[key[0]]}
    assert not wrong, f"hostile sockets not closed as expected: {wrong}"
    assert sum(outcomes.values()) == FLOOD_SOCKETS
    assert joins and set(joins) == {"synced"}, collections.Counter(joins)
    assert samples, "the honest room carried no update during the flood"
    await room.run(samples, count=len(samples) + 10)  # and still does afterwards
    await room.close()


async def test_upgrades_from_one_address_are_paced_not_refused(server_factory):
    """Past its burst, an address's new sockets are admitted at the configured rate: a flood of them takes
    at least (count - burst) / rate seconds, every one is still served, and an honest join from the same
    address waits its turn and succeeds."""
    rate, burst, count = 20.0, 5, 45
    server = await server_factory(upgrade_rate_per_ip=rate, upgrade_burst_per_ip=burst, max_frame_bytes=FRAME_CAP)
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await flood(server.port, "paced", sockets=count)
    elapsed = loop.time() - started
    assert sum(outcomes.values()) == count
    wrong = {key: n for key, n in outcomes.items() if key[1] not in raw_ws.FLOOD_KINDS[key[0]]}
    assert not wrong, wrong
    assert elapsed >= (count - burst) / rate * 0.9, f"{count} upgrades in {elapsed:.2f} s: not paced"
    ws = await server.connect("honest", open_timeout=10)
    assert (await asyncio.wait_for(ws.recv(), 10))[:2] == b"\x00\x00"
    await ws.close()
