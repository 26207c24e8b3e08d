"""The ``canvashub`` command: version, settings checked at start-up, worker options, start-up failures,
``.env`` and the refusal to serve other machines without access control. Real subprocesses."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from canvashub.crdt import codec
from canvashub.server.settings import Settings, is_loopback
from canvashub.storage.base import LoadedCanvas

from .support import free_port, wait_until
from .test_smoke import make_update

SECRET = "s" * 32


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any canvashub setting, plus ``extra``."""
    names = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    return {**{k: v for k, v in os.environ.items() if k not in names and not k.startswith("CANVASHUB_")}, **extra}


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess:
    """``python -m canvashub.server ARGS`` to completion (in ``cwd``, where it may find a ``.env``)."""
    return subprocess.run(
        [sys.executable, "-m", "canvashub.server", *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Running:
    """A ``canvashub`` child process; its stderr (the log) is collected line by line as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode().rstrip("\n"))

    def events(self) -> list[dict]:
        """Every line parsed as JSON (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.lines]

    def named(self, event: str) -> list[dict]:
        return [line for line in self.events() if line["event"] == event]

    def has(self, event: str) -> bool:
        return any(f'"event":"{event}"' in line for line in self.lines)

    async def finish(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, 5)
        return code

    async def stop(self) -> int:
        """SIGTERM, then the exit code. A server that shut down cleanly re-raises the signal (uvicorn
        does, after its graceful shutdown), so it ends with -SIGTERM; the worker exits 0."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.finish(30)


@pytest.fixture
async def spawn(tmp_path) -> AsyncIterator:
    """Start ``canvashub`` child processes (in ``tmp_path``); any still running is killed at teardown."""
    started: list[Running] = []

    async def start(*args: str, env: dict[str, str] | None = None, own_group: bool = False) -> Running:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "canvashub.server",
            *args,
            cwd=tmp_path,
            env=clean_env(**(env or {})),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=own_group,  # its own process group, as a terminal or a supervisor gives it
        )
        running = Running(proc)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()


async def wait_healthy(running: Running, port: int, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            assert running.proc.returncode is None, f"exited {running.proc.returncode}: {running.lines[-5:]}"
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert loop.time() < deadline, f"not healthy in {timeout} s: {running.lines[-5:]}"
            await asyncio.sleep(0.05)  # poll interval of the wait above


def serve_args(tmp_path: Path, port: int = 0, *extra: str) -> list[str]:
    return ["serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), *extra]


# -- 1. version -----------------------------------------------------------------------------------


def test_version_prints_the_installed_version(tmp_path):
    """``canvashub --version`` prints the version of the installed distribution and exits 0."""
    out = run_cli("--version", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"canvashub {metadata.version('canvashub')}"


# -- 2. every setting checked at start-up ---------------------------------------------------------


def assert_refused(out: subprocess.CompletedProcess, message: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"canvashub: {message}"]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--job-workers", "-3", "--job-workers (CANVASHUB_JOB_WORKERS): must be at least 0, got -3"),
        ("--keep-versions", "0", "--keep-versions (CANVASHUB_KEEP_VERSIONS): must be at least 1, got 0"),
        (
            "--allowed-origins",
            "not a url",
            "--allowed-origins (CANVASHUB_ALLOWED_ORIGINS): each entry must be * or "
            "an origin like https://app.example.com[:port], got 'not a url'",
        ),
        (
            "--log-level",
            "verbose",
            "--log-level (CANVASHUB_LOG_LEVEL): must be one of debug, info, warning, error, got 'verbose'",
        ),
    ],
)
def test_an_out_of_bounds_option_stops_the_start_naming_option_and_variable(tmp_path, option, value, message):
    """A value out of its bounds exits 2 with one line naming the option and its variable, no traceback."""
    assert_refused(run_cli(*serve_args(tmp_path), option, value, cwd=tmp_path, timeout=15), message)


@pytest.mark.parametrize(
    "env, value, message",
    [
        ("PORT", "70000", "--port (PORT): must be at most 65535, got 70000"),
        ("PORT", "http", "--port (PORT): expected an integer, got 'http'"),
        ("CANVASHUB_STORE_TIMEOUT", "0", "--store-timeout (CANVASHUB_STORE_TIMEOUT): must be greater than 0, got 0.0"),
        (
            "CANVASHUB_RATE_MESSAGES_PER_SECOND",
            "nan",
            "--rate-messages-per-second (CANVASHUB_RATE_MESSAGES_PER_SECOND): expected a finite number, got nan",
        ),
        ("CANVASHUB_DB_POOL_SIZE", "0", "--db-pool-size (CANVASHUB_DB_POOL_SIZE): must be at least 1, got 0"),
        (
            "CANVASHUB_ROLE_TO_DELETE",
            "admin",
            "--role-to-delete (CANVASHUB_ROLE_TO_DELETE): must be one of viewer, editor, owner, got 'admin'",
        ),
        (
            "CANVASHUB_PER_MESSAGE_DEFLATE",
            "maybe",
            "--per-message-deflate (CANVASHUB_PER_MESSAGE_DEFLATE): expected true or false, got 'maybe'",
        ),
        (
            "DATABASE_URL",
            "mysql://db/canvases",
            "--database-url (DATABASE_URL): must be a postgres:// or postgresql:// URL, got 'mysql://db/canvases'",
        ),
        (
            "REDIS_URL",
            "localhost:6379",
            "--redis-url (REDIS_URL): must be a redis://, rediss:// or unix:// URL, got 'localhost:6379'",
        ),
        (
            "CANVASHUB_GENERATOR_HTTP_URL",
            "ftp://gen",
            "--generator-http-url (CANVASHUB_GENERATOR_HTTP_URL): must be a http:// or https:// URL, got 'ftp://gen'",
        ),
        (
            "CANVASHUB_ALLOWED_ORIGINS",
            "https://ok.example, https://app.example/path",
            "--allowed-origins (CANVASHUB_ALLOWED_ORIGINS): each entry must be * or an origin like "
            "https://app.example.com[:port], got 'https://app.example/path'",
        ),
        (
            "CANVASHUB_MAX_FRAME_BYTES",
            "10",
            "--max-frame-bytes (CANVASHUB_MAX_FRAME_BYTES): must be at least 1024, got 10",
        ),
        (
            "CANVASHUB_STARTUP_TIMEOUT",
            "-1",
            "--startup-timeout (CANVASHUB_STARTUP_TIMEOUT): must be greater than 0, got -1.0",
        ),
    ],
)
def test_an_out_of_bounds_variable_stops_the_start_naming_option_and_variable(tmp_path, env, value, message):
    """The same check applies to environment variables: exit 2, one line naming both, no traceback."""
    args = serve_args(tmp_path)
    if env == "PORT":
        args = args[:1] + args[3:]  # the variable, not the option
    assert_refused(run_cli(*args, cwd=tmp_path, env={env: value}, timeout=15), message)


def test_every_numeric_setting_declares_its_bounds():
    """Each int or float setting has a lower bound in its metadata (a new setting must decide one)."""
    unbounded = [
        f.name
        for f in dataclasses.fields(Settings)
        if f.type in ("int", "float", int, float) and f.metadata["low"] is None and f.metadata["above"] is None
    ]
    assert unbounded == []


# -- 3. the worker's own options ------------------------------------------------------------------


def test_worker_accepts_only_the_settings_it_uses(tmp_path):
    """``canvashub worker --help`` lists job and storage settings but no server ones, and a server option
    is a usage error (exit 2)."""
    help_text = run_cli("worker", "--help", cwd=tmp_path).stdout
    assert "--job-workers" in help_text and "--database-url" in help_text and "--log-level" in help_text
    assert "--max-frame-bytes" not in help_text and "--host" not in help_text
    out = run_cli("worker", "--max-frame-bytes", "1", cwd=tmp_path, timeout=15)
    assert out.returncode == 2
    assert "unrecognized arguments: --max-frame-bytes 1" in out.stderr


async def test_worker_ignores_the_servers_variables(spawn, tmp_path):
    """A worker sharing the server's environment starts even if a server-only variable is invalid for it."""
    worker = await spawn(
        "worker",
        "--data-dir",
        str(tmp_path / "data"),
        env={"CANVASHUB_MAX_FRAME_BYTES": "not a number", "CANVASHUB_HOST": "0.0.0.0"},
    )
    await wait_until(lambda: worker.has("worker_started") or worker.proc.returncode is not None, 20, "worker start")
    assert worker.has("worker_started"), worker.lines
    assert await worker.stop() == 0


# -- 4. start-up failures: one JSON line, non-zero exit -------------------------------------------


async def test_a_busy_port_is_one_startup_failed_line(spawn, tmp_path):
    """With the port taken, ``serve`` exits 1 with one ``startup_failed`` JSON line naming the address."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = await spawn(*serve_args(tmp_path, port))
        assert await server.finish(20) == 1
    failed = server.named("startup_failed")  # every line is JSON
    assert len(failed) == 1, server.lines
    assert failed[0]["level"] == "error" and failed[0]["step"] == "listen"
    assert f"127.0.0.1:{port}" in failed[0]["error"] and "in use" in failed[0]["error"]
    assert not any("Traceback" in line for line in server.lines)


async def test_an_unreachable_database_is_retried_then_one_startup_failed_line(spawn, tmp_path, pg_proxy):
    """A database unreachable for the whole start-up window is retried (one ``store_open_failed`` line,
    not one per attempt), then ``serve`` exits non-zero with one ``startup_failed`` line."""
    proxy, dsn, _ = pg_proxy
    proxy.cut()
    server = await spawn(*serve_args(tmp_path), env={"DATABASE_URL": dsn, "CANVASHUB_STARTUP_TIMEOUT": "2"})
    assert await server.finish(30) != 0
    assert len(server.named("store_open_failed")) == 1, server.lines
    failed = server.named("startup_failed")
    assert len(failed) == 1 and failed[0]["step"] == "store", server.lines
    assert failed[0]["attempts"] > 1 and "unreachable for 2 s" in failed[0]["error"]
    assert not any("Traceback" in line for line in server.lines)
    assert not server.has("hub_started")


async def test_a_database_that_comes_back_within_the_window_lets_the_server_start(spawn, tmp_path, pg_proxy):
    """A database that becomes reachable during the start-up window: the server starts normally and
    logs ``store_open_recovered``."""
    proxy, dsn, _ = pg_proxy
    proxy.cut()
    port = free_port()
    server = await spawn(*serve_args(tmp_path, port), env={"DATABASE_URL": dsn, "CANVASHUB_STARTUP_TIMEOUT": "30"})
    await wait_until(
        lambda: server.has("store_open_failed") or server.proc.returncode is not None, 20, "the first failed attempt"
    )
    assert server.proc.returncode is None, server.lines
    proxy.restore()
    await wait_healthy(server, port)
    assert server.named("store_open_recovered")[0]["failures"] >= 1
    assert not server.has("startup_failed")
    assert await server.stop() == -signal.SIGTERM


# -- 5. uvicorn's own lines -----------------------------------------------------------------------


async def test_uvicorns_own_lines_are_json_lines(spawn, tmp_path):
    """uvicorn's own log lines (here: a malformed HTTP request) reach stderr through the JSON formatter."""
    port = free_port()
    server = await spawn(*serve_args(tmp_path, port))
    await wait_healthy(server, port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.read(), 10)  # uvicorn answers 400 and closes
    writer.close()
    await wait_until(lambda: server.has("Invalid HTTP request received."), 10, "uvicorn's warning")
    assert await server.stop() == -signal.SIGTERM
    uvicorn_lines = [line for line in server.events() if line.get("logger", "").startswith("uvicorn")]
    assert uvicorn_lines and uvicorn_lines[0]["level"] == "warning"


# -- 6. room_loaded once per load -----------------------------------------------------------------


async def test_room_loaded_is_logged_once_per_load_with_its_figures(server_factory, capfd):
    """Each load of a canvas (new, then again after it unloaded) is one ``room_loaded`` line with
    ``version``, ``log_rows`` and ``replay_ms``."""
    server = await server_factory(room_grace_seconds=0.05)
    ws = await server.connect("loaded-once")
    await asyncio.wait_for(ws.recv(), 5)
    await ws.send(codec.encode_update(make_update("k", "v")))
    await ws.close()
    await wait_until(
        lambda: "loaded-once" not in server.hub.registry.rooms and server.hub.persister.is_durable("loaded-once"),
        10,
        "unload",
    )
    # The unload schedules a compaction (so the next load starts from a snapshot): let it land first.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while ((await server.hub.store.load("loaded-once")) or LoadedCanvas(None, 0, [], None)).version < 1:
        assert loop.time() < deadline, "the canvas was not compacted after it unloaded"
        await asyncio.sleep(0.02)  # polling the store, bounded by the deadline above
    ws = await server.connect("loaded-once")
    await asyncio.wait_for(ws.recv(), 5)
    await ws.close()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"room_loaded"' in line]
    assert [line["canvas"] for line in lines] == ["loaded-once", "loaded-once"]
    assert lines[0]["version"] == 0 and lines[1]["version"] >= 1  # compacted when it unloaded
    assert all("log_rows" in line and "replay_ms" in line for line in lines)


async def test_ctrl_c_to_the_process_group_drains_and_stops_cleanly(spawn, tmp_path):
    """A SIGINT to the whole process group (Ctrl-C in a terminal) reaches the replay workers too: the server
    still drains and closes (``drained``, ``hub_closed``), and every line it and its workers write is JSON."""
    port = free_port()
    server = await spawn(*serve_args(tmp_path, port), own_group=True)
    await wait_healthy(server, port)
    os.killpg(server.proc.pid, signal.SIGINT)
    assert await server.finish(30) == 130  # the usual exit status after Ctrl-C (server/cli.py)
    events = server.events()  # fails on any line that is not JSON (e.g. a worker's traceback)
    assert {"drained", "hub_closed"} <= {line["event"] for line in events}


# -- 7. .env --------------------------------------------------------------------------------------


def test_serve_reads_dotenv_in_the_working_directory(tmp_path):
    """Settings in ``./.env`` apply (here an invalid one, which stops the start)."""
    (tmp_path / ".env").write_text("# deployment settings\nCANVASHUB_KEEP_VERSIONS=0\n")
    assert_refused(
        run_cli(*serve_args(tmp_path), cwd=tmp_path, timeout=15),
        "--keep-versions (CANVASHUB_KEEP_VERSIONS): must be at least 1, got 0",
    )


def test_real_environment_variables_win_over_dotenv(tmp_path):
    """A variable set in the environment overrides the same one in ``.env`` (here the valid one wins, so
    the start goes on to the next check)."""
    (tmp_path / ".env").write_text("CANVASHUB_KEEP_VERSIONS=0\nCANVASHUB_HOST=0.0.0.0\n")
    out = run_cli(*serve_args(tmp_path), cwd=tmp_path, env={"CANVASHUB_KEEP_VERSIONS": "5"}, timeout=15)
    assert out.returncode == 2 and "--keep-versions" not in out.stderr
    assert "--host 0.0.0.0 (CANVASHUB_HOST)" in out.stderr  # from .env, not overridden


async def test_worker_reads_dotenv(spawn, tmp_path):
    """``canvashub worker`` reads ``./.env`` too (here its concurrency)."""
    (tmp_path / ".env").write_text(f"CANVASHUB_JOB_WORKERS=3\nCANVASHUB_DATA_DIR={tmp_path / 'data'}\n")
    worker = await spawn("worker")
    await wait_until(lambda: worker.has("worker_started") or worker.proc.returncode is not None, 20, "worker start")
    assert worker.named("worker_started")[0]["concurrency"] == 3
    assert await worker.stop() == 0


# -- 8. no access control on a public address only when asked -------------------------------------


def test_serving_other_machines_without_access_control_is_refused(tmp_path):
    """``serve --host 0.0.0.0`` with no secret or public key exits 2 with one line pointing at --open."""
    out = run_cli(*serve_args(tmp_path), "--host", "0.0.0.0", cwd=tmp_path, timeout=15)
    assert out.returncode == 2, out.stderr[-2000:]
    [line] = out.stderr.strip().splitlines()
    assert "--host 0.0.0.0" in line and "CANVASHUB_AUTH_SECRET" in line and "--open" in line


@pytest.mark.parametrize(
    "extra, env",
    [
        (["--open"], {}),
        ([], {"CANVASHUB_OPEN": "true"}),
        ([], {"CANVASHUB_AUTH_SECRET": SECRET}),
    ],
)
async def test_serving_other_machines_starts_with_a_secret_or_explicitly_open(spawn, tmp_path, extra, env):
    """On a non-loopback address the server starts with a secret, or with --open (CANVASHUB_OPEN=true),
    which logs the ``open_mode`` warning."""
    port = free_port()
    server = await spawn(*serve_args(tmp_path, port), "--host", "0.0.0.0", *extra, env=env)
    await wait_healthy(server, port)
    assert server.has("open_mode") == ("CANVASHUB_AUTH_SECRET" not in env)
    assert await server.stop() == -signal.SIGTERM


def test_loopback_addresses():
    """Loopback is 127.0.0.0/8, ::1 and localhost; anything else may be reachable from other machines."""
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "10.0.0.5", "example.com", ""))
