"""Reconnect delays: exponential, capped, with full jitter.

``delay = uniform(0, min(cap, base * 2**attempt))`` (the "full jitter" of AWS's "Exponential Backoff
And Jitter"): after a server restart its clients come back spread over the whole window instead of
in waves, as the stock provider's fixed 100 ms * 2^n schedule brings them (shared/NOTES.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The delay before each next attempt; ``reset()`` after a connection that worked."""

    base: float = 0.1
    cap: float = 10.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError("backoff needs 0 < base <= cap")

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.base * float(1 << min(self.attempt, 64)))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
