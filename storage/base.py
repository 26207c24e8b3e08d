"""Durable storage contract: data shapes and the async ``Store`` protocol every backend implements."""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class LoadedCanvas:
    """A canvas as stored: latest snapshot plus the log rows (seq, update) after it, ascending seq."""

    snapshot: bytes | None
    version: int
    updates: list[tuple[int, bytes]]
    updated_at: float | None


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """Metadata of one retained snapshot version."""

    number: int
    created_at: float
    size: int


@dataclasses.dataclass(frozen=True)
class CanvasInfo:
    """One row of the canvas listing."""

    canvas_id: str
    version: int
    updated_at: float


@runtime_checkable
class Store(Protocol):
    """Async durable store for canvases: append-only update log + versioned snapshots."""

    async def open(self) -> None:
        """Connect and apply pending migrations (recorded in ``schema_migrations``)."""

    async def close(self) -> None:
        """Release connections/threads."""

    async def append_updates(self, batch: list[tuple[str, bytes]]) -> list[int]:
        """Append (canvas_id, update) rows in one transaction; return assigned seqs in order."""

    async def load(self, canvas_id: str) -> LoadedCanvas | None:
        """Snapshot + remaining log rows, or None if the canvas does not exist."""

    async def compact(
        self,
        canvas_id: str,
        expected_version: int,
        snapshot: bytes,
        through_seq: int,
        keep_versions: int,
        record_version: bool = True,
    ) -> int | None:
        """Replace the snapshot if version == expected_version; return the new version or None on conflict.

        In the same transaction: delete log rows with seq <= ``through_seq``, record the snapshot
        as a history version (unless ``record_version`` is false, e.g. the content did not
        change) and keep only the newest ``keep_versions`` versions."""

    async def list_versions(self, canvas_id: str, before: int | None, limit: int) -> list[VersionInfo]:
        """Retained versions, newest first; ``before`` is an exclusive cursor on number."""

    async def get_version(self, canvas_id: str, number: int) -> bytes | None:
        """Snapshot bytes of one retained version."""

    async def list_canvases(self, after: str | None, limit: int) -> list[CanvasInfo]:
        """Canvases ordered by id; ``after`` is an exclusive cursor on id."""

    async def delete_canvas(self, canvas_id: str) -> bool:
        """Remove canvas, log and versions; True if it existed."""

    async def health(self) -> bool:
        """True if the backend answers a trivial query."""
