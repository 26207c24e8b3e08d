"""In-memory document store: keeps each canvas's full state while the process lives."""

from __future__ import annotations


class MemoryStore:
    def __init__(self) -> None:
        self._snapshots: dict[str, bytes] = {}

    async def load(self, canvas_id: str) -> bytes | None:
        return self._snapshots.get(canvas_id)

    async def save_snapshot(self, canvas_id: str, update: bytes) -> None:
        self._snapshots[canvas_id] = update
