from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from .proxy import TcpProxy
from .support import (
    PG_DSN,
    LiveServer,
    ProcessServer,
    StorageBackend,
    postgres_schema,
    start_process_server,
    start_server,
    with_search_path,
)


@pytest.fixture
async def server_factory() -> AsyncIterator:
    """Start live servers (uvicorn on port 0, in this event loop); all stopped at teardown."""
    started: list[LiveServer] = []

    async def start(**overrides) -> LiveServer:
        live = await start_server(**overrides)
        started.append(live)
        return live

    yield start
    for live in started:
        if not live.task.done():
            await live.stop()
        if live.owned_dir:
            shutil.rmtree(live.owned_dir, ignore_errors=True)


@pytest.fixture
async def live_server(server_factory) -> LiveServer:
    """One live server with default settings."""
    return await server_factory()


@pytest.fixture
async def process_server_factory() -> AsyncIterator:
    """Start ``canvashub serve`` child processes; all stopped at teardown."""
    started: list[ProcessServer] = []

    async def start(
        env: dict[str, str] | None = None, *args: str, log_path: str | None = None, port: int | None = None
    ) -> ProcessServer:
        server = await start_process_server(env, *args, log_path=log_path, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()


async def _postgres_backend() -> AsyncIterator[StorageBackend]:
    async with postgres_schema() as (_, schema):
        yield StorageBackend("postgres", database_url=with_search_path(PG_DSN, schema), schema=schema)


@pytest.fixture(params=["sqlite", "postgres"])
async def storage_backend(request, tmp_path) -> AsyncIterator[StorageBackend]:
    """Each test runs once on an embedded SQLite directory and once on a fresh Postgres schema."""
    if request.param == "sqlite":
        yield StorageBackend("sqlite", data_dir=str(tmp_path / "data"))
        return
    async for backend in _postgres_backend():
        yield backend


@pytest.fixture
async def postgres_backend() -> AsyncIterator[StorageBackend]:
    """A fresh Postgres schema (for tests that only make sense on Postgres, e.g. outages)."""
    async for backend in _postgres_backend():
        yield backend


@pytest.fixture
async def pg_proxy(postgres_backend) -> Any:
    """The Postgres schema behind a TCP proxy the test can cut or stall: (proxy, DSN through it, backend)."""
    host_port = PG_DSN.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    proxied = PG_DSN.replace(host_port, f"127.0.0.1:{proxy.port}")
    try:
        yield proxy, with_search_path(proxied, postgres_backend.schema), postgres_backend
    finally:
        await proxy.close()
