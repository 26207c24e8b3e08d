"""Outage hygiene (issue 12, item 4): during a database outage the log stays JSON and short, /readyz
answers at once, and writers hear `retrying` within about a second."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from canvashub.server import logs
from canvashub.server.health import HealthMonitor
from canvashub.server.logs import FailureLog

from .wire import WireClient, key_updates


async def poll(check: Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 0.05) -> Any:
    """Await ``check()`` until it is truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)  # poll interval of a wait bounded by its deadline


# -- the helpers, without a server ------------------------------------------------------------------
def test_failure_log_reports_state_changes_and_periodic_summaries(monkeypatch):
    """FailureLog writes one line when failing starts, one summary per period, one on recovery."""
    lines: list[tuple[int, str, dict]] = []
    monkeypatch.setattr(logs, "log", lambda level, event, **fields: lines.append((level, event, fields)))
    now = [100.0]
    failures = FailureLog("thing", summary_every=30.0, clock=lambda: now[0])
    failures.recovered()  # healthy already: nothing to say
    for _ in range(50):  # 50 failures over 49 s
        failures.failed("ConnectionRefusedError: down", canvas="c")
        now[0] += 1.0
    failures.recovered()
    failures.recovered()
    visible = [(level, event, fields) for level, event, fields in lines if level > logging.DEBUG]
    assert [event for _, event, _ in visible] == ["thing_failed", "thing_still_failing", "thing_recovered"]
    assert visible[0][0] == logging.WARNING and visible[0][2]["error"] == "ConnectionRefusedError: down"
    assert visible[1][2]["failures"] == 30 and visible[1][2]["last_error"] == "ConnectionRefusedError: down"
    assert visible[2][0] == logging.INFO and visible[2][2]["failures"] == 50
    assert visible[2][2]["failing_seconds"] == 50.0 and not failures.failing


def test_json_formatter_keeps_library_tracebacks_on_one_line():
    """A third-party record with a traceback becomes one JSON line naming its logger, with `exc`."""
    try:
        raise ConnectionRefusedError("connect call failed")
    except ConnectionRefusedError:
        record = logging.getLogger("asyncpg.pool").makeRecord(
            "asyncpg.pool",
            logging.WARNING,
            __file__,
            1,
            "Failed to restore the pool connection floor; retrying",
            (),
            exc_info=__import__("sys").exc_info(),
        )
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    payload = json.loads(line)
    assert payload["logger"] == "asyncpg.pool" and payload["level"] == "warning"
    assert "ConnectionRefusedError: connect call failed" in payload["exc"]


async def test_health_monitor_answers_from_cache_while_the_probe_hangs():
    """A hanging probe counts as unhealthy after its timeout; status() never waits for it."""
    release = asyncio.Event()

    async def probe() -> bool:
        await release.wait()
        return True

    monitor = HealthMonitor(probe, period=0.05, timeout=0.1)
    assert monitor.status() == (False, None)
    check = asyncio.get_running_loop().create_task(monitor.check())
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.shield(check), 2)
    assert 0.09 < time.perf_counter() - started < 1.0
    healthy, age_ms = monitor.status()
    assert healthy is False and age_ms is not None and age_ms < 1000


# -- a real server, a real database behind a proxy ---------------------------------------------------
async def test_refused_database_log_is_json_and_bounded(process_server_factory, pg_proxy, tmp_path):
    """`canvashub serve` whose Postgres refuses connections for a few seconds writes only JSON lines
    (asyncpg's pool warnings included) and a bounded number of failure lines per component."""
    proxy, dsn, _ = pg_proxy
    log_path = tmp_path / "server.log"
    env = {
        "DATABASE_URL": dsn,
        "CANVASHUB_STORE_TIMEOUT": "2",
        "CANVASHUB_DB_ACQUIRE_TIMEOUT": "1",
        "CANVASHUB_RETRY_MAX_DELAY": "0.2",
        "CANVASHUB_JOB_WATCH_INTERVAL": "0.2",
        "CANVASHUB_JOB_POLL_INTERVAL": "0.2",
        "CANVASHUB_COMMIT_INTERVAL": "0.005",
    }
    server = await process_server_factory(env, log_path=str(log_path))
    client = await WireClient.connect(server, "outage-log")
    _, updates = key_updates(4)
    await client.send_update(updates[0])
    await client.wait_save(where=lambda e: e["through"] == 1)

    async def append_failures() -> float:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            text = (await http.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("canvashub_append_failures_total "))
        return float(line.split()[1])

    async def outage_long_enough() -> bool:
        # Enough attempts for a per-attempt logger to have written dozens of lines, and asyncpg's
        # pool has tried to restore its connection floor three times (at the cut, 1 s and 3 s later).
        floor_retries = log_path.read_text(errors="replace").count("Failed to restore the pool connection floor")
        return await append_failures() >= 15 and floor_retries >= 3

    proxy.cut()
    for update in updates[1:]:
        await client.send_update(update)
    await client.wait_save("retrying")
    await poll(outage_long_enough, 15, "a few seconds of outage", every=0.2)
    during = json_records(log_path.read_text(errors="replace"))
    assert any(r.get("logger") == "asyncpg.pool" and "exc" in r for r in during), "asyncpg's warning went missing"
    for component in ("append", "job_watch", "job_claim"):
        lines = [r["event"] for r in during if r["event"].startswith(component) and r["level"] == "warning"]
        assert 1 <= len(lines) <= 3, (component, collections.Counter(lines))

    proxy.restore()
    await client.wait_save(where=lambda e: e["through"] == 4, timeout=15)

    async def recovered() -> bool:
        text = log_path.read_text(errors="replace")
        return all(f'"{name}_recovered"' in text for name in ("append", "job_watch", "job_claim"))

    await poll(recovered, 10, "recovery lines")
    await client.close()
    await server.stop()
    records = json_records(log_path.read_text(errors="replace"))
    events = collections.Counter(record["event"] for record in records)
    for name in ("append", "job_watch", "job_claim"):
        assert events[f"{name}_failed"] == events[f"{name}_recovered"] >= 1, (name, events)  # each stretch closed
    recovered_line = next(r for r in records if r["event"] == "append_recovered")
    assert recovered_line["failures"] >= 15 and recovered_line["failing_seconds"] > 0


