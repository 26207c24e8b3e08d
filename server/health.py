"""Storage health, probed in the background and cached: ``/readyz`` answers at once whatever the database does.

One probe at a time, every ``period`` seconds, each given ``timeout`` seconds
(a probe still running then counts as unhealthy). A probe whose cancellation
itself hangs (a silent link) holds the next one back rather than piling probes
onto the pool; the cached result then ages, and a result older than
``max_age`` counts as unhealthy too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

PROBE_PERIOD = 1.0  # seconds between the end of one probe and the start of the next
PROBE_TIMEOUT = 1.0  # seconds one probe may take


class HealthMonitor:
    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        *,
        period: float = PROBE_PERIOD,
        timeout: float = PROBE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self.period = period
        self.timeout = timeout
        self._clock = clock
        self._healthy = False
        self._checked_at: float | None = None  # when the last probe finished (or timed out)
        self._task: asyncio.Task[None] | None = None

    @property
    def max_age(self) -> float:
        """A result older than this is not trusted: the prober is stuck."""
        return 3 * self.period + self.timeout

    def status(self) -> tuple[bool, int | None]:
        """(healthy, milliseconds since the last result); ``None``: never checked."""
        if self._checked_at is None:
            return False, None
        age = self._clock() - self._checked_at
        return self._healthy and age <= self.max_age, round(age * 1000)

    async def check(self) -> bool:
        """Run one probe (bounded by ``timeout``) and cache its result."""
        probe = asyncio.ensure_future(self._probe())
        done, _ = await asyncio.wait({probe}, timeout=self.timeout)
        self._healthy = bool(done) and not probe.cancelled() and probe.exception() is None and bool(probe.result())
        self._checked_at = self._clock()
        if not done:
            probe.cancel()
            await asyncio.wait({probe})  # let it release its connection before the next probe starts
            if not probe.cancelled():
                probe.exception()  # retrieved: a late failure is already reported as unhealthy
        return self._healthy

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            await self.check()
