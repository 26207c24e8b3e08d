"""Loop stalls on a large canvas: compactions, joins, cold load and cold export (issue 14, item 5).

Usage: .venv/bin/python bench/large_canvas.py [--elements 20000] [--seconds 20] [--tree LABEL=DIR ...]

For each server (this checkout, then each ``--tree`` checkout's own ``.venv/bin/canvashub``): seed a
canvas of ``--elements`` element maps (one Yjs update) straight into a fresh SQLite store, start
``canvashub serve`` with ``CANVASHUB_COMPACT_EVERY_UPDATES=100``, connect 10 editors (pycrdt) making
5 edits/s each for ``--seconds``, probe ``/healthz`` every 10 ms from a process of its own (its latency
is the loop stall seen by a client), and at mid-window open 10 more sockets within 1 s (time until each gets its sync step 2).
Then restart the server: a cold JSON export (GET the canvas, not loaded), then a cold join.
Prints ONE JSON line: per server, stall (healthz) max/p99, edit latency p50/p99/max, join times,
compactions, cold export and cold load times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import websockets
from pycrdt import Doc, Map

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import HOST, ROOT, free_port, log, spawn, stop, wait_accepting  # noqa: E402

from canvashub.crdt.codec import SyncStep2, SyncUpdate, encode_sync_step1, encode_update, parse_frame  # noqa: E402  # noqa: E402, I001
from canvashub.storage.sqlite import SQLiteStore  # noqa: E402

CANVAS = "large-canvas"
STAMP = re.compile(rb"t(\d{19})x")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def seed_update(count: int) -> bytes:
    doc: Doc = Doc()
    elements = doc.get("elements", type=Map)
    for start in range(0, count, 500):  # bulk inserts are quadratic in one transaction (NOTES)
        with doc.transaction():
            for i in range(start, min(count, start + 500)):
                elements[f"e{i}"] = Map(
                    {"type": "rect", "x": float(i), "y": 2.0, "w": 30.0, "h": 40.0, "fill": "#aabbcc", "z": float(i)}
                )
    return doc.get_update()


async def seed_store(data_dir: Path, update: bytes) -> None:
    store = SQLiteStore(str(data_dir / "canvashub.sqlite3"))
    await store.open()
    await store.append_updates([(CANVAS, update)])
    await store.close()


async def healthz_probe(port: int, latencies: list[float], stop_at: asyncio.Event) -> None:
    """GET /healthz every 10 ms on one kept-alive connection; the answer's latency (ms)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    while not stop_at.is_set():
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        latencies.append((time.perf_counter() - started) * 1000)
        try:
            await asyncio.wait_for(stop_at.wait(), 0.010)  # the probe period
        except TimeoutError:
            pass
    writer.close()


class ProbeProcess:
    """``healthz_probe`` in a process of its own (``--probe PORT``): the bench's own loop (20 clients,
    joiners decoding 3.5 MB frames) then cannot delay the probe and pass for a server stall. Probes
    until its stdin closes, then prints its latencies as one JSON list."""

    def __init__(self, port: int) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--probe", str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def finish(self) -> list[float]:
        out, _ = self.proc.communicate(b"", timeout=30)
        return json.loads(out)


async def probe_until_stdin_closes(port: int) -> list[float]:
    latencies: list[float] = []
    stop_at = asyncio.Event()
    probe = asyncio.create_task(healthz_probe(port, latencies, stop_at))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    stop_at.set()
    await probe
    return latencies


async def http_get(port: int, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: application/json\r\nConnection: close\r\n\r\n".encode()
    )
    body = await reader.read()
    writer.close()
    return (time.perf_counter() - started) * 1000, len(body)


async def join(url: str) -> tuple[float, websockets.ClientConnection]:
    """Open a socket, send an empty sync step 1; ms until the server's sync step 2 arrived."""
    started = time.perf_counter()
    ws = await websockets.connect(url, max_size=None, compression=None)
    await ws.send(encode_sync_step1(b"\x00"))
    while True:
        frame = await ws.recv()
        if isinstance(parse_frame(frame), SyncStep2):  # type: ignore[arg-type]
            return (time.perf_counter() - started) * 1000, ws


async def editor(url: str, n: int, rate: float, stop_at: asyncio.Event, delays: list[float]) -> int:
    """Joins, then sets a new key ``t<ns>x<n>-<k>`` every 1/rate s; records others' edits' delays."""
    _, ws = await join(url)
    doc: Doc = Doc()
    elements = doc.get("elements", type=Map)

    async def receive() -> None:
        async for frame in ws:
            message = parse_frame(frame)  # type: ignore[arg-type]
            if isinstance(message, SyncUpdate):
                now = time.time_ns()
                for stamp in STAMP.findall(message.update):
                    delays.append((now - int(stamp)) / 1e6)

    reader = asyncio.get_running_loop().create_task(receive())
    sent = 0
    while not stop_at.is_set():
        before = doc.get_state()
        elements[f"t{time.time_ns()}x{n}-{sent}"] = float(sent)
        await ws.send(encode_update(doc.get_update(before)))
        sent += 1
        try:
            await asyncio.wait_for(stop_at.wait(), 1 / rate)  # the edit rate
        except TimeoutError:
            pass
    reader.cancel()
    await ws.close()
    return sent


