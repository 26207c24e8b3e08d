"""PostgreSQL backend on an asyncpg pool; every acquire is bounded by ``acquire_timeout``."""

from __future__ import annotations

from typing import Any

import asyncpg

from . import migrations
from .base import CanvasInfo, LoadedCanvas, VersionInfo


class PostgresStore:
    """Durable store in PostgreSQL (tables live in the connection's search_path)."""

    def __init__(self, dsn: str, pool_size: int = 10, acquire_timeout: float = 5.0, **connect_kwargs: Any) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.acquire_timeout = acquire_timeout
        self._connect_kwargs = connect_kwargs
        self._pool: asyncpg.Pool | None = None

    def _acquire(self):
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
                "SELECT snapshot, version, EXTRACT(EPOCH FROM updated_at)::float8 AS updated_at "
                "FROM canvases WHERE id = $1",
                canvas_id,
            )
            if row is None:
                return None
            updates = await conn.fetch(
                "SELECT seq, data FROM canvas_updates WHERE canvas_id = $1 ORDER BY seq", canvas_id
            )
        return LoadedCanvas(row["snapshot"], row["version"], [(r["seq"], r["data"]) for r in updates], row["updated_at"])

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
            new_version = await conn.fetchval(
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
            return await conn.fetchval(
                "SELECT snapshot FROM canvas_versions WHERE canvas_id = $1 AND number = $2", canvas_id, number
            )

    async def list_canvases(self, after: str | None, limit: int) -> list[CanvasInfo]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, version, EXTRACT(EPOCH FROM updated_at)::float8 AS updated_at FROM canvases "
                "WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
                after,
                limit,
            )
        return [CanvasInfo(r["id"], r["version"], r["updated_at"]) for r in rows]

    async def delete_canvas(self, canvas_id: str) -> bool:
        async with self._acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", canvas_id)
            # canvas_updates / canvas_versions go by ON DELETE CASCADE.
            return await conn.fetchval("DELETE FROM canvases WHERE id = $1 RETURNING true", canvas_id) is not None

    async def health(self) -> bool:
        try:
            async with self._acquire() as conn:
                return await conn.fetchval("SELECT 1") == 1
        except Exception:
            return False

    def __repr__(self) -> str:
        return f"PostgresStore(pool_size={self.pool_size})"
