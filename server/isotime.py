"""Timestamps on the wire: ISO 8601 in UTC, from the epoch seconds the stores keep."""

from __future__ import annotations

import datetime


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()
