"""Start-up steps that depend on the world outside the process: the listening socket and the store.

A failure of either is a ``StartupFailed``; ``report`` turns any start-up failure into one
``startup_failed`` log line (never a printed traceback), and the command exits non-zero.
A store that is not reachable yet (a deploy that starts the database and canvashub together)
is retried with backoff for a bounded window, logged per state change (``FailureLog``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket

from canvashub.storage.base import StoreLifecycle

from .logs import FailureLog, log, logger

FIRST_RETRY_DELAY = 0.25  # seconds; doubles per attempt, full jitter
MAX_RETRY_DELAY = 2.0


class StartupFailed(Exception):
    """``step`` (``listen`` or ``store``) could not be done; ``error`` says why, for operators."""

    def __init__(self, step: str, error: str, **fields: object) -> None:
        super().__init__(f"{step}: {error}")
        self.step = step
        self.error = error
        self.fields = fields


def report(exc: BaseException) -> None:
    """One ``startup_failed`` line for a failed start (an unexpected error keeps its traceback as ``exc``)."""
    if isinstance(exc, StartupFailed):
        log(logging.ERROR, "startup_failed", step=exc.step, error=exc.error, **exc.fields)
    else:
        logger.error(
            "startup_failed", exc_info=exc, extra={"fields": {"step": "start", "error": f"{type(exc).__name__}: {exc}"}}
        )


def bind_listener(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts: a busy port fails fast, before the
    store is opened. uvicorn starts listening on it once the app has started."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupFailed(
            "listen", f"cannot listen on {host}:{port}: {exc.strerror or exc}", host=host, port=port
        ) from None
    sock.set_inheritable(True)
    return sock


async def open_store(store: StoreLifecycle, timeout: float) -> None:
    """Open ``store``, retrying for up to ``timeout`` seconds; then ``StartupFailed``.

    Configuration errors (a malformed DSN: ``ValueError``) are not retried."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    failures = FailureLog("store_open")
    attempt = 0
    while True:
        try:
            await asyncio.wait_for(store.open(), max(deadline - loop.time(), 0.001))
        except Exception as exc:
            error = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, (ValueError, TypeError)):
                raise StartupFailed("store", error, store=repr(store)) from None
            failures.failed(error, store=repr(store))
            delay = random.uniform(0, min(MAX_RETRY_DELAY, FIRST_RETRY_DELAY * 2**attempt))
            if loop.time() + delay >= deadline:
                raise StartupFailed(
                    "store",
                    f"store unreachable for {timeout:g} s: {error}",
                    store=repr(store),
                    attempts=failures.failures,
                ) from None
            attempt += 1
            await asyncio.sleep(delay)  # backoff between attempts
        else:
            failures.recovered(store=repr(store))
            return