def serve(exe: Path, data_dir: Path, port: int):
    env = dict(
        os.environ,
        CANVASHUB_DATA_DIR=str(data_dir),
        CANVASHUB_COMPACT_EVERY_UPDATES="100",
        CANVASHUB_LOG_LEVEL="warning",
    )
    proc = spawn(
        [str(exe), "serve", "--host", HOST, "--port", str(port)],
        env=env,
        stdout=open(data_dir / "server.log", "ab"),
        stderr=subprocess_stdout(),
    )
    if not wait_accepting(port, proc):
        raise SystemExit(f"{exe} did not start (see {data_dir}/server.log)")
    return proc


def subprocess_stdout() -> int:
    import subprocess

    return subprocess.STDOUT


async def metric(port: int, name: str) -> float | None:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    text = (await reader.read()).decode()
    writer.close()
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else None


async def run_server(label: str, exe: Path, seed: bytes, args: argparse.Namespace) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-large-{label}-"))
    await seed_store(data_dir, seed)
    port = free_port()
    url = f"ws://{HOST}:{port}/ws/{CANVAS}"
    proc = serve(exe, data_dir, port)
    try:
        stop_at = asyncio.Event()
        delays: list[float] = []
        health: list[float] = []
        first_load_ms, first = await join(url)  # loads the room (not measured in the window)
        editors = [asyncio.create_task(editor(url, n, 5.0, stop_at, delays)) for n in range(10)]
        probe = ProbeProcess(port)
        await asyncio.sleep(args.seconds / 2)  # the measurement window's first half
        joins = await asyncio.gather(*[delayed_join(url, i * 0.1) for i in range(10)])
        await asyncio.sleep(args.seconds / 2)
        stop_at.set()
        sent = sum(await asyncio.gather(*editors))
        health = probe.finish()
        compactions = await metric(port, "canvashub_compactions_total")
        for _, ws in joins:
            await ws.close()
        await first.close()
    finally:
        stop(proc)
    proc = serve(exe, data_dir, port)  # restart: nothing loaded
    try:
        probe = ProbeProcess(port)
        export_ms, export_bytes = await http_get(port, f"/api/canvases/{CANVAS}")
        cold_load_ms, ws = await join(url)
        cold_health = probe.finish()
        await ws.close()
    finally:
        stop(proc)
    join_ms = sorted(ms for ms, _ in joins)
    return {
        "server": label,
        "edits_sent": sent,
        "edits_seen": len(delays),
        "compactions": compactions,
        "stall_ms": {"max": pct(health, 1.0), "p99": pct(health, 0.99), "samples": len(health)},
        "edit_ms": {"p50": pct(delays, 0.5), "p99": pct(delays, 0.99), "max": pct(delays, 1.0)},
        "join_ms": {"each": [round(ms, 1) for ms in join_ms], "max": round(join_ms[-1], 1)},
        "first_load_ms": round(first_load_ms, 1),
        "cold_export_ms": round(export_ms, 1),
        "cold_export_bytes": export_bytes,
        "cold_load_ms": round(cold_load_ms, 1),
        "cold_stall_ms": {"max": pct(cold_health, 1.0), "samples": len(cold_health)},
    }


async def delayed_join(url: str, delay: float) -> tuple[float, websockets.ClientConnection]:
    await asyncio.sleep(delay)  # ten joins spread over one second
    return await join(url)


async def main_async(args: argparse.Namespace) -> dict:
    seed = seed_update(args.elements)
    log(f"seed: {args.elements} elements, {len(seed)} bytes")
    trees = [("canvashub", ROOT)] + [(label, Path(tree)) for label, _, tree in (t.partition("=") for t in args.tree)]
    results = []
    for label, tree in trees:
        log(f"running {label} ({tree})")
        results.append(await run_server(label, tree.resolve() / ".venv" / "bin" / "canvashub", seed, args))
        log(json.dumps(results[-1]))
    return {
        "bench": "large_canvas",
        "elements": args.elements,
        "seed_bytes": len(seed),
        "seconds": args.seconds,
        "results": results,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--elements", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window with 10 editors")
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR", help="also run another checkout")
    ap.add_argument("--probe", type=int, default=0, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(asyncio.run(probe_until_stdin_closes(args.probe))), flush=True)
        return 0
    print(json.dumps(asyncio.run(main_async(args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
