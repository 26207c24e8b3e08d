from __future__ import annotations

from typing import AsyncIterator

import pytest

from .support import LiveServer, ProcessServer, start_process_server, start_server


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


@pytest.fixture
async def live_server(server_factory) -> LiveServer:
    """One live server with default settings."""
    return await server_factory()


@pytest.fixture
async def process_server_factory() -> AsyncIterator:
    """Start ``canvashub serve`` child processes; all stopped at teardown."""
    started: list[ProcessServer] = []

    async def start(env: dict[str, str] | None = None, *args: str) -> ProcessServer:
        server = await start_process_server(env, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()
