"""Structured logging: one JSON object per line, so operators can grep and parse."""

from __future__ import annotations

import logging
import sys

import orjson

logger = logging.getLogger("canvashub")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            payload.update(fields)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


class _DropDenialResponseFalseAlarm(logging.Filter):
    """uvicorn logs an ERROR when an app refuses an upgrade with an HTTP response
    (the ASGI ``websocket.http.response`` extension), although that is allowed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("ASGI callable returned without completing handshake")


def configure(level: str) -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropDenialResponseFalseAlarm) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(_DropDenialResponseFalseAlarm())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def log(level: int, event: str, **fields: object) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
