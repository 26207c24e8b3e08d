"""SQLite backend: stdlib sqlite3 on one connection, driven from a single-thread executor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from . import migrations
from .base import (
    JOB_COLUMNS,
    LEASE_EXPIRED,
    Asset,
    CanvasInfo,
    Job,
    LeaseFailure,
    LoadedCanvas,
    VersionInfo,
    WebhookDelivery,
    WebhookEvent,
    WebhookEventRows,
    check_final_status,
    clamp_progress,
    dump_json_object,
    lease_expired_message,
    webhook_attempt_status,
    webhook_event_rows,
)

T = TypeVar("T")


class SQLiteStore:
    """Durable store in one SQLite file (WAL, synchronous=FULL). All SQL runs on one worker thread."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # -- plumbing ---------------------------------------------------------
    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise RuntimeError("SQLiteStore is not open")
        conn = self._conn
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    @staticmethod
    def _tx(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA busy_timeout=5000")
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, statements in migrations.SQLITE:
            if version in applied:
                continue

            def apply(c: sqlite3.Connection, statements: list[str] = statements, version: int = version) -> None:
                for sql in statements:
                    c.execute(sql)
                c.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, time.time()))

            self._tx(conn, apply)

    async def close(self) -> None:
        executor, conn = self._executor, self._conn
        self._executor = self._conn = None
        if executor is None:
            return
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    # -- contract ---------------------------------------------------------
    async def append_updates(self, batch: list[tuple[str, bytes]]) -> list[int]:
        if not batch:
            return []
        rows = [(cid, bytes(data)) for cid, data in batch]

        def body(conn: sqlite3.Connection) -> list[int]:
            now = time.time()
            conn.executemany(
                "INSERT INTO canvases (id, version, updated_at) VALUES (?, 0, ?) "
                "ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at",
                [(cid, now) for cid in dict.fromkeys(cid for cid, _ in rows)],
            )
            seqs = []
            for cid, data in rows:
                cur = conn.execute("INSERT INTO canvas_updates (canvas_id, data) VALUES (?, ?)", (cid, data))
                assert cur.lastrowid is not None  # an INSERT into a rowid table always sets it
                seqs.append(cur.lastrowid)
            return seqs

        return await self._run(lambda conn: self._tx(conn, body))

    async def load(self, canvas_id: str) -> LoadedCanvas | None:
        def body(conn: sqlite3.Connection) -> LoadedCanvas | None:
            # One read transaction so the snapshot and the log are consistent with each other.
            conn.execute("BEGIN")
            try:
                row = conn.execute(
                    "SELECT snapshot, version, updated_at, locked_at IS NOT NULL FROM canvases WHERE id = ?",
                    (canvas_id,),
                ).fetchone()
                if row is None:
                    return None
                updates = conn.execute(
                    "SELECT seq, data FROM canvas_updates WHERE canvas_id = ? ORDER BY seq", (canvas_id,)
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            return LoadedCanvas(row[0], row[1], [(s, bytes(d)) for s, d in updates], row[2], bool(row[3]))

        return await self._run(body)

    async def compact(
        self,
        canvas_id: str,
        expected_version: int,
        snapshot: bytes,
        through_seq: int,
        keep_versions: int,
        record_version: bool = True,
    ) -> int | None:
        snapshot = bytes(snapshot)

        def body(conn: sqlite3.Connection) -> int | None:
            now = time.time()
            cur = conn.execute(
                "UPDATE canvases SET snapshot = ?, version = version + 1, updated_at = ? WHERE id = ? AND version = ?",
                (snapshot, now, canvas_id, expected_version),
            )
            if cur.rowcount == 0:
                return None
            new_version = expected_version + 1
            conn.execute("DELETE FROM canvas_updates WHERE canvas_id = ? AND seq <= ?", (canvas_id, through_seq))
            if record_version:
                conn.execute(
                    "INSERT INTO canvas_versions (canvas_id, number, created_at, size, snapshot) VALUES (?, ?, ?, ?, ?)",
                    (canvas_id, new_version, now, len(snapshot), snapshot),
                )
            conn.execute(
                "DELETE FROM canvas_versions WHERE canvas_id = ? AND number NOT IN "
                "(SELECT number FROM canvas_versions WHERE canvas_id = ? ORDER BY number DESC LIMIT ?)",
                (canvas_id, canvas_id, max(keep_versions, 0)),
            )
            return new_version

        return await self._run(lambda conn: self._tx(conn, body))

    async def list_versions(self, canvas_id: str, before: int | None, limit: int) -> list[VersionInfo]:
        def body(conn: sqlite3.Connection) -> list[VersionInfo]:
            rows = conn.execute(
                "SELECT number, created_at, size FROM canvas_versions WHERE canvas_id = ? AND (? IS NULL OR number < ?) "
                "ORDER BY number DESC LIMIT ?",
                (canvas_id, before, before, limit),
            ).fetchall()
            return [VersionInfo(*r) for r in rows]

        return await self._run(body)

    async def get_version(self, canvas_id: str, number: int) -> bytes | None:
        def body(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT snapshot FROM canvas_versions WHERE canvas_id = ? AND number = ?", (canvas_id, number)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(body)

    async def list_canvases(self, after: str | None, limit: int) -> list[CanvasInfo]:
        def body(conn: sqlite3.Connection) -> list[CanvasInfo]:
            rows = conn.execute(
                "SELECT id, version, updated_at FROM canvases WHERE (? IS NULL OR id > ?) ORDER BY id LIMIT ?",
                (after, after, limit),
            ).fetchall()
            return [CanvasInfo(*r) for r in rows]

        return await self._run(body)

    async def set_canvas_lock(self, canvas_id: str, locked: bool, now: float | None = None) -> bool:
        locked_at = (time.time() if now is None else now) if locked else None

        def body(conn: sqlite3.Connection) -> bool:
            # COALESCE: locking a locked canvas keeps when it was first locked.
            return (
                conn.execute(
                    "UPDATE canvases SET locked_at = CASE WHEN ? IS NULL THEN NULL ELSE COALESCE(locked_at, ?) END "
                    "WHERE id = ?",
                    (locked_at, locked_at, canvas_id),
                ).rowcount
                > 0
            )

        return await self._run(lambda conn: self._tx(conn, body))

    async def locked_canvases(self, canvas_ids: Sequence[str]) -> set[str]:
        ids = list(dict.fromkeys(canvas_ids))

        def body(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(ids), 500):  # SQLite caps the number of bound parameters
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    row[0]
                    for row in conn.execute(
                        f"SELECT id FROM canvases WHERE locked_at IS NOT NULL AND id IN ({marks})", chunk
                    )
                )
            return found

        return await self._run(body)

    async def delete_canvas(self, canvas_id: str, events: Sequence[WebhookEvent] = ()) -> bool:
        rows = webhook_event_rows(events)

        def body(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM canvas_updates WHERE canvas_id = ?", (canvas_id,))
            conn.execute("DELETE FROM canvas_versions WHERE canvas_id = ?", (canvas_id,))
            conn.execute("DELETE FROM jobs WHERE canvas_id = ?", (canvas_id,))
            existed = conn.execute("DELETE FROM canvases WHERE id = ?", (canvas_id,)).rowcount > 0
            if existed:
                _insert_events(conn, rows)
            return existed

        return await self._run(lambda conn: self._tx(conn, body))

    async def health(self) -> bool:
        try:
            return await self._run(lambda conn: conn.execute("SELECT 1").fetchone() == (1,))
        except Exception:
            return False

    # -- jobs -------------------------------------------------------------
    @staticmethod
    def _job(row: tuple[Any, ...]) -> Job:
        d = dict(zip(JOB_COLUMNS, row, strict=True))
        d["params"] = json.loads(d["params"])
        d["result"] = None if d["result"] is None else json.loads(d["result"])
        d["cancel_requested"] = bool(d["cancel_requested"])
        d["result_applied"] = bool(d["result_applied"])
        return Job(**d)

    def _jobs(self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[Job]:
        return [self._job(r) for r in conn.execute(_SELECT_JOB + where, args).fetchall()]

    def _get_job(self, conn: sqlite3.Connection, job_id: str) -> Job | None:
        row = conn.execute(_SELECT_JOB + "WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._job(row)

    def _must_get_job(self, conn: sqlite3.Connection, job_id: str) -> Job:
        """A job this transaction has just written."""
        job = self._get_job(conn, job_id)
        assert job is not None
        return job

    async def create_job(
        self,
        job_id: str,
        canvas_id: str,
        generator: str,
        prompt: str,
        params: dict[str, Any],
        idempotency_key: str | None,
        max_attempts: int,
        now: float | None = None,
    ) -> tuple[Job, bool]:
        now = float(time.time() if now is None else now)
        params_text = dump_json_object(params, "params")

        def body(conn: sqlite3.Connection) -> tuple[Job, bool]:
            cur = conn.execute(
                "INSERT INTO jobs (id, canvas_id, generator, prompt, params, status, max_attempts, idempotency_key, "
                "created_at, updated_at, run_after) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?) "
                "ON CONFLICT (canvas_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
                (job_id, canvas_id, generator, prompt, params_text, max_attempts, idempotency_key, now, now, now),
            )
            if cur.rowcount == 1:
                return self._must_get_job(conn, job_id), True
            row = conn.execute(
                _SELECT_JOB + "WHERE canvas_id = ? AND idempotency_key = ?", (canvas_id, idempotency_key)
            ).fetchone()
            return self._job(row), False

        return await self._run(lambda conn: self._tx(conn, body))

    async def get_job(self, job_id: str) -> Job | None:
        return await self._run(lambda conn: self._get_job(conn, job_id))

    async def list_jobs(self, canvas_id: str, before: str | None, limit: int) -> list[Job]:
        return await self._run(
            lambda conn: self._jobs(
                conn,
                "WHERE canvas_id = ? AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
                (canvas_id, before, before, limit),
            )
        )

    async def list_active_jobs(self, canvas_id: str) -> list[Job]:
        return await self._run(
            lambda conn: self._jobs(
                conn, "WHERE canvas_id = ? AND status IN ('queued', 'running') ORDER BY id", (canvas_id,)
            )
        )

    async def jobs_changed_since(self, since: float, limit: int) -> list[Job]:
        return await self._run(
            lambda conn: self._jobs(conn, "WHERE updated_at > ? ORDER BY updated_at, id LIMIT ?", (float(since), limit))
        )

    async def claim_job(
        self,
        worker_id: str,
        lease_seconds: float,
        now: float | None = None,
        failed_events: LeaseFailure | None = None,
    ) -> Job | None:
        now = float(time.time() if now is None else now)
        expires = now + float(lease_seconds)

        def body(conn: sqlite3.Connection) -> Job | None:
            while True:
                row = conn.execute(
                    _SELECT_JOB + "WHERE status = 'running' AND lease_expires < ? ORDER BY run_after, id LIMIT 1",
                    (now,),
                ).fetchone()
                expired = None if row is None else self._job(row)
                if expired is not None and expired.cancel_requested:
                    conn.execute(
                        "UPDATE jobs SET status = 'cancelled', finished_at = ?, updated_at = ?, lease_owner = NULL, "
                        "lease_expires = NULL WHERE id = ?",
                        (now, now, expired.id),
                    )
                    continue
                if expired is not None and expired.attempts >= expired.max_attempts:
                    conn.execute(
                        "UPDATE jobs SET status = 'failed', error_type = ?, error_message = ?, finished_at = ?, "
                        "updated_at = ?, lease_owner = NULL, lease_expires = NULL WHERE id = ?",
                        (LEASE_EXPIRED, lease_expired_message(expired), now, now, expired.id),
                    )
                    if failed_events is not None:
                        _insert_events(conn, webhook_event_rows(failed_events(expired, now)))
                    continue
                row = conn.execute(
                    _SELECT_JOB + "WHERE status = 'queued' AND run_after <= ? AND cancel_requested = 0 "
                    "ORDER BY run_after, id LIMIT 1",
                    (now,),
                ).fetchone()
                queued = None if row is None else self._job(row)
                candidates = [j for j in (expired, queued) if j is not None]
                if not candidates:
                    return None
                pick = min(candidates, key=lambda j: (j.run_after, j.id))
                conn.execute(
                    "UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires = ?, attempts = attempts + 1, "
                    "progress = 0, started_at = COALESCE(started_at, ?), updated_at = ? WHERE id = ?",
                    (worker_id, expires, now, now, pick.id),
                )
                return self._get_job(conn, pick.id)

        return await self._run(lambda conn: self._tx(conn, body))

    async def _update_job(
        self, job_id: str, sql: str, args: tuple[Any, ...], events: Sequence[WebhookEvent] = ()
    ) -> Job | None:
        """Run one UPDATE (its last parameter is the job id); return the job if a row changed, and
        then (only then) write ``events`` to the webhook outbox in the same transaction."""
        rows = webhook_event_rows(events)

        def body(conn: sqlite3.Connection) -> Job | None:
            if conn.execute(sql, args).rowcount == 0:
                return None
            _insert_events(conn, rows)
            return self._get_job(conn, job_id)

        return await self._run(lambda conn: self._tx(conn, body))

    async def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        lease_seconds: float,
        progress: float | None,
        now: float | None = None,
    ) -> Job | None:
        now = float(time.time() if now is None else now)
        return await self._update_job(
            job_id,
            "UPDATE jobs SET lease_expires = ?, progress = COALESCE(?, progress), updated_at = ? "
            "WHERE id = ? AND status = 'running' AND lease_owner = ?",
            (now + float(lease_seconds), clamp_progress(progress), now, job_id, worker_id),
        )

    async def finish_job(
        self,
        job_id: str,
        worker_id: str,
        status: str,
        result: dict[str, Any] | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        now: float | None = None,
        events: Sequence[WebhookEvent] = (),
    ) -> Job | None:
        check_final_status(status)
        now = float(time.time() if now is None else now)
        result_text = None if result is None else dump_json_object(result, "result")
        return await self._update_job(
            job_id,
            "UPDATE jobs SET status = ?, result = ?, error_type = ?, error_message = ?, finished_at = ?, "
            "updated_at = ?, progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END, "
            "lease_owner = NULL, lease_expires = NULL "
            "WHERE id = ? AND status = 'running' AND lease_owner = ?",
            (status, result_text, error_type, error_message, now, now, status, job_id, worker_id),
            events,
        )

    async def retry_job(
        self,
        job_id: str,
        worker_id: str,
        run_after: float,
        error_type: str,
        error_message: str,
        now: float | None = None,
    ) -> Job | None:
        now = float(time.time() if now is None else now)
        return await self._update_job(
            job_id,
            "UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END, "
            "finished_at = CASE WHEN cancel_requested THEN ? ELSE finished_at END, "
            "run_after = ?, error_type = ?, error_message = ?, progress = 0, updated_at = ?, "
            "lease_owner = NULL, lease_expires = NULL WHERE id = ? AND status = 'running' AND lease_owner = ?",
            (now, float(run_after), error_type, error_message, now, job_id, worker_id),
        )

    async def cancel_job(self, job_id: str, now: float | None = None) -> Job | None:
        now = float(time.time() if now is None else now)

        def body(conn: sqlite3.Connection) -> Job | None:
            conn.execute(_CANCEL_SQL, (now, now, job_id))
            return self._get_job(conn, job_id)

        return await self._run(lambda conn: self._tx(conn, body))

    async def claim_results(
        self, claimer: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[Job]:
        now = float(time.time() if now is None else now)
        expires = now + float(lease_seconds)

        def body(conn: sqlite3.Connection) -> list[Job]:
            # One statement in a write transaction (BEGIN IMMEDIATE): other connections, also in other
            # processes, wait for the file's write lock and then see these claims.
            rows = conn.execute(
                f"UPDATE jobs SET result_claimer = ?, result_claim_expires = ? WHERE id IN ({_CLAIMABLE_RESULTS}) "
                f"RETURNING {', '.join(JOB_COLUMNS)}",
                (claimer, expires, now, int(limit)),
            ).fetchall()
            return sorted((self._job(r) for r in rows), key=lambda j: j.id)

        def claim(conn: sqlite3.Connection) -> list[Job]:
            # Watchers call this several times a second: do not take the write lock when a read finds
            # nothing to claim (a result that turns up just after is claimed on the next call).
            if not conn.execute(_CLAIMABLE_RESULTS, (now, 1)).fetchall():
                return []
            return self._tx(conn, body)

        if limit <= 0:
            return []
        return await self._run(claim)

    async def mark_result_applied(self, job_id: str, now: float | None = None) -> None:
        now = float(time.time() if now is None else now)

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET result_applied = 1, "
                "updated_at = CASE WHEN ? > updated_at THEN ? ELSE updated_at + 0.001 END "
                "WHERE id = ? AND result_applied = 0",
                (now, now, job_id),
            )

        await self._run(lambda conn: self._tx(conn, body))

    async def unapplied_results(self, limit: int) -> list[Job]:
        return await self._run(
            lambda conn: self._jobs(
                # Without statistics the planner prefers jobs_claim and sorts every succeeded job.
                conn,
                "INDEXED BY jobs_unapplied WHERE status = 'succeeded' AND result_applied = 0 ORDER BY id LIMIT ?",
                (limit,),
            )
        )

    # -- assets -----------------------------------------------------------
    async def put_asset(self, asset_id: str, content_type: str, data: bytes, now: float | None = None) -> None:
        now = float(time.time() if now is None else now)
        data = bytes(data)

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO assets (id, content_type, data, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (asset_id, content_type, data, now),
            )

        await self._run(body)

    async def get_asset(self, asset_id: str) -> Asset | None:
        def body(conn: sqlite3.Connection) -> Asset | None:
            row = conn.execute(
                "SELECT id, content_type, data, created_at FROM assets WHERE id = ?", (asset_id,)
            ).fetchone()
            return None if row is None else Asset(row[0], row[1], bytes(row[2]), row[3])

        return await self._run(body)

    # -- webhook outbox ---------------------------------------------------
    async def add_webhook_events(self, events: Sequence[WebhookEvent]) -> None:
        rows = webhook_event_rows(events)
        if rows:
            await self._run(lambda conn: self._tx(conn, lambda c: _insert_events(c, rows)))

    async def claim_webhook_deliveries(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[WebhookDelivery]:
        if limit <= 0:
            return []
        now = float(time.time() if now is None else now)
        expires = now + float(lease_seconds)

        def body(conn: sqlite3.Connection) -> list[WebhookDelivery]:
            # One write transaction (BEGIN IMMEDIATE): other connections, also in other processes,
            # wait for the file's write lock and then see these claims.
            ids = [
                r[0]
                for r in conn.execute(
                    f"UPDATE webhook_deliveries SET status = 'delivering', lease_owner = ?, lease_expires = ?, "
                    f"attempts = attempts + 1, updated_at = ? WHERE id IN ({_CLAIMABLE_DELIVERIES}) RETURNING id",
                    (owner, expires, now, now, now, int(limit)),
                ).fetchall()
            ]
            if not ids:
                return []
            marks = ", ".join("?" * len(ids))
            return self._deliveries(conn, f"WHERE d.id IN ({marks}) ORDER BY d.next_attempt_at, d.id", tuple(ids))

        def claim(conn: sqlite3.Connection) -> list[WebhookDelivery]:
            # Polled: do not take the write lock when a read finds nothing due.
            if not conn.execute(_CLAIMABLE_DELIVERIES, (now, now, 1)).fetchall():
                return []
            return self._tx(conn, body)

        return await self._run(claim)

    async def record_webhook_attempt(
        self,
        delivery_id: int,
        owner: str,
        outcome: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        next_attempt_at: float | None = None,
        now: float | None = None,
    ) -> bool:
        now = float(time.time() if now is None else now)
        status, due = webhook_attempt_status(outcome, next_attempt_at)

        def body(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE webhook_deliveries SET status = ?, next_attempt_at = COALESCE(?, next_attempt_at), "
                "last_status_code = ?, last_error = ?, updated_at = ?, "
                "delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END, "
                "lease_owner = NULL, lease_expires = NULL "
                "WHERE id = ? AND status = 'delivering' AND lease_owner = ?",
                (status, due, status_code, error, now, status, now, int(delivery_id), owner),
            )
            return cur.rowcount > 0

        return await self._run(lambda conn: self._tx(conn, body))

    async def list_webhook_deliveries(
        self, before: int | None, limit: int, status: str | None = None, endpoint: str | None = None
    ) -> list[WebhookDelivery]:
        return await self._run(
            lambda conn: self._deliveries(
                conn,
                "WHERE (? IS NULL OR d.id < ?) AND (? IS NULL OR d.status = ?) AND (? IS NULL OR d.endpoint = ?) "
                "ORDER BY d.id DESC LIMIT ?",
                (before, before, status, status, endpoint, endpoint, int(limit)),
            )
        )

    async def prune_webhook_deliveries(self, finished_before: float, limit: int) -> int:
        def body(conn: sqlite3.Connection) -> int:
            deleted = conn.execute(
                "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries "
                "WHERE status IN ('delivered', 'dead') AND updated_at < ? LIMIT ?)",
                (float(finished_before), int(limit)),
            ).rowcount
            conn.execute(
                "DELETE FROM webhook_events WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)",
                (float(finished_before),),
            )
            return deleted

        return await self._run(lambda conn: self._tx(conn, body))

    @staticmethod
    def _deliveries(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[WebhookDelivery]:
        return [_delivery(r) for r in conn.execute(_SELECT_DELIVERY + where, args).fetchall()]

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"


_SELECT_JOB = "SELECT " + ", ".join(JOB_COLUMNS) + " FROM jobs "

_SELECT_DELIVERY = (
    "SELECT d.id, d.endpoint, d.event_id, e.type, e.payload, d.status, d.attempts, d.next_attempt_at, "
    "d.lease_owner, d.lease_expires, d.last_status_code, d.last_error, d.created_at, d.updated_at, d.delivered_at "
    "FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id "
)

# Ids of deliveries claim_webhook_deliveries may take: due, or leased by an owner that died.
# Parameters: now, now, limit.
_CLAIMABLE_DELIVERIES = (
    "SELECT id FROM webhook_deliveries WHERE (status = 'pending' AND next_attempt_at <= ?) "
    "OR (status = 'delivering' AND lease_expires < ?) ORDER BY next_attempt_at, id LIMIT ?"
)


def _insert_events(conn: sqlite3.Connection, rows: WebhookEventRows) -> None:
    for (event_id, kind, payload, created_at), endpoints in rows:
        conn.execute(
            "INSERT INTO webhook_events (id, type, payload, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (event_id, kind, payload, created_at),
        )
        conn.executemany(
            "INSERT INTO webhook_deliveries (endpoint, event_id, status, next_attempt_at, created_at, updated_at) "
            "VALUES (?, ?, 'pending', ?, ?, ?) ON CONFLICT (event_id, endpoint) DO NOTHING",
            [(name, event_id, created_at, created_at, created_at) for name in endpoints],
        )


def _delivery(row: tuple[Any, ...]) -> WebhookDelivery:
    values = list(row)
    values[4] = json.loads(values[4])
    return WebhookDelivery(*values)


# Ids of results claim_results may take: succeeded, not applied, no live claim. Parameters: now, limit.
# (Without statistics the planner prefers jobs_claim and sorts every succeeded job.)
_CLAIMABLE_RESULTS = (
    "SELECT id FROM jobs INDEXED BY jobs_unapplied WHERE status = 'succeeded' AND result_applied = 0 "
    "AND (result_claim_expires IS NULL OR result_claim_expires < ?) ORDER BY id LIMIT ?"
)

# queued -> cancelled now; running -> cancel requested (once); anything else untouched.
_CANCEL_SQL = (
    "UPDATE jobs SET status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, "
    "finished_at = CASE WHEN status = 'queued' THEN ? ELSE finished_at END, "
    "cancel_requested = 1, updated_at = ? "
    "WHERE id = ? AND (status = 'queued' OR (status = 'running' AND NOT cancel_requested))"
)
