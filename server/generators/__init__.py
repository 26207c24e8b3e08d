"""Pluggable generators for background generation jobs (see ``base`` for the contract).

``build_generators`` is the registry: the worker looks generators up by the
``generator`` name stored with each job. ``pattern`` (built in, no external
service) is always there; ``http`` only when an external service is configured,
and ``httpx`` is imported only then.
"""

from __future__ import annotations

from .base import (
    GenerationError,
    GenerationOutput,
    GenerationRequest,
    Generator,
    PermanentError,
    ProgressFn,
    RetryableError,
)
from .pattern import PatternGenerator

__all__ = [
    "GenerationError",
    "GenerationOutput",
    "GenerationRequest",
    "Generator",
    "PatternGenerator",
    "PermanentError",
    "ProgressFn",
    "RetryableError",
    "build_generators",
]


def build_generators(
    pattern_step_delay: float = 0.25, http_base_url: str | None = None, http_timeout: float = 30.0
) -> dict[str, Generator]:
    """The generators this process offers, by name: always ``pattern``; ``http`` if ``http_base_url`` is set."""
    generators: dict[str, Generator] = {"pattern": PatternGenerator(step_delay=pattern_step_delay)}
    if http_base_url:
        from .http import HttpGenerator

        generators["http"] = HttpGenerator(http_base_url, timeout=http_timeout)
    return generators
