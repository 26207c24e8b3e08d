"""The storage backends every storage contract suite runs on: an embedded SQLite file and a fresh
PostgreSQL schema, each test on its own namespace (fixtures ``backend`` and ``store``)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from canvashub.storage.base import Store
from canvashub.storage.postgres import PostgresStore
from canvashub.storage.sqlite import SQLiteStore

from .support import PG_DSN, postgres_schema

WAIT = 30.0  # generous upper bound for any awaited storage operation


@dataclasses.dataclass
class Backend:
    """One isolated namespace (SQLite file or Postgres schema) and how to open stores on it."""

    kind: str
    make: Callable[[], Store]
    migration_rows: Callable[[], Any]  # async -> list[(version, applied_at)]
    opened: list[Store] = dataclasses.field(default_factory=list)

    async def open_store(self) -> Store:
        store = self.make()
        await asyncio.wait_for(store.open(), WAIT)
        self.opened.append(store)
        return store


async def _sqlite_backend(tmp_path) -> AsyncIterator[Backend]:
    path = tmp_path / "store.db"

    async def rows():
        conn = sqlite3.connect(path)
        try:
            return conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY version").fetchall()
        finally:
            conn.close()

    yield Backend("sqlite", lambda: SQLiteStore(str(path)), rows)


async def _postgres_backend() -> AsyncIterator[Backend]:
    async with postgres_schema() as (admin, schema):

        async def rows():
            return [
                (r["version"], r["applied_at"])
                for r in await admin.fetch(
                    f'SELECT version, applied_at FROM "{schema}".schema_migrations ORDER BY version'
                )
            ]

        yield Backend(
            "postgres",
            lambda: PostgresStore(PG_DSN, pool_size=10, acquire_timeout=5.0, server_settings={"search_path": schema}),
            rows,
        )


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request, tmp_path) -> AsyncIterator[Backend]:
    """An isolated namespace for the parametrized backend; every store opened on it is closed at teardown."""
    gen = _sqlite_backend(tmp_path) if request.param == "sqlite" else _postgres_backend()
    be = await gen.__anext__()
    try:
        yield be
    finally:
        for store in be.opened:
            await asyncio.wait_for(store.close(), WAIT)
        await gen.aclose()


@pytest.fixture
async def store(backend) -> Store:
    """An opened store on a fresh namespace."""
    return await backend.open_store()
