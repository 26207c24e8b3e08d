"""Limits that keep one client from hurting the others: rates, connection counts, origins, slow upgrades.

Every refusal is logged as a structured ``limit_exceeded`` line naming the limit
(through ``offences``: a flood of refusals from one address is summarised, not
logged line by line); close codes and HTTP statuses are listed in docs/security.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .logs import log


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. ``rate`` 0 means unlimited."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        if self.rate <= 0:
            return True
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True


class ConnectionCounter:
    """Open WebSockets per key (client IP); ``limit`` 0 means unlimited."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        count = self.counts.get(key, 0)
        if self.limit and count >= self.limit:
            return False
        self.counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self.counts.get(key, 0) - 1
        if count <= 0:
            self.counts.pop(key, None)
        else:
            self.counts[key] = count


class UpgradePacer:
    """New WebSockets per client IP are paced, not refused: at most ``rate`` upgrades per second after a
    burst of ``burst``; one over that waits its turn (at most ``max_wait`` seconds, else it is refused).

    A flood of short-lived sockets from one address then costs the event loop ``rate`` handshakes per
    second, whatever the attacker's concurrency, so established rooms keep their latency
    (docs/security.md, "Connection floods"). Honest users behind the same address (NAT) are delayed
    in a burst, never locked out. ``rate`` 0 turns pacing off.
    """

    def __init__(self, rate: float, burst: int, max_wait: float = 10.0) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_wait = max_wait
        self._next: dict[str, float] = {}  # per IP: when its next upgrade may start (a virtual queue)

    async def admit(self, ip: str) -> bool:
        """Wait for ``ip``'s turn; False if that would take longer than ``max_wait`` (refuse: 1013)."""
        if self.rate <= 0:
            return True
        if ":" in ip:  # IPv6: one host usually holds a whole /64
            try:
                ip = str(ipaddress.ip_network(f"{ip}/64", strict=False))
            except ValueError:
                pass
        now = time.monotonic()
        interval = 1.0 / self.rate
        # The bucket as a "virtual finish time": up to ``burst`` upgrades may start at once, then one per interval.
        start = max(self._next.get(ip, 0.0), now - (self.burst - 1) * interval)
        delay = start - now
        if delay > self.max_wait:
            return False
        self._next[ip] = start + interval
        if len(self._next) > 10_000:  # forget addresses whose turn is long past
            self._next = {key: when for key, when in self._next.items() if when > now}
        if delay > 0:
            await asyncio.sleep(delay)
        return True


class OriginPolicy:
    """Which browser origins may open WebSockets and call the API (CORS).

    Requests without ``Origin`` (non-browser clients) are allowed; a browser's
    ``Origin`` must be the server's own (same host and port as ``Host``) or listed.
    This blocks cross-site WebSocket hijacking: WebSockets are not subject to
    CORS, so without this check any web page could open one with the visitor's
    cookies or network position.
    """

    def __init__(self, allowed: str) -> None:
        items = [item.strip().rstrip("/") for item in allowed.split(",") if item.strip()]
        self.any = "*" in items
        self.allowed = frozenset(item.lower() for item in items if item != "*")

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any:
            return True
        origin = origin.strip().lower()
        if origin in self.allowed:
            return True
        netloc = urlsplit(origin).netloc
        return host is not None and netloc == host.strip().lower()

    @property
    def cors_origins(self) -> list[str]:
        return ["*"] if self.any else sorted(self.allowed)


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def client_ip(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class OffenceLog:
    """Logs what hostile or broken clients do without letting a flood of them fill the log.

    A flood of short-lived sockets would otherwise write one JSON line per socket
    (formatting, redaction and a synchronous write on the event loop; 230 KB per
    2,000 sockets, docs/benchmarks.md, "Connection floods"). The
    first offence of each (event, address, detail) in a period is logged in full;
    the others are counted and written as one ``offences_suppressed`` line when
    the period ends (at the next offence or ``flush_due``). ``detail`` is what an
    operator tells offences apart by: the limit, the close code, the HTTP status.
    Past ``max_keys`` distinct keys in one period, new ones are only counted.
    """

    def __init__(self, period: float = 10.0, max_keys: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self.max_keys = max_keys
        self._clock = clock
        self._started = clock()
        self._logged: set[tuple[str, str, str]] = set()
        self._suppressed: Counter[tuple[str, str, str]] = Counter()

    def record(self, level: int, event: str, ip: str | None, detail: object, **fields: Any) -> None:
        if self._clock() - self._started >= self.period:
            self.flush()
        key = (event, ip or "unknown", str(detail))
        if key in self._logged or len(self._logged) >= self.max_keys:
            self._suppressed[key] += 1
            return
        self._logged.add(key)
        log(level, event, ip=ip, **fields)

    def flush_due(self) -> None:
        """Called periodically, so a flood's summary is written even if nothing follows it."""
        if self._clock() - self._started >= self.period:
            self.flush()

    async def summarise_forever(self) -> None:
        """Write the counts of suppressed lines every period (a task the composition root runs)."""
        while True:
            await asyncio.sleep(self.period)
            self.flush_due()

    def flush(self) -> None:
        if self._suppressed:
            counts = [
                {"event": event, "ip": ip, "detail": detail, "count": count}
                for (event, ip, detail), count in self._suppressed.most_common()
            ]
            log(
                logging.WARNING,
                "offences_suppressed",
                seconds=round(self._clock() - self._started, 1),
                total=sum(self._suppressed.values()),
                counts=counts,
            )
        self._started = self._clock()
        self._logged.clear()
        self._suppressed.clear()


# One per process: every hostile-connection event (limits, protocol errors, refused upgrades) goes here.
offences = OffenceLog()


def limit_exceeded(limit: str, **fields: Any) -> None:
    ip = fields.pop("ip", None)
    offences.record(logging.WARNING, "limit_exceeded", ip, limit, limit=limit, **fields)


def preauth_protocol(base: type, timeout: float, on_timeout: Callable[[], None] | None = None) -> type:
    """A uvicorn HTTP protocol class that drops connections which do not finish their request headers
    within ``timeout`` seconds (slowloris; a WebSocket's token arrives with those headers)."""

    class PreauthTimeoutProtocol(base):
        _preauth_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if timeout > 0:
                self._preauth_timer = asyncio.get_running_loop().call_later(timeout, self._preauth_expired)

        def _preauth_done(self) -> None:
            timer = self._preauth_timer
            if timer is not None:
                timer.cancel()
                self._preauth_timer = None

        def _preauth_expired(self) -> None:
            self._preauth_timer = None
            limit_exceeded("preauth_timeout", ip=self.client[0] if self.client else None, seconds=timeout)
            if on_timeout is not None:
                on_timeout()
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._preauth_done()
            super().connection_lost(exc)

        if hasattr(base, "on_headers_complete"):  # httptools

            def on_headers_complete(self) -> None:
                self._preauth_done()
                super().on_headers_complete()
        else:  # h11: headers are complete once any request event was parsed

            def handle_events(self) -> None:
                super().handle_events()
                if self.cycle is not None:
                    self._preauth_done()

    return PreauthTimeoutProtocol


def http_protocol_class() -> type:
    """uvicorn's fastest available HTTP/1.1 protocol (what ``http="auto"`` would pick)."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] installs httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
