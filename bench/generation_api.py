"""How fast `POST /api/canvases/{id}/generations` answers, while generations run in the background.

    /work/main/.venv/bin/python bench/generation_api.py [--stores sqlite,postgres] [--requests 200]
        [--concurrency 4] [--duration 2] [--database-url postgresql://postgres@127.0.0.1:5432/test]

For each store it starts `canvashub serve` (SQLite in a temporary directory; PostgreSQL in a
throwaway schema), then sends `--requests` POSTs of `pattern` jobs lasting `--duration` seconds,
`--concurrency` at a time, while the server's in-process workers (2) run them, and reports the
POST latency (client-side, loopback) and how many jobs succeeded by the end. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def run_store(store: str, args: argparse.Namespace) -> dict:
    workdir = tempfile.mkdtemp(prefix="bench-gen-")
    env = {**os.environ, "CANVASHUB_LOG_LEVEL": "warning", "CANVASHUB_DATA_DIR": workdir, "DATABASE_URL": ""}
    schema = None
    if store == "postgres":
        schema = f"bench_gen_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        await admin.close()
        env["DATABASE_URL"] = f"{args.database_url}?search_path={schema}"
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv/bin/canvashub"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=env,
        cwd=workdir,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for _ in range(200):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)  # poll interval: waiting for /readyz, at most 200 tries
            latencies: list[float] = []
            ids: list[str] = []
            queue = list(range(args.requests))

            async def client() -> None:
                while queue:
                    i = queue.pop()
                    body = {"generator": "pattern", "prompt": f"bench {i}", "params": {"duration": args.duration}}
                    started = time.perf_counter()
                    response = await http.post(f"/api/canvases/bench{i % 10}/generations", json=body)
                    latencies.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["job"]["id"])

            began = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(args.concurrency)))
            post_window = time.perf_counter() - began
            statuses = [(await http.get(f"/api/generations/{job_id}")).json()["status"] for job_id in ids]
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        if schema:
            admin = await asyncpg.connect(args.database_url)
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await admin.close()
    return {
        "store": store,
        "requests": len(latencies),
        "concurrency": args.concurrency,
        "post_ms": {
            "p50": pct(latencies, 0.5),
            "p99": pct(latencies, 0.99),
            "max": round(max(latencies), 2),
            "mean": round(statistics.fmean(latencies), 2),
        },
        "post_window_s": round(post_window, 2),
        "jobs_by_status_after": {s: statuses.count(s) for s in sorted(set(statuses))},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = parser.parse_args()
    results = []
    for store in args.stores.split(","):
        print(f"[generation_api] {store}", file=sys.stderr)
        results.append(await run_store(store, args))
    print(json.dumps({"bench": "generation_api", "generator_duration_s": args.duration, "stores": results}))


if __name__ == "__main__":
    asyncio.run(main())
