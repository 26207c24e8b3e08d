"""The ``AssetStore`` contract (content-addressed binary outputs), on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

from canvashub.storage.base import Asset, AssetStore

from .store_backends import WAIT, backend, store  # noqa: F401 (fixtures: every test runs on both backends)

T = 1_700_000_000.0  # a fixed "now"


async def test_is_an_asset_store(store):
    """Both backends satisfy the AssetStore protocol."""
    assert isinstance(store, AssetStore)


async def test_assets_put_get_and_idempotent_put(store):
    """put_asset stores bytes exactly; the same id again is a no-op (first content wins); unknown → None."""
    data = bytes(range(256)) * 4096  # 1 MiB with NULs and every byte value
    await store.put_asset("a1", "image/png", data, now=T)
    asset = await store.get_asset("a1")
    assert asset == Asset("a1", "image/png", data, T)
    assert isinstance(asset.data, bytes) and isinstance(asset.created_at, float)
    await store.put_asset("a1", "image/jpeg", b"other", now=T + 1)
    assert await store.get_asset("a1") == asset
    await store.put_asset("a2", "image/svg+xml", memoryview(b"<svg/>"), now=T + 2)
    assert await store.get_asset("a2") == Asset("a2", "image/svg+xml", b"<svg/>", T + 2)
    assert await store.get_asset("missing") is None


async def test_concurrent_puts_of_one_asset(store):
    """Concurrent puts of the same id neither fail nor duplicate."""
    puts = [store.put_asset("same", "image/png", b"x" * 10, now=T) for _ in range(10)]
    await asyncio.wait_for(asyncio.gather(*puts), WAIT)
    assert (await store.get_asset("same")).data == b"x" * 10
