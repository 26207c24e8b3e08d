"""Scale-out acceptance: three `canvashub serve` processes sharing Redis and Postgres, stock clients.

Redis here is a redis-server of this test's own (on a free port), so it can really be stopped and
restarted; Postgres is a fresh schema on the test database.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from canvashub.storage.postgres import PostgresStore

from .js_client import JsClient
from .proxy import LoadBalancer
from .support import free_port, skip_or_fail

pytestmark = pytest.mark.timeout(180)


class RedisProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.from_url(self.url)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if await client.ping():
                        return
                except (OSError, aioredis.ConnectionError):
                    if time.monotonic() > deadline:
                        raise AssertionError("redis-server did not start") from None
                await asyncio.sleep(0.05)  # poll interval: waiting for PING, bounded by the deadline
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def redis_process() -> AsyncIterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (Debian package redis-server)")
    server = RedisProcess()
    await server.start()
    yield server
    await server.stop()


async def start_cluster(
    process_server_factory, postgres_backend, redis_process, count: int = 3, **env: str
) -> list[Any]:
    base = {
        "DATABASE_URL": postgres_backend.database_url,
        "REDIS_URL": redis_process.url,
        "CANVASHUB_LOG_LEVEL": "warning",
        "CANVASHUB_JOB_WATCH_INTERVAL": "0.05",
        "CANVASHUB_JOB_POLL_INTERVAL": "0.05",
        "CANVASHUB_PATTERN_STEP_DELAY": "0.05",
        **env,
    }
    return list(await asyncio.gather(*(process_server_factory(base) for _ in range(count))))


async def converged(clients: list[JsClient], timeout: float, what: str) -> dict[str, Any]:
    """Wait until every client holds the same elements; return them."""
    deadline = time.monotonic() + timeout
    while True:
        states = [await client.read(digest=True) for client in clients]
        elements = [state["elements"] for state in states]
        if all(e == elements[0] for e in elements):
            return elements[0]
        if time.monotonic() > deadline:
            sizes = [len(e) for e in elements]
            raise AssertionError(f"{what}: clients did not converge in {timeout}s (element counts {sizes})")
        await asyncio.sleep(0.05)  # poll interval of a wait bounded by its deadline


async def test_three_processes_converge_share_presence_and_job_events(
    process_server_factory, postgres_backend, redis_process
):
    """Three processes on one Redis and Postgres: stock clients converge, share presence and see every job event."""
    a, b, c = await start_cluster(process_server_factory, postgres_backend, redis_process)
    clients = [
        await JsClient.start(f"ws://127.0.0.1:{server.port}/ws", "shared", name=f"{name}{i}", events=True)
        for server, name in ((a, "a"), (b, "b"), (c, "c"))
        for i in range(2)
    ]
    try:
        for client in clients:
            await client.wait_event("synced")
        # Concurrent edits through all three processes.
        await asyncio.gather(
            *(
                client.call(
                    "batch",
                    ops=[{"op": "set", "key": f"{client.name}-{k}", "fields": {"k": k}} for k in range(10)],
                    transact=False,
                )
                for client in clients
            )
        )
        elements = await converged(clients, 10, "concurrent edits")
        assert len(elements) == 60
        # Presence crosses processes (the name shown is what the client set: open mode).
        await clients[0].call("awareness", state={"user": {"name": "Ann on A"}, "cursor": {"x": 1, "y": 2}})
        for watcher in (clients[3], clients[5]):
            await watcher.wait_event(
                "awareness",
                where=lambda e: any((s or {}).get("user", {}).get("name") == "Ann on A" for s in e["states"].values()),
            )
        # A job started through A notifies clients on B and C, and its image reaches them.
        async with httpx.AsyncClient(base_url=a.http_url) as http:
            created = await http.post("/api/canvases/shared/generations", json={"generator": "pattern", "prompt": "x"})
            assert created.status_code == 202
            job_id = created.json()["job"]["id"]
        # Every process follows jobs through the store (its watcher polls every 50 ms here), so a job
        # queued and started within one poll shows up as `started` first on B and C.
        for client in clients[2:]:
            for statuses in (("queued", "started", "progress"), ("succeeded",)):
                await client.wait_event(
                    "canvashub",
                    timeout=20,
                    where=lambda e, s=statuses: (
                        e["payload"].get("type") == "generation"
                        and e["payload"]["job"]["id"] == job_id
                        and e["payload"]["status"] in s
                    ),
                )
        elements = await converged(clients, 10, "generation result")
        assert f"gen-{job_id}" in elements
        for client in clients:
            assert client.errors() == []
    finally:
        for client in clients:
            await client.close()


async def test_killed_process_clients_move_on_and_acknowledged_edits_survive(
    process_server_factory, postgres_backend, redis_process
):
    """A process killed with SIGKILL: its clients move on, edits converge and every acknowledged one is in Postgres."""
    servers = await start_cluster(process_server_factory, postgres_backend, redis_process)
    balancer = LoadBalancer([s.port for s in servers])
    await balancer.start()
    clients = [
        await JsClient.start(f"ws://127.0.0.1:{balancer.port}/ws", "crash", name=f"c{i}", events=True) for i in range(6)
    ]
    try:
        for client in clients:
            await client.wait_event("synced")

        async def edit(client: JsClient, start: int, count: int) -> None:
            for k in range(start, start + count):
                await client.call("set", key=f"{client.name}-{k}", fields={"k": k})
                await asyncio.sleep(0.01)  # pacing: a user's edit rate, not a wait for a condition

        await asyncio.gather(*(edit(client, 0, 20) for client in clients))
        victim = servers[1]
        victim.proc.send_signal(signal.SIGKILL)
        await victim.proc.wait()
        await asyncio.gather(*(edit(client, 20, 20) for client in clients))
        elements = await converged(clients, 20, "after the kill")
        assert len(elements) == 6 * 40
        # Every edit a client was told is durable is in Postgres.
        durable: dict[int, int] = {}
        for client in clients:
            for event in client.events:
                payload = event.get("payload") or {}
                if event["event"] == "canvashub" and payload.get("type") == "save" and payload["status"] == "saved":
                    for client_id, clock in payload["clock"].items():
                        durable[int(client_id)] = max(durable.get(int(client_id), 0), clock)
        assert durable, "no save events"
        survivors = [s for s in servers if s is not victim]
        async with httpx.AsyncClient() as http:
            for server in survivors:
                assert (await http.get(f"{server.http_url}/readyz")).status_code == 200
        store = PostgresStore(postgres_backend.database_url, pool_size=1, acquire_timeout=5)
        await store.open()
        try:
            from canvashub.crdt.update import decode_state_vector
            from canvashub.server.compaction import replay

            loaded = await store.load("crash")
            stored_sv = decode_state_vector(replay(loaded, "crash", strict=True).get_state())
        finally:
            await store.close()
        missing = {cid: clock for cid, clock in durable.items() if stored_sv.get(cid, 0) < clock}
        assert not missing, f"acknowledged clocks not in Postgres: {missing}"
        assert all(s.proc.returncode is None for s in survivors)
    finally:
        for client in clients:
            await client.close()
        await balancer.close()


async def test_redis_outage_then_everyone_converges(process_server_factory, postgres_backend, redis_process):
    """During a 10 s Redis outage each process serves its own clients; within 10 s of its return all converge."""
    servers = await start_cluster(process_server_factory, postgres_backend, redis_process)
    clients = [
        await JsClient.start(f"ws://127.0.0.1:{s.port}/ws", "outage", name=f"c{i}") for i, s in enumerate(servers)
    ]
    try:
        for client in clients:
            await client.wait_event("synced")
        for client in clients:
            await client.call("set", key=f"{client.name}-before", fields={"v": 1})
        await converged(clients, 10, "before the outage")
        await redis_process.stop()
        outage_started = time.monotonic()
        async with httpx.AsyncClient() as http:

            async def unhealthy() -> bool:
                states = [(await http.get(f"{s.http_url}/readyz")).json()["pubsub"]["healthy"] for s in servers]
                return not any(states)

            deadline = time.monotonic() + 10
            while not await unhealthy():
                assert time.monotonic() < deadline, "processes did not notice Redis going away"
                await asyncio.sleep(0.1)  # poll interval of a wait bounded by its deadline
            # Each process keeps serving its own clients while Redis is down.
            for client in clients:
                for k in range(5):
                    await client.call("set", key=f"{client.name}-during-{k}", fields={"v": k})
            for client in clients:
                state = await client.read()
                assert all(f"{client.name}-during-{k}" in state["elements"] for k in range(5))
            await asyncio.sleep(max(0.0, 10 - (time.monotonic() - outage_started)))  # the outage lasts 10 s
            await redis_process.start()
            back = time.monotonic()
            elements = await converged(clients, 10, "after Redis returned")
            assert len(elements) == 3 + 3 * 5
            assert time.monotonic() - back < 10
            for server in servers:
                assert server.proc.returncode is None
                ready = (await http.get(f"{server.http_url}/readyz")).json()
                assert ready["pubsub"]["healthy"] is True and ready["pubsub"]["reconnects"] >= 1
    finally:
        for client in clients:
            await client.close()
