"""Test helpers: live servers on port 0, waiting on conditions with deadlines (never bare sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import websockets

from canvashub.server.app import create_app
from canvashub.server.cli import DrainingServer, uvicorn_config
from canvashub.server.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """A missing service skips on a developer machine and fails in CI."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)  # poll interval of a wait bounded by its deadline


class ServerAddress:
    """URLs of a server listening on 127.0.0.1:``port``."""

    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, canvas_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{canvas_id}"

    async def connect(self, canvas_id: str, **kwargs: Any) -> websockets.ClientConnection:
        kwargs.setdefault("max_size", None)
        return await websockets.connect(self.ws_url(canvas_id), **kwargs)


@dataclasses.dataclass
class LiveServer(ServerAddress):
    app: Any
    server: DrainingServer
    task: asyncio.Task
    port: int
    owned_dir: str | None = None  # a temporary data dir created for this server (removed by the fixture)

    @property
    def hub(self):
        return self.app.state.hub

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)


async def start_server(pubsub: Any = None, **overrides: Any) -> LiveServer:
    """Start a server in this event loop; without ``data_dir``/``database_url`` it gets a fresh SQLite dir.
    ``pubsub``: e.g. a ``MemoryPubSub`` on a broker shared with other test servers (a cluster in one process)."""
    owned_dir = None
    if "data_dir" not in overrides and not overrides.get("database_url"):
        owned_dir = overrides["data_dir"] = tempfile.mkdtemp(prefix="canvashub-test-")
    settings = dataclasses.replace(Settings(), host="127.0.0.1", port=0, **overrides)
    app = create_app(settings, pubsub)
    server = DrainingServer(uvicorn_config(app, settings), app)
    task = asyncio.get_running_loop().create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), 10, "server start")
    if task.done():
        task.result()
        raise AssertionError("the server did not start: see its startup_failed log line")
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveServer(app, server, task, port, owned_dir)


Factory = Callable[..., Awaitable[LiveServer]]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessServer(ServerAddress):
    """``canvashub serve`` in a child process, for RSS measurements and kill/restart tests."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    async def stop(self, sig: int | None = None) -> int:
        import signal

        if self.proc.returncode is None:
            self.proc.send_signal(sig if sig is not None else signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


async def start_process_server(
    env: dict[str, str] | None = None, *args: str, log_path: str | None = None, port: int | None = None
) -> ProcessServer:
    """``canvashub serve`` on a free port (or ``port``: e.g. a restart where clients expect it);
    its stdout and stderr (the log) go to ``log_path`` if given."""
    import sys

    import httpx

    port = port or free_port()
    log_file = await asyncio.to_thread(open, log_path, "ab") if log_path else None
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "canvashub.server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
            env={**os.environ, **(env or {})},
            stdout=log_file,
            stderr=log_file,
        )
    finally:
        if log_file is not None:
            log_file.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    async with httpx.AsyncClient() as http:
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"server exited with {proc.returncode}")
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return ProcessServer(proc, port)
            except httpx.TransportError:
                pass
            if loop.time() > deadline:
                proc.kill()
                raise AssertionError("server did not become healthy in 20 s")
            await asyncio.sleep(0.05)  # poll interval: waiting for /healthz, bounded by the deadline


PG_DSN = os.environ.get("CANVASHUB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[tuple[Any, str]]:
    """A fresh schema on the test Postgres, dropped afterwards: (admin connection, schema name).
    Skips (fails in CI) when Postgres is unreachable."""
    import uuid

    import asyncpg

    try:
        admin = await asyncpg.connect(PG_DSN, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        skip_or_fail(f"Postgres unreachable at {PG_DSN}: {exc!r}")
    schema = "t_" + uuid.uuid4().hex[:16]
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        yield admin, schema
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def with_search_path(dsn: str, schema: str) -> str:
    """asyncpg passes unknown DSN query parameters on as server settings."""
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


@dataclasses.dataclass
class StorageBackend:
    """Where a test server keeps its data: a SQLite directory or a fresh Postgres schema."""

    kind: str
    data_dir: str | None = None
    database_url: str | None = None
    schema: str | None = None  # Postgres only

    @property
    def overrides(self) -> dict[str, Any]:
        """Settings overrides for ``start_server``."""
        return {"database_url": self.database_url} if self.database_url else {"data_dir": self.data_dir}

    @property
    def env(self) -> dict[str, str]:
        """Environment for ``canvashub serve`` in a child process."""
        return {"DATABASE_URL": self.database_url} if self.database_url else {"CANVASHUB_DATA_DIR": self.data_dir or ""}

    def make_store(self):
        """A second store on the same data, for checking what the server wrote."""
        from canvashub.storage.postgres import PostgresStore
        from canvashub.storage.sqlite import SQLiteStore

        if self.database_url:
            return PostgresStore(self.database_url, pool_size=2, acquire_timeout=5.0)
        return SQLiteStore(os.path.join(self.data_dir or "", "canvashub.sqlite3"))
