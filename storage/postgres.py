"""PostgreSQL backend on an asyncpg pool; every acquire is bounded by ``acquire_timeout``."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

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


class PostgresStore:
    """Durable store in PostgreSQL (tables live in the connection's search_path)."""

    def __init__(self, dsn: str, pool_size: int = 10, acquire_timeout: float = 5.0, **connect_kwargs: Any) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.acquire_timeout = acquire_timeout
        self._connect_kwargs = connect_kwargs
        self._pool: asyncpg.Pool | None = None

    def _acquire(self) -> Any:  # asyncpg's PoolAcquireContext (asyncpg ships no type information)
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open")
        return self._pool.acquire(timeout=self.acquire_timeout)

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self.pool_size, timeout=self.acquire_timeout, **self._connect_kwargs
        )
        try:
            async with pool.acquire(timeout=self.acquire_timeout) as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    @staticmethod
    async def _migrate(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            # Serialise concurrent migrators (several server processes starting at once).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('canvashub.schema_migrations'))")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, statements in migrations.POSTGRES:
                if version in applied:
                    continue
                for sql in statements:
                    await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def append_updates(self, batch: list[tuple[str, bytes]]) -> list[int]:
        if not batch:
            return []
        ids = [cid for cid, _ in batch]
        datas = [bytes(data) for _, data in batch]
        async with self._acquire() as conn:
            # One statement, one round trip; see migration 2 for the locking.
            rows = await conn.fetch("SELECT seq FROM canvashub_append($1::text[], $2::bytea[]) AS seq", ids, datas)
        # Identity values are drawn in insertion (= ordinality) order; RETURNING order is not promised.
        return sorted(r["seq"] for r in rows)

    async def load(self, canvas_id: str) -> LoadedCanvas | None:
        async with self._acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(
                "SELECT snapshot, version, EXTRACT(EPOCH FROM updated_at)::float8 AS updated_at, "
                "locked_at IS NOT NULL AS locked FROM canvases WHERE id = $1",
                canvas_id,
            )
            if row is None:
                return None
            updates = await conn.fetch(
                "SELECT seq, data FROM canvas_updates WHERE canvas_id = $1 ORDER BY seq", canvas_id
            )
        return LoadedCanvas(
            row["snapshot"], row["version"], [(r["seq"], r["data"]) for r in updates], row["updated_at"], row["locked"]
        )

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
        async with self._acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", canvas_id)
            new_version: int | None = await conn.fetchval(
                "UPDATE canvases SET snapshot = $1, version = version + 1, updated_at = now() "
                "WHERE id = $2 AND version = $3 RETURNING version",
                snapshot,
                canvas_id,
                expected_version,
            )
            if new_version is None:
                return None
            await conn.execute("DELETE FROM canvas_updates WHERE canvas_id = $1 AND seq <= $2", canvas_id, through_seq)
            if record_version:
                await conn.execute(
                    "INSERT INTO canvas_versions (canvas_id, number, size, snapshot) VALUES ($1, $2, $3, $4)",
                    canvas_id,
                    new_version,
                    len(snapshot),
                    snapshot,
                )
            await conn.execute(
                "DELETE FROM canvas_versions WHERE canvas_id = $1 AND number NOT IN "
                "(SELECT number FROM canvas_versions WHERE canvas_id = $1 ORDER BY number DESC LIMIT $2)",
                canvas_id,
                max(keep_versions, 0),
            )
        return new_version

    async def list_versions(self, canvas_id: str, before: int | None, limit: int) -> list[VersionInfo]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                "SELECT number, EXTRACT(EPOCH FROM created_at)::float8 AS created_at, size FROM canvas_versions "
                "WHERE canvas_id = $1 AND ($2::int IS NULL OR number < $2) ORDER BY number DESC LIMIT $3",
                canvas_id,
                before,
                limit,
            )
        return [VersionInfo(r["number"], r["created_at"], r["size"]) for r in rows]

    async def get_version(self, canvas_id: str, number: int) -> bytes | None:
        async with self._acquire() as conn:
            snapshot: bytes | None = await conn.fetchval(
                "SELECT snapshot FROM canvas_versions WHERE canvas_id = $1 AND number = $2", canvas_id, number
            )
        return snapshot

    async def list_canvases(self, after: str | None, limit: int) -> list[CanvasInfo]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, version, EXTRACT(EPOCH FROM updated_at)::float8 AS updated_at FROM canvases "
                "WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
                after,
                limit,
            )
        return [CanvasInfo(r["id"], r["version"], r["updated_at"]) for r in rows]

    async def set_canvas_lock(self, canvas_id: str, locked: bool, now: float | None = None) -> bool:
        locked_at = (time.time() if now is None else now) if locked else None
        async with self._acquire() as conn:
            # COALESCE: locking a locked canvas keeps when it was first locked.
            found = await conn.fetchval(
                "UPDATE canvases SET locked_at = CASE WHEN $1::float8 IS NULL THEN NULL "
                "ELSE COALESCE(locked_at, $1::float8) END WHERE id = $2 RETURNING true",
                locked_at,
                canvas_id,
            )
        return found is not None

    async def locked_canvases(self, canvas_ids: Sequence[str]) -> set[str]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                "SELECT id FROM canvases WHERE locked_at IS NOT NULL AND id = ANY($1::text[])", list(canvas_ids)
            )
        return {r["id"] for r in rows}

    async def delete_canvas(self, canvas_id: str, events: Sequence[WebhookEvent] = ()) -> bool:
        rows = webhook_event_rows(events)
        async with self._acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", canvas_id)
            # canvas_updates / canvas_versions go by ON DELETE CASCADE; jobs have no FK to canvases.
            await conn.execute("DELETE FROM jobs WHERE canvas_id = $1", canvas_id)
            deleted = await conn.fetchval("DELETE FROM canvases WHERE id = $1 RETURNING true", canvas_id)
            if deleted is not None:
                await _insert_events(conn, rows)
        return deleted is not None

    async def health(self) -> bool:
        try:
            async with self._acquire() as conn:
                answer = await conn.fetchval("SELECT 1")
            return bool(answer == 1)
        except Exception:
            return False

    # -- jobs -------------------------------------------------------------
    @classmethod
    def _job_or_none(cls, row: asyncpg.Record | None) -> Job | None:
        return None if row is None else cls._job(row)

    @staticmethod
    def _job(row: asyncpg.Record) -> Job:
        d = {name: row[name] for name in JOB_COLUMNS}
        d["params"] = json.loads(d["params"])
        d["result"] = None if d["result"] is None else json.loads(d["result"])
        return Job(**d)

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
        async with self._acquire() as conn:
            while True:
                # A concurrent insert with the same key makes this one wait for it to commit, then do
                # nothing; the SELECT (a new statement, so a new snapshot) then sees the winner.
                row = await conn.fetchrow(
                    f"INSERT INTO jobs (id, canvas_id, generator, prompt, params, status, max_attempts, "
                    f"idempotency_key, created_at, updated_at, run_after) "
                    f"VALUES ($1, $2, $3, $4, $5::jsonb, 'queued', $6, $7, $8, $8, $8) "
                    f"ON CONFLICT (canvas_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
                    f"RETURNING {_COLUMNS}",
                    job_id,
                    canvas_id,
                    generator,
                    prompt,
                    params_text,
                    max_attempts,
                    idempotency_key,
                    now,
                )
                if row is not None:
                    return self._job(row), True
                existing = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM jobs WHERE canvas_id = $1 AND idempotency_key = $2",
                    canvas_id,
                    idempotency_key,
                )
                if existing is not None:
                    return self._job(existing), False
                # The conflicting job was deleted in between (delete_canvas): try the insert again.

    async def get_job(self, job_id: str) -> Job | None:
        async with self._acquire() as conn:
            return self._job_or_none(await conn.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", job_id))

    async def _jobs(self, where: str, *args: Any) -> list[Job]:
        async with self._acquire() as conn:
            return [self._job(r) for r in await conn.fetch(f"SELECT {_COLUMNS} FROM jobs {where}", *args)]

    async def list_jobs(self, canvas_id: str, before: str | None, limit: int) -> list[Job]:
        return await self._jobs(
            "WHERE canvas_id = $1 AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3", canvas_id, before, limit
        )

    async def list_active_jobs(self, canvas_id: str) -> list[Job]:
        return await self._jobs("WHERE canvas_id = $1 AND status IN ('queued', 'running') ORDER BY id", canvas_id)

    async def jobs_changed_since(self, since: float, limit: int) -> list[Job]:
        return await self._jobs("WHERE updated_at > $1 ORDER BY updated_at, id LIMIT $2", float(since), limit)

    async def claim_job(
        self,
        worker_id: str,
        lease_seconds: float,
        now: float | None = None,
        failed_events: LeaseFailure | None = None,
    ) -> Job | None:
        now = float(time.time() if now is None else now)
        expires = now + float(lease_seconds)
        async with self._acquire() as conn, conn.transaction():
            while True:
                # Each candidate query locks at most one row and skips rows other claimers hold; a row
                # that changed since our snapshot is re-checked against the WHERE clause when locked.
                expired = self._job_or_none(
                    await conn.fetchrow(
                        f"SELECT {_COLUMNS} FROM jobs WHERE status = 'running' AND lease_expires < $1 "
                        f"ORDER BY run_after, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                        now,
                    )
                )
                if expired is not None and expired.cancel_requested:
                    await conn.execute(
                        "UPDATE jobs SET status = 'cancelled', finished_at = $1, updated_at = $1, lease_owner = NULL, "
                        "lease_expires = NULL WHERE id = $2",
                        now,
                        expired.id,
                    )
                    continue
                if expired is not None and expired.attempts >= expired.max_attempts:
                    await conn.execute(
                        "UPDATE jobs SET status = 'failed', error_type = $1, error_message = $2, finished_at = $3, "
                        "updated_at = $3, lease_owner = NULL, lease_expires = NULL WHERE id = $4",
                        LEASE_EXPIRED,
                        lease_expired_message(expired),
                        now,
                        expired.id,
                    )
                    if failed_events is not None:
                        await _insert_events(conn, webhook_event_rows(failed_events(expired, now)))
                    continue
                queued = self._job_or_none(
                    await conn.fetchrow(
                        f"SELECT {_COLUMNS} FROM jobs WHERE status = 'queued' AND run_after <= $1 "
                        f"AND NOT cancel_requested ORDER BY run_after, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                        now,
                    )
                )
                candidates = [j for j in (expired, queued) if j is not None]
                if not candidates:
                    return None
                # The candidate not taken stays locked only until this transaction commits.
                pick = min(candidates, key=lambda j: (j.run_after, j.id))
                return self._job_or_none(
                    await conn.fetchrow(
                        f"UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires = $2, "
                        f"attempts = attempts + 1, progress = 0, started_at = COALESCE(started_at, $3), "
                        f"updated_at = $3 WHERE id = $4 RETURNING {_COLUMNS}",
                        worker_id,
                        expires,
                        now,
                        pick.id,
                    )
                )

    async def _update_job(self, sql: str, *args: Any) -> Job | None:
        async with self._acquire() as conn:
            return self._job_or_none(await conn.fetchrow(f"{sql} RETURNING {_COLUMNS}", *args))

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
            "UPDATE jobs SET lease_expires = $1, progress = COALESCE($2::float8, progress), updated_at = $3 "
            "WHERE id = $4 AND status = 'running' AND lease_owner = $5",
            now + float(lease_seconds),
            clamp_progress(progress),
            now,
            job_id,
            worker_id,
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
        rows = webhook_event_rows(events)
        async with self._acquire() as conn, conn.transaction():
            job = self._job_or_none(
                await conn.fetchrow(
                    "UPDATE jobs SET status = $1, result = $2::jsonb, error_type = $3, error_message = $4, "
                    "finished_at = $5, updated_at = $5, progress = CASE WHEN $1 = 'succeeded' THEN 1.0 ELSE progress END, "
                    "lease_owner = NULL, lease_expires = NULL WHERE id = $6 AND status = 'running' AND lease_owner = $7 "
                    f"RETURNING {_COLUMNS}",
                    status,
                    result_text,
                    error_type,
                    error_message,
                    now,
                    job_id,
                    worker_id,
                )
            )
            if job is not None:
                await _insert_events(conn, rows)
        return job

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
            "UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END, "
            "finished_at = CASE WHEN cancel_requested THEN $1 ELSE finished_at END, "
            "run_after = $2, error_type = $3, error_message = $4, progress = 0, updated_at = $1, "
            "lease_owner = NULL, lease_expires = NULL WHERE id = $5 AND status = 'running' AND lease_owner = $6",
            now,
            float(run_after),
            error_type,
            error_message,
            job_id,
            worker_id,
        )

    async def cancel_job(self, job_id: str, now: float | None = None) -> Job | None:
        now = float(time.time() if now is None else now)
        async with self._acquire() as conn:
            # queued -> cancelled now; running -> cancel requested (once); anything else untouched.
            row = await conn.fetchrow(
                "UPDATE jobs SET status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, "
                "finished_at = CASE WHEN status = 'queued' THEN $1 ELSE finished_at END, "
                "cancel_requested = true, updated_at = $1 "
                "WHERE id = $2 AND (status = 'queued' OR (status = 'running' AND NOT cancel_requested)) "
                f"RETURNING {_COLUMNS}",
                now,
                job_id,
            )
            if row is None:
                row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return self._job_or_none(row)

    async def claim_results(
        self, claimer: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[Job]:
        if limit <= 0:
            return []
        now = float(time.time() if now is None else now)
        expires = now + float(lease_seconds)
        async with self._acquire() as conn:
            # One statement: the subselect locks up to ``limit`` claimable rows, skipping rows other
            # claimers hold; a row claimed and committed since our snapshot is re-checked against the
            # subselect's WHERE when locked, and so skipped.
            rows = await conn.fetch(
                f"UPDATE jobs SET result_claimer = $1, result_claim_expires = $2 WHERE id IN ("
                f"SELECT id FROM jobs WHERE status = 'succeeded' AND NOT result_applied "
                f"AND (result_claim_expires IS NULL OR result_claim_expires < $3) "
                f"ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}",
                claimer,
                expires,
                now,
                int(limit),
            )
        return sorted((self._job(r) for r in rows), key=lambda j: j.id)

    async def mark_result_applied(self, job_id: str, now: float | None = None) -> None:
        now = float(time.time() if now is None else now)
        async with self._acquire() as conn:
            await conn.execute(
                "UPDATE jobs SET result_applied = true, "
                "updated_at = CASE WHEN $1 > updated_at THEN $1 ELSE updated_at + 0.001 END "
                "WHERE id = $2 AND NOT result_applied",
                now,
                job_id,
            )

    async def unapplied_results(self, limit: int) -> list[Job]:
        return await self._jobs("WHERE status = 'succeeded' AND NOT result_applied ORDER BY id LIMIT $1", limit)

    # -- assets -----------------------------------------------------------
    async def put_asset(self, asset_id: str, content_type: str, data: bytes, now: float | None = None) -> None:
        now = float(time.time() if now is None else now)
        async with self._acquire() as conn:
            await conn.execute(
                "INSERT INTO assets (id, content_type, data, created_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (id) DO NOTHING",
                asset_id,
                content_type,
                bytes(data),
                now,
            )

    async def get_asset(self, asset_id: str) -> Asset | None:
        async with self._acquire() as conn:
            row = await conn.fetchrow("SELECT id, content_type, data, created_at FROM assets WHERE id = $1", asset_id)
        return None if row is None else Asset(row["id"], row["content_type"], row["data"], row["created_at"])

    # -- webhook outbox ---------------------------------------------------
    async def add_webhook_events(self, events: Sequence[WebhookEvent]) -> None:
        rows = webhook_event_rows(events)
        if not rows:
            return
        async with self._acquire() as conn, conn.transaction():
            await _insert_events(conn, rows)

    async def claim_webhook_deliveries(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[WebhookDelivery]:
        if limit <= 0:
            return []
        now = float(time.time() if now is None else now)
        expires = now + float(lease_seconds)
        async with self._acquire() as conn:
            # One statement: the subselect locks up to ``limit`` claimable rows, skipping rows other
            # claimers hold; a row claimed and committed since our snapshot is re-checked against the
            # subselect's WHERE when locked, and so skipped.
            rows = await conn.fetch(
                "WITH claimed AS (UPDATE webhook_deliveries SET status = 'delivering', lease_owner = $1, "
                "lease_expires = $2, attempts = attempts + 1, updated_at = $3 WHERE id IN ("
                "SELECT id FROM webhook_deliveries WHERE (status = 'pending' AND next_attempt_at <= $3) "
                "OR (status = 'delivering' AND lease_expires < $3) ORDER BY next_attempt_at, id LIMIT $4 "
                "FOR UPDATE SKIP LOCKED) RETURNING *) "
                f"SELECT {_DELIVERY_COLUMNS} FROM claimed d JOIN webhook_events e ON e.id = d.event_id "
                "ORDER BY d.next_attempt_at, d.id",
                owner,
                expires,
                now,
                int(limit),
            )
        return [_delivery(r) for r in rows]

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
        async with self._acquire() as conn:
            changed = await conn.fetchval(
                "UPDATE webhook_deliveries SET status = $1, next_attempt_at = COALESCE($2::float8, next_attempt_at), "
                "last_status_code = $3, last_error = $4, updated_at = $5, "
                "delivered_at = CASE WHEN $1 = 'delivered' THEN $5 ELSE delivered_at END, "
                "lease_owner = NULL, lease_expires = NULL "
                "WHERE id = $6 AND status = 'delivering' AND lease_owner = $7 RETURNING true",
                status,
                due,
                status_code,
                error,
                now,
                int(delivery_id),
                owner,
            )
        return changed is not None

    async def list_webhook_deliveries(
        self, before: int | None, limit: int, status: str | None = None, endpoint: str | None = None
    ) -> list[WebhookDelivery]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id "
                "WHERE ($1::bigint IS NULL OR d.id < $1) AND ($2::text IS NULL OR d.status = $2) "
                "AND ($3::text IS NULL OR d.endpoint = $3) ORDER BY d.id DESC LIMIT $4",
                before,
                status,
                endpoint,
                int(limit),
            )
        return [_delivery(r) for r in rows]

    async def prune_webhook_deliveries(self, finished_before: float, limit: int) -> int:
        async with self._acquire() as conn, conn.transaction():
            deleted = await conn.fetch(
                "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries "
                "WHERE status IN ('delivered', 'dead') AND updated_at < $1 LIMIT $2) RETURNING id",
                float(finished_before),
                int(limit),
            )
            await conn.execute(
                "DELETE FROM webhook_events e WHERE e.created_at < $1 AND NOT EXISTS "
                "(SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)",
                float(finished_before),
            )
        return len(deleted)

    def __repr__(self) -> str:
        return f"PostgresStore(pool_size={self.pool_size})"


_COLUMNS = ", ".join(JOB_COLUMNS)

_DELIVERY_COLUMNS = (
    "d.id, d.endpoint, d.event_id, e.type AS event_type, e.payload, d.status, d.attempts, d.next_attempt_at, "
    "d.lease_owner, d.lease_expires, d.last_status_code, d.last_error, d.created_at, d.updated_at, d.delivered_at"
)


async def _insert_events(conn: asyncpg.Connection, rows: WebhookEventRows) -> None:
    """The outbox rows, inside the caller's transaction (two statements, whatever the number of events)."""
    if not rows:
        return
    await conn.executemany(
        "INSERT INTO webhook_events (id, type, payload, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        [event for event, _ in rows],
    )
    await conn.executemany(
        "INSERT INTO webhook_deliveries (endpoint, event_id, status, next_attempt_at, created_at, updated_at) "
        "VALUES ($1, $2, 'pending', $3, $3, $3) ON CONFLICT (event_id, endpoint) DO NOTHING",
        [(name, event[0], event[3]) for event, endpoints in rows for name in endpoints],
    )


def _delivery(row: asyncpg.Record) -> WebhookDelivery:
    values = list(row.values())
    values[4] = json.loads(values[4])
    return WebhookDelivery(*values)
