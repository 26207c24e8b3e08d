"""A bounded feed of items for ``async for``: subscribed when created, so nothing published after that
is missed (an async generator would subscribe only at its first ``anext``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

T = TypeVar("T")


class Feed(Generic[T]):
    """``async for item in feed``; at most ``limit`` items wait, the oldest are dropped beyond."""

    def __init__(self, feeds: set[Feed[T]], limit: int = 1024) -> None:
        self._feeds = feeds
        self._queue: asyncio.Queue[T] = asyncio.Queue(limit)
        feeds.add(self)

    def put(self, item: T) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(item)

    def __aiter__(self) -> Feed[T]:
        return self

    async def __anext__(self) -> T:
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving items."""
        self._feeds.discard(self)

    def __enter__(self) -> Feed[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
