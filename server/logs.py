"""Structured logging: one JSON object per line, so operators can grep and parse."""

from __future__ import annotations

import logging
import re
import sys

import orjson

logger = logging.getLogger("canvashub")


# Access tokens must never reach a log: query-string values of token-like
# parameters, bearer credentials and anything shaped like a JWT are masked.
_SECRETS = re.compile(
    r"(?i)(?P<keep>(?:token|access_token|auth)=|bearer )[^&\s\"']+"
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
)


def redact(text: str) -> str:
    return _SECRETS.sub(lambda m: (m.group("keep") or "") + "[redacted]", text)


class RedactFilter(logging.Filter):
    """Applied to uvicorn's loggers, whose lines may quote request URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Redact inside the arguments, keeping their shape: uvicorn's access formatter reads them.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


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
        return redact(orjson.dumps(payload, default=str).decode())


class _DropDenialResponseFalseAlarm(logging.Filter):
    """uvicorn logs an ERROR when an app refuses an upgrade with an HTTP response
    (the ASGI ``websocket.http.response`` extension), although that is allowed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("ASGI callable returned without completing handshake")


def configure(level: str) -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropDenialResponseFalseAlarm) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(_DropDenialResponseFalseAlarm())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        if not any(isinstance(f, RedactFilter) for f in uvicorn_logger.filters):
            uvicorn_logger.addFilter(RedactFilter())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def log(level: int, event: str, **fields: object) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
