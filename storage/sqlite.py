"""SQLite backend: stdlib sqlite3 on one connection, driven from a single-thread executor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
from typing import Callable, TypeVar

from . import migrations
from .base import CanvasInfo, LoadedCanvas, VersionInfo

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
                seqs.append(cur.lastrowid)
            return seqs

        return await self._run(lambda conn: self._tx(conn, body))

    async def load(self, canvas_id: str) -> LoadedCanvas | None:
        def body(conn: sqlite3.Connection) -> LoadedCanvas | None:
            # One read transaction so the snapshot and the log are consistent with each other.
            conn.execute("BEGIN")
            try:
                row = conn.execute(
                    "SELECT snapshot, version, updated_at FROM canvases WHERE id = ?", (canvas_id,)
                ).fetchone()
                if row is None:
                    return None
                updates = conn.execute(
                    "SELECT seq, data FROM canvas_updates WHERE canvas_id = ? ORDER BY seq", (canvas_id,)
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            return LoadedCanvas(row[0], row[1], [(s, bytes(d)) for s, d in updates], row[2])

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

    async def delete_canvas(self, canvas_id: str) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM canvas_updates WHERE canvas_id = ?", (canvas_id,))
            conn.execute("DELETE FROM canvas_versions WHERE canvas_id = ?", (canvas_id,))
            return conn.execute("DELETE FROM canvases WHERE id = ?", (canvas_id,)).rowcount > 0

        return await self._run(lambda conn: self._tx(conn, body))

    async def health(self) -> bool:
        try:
            return await self._run(lambda conn: conn.execute("SELECT 1").fetchone() == (1,))
        except Exception:
            return False

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

