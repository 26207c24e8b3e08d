"""Stored bytes (a snapshot, then log rows in order) replayed into a fresh document (pure, no I/O).

Runs in the server process for small jobs and in the replay worker process
(server/replayer.py) for everything proportional to a canvas's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pycrdt import Doc


class CorruptRow(ValueError):
    """A stored row does not apply (rows were validated before they were stored: corruption on disk)."""


def replay_parts(parts: Sequence[tuple[str, bytes]], *, strict: bool) -> tuple[Doc[Any], list[tuple[str, str]]]:
    """Apply ``(label, update)`` parts in order to a fresh Doc.

    ``strict`` raises ``CorruptRow`` at the first part that does not apply (so
    compaction keeps the rows for an operator); otherwise the part is skipped
    and reported as ``(label, error)`` so the rest of the canvas stays editable.
    yrs panics are ``BaseException`` (NOTES), hence the broad catch.
    """
    doc: Doc[Any] = Doc()
    skipped: list[tuple[str, str]] = []
    for label, update in parts:
        try:
            doc.apply_update(update)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - see docstring
            if strict:
                raise CorruptRow(f"stored {label} does not apply: {exc!r}") from None
            skipped.append((label, repr(exc)))
    return doc, skipped


def stored_parts(snapshot: bytes | None, updates: Sequence[tuple[int, bytes]]) -> list[tuple[str, bytes]]:
    """A stored canvas (snapshot + ``(seq, update)`` rows) as labelled parts for ``replay_parts``."""
    return ([("snapshot", snapshot)] if snapshot else []) + [(f"seq {s}", u) for s, u in updates]