def json_records(text: str) -> list[dict[str, Any]]:
    """Every non-empty line of a log, parsed; fails listing the lines that are not JSON objects."""
    records, not_json = [], []
    for line in text.splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                not_json.append(line)
    assert not not_json, f"{len(not_json)} non-JSON lines, e.g. {not_json[:5]}"
    return records


HANG_SETTINGS = dict(store_timeout=10.0, db_acquire_timeout=5.0, commit_interval=0.005, shutdown_timeout=2.0)


async def test_readyz_answers_at_once_while_the_database_hangs(server_factory, pg_proxy):
    """With Postgres silent (no answer, no reset), every /readyz answers within 100 ms and soon
    reports storage unhealthy, with the age of that result."""
    proxy, dsn, _ = pg_proxy
    server = await server_factory(database_url=dsn, **HANG_SETTINGS)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        storage = (await http.get("/readyz")).json()["storage"]
        assert storage["healthy"] is True and isinstance(storage["checked_ms_ago"], int)
        proxy.stalled = True
        try:

            async def unhealthy() -> dict | None:
                body = (await http.get("/readyz")).json()
                return body if body["storage"]["healthy"] is False else None

            body = await poll(unhealthy, 10, "readyz to report the hanging store")
            assert body["status"] == "ready" and isinstance(body["storage"]["checked_ms_ago"], int)
            assert "pubsub" in body
            durations = []
            for _ in range(8):
                started = time.perf_counter()
                response = await http.get("/readyz")
                durations.append(time.perf_counter() - started)
                assert response.status_code == 200 and response.json()["storage"]["healthy"] is False
            assert max(durations) < 0.1, [round(d * 1000) for d in durations]
        finally:
            proxy.stalled = False
            proxy.cut()  # reset the silenced connections so the server can close its pool
            proxy.restore()


async def test_writer_hears_retrying_within_a_second_of_a_hanging_commit(server_factory, pg_proxy):
    """An events-enabled socket whose update cannot commit (Postgres hangs, store_timeout 10 s) gets a
    `retrying` save event within ~2 s, then `saved` once the database answers again."""
    proxy, dsn, _ = pg_proxy
    server = await server_factory(database_url=dsn, **HANG_SETTINGS)
    client = await WireClient.connect(server, "slow-commit")
    _, updates = key_updates(3)
    await client.send_update(updates[0])
    await client.wait_save(where=lambda e: e["through"] == 1)
    proxy.stalled = True
    try:
        started = time.perf_counter()
        await client.send_update(updates[1])
        retrying = await client.wait_save("retrying", timeout=2.5)
        assert time.perf_counter() - started < 2.0
        assert retrying["pending"] == 1 and retrying["through"] == 1 and retrying["attempt"] == 1
        assert retrying["error"] == "commit not complete after 1.0 s" and retrying["retry_in_ms"] == 9000
        assert set(retrying) >= {"through", "pending", "clock", "attempt", "retry_in_ms", "error"}
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            storage = (await http.get("/readyz")).json()["storage"]
        assert storage["retrying"] is True and storage["last_error"] == retrying["error"]
        # A second socket (same canvas: loading another would wait on the database too) whose first
        # change arrives now is told at once, not when the stalled attempt times out.
        other = await WireClient.connect(server, "slow-commit")
        await other.send_update(key_updates(1, "o")[1][0])
        await other.wait_save("retrying", timeout=1.0)
    finally:
        proxy.stalled = False
        proxy.cut()  # the stalled attempt's connection is reset: the commit is retried on a new one
        proxy.restore()
    await client.wait_save(where=lambda e: e["through"] == 2, timeout=15)
    await other.wait_save(where=lambda e: e["through"] == 1, timeout=15)
    assert server.hub.persister.retrying is False and server.hub.persister.last_error is None
    await client.close()
    await other.close()


async def test_a_socket_told_saving_hears_retrying_when_the_commit_stalls(server_factory, pg_proxy):
    """A socket that joined while the canvas's changes were still being written (``saving``) is told
    ``retrying`` about a second after the commit stalls, although none of the pending changes is its own."""
    proxy, dsn, _ = pg_proxy
    server = await server_factory(database_url=dsn, **HANG_SETTINGS)
    writer = await WireClient.connect(server, "watched")
    _, updates = key_updates(2)
    await writer.send_update(updates[0])
    await writer.wait_save(where=lambda e: e["through"] == 1)
    proxy.stalled = True
    try:
        await writer.send_update(updates[1])
        watcher = await WireClient.connect(server, "watched")

        def canvas_events() -> list[dict[str, Any]]:
            return [e for e in watcher.events if e.get("type") == "save" and e.get("scope") == "canvas"]

        first = (await watcher.wait(canvas_events, 5, "the canvas's storage state"))[0]
        assert first["status"] in ("saving", "retrying") and first["backlog"] >= 1
        await watcher.wait(
            lambda: any(e["status"] == "retrying" for e in canvas_events()), 2.5, "retrying for the watcher"
        )
    finally:
        proxy.stalled = False
        proxy.cut()
        proxy.restore()
    await watcher.wait(lambda: canvas_events()[-1]["status"] == "saved", 15, "saved for the watcher")
    await writer.close()
    await watcher.close()
