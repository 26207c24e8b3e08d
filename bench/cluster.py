"""Multi-process shape: N `canvashub serve` processes sharing Redis and PostgreSQL, each room's
clients spread over all of them, so most deliveries cross processes.

    .venv/bin/python bench/cluster.py                      # 3 processes, 10 rooms x 30 clients, 1 upd/s
    .venv/bin/python bench/cluster.py --processes 1        # the same load on one process, for comparison

Prints one JSON line: the load generator's result (latency from an edit until every other client
of the room applied it, p50/p99; delivered updates per second) plus the processes' CPU and RSS
and their pub/sub counters. Needs Redis at --redis-url and PostgreSQL at --database-url (a schema
is created for the run and dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN = BENCH / "loadgen"
sys.path.insert(0, str(BENCH))

from run import NO_PACING, free_port, prepare_loadgen, read_tree, spawn, stop, wait_accepting  # noqa: E402


def pg(dsn: str, statement: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--clients", type=int, default=30, help="per room, spread over the processes")
    parser.add_argument("--rate", type=float, default=1.0, help="updates per second per client")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = parser.parse_args()

    prepare_loadgen()
    tag = secrets.token_hex(4)
    schema = f"bench_cluster_{tag}"
    pg(args.database_url, f'CREATE SCHEMA "{schema}"')
    dsn = f"{args.database_url}{'&' if '?' in args.database_url else '?'}search_path={schema}"
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "REDIS_URL": args.redis_url,
        "CANVASHUB_REDIS_PREFIX": f"bench-{tag}:",
        "CANVASHUB_LOG_LEVEL": "warning",
        **NO_PACING,  # all load generator sockets share 127.0.0.1
    }
    cli = str(ROOT / ".venv" / "bin" / "canvashub")
    servers: list[tuple[subprocess.Popen, int]] = []
    try:
        for _ in range(args.processes):
            port = free_port()
            proc = spawn([cli, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=str(ROOT))
            servers.append((proc, port))
        for proc, port in servers:
            if not wait_accepting(port, proc):
                raise SystemExit(f"canvashub on port {port} did not start")
        urls = ",".join(f"ws://127.0.0.1:{port}/ws/{{room}}" for _, port in servers)
        argv = [
            shutil.which("node") or "node",
            str(LOADGEN / "loadgen.mjs"),
            "--room-url",
            urls,
            "--rooms",
            str(args.rooms),
            "--clients",
            str(args.clients),
            "--rate",
            str(args.rate),
            "--duration",
            str(args.duration),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
            "--room-prefix",
            f"c{tag}",
        ]
        ticks_before = [read_tree(proc.pid)[0] for proc, _ in servers]
        started = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, cwd=str(LOADGEN))
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            sys.stderr.write(result.stderr[-4000:])
            raise SystemExit(f"loadgen failed ({result.returncode})")
        line = json.loads(result.stdout.strip().splitlines()[-1])
        hz = os.sysconf("SC_CLK_TCK")
        cpu = [
            round(100 * (read_tree(proc.pid)[0] - before) / hz / elapsed, 1)
            for (proc, _), before in zip(servers, ticks_before, strict=True)
        ]
        rss = [round(read_tree(proc.pid)[1] / 1024, 1) for proc, _ in servers]  # KB -> MB
        pubsub = []
        for _, port in servers:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                ready = json.loads(response.read())
            pubsub.append({k: ready["pubsub"].get(k) for k in ("messages_received", "dropped", "updates_taken_over")})
        print(
            json.dumps(
                {
                    "bench": "cluster",
                    "processes": args.processes,
                    "rooms": args.rooms,
                    "clients_per_room": args.clients,
                    "rate": args.rate,
                    **line,
                    "server_cpu_pct": cpu,
                    "server_rss_mb": rss,
                    "pubsub": pubsub,
                }
            )
        )
    finally:
        for proc, _ in servers:
            stop(proc)
        pg(args.database_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
