"""Structured logging: one JSON object per line, so operators can grep and parse.

Every logger goes through the same formatter: canvashub's own lines, uvicorn's,
asyncpg's and any other library's (through the root logger), tracebacks
included as one escaped ``exc`` field. ``FailureLog`` keeps a failing retry loop
to a few lines: one when it starts failing, a summary now and then, one when it
recovers.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable

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
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format arguments must not turn into a non-JSON "Logging error"
            message = f"{record.msg!s} {record.args!r}"
        payload: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": message,
        }
        if record.name != logger.name:
            payload["logger"] = record.name  # a library's line: say whose
        fields = getattr(record, "fields", None)
        if fields:
            payload.update(fields)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)  # newlines escaped by the JSON encoder
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return redact(orjson.dumps(payload, default=str).decode())


class JsonStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (not when the handler was made)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


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
    handler = JsonStderrHandler()
    # canvashub's own lines at the configured level; every other logger (uvicorn, asyncpg, asyncio,
    # warnings) reaches the root logger, at warning or above, through the same formatter.
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, JsonStderrHandler)] + [handler]
    root.setLevel(max(logging.WARNING, logger.level))
    logging.captureWarnings(True)
    # Under plain ``uvicorn`` its own logging config (plain-text handlers) was applied before the
    # app was built: swap those handlers for ours. ``canvashub serve`` passes no logging config.
    for name in ("uvicorn", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        if uvicorn_logger.handlers:
            uvicorn_logger.handlers[:] = [handler]


def log(level: int, event: str, **fields: object) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


SUMMARY_EVERY = 30.0  # seconds between two summary lines of a failure that goes on


class FailureLog:
    """A retry loop's failures, logged per state change instead of per attempt.

    Healthy → failing: one WARNING ``<name>_failed`` with the error. While failing, at the
    first failure ``summary_every`` seconds after the previous line: one WARNING
    ``<name>_still_failing`` (``failures`` since that line, ``failing_seconds``,
    ``last_error``). Failing → recovered: one INFO ``<name>_recovered`` (``failures`` in
    all, ``failing_seconds``). Other attempts are logged at debug only.
    """

    def __init__(
        self,
        name: str,
        *,
        level: int = logging.WARNING,
        summary_every: float = SUMMARY_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.level = level
        self.summary_every = summary_every
        self._clock = clock
        self.failures = 0  # in the current failing stretch
        self.last_error: str | None = None
        self._since: float | None = None  # when the current failing stretch began
        self._last_line = 0.0
        self._unreported = 0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, error: str, **fields: object) -> None:
        now = self._clock()
        self.failures += 1
        self.last_error = error
        if self._since is None:
            self._since = self._last_line = now
            log(self.level, f"{self.name}_failed", error=error, **fields)
            return
        self._unreported += 1
        if now - self._last_line >= self.summary_every:
            log(
                self.level,
                f"{self.name}_still_failing",
                failures=self._unreported,
                failing_seconds=round(now - self._since, 1),
                last_error=error,
                **fields,
            )
            self._last_line = now
            self._unreported = 0
        else:
            log(logging.DEBUG, f"{self.name}_failed_again", error=error, **fields)

    def recovered(self, **fields: object) -> None:
        if self._since is None:
            return
        log(
            logging.INFO,
            f"{self.name}_recovered",
            failures=self.failures,
            failing_seconds=round(self._clock() - self._since, 3),
            **fields,
        )
        self._since = None
        self.failures = 0
        self._unreported = 0
        self.last_error = None
