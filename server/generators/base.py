"""The generator contract: a request in, an image out, progress on the way, errors classified.

A generator is any object with a ``name`` and an ``async generate(request,
progress)`` method (the ``Generator`` protocol). The job worker runs it in its
own task and owns everything around it: leases, retries, persisting progress,
storing the output. Generators only report what happened:

* ``progress(fraction)`` — synchronous and cheap; the caller throttles and
  persists it. Fractions are in 0..1.
* a ``GenerationOutput`` — the image bytes, their content type and the pixel
  size the canvas element should get.
* a ``GenerationError`` — ``error_type`` is a short classified string
  (``timeout``, ``unavailable``, ``invalid``, ``upstream``, ``too_large``,
  ``internal``) and ``retryable`` says whether trying again may help. Any other
  exception is treated by the worker as a bug (``internal``, retried).

Cancellation is the caller cancelling the task running ``generate``. A
generator must let ``CancelledError`` propagate (never swallow it) and must
clean up on the way out (close HTTP responses, clients, files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

DEFAULT_SIZE = 512
MIN_SIZE = 16
MAX_SIZE = 2048


class GenerationError(Exception):
    """A classified generation failure. ``error_type`` is a short string such as
    'timeout', 'unavailable', 'invalid', 'upstream', 'too_large' or 'internal'."""

    retryable: bool
    error_type: str

    def __init__(self, message: str, *, error_type: str, retryable: bool) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, error_type={self.error_type!r}, retryable={self.retryable})"


class RetryableError(GenerationError):
    """Trying again later may succeed (service down, overloaded, slow)."""

    def __init__(self, message: str, *, error_type: str, retryable: bool = True) -> None:
        super().__init__(message, error_type=error_type, retryable=retryable)


class PermanentError(GenerationError):
    """Trying again will fail the same way (bad input, upstream refused the job)."""

    def __init__(self, message: str, *, error_type: str) -> None:
        super().__init__(message, error_type=error_type, retryable=False)


@dataclass(frozen=True)
class GenerationRequest:
    job_id: str
    canvas_id: str
    prompt: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationOutput:
    content_type: str
    data: bytes
    width: int  # pixel size of the canvas element showing the image
    height: int


ProgressFn = Callable[[float], None]


@runtime_checkable
class Generator(Protocol):
    name: str
    # JSON Schema of the ``params`` object this generator accepts, checked when a job is requested (422),
    # so bad params never become a failed job. ``generate`` still validates (jobs may predate a change).
    params_schema: dict[str, Any]

    async def generate(self, request: GenerationRequest, progress: ProgressFn) -> GenerationOutput: ...


def _size(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": MIN_SIZE, "maximum": MAX_SIZE, "description": description}


# The params every generator understands: the pixel size of the element showing the image.
SIZE_PARAMS: dict[str, Any] = {
    "width": _size(f"element width in pixels (default {DEFAULT_SIZE})"),
    "height": _size(f"element height in pixels (default {DEFAULT_SIZE})"),
}


def request_params(request: GenerationRequest) -> dict[str, Any]:
    """The request's params, which must be a JSON object; PermanentError('invalid') otherwise."""
    if not isinstance(request.params, dict):
        raise PermanentError("params must be an object", error_type="invalid")
    return request.params


def int_param(params: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """``params[key]`` as an int in ``low..high`` (``default`` when absent); PermanentError('invalid') otherwise."""
    value = params.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PermanentError(f"params.{key} must be an integer in {low}..{high}", error_type="invalid")
    return value


def number_param(params: dict[str, Any], key: str, low: float, high: float) -> float | None:
    """``params[key]`` as a finite number in ``low..high``, or None when absent."""
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise PermanentError(f"params.{key} must be a number in {low:g}..{high:g}", error_type="invalid")
    return float(value)


def output_size(params: dict[str, Any]) -> tuple[int, int]:
    """The requested element size: ``params.width``/``params.height`` (16..2048), default 512x512."""
    return (
        int_param(params, "width", DEFAULT_SIZE, MIN_SIZE, MAX_SIZE),
        int_param(params, "height", DEFAULT_SIZE, MIN_SIZE, MAX_SIZE),
    )
